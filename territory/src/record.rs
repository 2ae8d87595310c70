//! Registry records (DESIGN.md, "Territories and the registry"): which node serves a territory,
//! signed by the network's registry authority, and how to reach a node, signed by the node.
//!
//! Both are JSON objects signed the way Matrix signs JSON (canonical JSON without `signatures`
//! and `unsigned`, ed25519, `signatures.<signer>.<key id>`), so any Matrix signing library can
//! check them. A territory record is signed by the authority (`signatures.unitas-registry`); a
//! node record by the node itself (`signatures.<node_id>`), its `node_id` being the unpadded
//! base64 of the node's ed25519 public key (the same key names the node in the DHT).
//!
//! Validity: a record is taken only when its signature checks with a configured authority key
//! (or its own node key), its fields are well-formed and now is inside its window; of two valid
//! records for one territory, the higher `version` wins (an old one replayed loses).

use std::collections::BTreeMap;

use ruma::CanonicalJsonObject;
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, PublicKeySet};
use serde::{Deserialize, Serialize};
use unitas_federation::SigningKey;

use crate::TerritoryCode;

/// The signer name of the registry authority in `signatures`.
pub const AUTHORITY: &str = "unitas-registry";

/// Signatures: signer -> key ID -> unpadded base64.
pub type Signatures = BTreeMap<String, BTreeMap<String, String>>;

/// Which node serves a territory, from when to when; signed by the registry authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerritoryRecord {
    /// Territory code (`DK`, `eu`).
    pub code: TerritoryCode,
    /// English name.
    pub name: String,
    /// The territory's Matrix server name (its users are `@name:<server_name>`).
    pub server_name: String,
    /// The serving node ([`NodeRecord::node_id`]).
    pub node_id: String,
    /// The region the territory belongs to (`eu`).
    pub region: TerritoryCode,
    /// Record version: a new record for the territory must have a higher one.
    pub version: u64,
    /// Valid from (ms since the epoch).
    pub not_before: u64,
    /// Valid until (ms since the epoch); republished with a new window before then.
    pub not_after: u64,
    /// The authority's signatures.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub signatures: Signatures,
}

/// How to reach a node and what it hosts; signed by the node's own key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Unpadded base64 of the node's ed25519 public key.
    pub node_id: String,
    /// Client API base URL (`https://eu.unitas.example`).
    pub client_url: String,
    /// Client API base URLs of hosted territories that have their own (code -> URL), where
    /// they differ from `client_url` (a node serving several territories under several host
    /// names: clients pick the territory by the host they call).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub client_urls: BTreeMap<String, String>,
    /// Federation base URL (`https://eu.unitas.example:8448`).
    pub federation_url: String,
    /// DHT addresses (libp2p multiaddrs).
    pub dht_addrs: Vec<String>,
    /// The node's region.
    pub region: TerritoryCode,
    /// Territories the node says it hosts (the territory records decide).
    pub territories: Vec<TerritoryCode>,
    /// When the node wrote this record (ms since the epoch): the newest wins; liveness.
    pub updated_at: u64,
    /// The node's signature.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub signatures: Signatures,
}

/// A registry authority's public key, as configured on every node: `ed25519:<id>` and the
/// unpadded base64 key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityKey {
    /// Key ID (`ed25519:a1`).
    pub key_id: String,
    /// Unpadded base64 public key.
    pub public_key: String,
}

impl AuthorityKey {
    /// Parses `ed25519:<id>=<base64>` (what `unitas registry keygen` prints).
    pub fn parse(text: &str) -> Result<AuthorityKey, RecordError> {
        let (key_id, public_key) = text.split_once('=').ok_or_else(|| {
            RecordError::Invalid(format!("{text:?}: expected ed25519:<id>=<key>"))
        })?;
        if !key_id.starts_with("ed25519:") || decoded_key(public_key).is_none() {
            return Err(RecordError::Invalid(format!(
                "{text:?}: expected ed25519:<id>=<32-byte base64 key>"
            )));
        }
        Ok(AuthorityKey {
            key_id: key_id.to_owned(),
            public_key: public_key.to_owned(),
        })
    }

    /// The key of a signing key (the authority's own, when it signs).
    pub fn of(key: &SigningKey) -> AuthorityKey {
        AuthorityKey {
            key_id: key.key_id(),
            public_key: key.public_key_base64(),
        }
    }
}

impl std::fmt::Display for AuthorityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key_id, self.public_key)
    }
}

/// Why a record is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A field is malformed.
    #[error("invalid record: {0}")]
    Invalid(String),
    /// No configured authority key signed it.
    #[error("not signed by a known registry authority key")]
    UnknownAuthority,
    /// A signature does not check out.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// Its window has not started.
    #[error("not valid before {0} (ms)")]
    NotYetValid(u64),
    /// Its window is over.
    #[error("expired at {0} (ms)")]
    Expired(u64),
    /// A record with this version or a higher one is already known.
    #[error("version {got} is not newer than the known version {have}")]
    Stale {
        /// The known version.
        have: u64,
        /// The offered version.
        got: u64,
    },
}

/// A public key that can sign: 32 bytes, a curve point, not of small order (a weak key lets
/// anyone make "signatures" that check).
fn decoded_key(public: &str) -> Option<[u8; 32]> {
    let bytes = unitas_federation::keys::decode_base64(public)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
    (!key.is_weak()).then_some(bytes)
}

fn canonical<T: Serialize>(record: &T) -> Result<CanonicalJsonObject, RecordError> {
    let value = serde_json::to_value(record).map_err(|e| RecordError::Invalid(e.to_string()))?;
    serde_json::from_value(value).map_err(|e| RecordError::Invalid(e.to_string()))
}

fn signatures_of(object: &CanonicalJsonObject) -> Result<Signatures, RecordError> {
    let Some(signatures) = object.get("signatures") else {
        return Ok(Signatures::new());
    };
    let value =
        serde_json::to_value(signatures).map_err(|e| RecordError::Invalid(e.to_string()))?;
    serde_json::from_value(value).map_err(|e| RecordError::Invalid(format!("signatures: {e}")))
}

/// Checks that `signer` signed `object` with one of `keys` (key ID -> base64): every signature
/// of the signer under one of those keys must check, and at least one must be there.
fn verify_signed(
    object: &CanonicalJsonObject,
    signer: &str,
    keys: &[(String, String)],
) -> Result<(), RecordError> {
    let signatures = signatures_of(object)?;
    let known: Vec<&(String, String)> = keys
        .iter()
        .filter(|(id, _)| {
            signatures
                .get(signer)
                .is_some_and(|by_key| by_key.contains_key(id))
        })
        .collect();
    if known.is_empty() {
        return Err(if signer == AUTHORITY {
            RecordError::UnknownAuthority
        } else {
            RecordError::BadSignature(format!("no signature of {signer}"))
        });
    }
    let mut set = PublicKeySet::new();
    for (id, public) in known {
        let bytes = decoded_key(public).ok_or_else(|| RecordError::Invalid(format!("key {id}")))?;
        set.insert(id.clone(), Base64::new(bytes.to_vec()));
    }
    // Only the signer's signatures under the known keys are looked at.
    let mut only = object.clone();
    if let Some(ruma::CanonicalJsonValue::Object(all)) = only.get_mut("signatures") {
        all.retain(|name, _| name == signer);
        if let Some(ruma::CanonicalJsonValue::Object(by_key)) = all.get_mut(signer) {
            by_key.retain(|id, _| set.contains_key(id));
        }
    }
    let mut map = PublicKeyMap::new();
    map.insert(signer.to_owned(), set);
    ruma::signatures::verify_json(&map, &only).map_err(|e| RecordError::BadSignature(e.to_string()))
}

fn check_window(not_before: u64, not_after: u64, now_ms: u64) -> Result<(), RecordError> {
    if not_before >= not_after {
        return Err(RecordError::Invalid(
            "not_before must come before not_after".into(),
        ));
    }
    if now_ms < not_before {
        return Err(RecordError::NotYetValid(not_before));
    }
    if now_ms >= not_after {
        return Err(RecordError::Expired(not_after));
    }
    Ok(())
}

impl TerritoryRecord {
    /// Signs the record as the registry authority (adds to any signatures it has).
    pub fn sign(mut self, authority: &SigningKey) -> Result<TerritoryRecord, RecordError> {
        let mut object = canonical(&self)?;
        authority
            .sign_json(AUTHORITY, &mut object)
            .map_err(|e| RecordError::BadSignature(e.to_string()))?;
        self.signatures = signatures_of(&object)?;
        Ok(self)
    }

    /// Checks the fields, the window at `now_ms` and the authority's signature.
    pub fn verify(&self, authorities: &[AuthorityKey], now_ms: u64) -> Result<(), RecordError> {
        ruma::ServerName::parse(&self.server_name).map_err(|e| {
            RecordError::Invalid(format!("server_name {:?}: {e}", self.server_name))
        })?;
        if decoded_key(&self.node_id).is_none() {
            return Err(RecordError::Invalid(format!("node_id {:?}", self.node_id)));
        }
        if self.region.is_country() {
            return Err(RecordError::Invalid(format!(
                "region {} is a country code",
                self.region
            )));
        }
        check_window(self.not_before, self.not_after, now_ms)?;
        let keys: Vec<(String, String)> = authorities
            .iter()
            .map(|k| (k.key_id.clone(), k.public_key.clone()))
            .collect();
        verify_signed(&canonical(self)?, AUTHORITY, &keys)
    }

    /// Whether this record may replace `known` (same territory, higher version); the error says
    /// why not.
    pub fn replaces(&self, known: &TerritoryRecord) -> Result<(), RecordError> {
        if self.code != known.code {
            return Err(RecordError::Invalid(format!(
                "record of {} offered for {}",
                self.code, known.code
            )));
        }
        if self.version <= known.version {
            return Err(RecordError::Stale {
                have: known.version,
                got: self.version,
            });
        }
        Ok(())
    }
}

impl NodeRecord {
    /// The client URL for a territory of the node (its own one when it has one).
    pub fn client_url_for(&self, code: &str) -> &str {
        self.client_urls.get(code).unwrap_or(&self.client_url)
    }

    /// Signs the record with the node's key; sets `node_id` to that key.
    pub fn sign(mut self, node_key: &SigningKey) -> Result<NodeRecord, RecordError> {
        self.node_id = node_key.public_key_base64();
        self.signatures.clear();
        let mut object = canonical(&self)?;
        node_key
            .sign_json(&self.node_id, &mut object)
            .map_err(|e| RecordError::BadSignature(e.to_string()))?;
        self.signatures = signatures_of(&object)?;
        Ok(self)
    }

    /// Checks the fields, that `updated_at` is not in the future (beyond `skew_ms`), and the
    /// node's own signature.
    pub fn verify(&self, now_ms: u64, skew_ms: u64) -> Result<(), RecordError> {
        if decoded_key(&self.node_id).is_none() {
            return Err(RecordError::Invalid(format!("node_id {:?}", self.node_id)));
        }
        for url in [&self.client_url, &self.federation_url]
            .into_iter()
            .chain(self.client_urls.values())
        {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(RecordError::Invalid(format!("url {url:?}")));
            }
        }
        if self.updated_at > now_ms.saturating_add(skew_ms) {
            return Err(RecordError::NotYetValid(self.updated_at));
        }
        // Whatever its key ID, the node's signature must be made with the key it is named by.
        let keys: Vec<(String, String)> = self
            .signatures
            .get(&self.node_id)
            .into_iter()
            .flat_map(|by_key| by_key.keys())
            .filter(|id| id.starts_with("ed25519:"))
            .map(|id| (id.clone(), self.node_id.clone()))
            .collect();
        verify_signed(&canonical(self)?, &self.node_id, &keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn unpadded_base64(bytes: &[u8]) -> String {
        ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(bytes.to_vec()).encode()
    }
    const DAY: u64 = 86_400_000;

    fn record(node: &SigningKey, version: u64) -> TerritoryRecord {
        TerritoryRecord {
            code: TerritoryCode::parse("DK").unwrap(),
            name: "Denmark".into(),
            server_name: "dk.unitas.example".into(),
            node_id: node.public_key_base64(),
            region: TerritoryCode::parse("eu").unwrap(),
            version,
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            signatures: Signatures::new(),
        }
    }

    #[test]
    fn a_territory_record_is_taken_only_from_a_known_authority() {
        let authority = SigningKey::generate().unwrap();
        let stranger = SigningKey::generate().unwrap();
        let node = SigningKey::generate().unwrap();
        let known = [AuthorityKey::of(&authority)];
        let signed = record(&node, 1).sign(&authority).unwrap();
        signed.verify(&known, NOW).unwrap();
        // Another authority key configured beside it changes nothing.
        signed
            .verify(&[AuthorityKey::of(&stranger), known[0].clone()], NOW)
            .unwrap();
        // Signed by a key nobody configured.
        let forged = record(&node, 1).sign(&stranger).unwrap();
        assert_eq!(
            forged.verify(&known, NOW),
            Err(RecordError::UnknownAuthority)
        );
        // The stranger's key under the authority's key ID.
        let mut swapped = forged.clone();
        let sig = forged.signatures[AUTHORITY][&stranger.key_id()].clone();
        swapped.signatures = Signatures::from([(
            AUTHORITY.to_owned(),
            BTreeMap::from([(authority.key_id(), sig)]),
        )]);
        assert!(matches!(
            swapped.verify(&known, NOW),
            Err(RecordError::BadSignature(_))
        ));
        // A changed field breaks the signature.
        let mut moved = signed.clone();
        moved.node_id = stranger.public_key_base64();
        assert!(matches!(
            moved.verify(&known, NOW),
            Err(RecordError::BadSignature(_))
        ));
        // Unsigned.
        assert_eq!(
            record(&node, 1).verify(&known, NOW),
            Err(RecordError::UnknownAuthority)
        );
    }

    #[test]
    fn windows_and_versions_decide() {
        let authority = SigningKey::generate().unwrap();
        let node = SigningKey::generate().unwrap();
        let known = [AuthorityKey::of(&authority)];
        let first = record(&node, 1).sign(&authority).unwrap();
        assert_eq!(
            first.verify(&known, NOW + 2 * DAY),
            Err(RecordError::Expired(NOW + DAY))
        );
        assert_eq!(
            first.verify(&known, NOW - 2 * DAY),
            Err(RecordError::NotYetValid(NOW - DAY))
        );
        let second = record(&node, 2).sign(&authority).unwrap();
        second.replaces(&first).unwrap();
        assert_eq!(
            first.replaces(&second),
            Err(RecordError::Stale { have: 2, got: 1 })
        );
        assert_eq!(
            first.replaces(&first),
            Err(RecordError::Stale { have: 1, got: 1 })
        );
        let mut bad_region = record(&node, 3);
        bad_region.region = TerritoryCode::parse("SE").unwrap();
        let bad_region = bad_region.sign(&authority).unwrap();
        assert!(matches!(
            bad_region.verify(&known, NOW),
            Err(RecordError::Invalid(_))
        ));
    }

    #[test]
    fn a_node_record_is_signed_by_the_node_it_names() {
        let node = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let record = NodeRecord {
            node_id: String::new(),
            client_url: "https://eu.unitas.example".into(),
            client_urls: Default::default(),
            federation_url: "https://eu.unitas.example:8448".into(),
            dht_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            region: TerritoryCode::parse("eu").unwrap(),
            territories: vec![TerritoryCode::parse("DK").unwrap()],
            updated_at: NOW,
            signatures: Signatures::new(),
        }
        .sign(&node)
        .unwrap();
        assert_eq!(record.node_id, node.public_key_base64());
        record.verify(NOW, 60_000).unwrap();
        // Claiming to be another node.
        let mut impostor = record.clone();
        impostor.node_id = other.public_key_base64();
        assert!(impostor.verify(NOW, 60_000).is_err());
        // A weak (small-order) key as the node ID: the identity point, whose "signatures"
        // anyone can make, is refused before any signature is looked at.
        let mut weak = record.clone();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        weak.node_id = unpadded_base64(&identity);
        assert!(matches!(
            weak.verify(NOW, 60_000),
            Err(RecordError::Invalid(_))
        ));
        // Changed after signing.
        let mut changed = record.clone();
        changed.client_url = "https://evil.example".into();
        assert!(matches!(
            changed.verify(NOW, 60_000),
            Err(RecordError::BadSignature(_))
        ));
        // From the future.
        assert_eq!(
            record.verify(NOW - DAY, 60_000),
            Err(RecordError::NotYetValid(NOW))
        );
        // Round trip through JSON keeps it valid.
        let json = serde_json::to_string(&record).unwrap();
        let back: NodeRecord = serde_json::from_str(&json).unwrap();
        back.verify(NOW, 60_000).unwrap();
    }
}

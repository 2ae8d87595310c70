//! Other servers' verify keys (spec: server-server API, "Retrieving server keys").
//!
//! ```text
//!  verify_key(server, key_id, at_ts)
//!    our own territory?  -> its key, no network
//!    memory, then the database (remote_server_keys): usable at at_ts?  -> key
//!    else GET https://server/_matrix/key/v2/server   (self-signed by every verify key)
//!    else POST https://notary/_matrix/key/v2/query   (signed by the server AND the notary)
//!    -> every key stored with valid_until_ts (old_verify_keys with expired_ts), the document
//!       kept as signed for our own notary answers
//! ```
//!
//! A key is usable for a signature made at `at_ts` when it is a current key with
//! `valid_until_ts >= at_ts`, or an old verify key with `at_ts < expired_ts`. Requests use the
//! current time; events their `origin_server_ts`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ruma::{CanonicalJsonObject, CanonicalJsonValue, ServerName};
use serde_json::{Value, json};
use unitas_storage::{RemoteServerKey, RemoteServerKeys, Store};

use crate::client::{FederationClient, FederationError};

/// Why no key was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    /// Neither the server nor any notary gave a usable key.
    #[error("no usable key {key_id} of {server}: {reason}")]
    NotFound {
        /// Server.
        server: String,
        /// Key ID.
        key_id: String,
        /// Why.
        reason: String,
    },
    /// A document failed its checks.
    #[error("bad key document of {server}: {reason}")]
    BadDocument {
        /// Server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] unitas_storage::StorageError),
    /// The request failed.
    #[error(transparent)]
    Federation(#[from] FederationError),
}

fn usable(key: &RemoteServerKey, at_ts: i64) -> bool {
    match key.expired_ts {
        Some(expired) => at_ts < expired,
        None => key.valid_until_ts >= at_ts,
    }
}

fn now_ms() -> i64 {
    i64::from(ruma::MilliSecondsSinceUnixEpoch::now().get())
}

/// Whether `object` carries a valid signature of `entity` made with `key_id` (`public_key` in
/// unpadded base64). Other entities' signatures are not looked at.
pub fn signed_by(
    object: &CanonicalJsonObject,
    entity: &str,
    key_id: &str,
    public_key: &str,
) -> bool {
    let Some(key) = crate::keys::decode_base64(public_key) else {
        return false;
    };
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return false;
    };
    let Some(CanonicalJsonValue::Object(by_entity)) = signatures.get(entity) else {
        return false;
    };
    let Some(signature) = by_entity.get(key_id) else {
        return false;
    };
    let mut only = object.clone();
    let mut one = CanonicalJsonObject::new();
    one.insert(key_id.to_owned(), signature.clone());
    let mut sigs = CanonicalJsonObject::new();
    sigs.insert(entity.to_owned(), CanonicalJsonValue::Object(one));
    only.insert("signatures".into(), CanonicalJsonValue::Object(sigs));
    let mut set = ruma::signatures::PublicKeySet::new();
    set.insert(key_id.to_owned(), ruma::serde::Base64::new(key));
    let mut map = ruma::signatures::PublicKeyMap::new();
    map.insert(entity.to_owned(), set);
    ruma::signatures::verify_json(&map, &only).is_ok()
}

/// A checked key document: its keys, ready to store.
#[derive(Debug, Clone)]
pub struct CheckedDocument {
    /// The document as signed.
    pub object: CanonicalJsonObject,
    /// Its `valid_until_ts`.
    pub valid_until_ts: i64,
    /// Current and old keys.
    pub keys: Vec<RemoteServerKey>,
}

/// Checks a key server document of `server`: its name, its keys, a signature by every current
/// verify key, and a `valid_until_ts`.
pub fn check_document(server: &str, document: &Value) -> Result<CheckedDocument, KeyRingError> {
    let bad = |reason: &str| KeyRingError::BadDocument {
        server: server.to_owned(),
        reason: reason.to_owned(),
    };
    let object: CanonicalJsonObject =
        serde_json::from_value(document.clone()).map_err(|e| bad(&e.to_string()))?;
    if document.get("server_name").and_then(Value::as_str) != Some(server) {
        return Err(bad("server_name is not the server asked"));
    }
    let valid_until_ts = document
        .get("valid_until_ts")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("no valid_until_ts"))?;
    let verify_keys = document
        .get("verify_keys")
        .and_then(Value::as_object)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("no verify_keys"))?;
    let fetched_ts = now_ms();
    let mut keys = Vec::new();
    for (key_id, key) in verify_keys {
        let public = key
            .get("key")
            .and_then(Value::as_str)
            .filter(|k| crate::keys::decode_base64(k).is_some_and(|b| b.len() == 32))
            .ok_or_else(|| bad("a verify key is not 32 bytes of base64"))?;
        if !key_id.starts_with("ed25519:") {
            continue;
        }
        if !signed_by(&object, server, key_id, public) {
            return Err(bad(&format!("not signed by its key {key_id}")));
        }
        keys.push(RemoteServerKey {
            server_name: server.to_owned(),
            key_id: key_id.clone(),
            public_key: public.to_owned(),
            valid_until_ts,
            expired_ts: None,
            fetched_ts,
        });
    }
    if keys.is_empty() {
        return Err(bad("no ed25519 verify key"));
    }
    if let Some(old) = document.get("old_verify_keys").and_then(Value::as_object) {
        for (key_id, key) in old {
            let (Some(public), Some(expired)) = (
                key.get("key").and_then(Value::as_str),
                key.get("expired_ts").and_then(Value::as_i64),
            ) else {
                continue;
            };
            if keys.iter().any(|k| &k.key_id == key_id) {
                continue;
            }
            keys.push(RemoteServerKey {
                server_name: server.to_owned(),
                key_id: key_id.clone(),
                public_key: public.to_owned(),
                valid_until_ts: valid_until_ts.max(expired),
                expired_ts: Some(expired),
                fetched_ts,
            });
        }
    }
    Ok(CheckedDocument {
        object,
        valid_until_ts,
        keys,
    })
}

/// One of our own territories: its server name, key ID and public key.
#[derive(Debug, Clone)]
pub struct LocalKey {
    /// Server name.
    pub server_name: String,
    /// `ed25519:...`.
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
}

/// The key ring. Share it behind an `Arc`.
#[derive(Debug)]
pub struct KeyRing {
    store: Store,
    client: Arc<FederationClient>,
    notaries: Vec<String>,
    local: HashMap<String, LocalKey>,
    cache: Mutex<HashMap<String, Vec<RemoteServerKey>>>,
    /// One fetch per server at a time: concurrent askers wait for it.
    fetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Public keys (unpadded base64) decoded into curve points, `None` when unusable: decoding
    /// is a point decompression, as costly as a third of a signature check.
    decoded: Mutex<HashMap<String, Option<ed25519_dalek::VerifyingKey>>>,
}

impl KeyRing {
    /// A key ring over the cache in `store`, fetching with `client`, asking `notaries` (server
    /// names) when a server does not answer itself. `local` are this node's territories.
    pub fn new(
        store: Store,
        client: Arc<FederationClient>,
        notaries: Vec<String>,
        local: Vec<LocalKey>,
    ) -> KeyRing {
        KeyRing {
            store,
            client,
            notaries,
            local: local
                .into_iter()
                .map(|k| (k.server_name.clone(), k))
                .collect(),
            cache: Mutex::new(HashMap::new()),
            fetches: Mutex::new(HashMap::new()),
            decoded: Mutex::new(HashMap::new()),
        }
    }

    /// A public key (unpadded base64) as an ed25519 verifying key; `None` when it is not 32
    /// bytes, not a curve point, or weak (small order). Remembered per key.
    pub fn decode(&self, public: &str) -> Option<ed25519_dalek::VerifyingKey> {
        let mut decoded = self.decoded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = decoded.get(public) {
            return *known;
        }
        let key = crate::keys::decode_base64(public)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
            .filter(|k| !k.is_weak());
        // Keys come from servers we verified, a handful each; the bound only guards memory.
        if decoded.len() >= 10_000 {
            decoded.clear();
        }
        decoded.insert(public.to_owned(), key);
        key
    }

    fn cached(&self, server: &str, key_id: &str, at_ts: i64) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(server)?
            .iter()
            .find(|k| k.key_id == key_id && usable(k, at_ts))
            .map(|k| k.public_key.clone())
    }

    async fn load(&self, server: &str) -> Result<(), KeyRingError> {
        let keys = self.store.get_remote_server_keys(server).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 50_000 {
            cache.clear();
        }
        cache.insert(server.to_owned(), keys);
        Ok(())
    }

    /// The public key (unpadded base64) `key_id` of `server`, usable for a signature made at
    /// `at_ts` (ms).
    pub async fn verify_key(
        &self,
        server: &str,
        key_id: &str,
        at_ts: i64,
    ) -> Result<String, KeyRingError> {
        // Our own current keys need no network; retired ones fall through to the cache.
        if let Some(local) = self.local.get(server)
            && local.key_id == key_id
        {
            return Ok(local.public_key.clone());
        }
        if let Some(key) = self.cached(server, key_id, at_ts) {
            return Ok(key);
        }
        let gate = {
            let mut fetches = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
            fetches.retain(|_, g| Arc::strong_count(g) > 1);
            fetches.entry(server.to_owned()).or_default().clone()
        };
        let _turn = gate.lock().await;
        // Someone else may have fetched it while we waited; the database may know it.
        self.load(server).await?;
        if let Some(key) = self.cached(server, key_id, at_ts) {
            return Ok(key);
        }
        let not_found = |reason: String| KeyRingError::NotFound {
            server: server.to_owned(),
            key_id: key_id.to_owned(),
            reason,
        };
        let mut reasons = Vec::new();
        match self.fetch_from_origin(server).await {
            Ok(()) => {}
            Err(err) => reasons.push(format!("origin: {err}")),
        }
        if let Some(key) = self.cached(server, key_id, at_ts) {
            return Ok(key);
        }
        for notary in &self.notaries {
            if notary == server {
                continue;
            }
            match self.fetch_via_notary(notary, server, at_ts).await {
                Ok(()) => {}
                Err(err) => reasons.push(format!("notary {notary}: {err}")),
            }
            if let Some(key) = self.cached(server, key_id, at_ts) {
                return Ok(key);
            }
        }
        if reasons.is_empty() {
            reasons.push("the server does not publish it (or not valid then)".into());
        }
        Err(not_found(reasons.join("; ")))
    }

    async fn keep(&self, server: &str, checked: CheckedDocument) -> Result<(), KeyRingError> {
        for key in &checked.keys {
            self.store.store_remote_server_key(key).await?;
        }
        let json =
            serde_json::to_string(&checked.object).map_err(|e| KeyRingError::BadDocument {
                server: server.to_owned(),
                reason: e.to_string(),
            })?;
        self.store
            .store_key_document(server, &json, checked.valid_until_ts, now_ms())
            .await?;
        self.load(server).await
    }

    /// Fetches, checks and stores `server`'s own key document.
    pub async fn fetch_from_origin(&self, server: &str) -> Result<(), KeyRingError> {
        let document = self
            .client
            .request_unsigned(server, http::Method::GET, "/_matrix/key/v2/server", None)
            .await?;
        let checked = check_document(server, &document)?;
        self.keep(server, checked).await
    }

    /// Asks `notary` for `server`'s keys; the notary's own key comes from the notary itself.
    pub async fn fetch_via_notary(
        &self,
        notary: &str,
        server: &str,
        at_ts: i64,
    ) -> Result<(), KeyRingError> {
        let body = json!({"server_keys": {server: {}}});
        let _ = at_ts;
        let response = self
            .client
            .request_unsigned(
                notary,
                http::Method::POST,
                "/_matrix/key/v2/query",
                Some(&body),
            )
            .await?;
        let documents = response
            .get("server_keys")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut kept = false;
        for document in documents {
            if document.get("server_name").and_then(Value::as_str) != Some(server) {
                continue;
            }
            let checked = check_document(server, &document)?;
            // The notary vouches for it with one of its own current keys.
            let mut vouched = false;
            let notary_sigs: Vec<String> = document
                .get("signatures")
                .and_then(|s| s.get(notary))
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for key_id in notary_sigs {
                let Ok(public) = Box::pin(self.verify_key(notary, &key_id, now_ms())).await else {
                    continue;
                };
                if signed_by(&checked.object, notary, &key_id, &public) {
                    vouched = true;
                    break;
                }
            }
            if !vouched {
                return Err(KeyRingError::BadDocument {
                    server: server.to_owned(),
                    reason: format!("not signed by the notary {notary}"),
                });
            }
            self.keep(server, checked).await?;
            kept = true;
        }
        if kept {
            Ok(())
        } else {
            Err(KeyRingError::BadDocument {
                server: server.to_owned(),
                reason: format!("the notary {notary} has no keys of it"),
            })
        }
    }

    /// For our notary endpoint: `server`'s key document as it signed it, valid until at least
    /// `minimum_valid_until_ts` when possible (fetched from the server when the stored one is
    /// older). `None` when the server cannot be reached and nothing is stored.
    pub async fn document_for_notary(
        &self,
        server: &ServerName,
        minimum_valid_until_ts: i64,
    ) -> Result<Option<CanonicalJsonObject>, KeyRingError> {
        let stored = self.store.get_key_document(server.as_str()).await?;
        let fresh_enough = stored
            .as_ref()
            .is_some_and(|(_, until)| *until >= minimum_valid_until_ts.max(now_ms()));
        if !fresh_enough && let Err(err) = self.fetch_from_origin(server.as_str()).await {
            tracing::debug!(server = %server, error = %err, "notary: the server did not answer");
        }
        let Some((json, _)) = self.store.get_key_document(server.as_str()).await? else {
            return Ok(None);
        };
        let object: BTreeMap<String, CanonicalJsonValue> =
            serde_json::from_str(&json).map_err(|e| KeyRingError::BadDocument {
                server: server.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Some(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::server_keys::{OldVerifyKey, server_keys_document};

    #[test]
    fn documents_are_checked() {
        let key = SigningKey::generate().unwrap();
        let old = OldVerifyKey {
            key_id: "ed25519:old".into(),
            public_key: SigningKey::generate().unwrap().public_key_base64(),
            expired_ts: 500,
        };
        let doc = server_keys_document("a.example", &key, &[old], 10_000).unwrap();
        let checked = check_document("a.example", &doc).unwrap();
        assert_eq!(checked.valid_until_ts, 10_000);
        let current = checked
            .keys
            .iter()
            .find(|k| k.key_id == key.key_id())
            .unwrap();
        assert!(usable(current, 10_000) && !usable(current, 10_001));
        let old = checked
            .keys
            .iter()
            .find(|k| k.key_id == "ed25519:old")
            .unwrap();
        assert!(usable(old, 499) && !usable(old, 500));

        // Another server's name, a changed field, a missing signature: refused.
        assert!(check_document("b.example", &doc).is_err());
        let mut changed = doc.clone();
        changed["valid_until_ts"] = json!(99_999);
        assert!(check_document("a.example", &changed).is_err());
        let mut unsigned = doc.clone();
        unsigned["signatures"] = json!({});
        assert!(check_document("a.example", &unsigned).is_err());
        let mut foreign = doc;
        foreign["signatures"] = json!({"a.example": {key.key_id(): "AAAA"}});
        assert!(check_document("a.example", &foreign).is_err());
    }
}

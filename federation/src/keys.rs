//! A territory's ed25519 signing key and its key file.
//!
//! The key file holds one line, `ed25519 <version> <seed>`, where the seed is the 32-byte ed25519
//! secret in unpadded standard base64: Synapse's format, so operators can move a key between
//! Synapse and Unitas. The version is `[A-Za-z0-9_]+` (spec: key identifiers).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ruma::signatures::Ed25519KeyPair;
use ruma::{CanonicalJsonObject, CanonicalJsonValue};

/// Problems with a key or its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read, created or written.
    #[error("signing key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The key file's content is not `ed25519 <version> <base64 seed>`.
    #[error("signing key file {path}: {reason}")]
    Malformed {
        /// The file (or `<text>` for parsed strings).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Signing failed because the JSON cannot carry signatures (e.g. `signatures` is not an
    /// object).
    #[error("cannot sign JSON: {0}")]
    Sign(String),
}

/// An ed25519 signing key with its version (the part after `ed25519:` in the key ID).
pub struct SigningKey {
    seed: [u8; 32],
    version: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        // Best effort: the key pair inside ruma zeroizes its own copy.
        self.seed = [0; 32];
    }
}

fn valid_version(version: &str) -> bool {
    !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl SigningKey {
    /// A key from its 32-byte seed and version.
    pub fn from_seed(seed: [u8; 32], version: &str) -> Result<SigningKey, KeyError> {
        let malformed = |reason: String| KeyError::Malformed {
            path: "<key>".into(),
            reason,
        };
        if !valid_version(version) {
            return Err(malformed(format!(
                "key version {version:?} must be [A-Za-z0-9_]+"
            )));
        }
        let der = ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_der()
            .map_err(|e| malformed(format!("encoding key: {e}")))?;
        let pair = Ed25519KeyPair::from_der(der.as_bytes(), version.to_owned())
            .map_err(|e| malformed(format!("loading key: {e}")))?;
        Ok(SigningKey {
            seed,
            version: version.to_owned(),
            pair,
        })
    }

    /// A fresh random key with a version of the form `a_XXXX` (as Synapse makes them).
    pub fn generate() -> Result<SigningKey, KeyError> {
        let mut random = [0u8; 36];
        getrandom::fill(&mut random).map_err(|e| KeyError::Malformed {
            path: "<key>".into(),
            reason: format!("system randomness unavailable: {e}"),
        })?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&random[..32]);
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let suffix: String = random[32..]
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        let key = SigningKey::from_seed(seed, &format!("a_{suffix}"));
        random = [0; 36];
        let _ = random;
        key
    }

    /// Parses the key file format: `ed25519 <version> <base64 seed>` (blank lines and `#`
    /// comments ignored; the first key line counts).
    pub fn from_key_file(text: &str, path: &Path) -> Result<SigningKey, KeyError> {
        let malformed = |reason: &str| KeyError::Malformed {
            path: path.into(),
            reason: reason.into(),
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| malformed("empty; expected `ed25519 <version> <base64 seed>`"))?;
        let mut parts = line.split_whitespace();
        let (Some(algorithm), Some(version), Some(seed_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected `ed25519 <version> <base64 seed>`"));
        };
        if algorithm != "ed25519" {
            return Err(malformed("only ed25519 keys are supported"));
        }
        let seed = decode_base64(seed_b64)
            .ok_or(())
            .map_err(|_| malformed("the seed is not base64"))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| malformed("the seed must be 32 bytes"))?;
        SigningKey::from_seed(seed, version).map_err(|e| match e {
            KeyError::Malformed { reason, .. } => KeyError::Malformed {
                path: path.into(),
                reason,
            },
            other => other,
        })
    }

    /// The private 32-byte seed (for deriving the same identity elsewhere, such as the node's
    /// DHT identity; never log or send it).
    pub fn secret_seed(&self) -> [u8; 32] {
        self.seed
    }

    /// The key file line for this key (contains the private seed).
    pub fn to_key_file(&self) -> String {
        format!(
            "ed25519 {} {}\n",
            self.version,
            STANDARD_NO_PAD.encode(self.seed)
        )
    }

    /// Reads the key at `path`, or generates one and writes it there (mode 0600, directory
    /// created with mode 0700) if the file does not exist. Returns the key and whether it was
    /// generated now.
    pub fn load_or_generate(path: &Path) -> Result<(SigningKey, bool), KeyError> {
        match fs::read_to_string(path) {
            Ok(text) => return Ok((SigningKey::from_key_file(&text, path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KeyError::Io {
                    path: path.into(),
                    source,
                });
            }
        }
        let key = SigningKey::generate()?;
        key.write_new(path)?;
        Ok((key, true))
    }

    /// Writes the key to a new file (fails if it exists), readable by the owner only.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(io)?;
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        file.write_all(self.to_key_file().as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// The version (`a_AbCd`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The key ID, `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    /// The ruma key pair (signing requests through ruma's X-Matrix support).
    pub(crate) fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    /// The public key's 32 bytes.
    pub fn public_key(&self) -> [u8; 32] {
        self.pair.public_key()
    }

    /// The public key in unpadded standard base64, as the key server publishes it.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.public_key())
    }

    /// Signs a JSON object as `entity` (a server name), per the spec's "Signing JSON":
    /// `signatures` and `unsigned` are left out of the signed bytes, the signature is added
    /// under `signatures.<entity>.<key id>`.
    pub fn sign_json(
        &self,
        entity: &str,
        object: &mut CanonicalJsonObject,
    ) -> Result<(), KeyError> {
        ruma::signatures::sign_json(entity, &self.pair, object)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

impl SigningKey {
    /// Adds the content hash to a PDU and signs its redacted form as `origin` (spec: server-server
    /// API, "Signing events"), in place.
    pub fn hash_and_sign_event(
        &self,
        origin: &str,
        object: &mut CanonicalJsonObject,
        rules: &ruma::room_version_rules::RedactionRules,
    ) -> Result<(), KeyError> {
        ruma::signatures::hash_and_sign_event(origin, &self.pair, object, rules)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// [`SigningKey::hash_and_sign_event`] that also answers the bytes the signature covers:
    /// the redacted event without `signatures` and `unsigned`, whose SHA-256 is the event's
    /// reference hash. Each serialisation happens once (ruma's content hash copies the whole
    /// event first, and the reference hash would serialise the redacted event again).
    pub fn hash_and_sign_event_once(
        &self,
        origin: &str,
        object: &mut CanonicalJsonObject,
        rules: &ruma::room_version_rules::RedactionRules,
    ) -> Result<String, KeyError> {
        use ruma::signatures::KeyPair as _;
        let hash =
            crate::inbound::content_hash(object).map_err(|e| KeyError::Sign(e.to_string()))?;
        let mut hashes = CanonicalJsonObject::new();
        hashes.insert(
            "sha256".to_owned(),
            CanonicalJsonValue::String(STANDARD_NO_PAD.encode(hash)),
        );
        object.insert("hashes".to_owned(), CanonicalJsonValue::Object(hashes));
        let signed = crate::rooms::pdu::signed_bytes(object, rules).map_err(KeyError::Sign)?;
        let signature = self.pair.sign(signed.as_bytes());
        let servers = object
            .entry("signatures".to_owned())
            .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        let CanonicalJsonValue::Object(servers) = servers else {
            return Err(KeyError::Sign("signatures is not an object".to_owned()));
        };
        let keys = servers
            .entry(origin.to_owned())
            .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        let CanonicalJsonValue::Object(keys) = keys else {
            return Err(KeyError::Sign(format!(
                "signatures of {origin} are not an object"
            )));
        };
        keys.insert(
            signature.id(),
            CanonicalJsonValue::String(signature.base64()),
        );
        Ok(signed)
    }

    /// Adds `server`'s signature to a PDU that already carries its hash and its origin's
    /// signature (a resident server vouching for a restricted join).
    pub fn cosign_event(
        &self,
        server: &str,
        object: &mut CanonicalJsonObject,
        rules: &ruma::room_version_rules::RedactionRules,
    ) -> Result<(), KeyError> {
        ruma::signatures::sign_event(server, &self.pair, object, rules)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// Creates a directory (and parents) that only its owner may enter, when it does not exist.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Decodes padded or unpadded standard base64 (keys and signatures arrive in either form).
/// Non-zero trailing bits are accepted: the spec's own example seed has them.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's example signing key (appendices, "Signing details"): seed
    /// `YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1`, version `1`.
    fn spec_key() -> SigningKey {
        let text = "ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";
        SigningKey::from_key_file(text, Path::new("<spec>")).unwrap()
    }

    /// The one-serialisation signing gives exactly ruma's hashes and signature (room versions
    /// 12 and 1, an event that carries another server's signature already), and in version 12
    /// the bytes it answers hash to ruma's reference hash.
    #[test]
    fn signing_once_matches_ruma() {
        let key = spec_key();
        for rules in [
            ruma::room_version_rules::RoomVersionRules::V12,
            ruma::room_version_rules::RoomVersionRules::V1,
        ] {
            let text = r#"{"room_id":"!r:a.example","sender":"@u:a.example","type":"m.room.member",
                "state_key":"@u:a.example","content":{"membership":"join","displayname":"U"},
                "prev_events":[],"auth_events":[],"depth":3,"origin_server_ts":1000,
                "unsigned":{"age":5},"signatures":{"b.example":{"ed25519:x":"c2ln"}}}"#;
            let mut ours: CanonicalJsonObject = serde_json::from_str(text).unwrap();
            let mut theirs = ours.clone();
            let signed = key
                .hash_and_sign_event_once("a.example", &mut ours, &rules.redaction)
                .unwrap();
            ruma::signatures::hash_and_sign_event(
                "a.example",
                &key.pair,
                &mut theirs,
                &rules.redaction,
            )
            .unwrap();
            assert_eq!(ours, theirs);
            if rules.event_id_format != ruma::room_version_rules::EventIdFormatVersion::V3 {
                continue; // no URL-safe hashed event IDs in this version
            }
            use sha2::Digest as _;
            let hashed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(signed.as_bytes()));
            let mut without_unsigned = theirs.clone();
            without_unsigned.remove("unsigned");
            assert_eq!(
                hashed,
                ruma::signatures::reference_hash(&without_unsigned, &rules).unwrap()
            );
        }
    }

    #[test]
    fn spec_vector_signing_an_empty_object() {
        let mut object = CanonicalJsonObject::new();
        spec_key().sign_json("domain", &mut object).unwrap();
        let json = serde_json::to_value(&object).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"signatures": {"domain": {"ed25519:1":
                "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}})
        );
    }

    #[test]
    fn spec_vector_signing_a_nested_object() {
        let mut object: CanonicalJsonObject =
            serde_json::from_value(serde_json::json!({"one": 1, "two": "Two"})).unwrap();
        spec_key().sign_json("domain", &mut object).unwrap();
        let sig = &serde_json::to_value(&object).unwrap()["signatures"]["domain"]["ed25519:1"];
        assert_eq!(
            sig,
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
    }

    #[test]
    fn spec_public_key() {
        assert_eq!(
            spec_key().public_key_base64(),
            "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
        );
    }

    #[test]
    fn key_file_round_trip() {
        let key = SigningKey::generate().unwrap();
        assert!(key.version().starts_with("a_") && key.version().len() == 6);
        let text = key.to_key_file();
        let again = SigningKey::from_key_file(&text, Path::new("x")).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(again.key_id(), key.key_id());
        // Padded seeds (some tools write them) are accepted too.
        let padded = format!("{}=\n", text.trim_end());
        assert_eq!(
            SigningKey::from_key_file(&padded, Path::new("x"))
                .unwrap()
                .public_key(),
            key.public_key()
        );
    }

    #[test]
    fn malformed_key_files_are_refused_with_the_reason() {
        for (text, reason) in [
            ("", "empty"),
            ("ed25519 a_1", "expected"),
            ("rsa a_1 AAAA", "only ed25519"),
            ("ed25519 a_1 !!!!", "not base64"),
            ("ed25519 a_1 AAAA", "32 bytes"),
            (
                "ed25519 bad-version YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1",
                "[A-Za-z0-9_]+",
            ),
        ] {
            let err = SigningKey::from_key_file(text, Path::new("k"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn generated_key_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/dk.key");
        let (first, created) = SigningKey::load_or_generate(&path).unwrap();
        assert!(created);
        let (second, created) = SigningKey::load_or_generate(&path).unwrap();
        assert!(!created);
        assert_eq!(first.public_key(), second.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let dir_mode = fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(dir_mode, 0o700);
        }
        // write_new never overwrites a key.
        assert!(first.write_new(&path).is_err());
    }

    #[test]
    fn debug_never_shows_the_seed() {
        let key = spec_key();
        let debug = format!("{key:?}");
        assert!(
            !debug.contains("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW"),
            "{debug}"
        );
        assert!(debug.contains("ed25519:1"));
    }
}

//! The key server document (`GET /_matrix/key/v2/server`, spec: server-server API,
//! "Publishing Keys").
//!
//! 1. `server_name`, `verify_keys` (the current key), `old_verify_keys` (retired keys with
//!    `expired_ts`) and `valid_until_ts` are assembled;
//! 2. the object is signed by the current key, as the server itself (`signatures.<server_name>`).

use std::collections::BTreeMap;

use ruma::CanonicalJsonObject;
use serde_json::{Value, json};

use crate::keys::{KeyError, SigningKey};

/// A retired key still published so peers can check old signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldVerifyKey {
    /// `ed25519:<version>`.
    pub key_id: String,
    /// Unpadded base64 public key.
    pub public_key: String,
    /// When the key stopped being used (ms).
    pub expired_ts: i64,
}

/// Builds and signs the key server document of `server_name`.
pub fn server_keys_document(
    server_name: &str,
    key: &SigningKey,
    old_keys: &[OldVerifyKey],
    valid_until_ts: i64,
) -> Result<Value, KeyError> {
    let old: BTreeMap<&str, Value> = old_keys
        .iter()
        .filter(|old| old.key_id != key.key_id())
        .map(|old| {
            (
                old.key_id.as_str(),
                json!({"key": old.public_key, "expired_ts": old.expired_ts}),
            )
        })
        .collect();
    let document = json!({
        "server_name": server_name,
        "verify_keys": { key.key_id(): { "key": key.public_key_base64() } },
        "old_verify_keys": old,
        "valid_until_ts": valid_until_ts,
    });
    let mut object: CanonicalJsonObject =
        serde_json::from_value(document).map_err(|e| KeyError::Sign(e.to_string()))?;
    key.sign_json(server_name, &mut object)?;
    serde_json::to_value(object).map_err(|e| KeyError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ruma::serde::Base64;
    use ruma::signatures::{PublicKeyMap, PublicKeySet, verify_json};

    use super::*;

    #[test]
    fn document_is_signed_by_its_current_key() {
        let key = SigningKey::generate().unwrap();
        let old = OldVerifyKey {
            key_id: "ed25519:old".into(),
            public_key: "T0xE".into(),
            expired_ts: 5,
        };
        let doc = server_keys_document("dk.example", &key, &[old], 1_000).unwrap();
        assert_eq!(doc["server_name"], "dk.example");
        assert_eq!(doc["valid_until_ts"], 1_000);
        assert_eq!(
            doc["verify_keys"][key.key_id()]["key"],
            key.public_key_base64()
        );
        assert_eq!(
            doc["old_verify_keys"]["ed25519:old"],
            json!({"key": "T0xE", "expired_ts": 5})
        );

        let object: CanonicalJsonObject = serde_json::from_value(doc.clone()).unwrap();
        let mut set = PublicKeySet::new();
        set.insert(key.key_id(), Base64::new(key.public_key().to_vec()));
        let mut map = PublicKeyMap::new();
        map.insert("dk.example".into(), set);
        verify_json(&map, &object).unwrap();

        // A changed field breaks the signature.
        let mut tampered = object.clone();
        tampered.insert(
            "valid_until_ts".into(),
            ruma::CanonicalJsonValue::Integer(2_000u32.into()),
        );
        assert!(verify_json(&map, &tampered).is_err());
        let _: BTreeMap<String, Value> = serde_json::from_value(doc["signatures"].clone()).unwrap();
    }
}

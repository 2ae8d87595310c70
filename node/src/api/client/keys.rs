//! End-to-end encryption key endpoints (spec: client-server API, "End-to-End Encryption",
//! key management): upload, query and claim. The relay itself is [`crate::e2ee`].

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use ruma::api::client::keys::{claim_keys, get_keys, upload_keys};
use ruma::api::client::to_device::send_event_to_device;
use ruma::{OneTimeKeyAlgorithm, UInt};
use serde_json::{Value, json};
use unitas_storage::{DeviceInbox, DeviceKeys, KeyUpload, RoomEvents};

use crate::api::ApiError;
use crate::api::ruma::{Ruma, RumaResponse};
use crate::state::AppState;

/// How long a query waits for other servers when the client gives no `timeout`.
const DEFAULT_REMOTE_WAIT: Duration = Duration::from_secs(10);

fn uploads<'a>(
    keys: impl Iterator<
        Item = (
            &'a ruma::OwnedOneTimeKeyId,
            &'a ruma::serde::Raw<ruma::encryption::OneTimeKey>,
        ),
    >,
) -> Vec<KeyUpload> {
    keys.map(|(id, key)| KeyUpload {
        algorithm: id.algorithm().to_string(),
        key_id: id.key_name().to_string(),
        key_json: key.json().get().to_owned(),
    })
    .collect()
}

/// `POST /_matrix/client/v3/keys/upload`: the device's identity keys (which must name the
/// caller and the caller's device), one-time keys and fallback keys; answers the counts left.
pub async fn upload_keys_route(
    State(state): State<AppState>,
    req: Ruma<upload_keys::v3::Request>,
) -> Result<RumaResponse<upload_keys::v3::Response>, ApiError> {
    let user = req.user()?.clone();
    let (user_id, device_id) = (user.user_id.as_str(), user.device_id.as_str());
    if let Some(keys) = &req.body.device_keys {
        let parsed: Value = serde_json::from_str(keys.json().get())
            .map_err(|e| ApiError::bad_json(format!("device_keys: {e}")))?;
        if parsed.get("user_id").and_then(Value::as_str) != Some(user_id)
            || parsed.get("device_id").and_then(Value::as_str) != Some(device_id)
        {
            return Err(ApiError::invalid_param(
                "device_keys must name the calling user and device",
            ));
        }
        if !parsed.get("keys").is_some_and(Value::is_object)
            || !parsed.get("algorithms").is_some_and(Value::is_array)
        {
            return Err(ApiError::bad_json("device_keys needs keys and algorithms"));
        }
        state
            .store
            .set_device_keys(user_id, device_id, keys.json().get())
            .await?;
        crate::e2ee::device_changed(&state, user_id, device_id, false).await?;
    }
    let one_time = uploads(req.body.one_time_keys.iter());
    if !one_time.is_empty() {
        state
            .store
            .add_one_time_keys(user_id, device_id, &one_time)
            .await?;
    }
    let fallback = uploads(req.body.fallback_keys.iter());
    if !fallback.is_empty() {
        state
            .store
            .set_fallback_keys(user_id, device_id, &fallback)
            .await?;
    }
    let counts = one_time_key_counts(&state, user_id, device_id).await?;
    Ok(upload_keys::v3::Response::new(counts).into())
}

/// A device's one-time keys left, by algorithm.
pub async fn one_time_key_counts(
    state: &AppState,
    user_id: &str,
    device_id: &str,
) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>, ApiError> {
    Ok(state
        .store
        .count_one_time_keys(user_id, device_id)
        .await?
        .into_iter()
        .map(|(algorithm, count)| {
            (
                OneTimeKeyAlgorithm::from(algorithm.as_str()),
                UInt::new(u64::try_from(count).unwrap_or(0)).unwrap_or_default(),
            )
        })
        .collect())
}

fn remote_wait(timeout: Option<Duration>) -> Duration {
    timeout
        .unwrap_or(DEFAULT_REMOTE_WAIT)
        .min(Duration::from_secs(60))
}

/// `POST /_matrix/client/v3/keys/query`: device keys of any users, ours from the store and
/// others' from their servers.
pub async fn get_keys_route(
    State(state): State<AppState>,
    req: Ruma<get_keys::v3::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.clone();
    let wanted: BTreeMap<String, Vec<String>> = req
        .body
        .device_keys
        .iter()
        .map(|(user, devices)| {
            (
                user.to_string(),
                devices.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    let answer = crate::e2ee::query(
        &state,
        &user.territory,
        user.user_id.as_str(),
        &wanted,
        remote_wait(req.body.timeout),
    )
    .await?;
    Ok(Json(json!({
        "device_keys": answer.device_keys,
        "failures": answer.failures,
        "master_keys": answer.master_keys,
        "self_signing_keys": answer.self_signing_keys,
        "user_signing_keys": answer.user_signing_keys,
    })))
}

/// `POST /_matrix/client/v3/keys/claim`: one key per device asked for, ours from the store and
/// others' from their servers.
pub async fn claim_keys_route(
    State(state): State<AppState>,
    req: Ruma<claim_keys::v3::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.clone();
    let wanted: crate::e2ee::Wanted<String> = req
        .body
        .one_time_keys
        .iter()
        .map(|(user, devices)| {
            (
                user.to_string(),
                devices
                    .iter()
                    .map(|(device, algorithm)| (device.to_string(), algorithm.to_string()))
                    .collect(),
            )
        })
        .collect();
    let (one_time_keys, failures) = crate::e2ee::claim(
        &state,
        &user.territory,
        &wanted,
        remote_wait(req.body.timeout),
    )
    .await?;
    Ok(Json(
        json!({"one_time_keys": one_time_keys, "failures": failures}),
    ))
}

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`: messages to devices of our users
/// and of other servers' users. A repeated transaction ID is stored once.
pub async fn send_to_device_route(
    State(state): State<AppState>,
    req: Ruma<send_event_to_device::v3::Request>,
) -> Result<RumaResponse<send_event_to_device::v3::Response>, ApiError> {
    let user = req.user()?.clone();
    let Value::Object(messages) =
        serde_json::to_value(&req.body.messages).map_err(|e| ApiError::bad_json(e.to_string()))?
    else {
        return Err(ApiError::bad_json("messages must be an object"));
    };
    crate::e2ee::send_to_device(
        &state,
        user.user_id.as_str(),
        user.device_id.as_str(),
        &req.body.event_type.to_string(),
        req.body.txn_id.as_str(),
        &messages,
    )
    .await?;
    Ok(send_event_to_device::v3::Response::new().into())
}

/// The key object of a cross-signing upload, checked: it names the caller, lists `kind` in
/// `usage`, and has exactly one ed25519 key.
fn cross_signing_key(
    raw: &ruma::serde::Raw<ruma::encryption::CrossSigningKey>,
    kind: &str,
    user_id: &str,
) -> Result<Value, ApiError> {
    let key: Value = serde_json::from_str(raw.json().get())
        .map_err(|e| ApiError::bad_json(format!("{kind} key: {e}")))?;
    let usage_ok = key["usage"]
        .as_array()
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(kind)));
    let one_key = key["keys"].as_object().is_some_and(|k| {
        k.len() == 1
            && k.iter()
                .all(|(id, v)| id.starts_with("ed25519:") && v.is_string())
    });
    if key["user_id"].as_str() != Some(user_id) || !usage_ok || !one_key {
        return Err(ApiError::invalid_param(format!(
            "the {kind} key must name the caller, list {kind} in usage and hold one ed25519 key"
        )));
    }
    Ok(key)
}

/// A key object without `signatures` and `unsigned` (what signatures cover).
fn signed_part(key: &Value) -> Value {
    let mut key = key.clone();
    if let Some(map) = key.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    key
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`: the caller's cross-signing keys. The
/// first upload needs no user-interactive auth (nothing to take over yet); replacing keys needs
/// the account password. Servers sharing a room with the caller get `m.signing_key_update`.
pub async fn upload_signing_keys_route(
    State(state): State<AppState>,
    req: Ruma<ruma::api::client::keys::upload_signing_keys::v3::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.clone();
    let user_id = user.user_id.as_str();
    let mut uploads = Vec::new();
    for (kind, raw) in [
        ("master", &req.body.master_key),
        ("self_signing", &req.body.self_signing_key),
        ("user_signing", &req.body.user_signing_key),
    ] {
        if let Some(raw) = raw {
            uploads.push((kind, cross_signing_key(raw, kind, user_id)?));
        }
    }
    let existing = crate::e2ee::cross_signing_keys(&state, user_id).await?;
    if !existing.contains_key("master") && !uploads.iter().any(|(k, _)| *k == "master") {
        return Err(ApiError::invalid_param(
            "a master key must be uploaded before the other cross-signing keys",
        ));
    }
    // The self-signing and user-signing keys must carry the master key's signature.
    let master = uploads
        .iter()
        .find(|(k, _)| *k == "master")
        .map(|(_, key)| key)
        .or_else(|| existing.get("master"))
        .cloned()
        .unwrap_or_default();
    let mut master_key = BTreeMap::new();
    collect_ed25519(&master, &mut master_key);
    for (kind, key) in uploads.iter().filter(|(k, _)| *k != "master") {
        if !signed_by(key, user_id, &master_key) {
            return Err(ApiError::invalid_param(format!(
                "the {kind} key must be signed by the master key"
            )));
        }
    }
    // Once a master key exists, any change (a new or different key) needs the password.
    let changes = uploads.iter().any(|(kind, key)| {
        existing
            .get(*kind)
            .is_none_or(|old| signed_part(old) != signed_part(key))
    });
    if existing.contains_key("master") && changes {
        crate::api::client::security::require_password(&state, &user, req.body.auth.as_ref())
            .await?;
    }
    for (kind, key) in &uploads {
        state
            .store
            .set_cross_signing_key(user_id, kind, &key.to_string())
            .await?;
    }
    crate::e2ee::signing_keys_changed(&state, user_id).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/keys/signatures/upload`: the caller's signatures of its own devices
/// and master key, and of other local users' master keys (user-signing). Each signed object
/// must be the stored key unchanged apart from signatures, and every new signature must verify
/// with one of the caller's keys; others are listed in `failures`. Keys of other servers' users
/// are not relayed (listed in `failures`).
pub async fn upload_signatures_route(
    State(state): State<AppState>,
    req: Ruma<ruma::api::client::keys::upload_signatures::v3::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.clone();
    let signer = user.user_id.as_str();
    // The caller's public keys: its devices' and its cross-signing keys.
    let mut signer_keys = BTreeMap::new();
    for (_, keys) in state.store.list_device_keys(signer).await? {
        if let Ok(keys) = serde_json::from_str::<Value>(&keys) {
            collect_ed25519(&keys, &mut signer_keys);
        }
    }
    for key in crate::e2ee::cross_signing_keys(&state, signer)
        .await?
        .values()
    {
        collect_ed25519(key, &mut signer_keys);
    }
    let mut failures = serde_json::Map::new();
    let mut changed = std::collections::BTreeSet::new();
    for (target, keys) in &req.body.signed_keys {
        for (key_id, raw) in keys.iter() {
            let outcome =
                sign_one(&state, signer, &signer_keys, target.as_str(), key_id, raw).await;
            match outcome {
                Ok(()) => {
                    changed.insert(target.to_string());
                }
                Err((errcode, error)) => {
                    failures
                        .entry(target.to_string())
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .map(|m| {
                            m.insert(
                                key_id.to_owned(),
                                json!({"errcode": errcode, "error": error}),
                            )
                        });
                }
            }
        }
    }
    for target in changed {
        crate::e2ee::signing_keys_changed(&state, &target).await?;
    }
    Ok(Json(json!({ "failures": failures })))
}

/// Whether `key` carries a valid signature by `signer` with one of `keys`.
fn signed_by(key: &Value, signer: &str, keys: &BTreeMap<String, ruma::serde::Base64>) -> bool {
    let Some(signatures) = key["signatures"][signer].as_object() else {
        return false;
    };
    signatures.iter().any(|(key_id, signature)| {
        let Some(public) = keys.get(key_id) else {
            return false;
        };
        let mut only = signed_part(key);
        only["signatures"] = json!({ signer: { key_id: signature } });
        let Ok(object) = serde_json::from_value::<ruma::CanonicalJsonObject>(only) else {
            return false;
        };
        let mut set = ruma::signatures::PublicKeySet::new();
        set.insert(key_id.clone(), public.clone());
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert(signer.to_owned(), set);
        ruma::signatures::verify_json(&map, &object).is_ok()
    })
}

fn collect_ed25519(keys: &Value, into: &mut BTreeMap<String, ruma::serde::Base64>) {
    if let Some(map) = keys["keys"].as_object() {
        for (id, key) in map {
            if id.starts_with("ed25519:")
                && let Some(key) = key
                    .as_str()
                    .and_then(|k| ruma::serde::Base64::parse(k).ok())
            {
                into.insert(id.clone(), key);
            }
        }
    }
}

/// Adds the caller's signatures in `raw` to the stored key `key_id` of `target`.
async fn sign_one(
    state: &AppState,
    signer: &str,
    signer_keys: &BTreeMap<String, ruma::serde::Base64>,
    target: &str,
    key_id: &str,
    raw: &serde_json::value::RawValue,
) -> Result<(), (&'static str, String)> {
    let internal = |e: ApiError| ("M_UNKNOWN", e.message);
    if !crate::e2ee::is_local(state, target) {
        return Err((
            "M_UNRECOGNIZED",
            "signatures of other servers' keys are not relayed".into(),
        ));
    }
    let uploaded: Value =
        serde_json::from_str(raw.get()).map_err(|e| ("M_BAD_JSON", format!("{e}")))?;
    // The stored key it signs: a device of the target, or its master key.
    let device = state
        .store
        .list_device_keys(target)
        .await
        .map_err(|e| internal(e.into()))?
        .into_iter()
        .find(|(device, _)| device == key_id);
    let cross = crate::e2ee::cross_signing_keys(state, target)
        .await
        .map_err(internal)?;
    let master = cross
        .get("master")
        .filter(|m| m["keys"].get(format!("ed25519:{key_id}")).is_some());
    let (stored, kind) = match (&device, master) {
        (Some((_, json)), _) if target == signer => (
            serde_json::from_str::<Value>(json).map_err(|e| ("M_UNKNOWN", e.to_string()))?,
            None,
        ),
        (_, Some(master)) => (master.clone(), Some("master")),
        _ => {
            return Err((
                "M_NOT_FOUND",
                format!("no key {key_id} of {target} to sign"),
            ));
        }
    };
    if signed_part(&stored) != signed_part(&uploaded) {
        return Err((
            "M_INVALID_SIGNATURE",
            "the signed object differs from the stored key".into(),
        ));
    }
    let Some(new) = uploaded["signatures"][signer]
        .as_object()
        .filter(|s| !s.is_empty())
    else {
        return Err(("M_INVALID_SIGNATURE", format!("no signature by {signer}")));
    };
    // Another user's key is signed with the caller's user-signing key only.
    let mut allowed = signer_keys.clone();
    if target != signer {
        allowed.clear();
        if let Some(user_signing) = crate::e2ee::cross_signing_keys(state, signer)
            .await
            .map_err(internal)?
            .get("user_signing")
        {
            collect_ed25519(user_signing, &mut allowed);
        }
    }
    // Every new signature must verify with the caller's key of that ID.
    for (signature_key, signature) in new {
        let Some(public) = allowed.get(signature_key) else {
            return Err((
                "M_INVALID_SIGNATURE",
                format!("unknown key {signature_key} of {signer}"),
            ));
        };
        let mut only = signed_part(&stored);
        only["signatures"] = json!({ signer: { signature_key: signature } });
        let object: ruma::CanonicalJsonObject =
            serde_json::from_value(only).map_err(|e| ("M_BAD_JSON", e.to_string()))?;
        let mut set = ruma::signatures::PublicKeySet::new();
        set.insert(signature_key.clone(), public.clone());
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert(signer.to_owned(), set);
        ruma::signatures::verify_json(&map, &object)
            .map_err(|e| ("M_INVALID_SIGNATURE", format!("{signature_key}: {e}")))?;
    }
    let mut merged = stored;
    if !merged["signatures"].is_object() {
        merged["signatures"] = json!({});
    }
    let by_signer = merged["signatures"]
        .as_object_mut()
        .map(|s| s.entry(signer.to_owned()).or_insert_with(|| json!({})));
    if let Some(Value::Object(by_signer)) = by_signer {
        for (k, v) in new {
            by_signer.insert(k.clone(), v.clone());
        }
    }
    match kind {
        Some(kind) => state
            .store
            .set_cross_signing_key(target, kind, &merged.to_string())
            .await
            .map_err(|e| internal(e.into()))?,
        None => state
            .store
            .set_device_keys(target, key_id, &merged.to_string())
            .await
            .map_err(|e| internal(e.into()))?,
    }
    Ok(())
}

/// The stream and aux positions of a sync token (`s<stream>_<aux>[_<counted>]`).
fn aux_of(token: &str) -> Result<(i64, i64), ApiError> {
    let stream = crate::api::client::rooms::parse_token(token)?;
    let aux = token
        .split('_')
        .nth(1)
        .and_then(|aux| aux.parse().ok())
        .ok_or_else(|| ApiError::invalid_param(format!("Invalid sync token {token:?}")))?;
    Ok((stream, aux))
}

/// `GET /_matrix/client/v3/keys/changes?from=&to=`: users sharing a joined room with the caller
/// whose devices or keys changed between two sync tokens, and users who stopped sharing every
/// joined room with the caller in that window.
pub async fn key_changes_route(
    State(state): State<AppState>,
    req: Ruma<ruma::api::client::keys::get_key_changes::v3::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.clone();
    let (from, from_aux) = aux_of(&req.body.from)?;
    let (to, to_aux) = aux_of(&req.body.to)?;
    let joined = crate::api::client::rooms::joined_rooms(&state, &user.user_id).await?;
    let mut changed = std::collections::BTreeSet::new();
    for other in state
        .store
        .list_device_list_changes(from_aux, to_aux)
        .await?
    {
        let Ok(other_id) = ruma::OwnedUserId::try_from(other.as_str()) else {
            continue;
        };
        if other_id == user.user_id
            || crate::api::client::rooms::joined_to_any(&state, &joined, &other_id).await?
        {
            changed.insert(other);
        }
    }
    let mut left = std::collections::BTreeSet::new();
    for room_id in &joined {
        for other in state
            .store
            .list_member_changes(room_id.as_str(), from, to)
            .await?
        {
            let Ok(other_id) = ruma::OwnedUserId::try_from(other.as_str()) else {
                continue;
            };
            if other_id != user.user_id
                && !crate::api::client::rooms::joined_to_any(&state, &joined, &other_id).await?
            {
                left.insert(other);
            }
        }
    }
    Ok(Json(json!({ "changed": changed, "left": left })))
}

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
use unitas_storage::{DeviceKeys, KeyUpload};

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
    let (device_keys, failures) = crate::e2ee::query(
        &state,
        &user.territory,
        &wanted,
        remote_wait(req.body.timeout),
    )
    .await?;
    Ok(Json(
        json!({"device_keys": device_keys, "failures": failures}),
    ))
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

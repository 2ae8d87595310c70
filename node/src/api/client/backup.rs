//! Server-side key backup (spec: client-server API, "Server-side key backups"): versions
//! (`/room_keys/version`) and the encrypted room keys of a version (`/room_keys/keys`). The
//! server keeps only what clients encrypted (`session_data`); of two keys for a session it keeps
//! the better one (verified, then lower first message index, then fewer forwards).

use std::collections::BTreeMap;

use axum::extract::State;
use http::StatusCode;
use ruma::api::client::backup::{
    KeyBackupData, RoomKeyBackup, add_backup_keys, add_backup_keys_for_room,
    add_backup_keys_for_session, create_backup_version, delete_backup_keys,
    delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
    get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
    get_latest_backup_info, update_backup_version,
};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, UInt};
use serde_json::{Value, json};
use unitas_storage::{BackupKey, BackupScope, BackupVersion, KeyBackups, StorageError};

use crate::api::ApiError;
use crate::api::ruma::{Ruma, RumaResponse};
use crate::state::AppState;

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

fn no_version(version: &str) -> ApiError {
    ApiError::not_found(format!("Unknown backup version {version}"))
}

/// A version number as the client gives it (`"3"`); anything else names no version.
fn version_of(text: &str) -> std::result::Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| no_version(text))
}

/// `{algorithm, auth_data}` of a request body.
fn algorithm_of(
    raw: &Raw<ruma::api::client::backup::BackupAlgorithm>,
) -> std::result::Result<(String, String), ApiError> {
    let value: Value = serde_json::from_str(raw.json().get())
        .map_err(|e| ApiError::bad_json(format!("backup algorithm: {e}")))?;
    let algorithm = value
        .get("algorithm")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_json("algorithm must be a string"))?;
    let auth_data = value
        .get("auth_data")
        .filter(|a| a.is_object())
        .ok_or_else(|| ApiError::bad_json("auth_data must be an object"))?;
    Ok((algorithm.to_owned(), auth_data.to_string()))
}

fn raw_algorithm(
    version: &BackupVersion,
) -> std::result::Result<Raw<ruma::api::client::backup::BackupAlgorithm>, ApiError> {
    let auth_data: Value = serde_json::from_str(&version.auth_data).unwrap_or_else(|_| json!({}));
    let text = json!({ "algorithm": version.algorithm, "auth_data": auth_data }).to_string();
    serde_json::value::RawValue::from_string(text)
        .map(Raw::from_json)
        .map_err(|e| ApiError::internal(&e))
}

fn count(n: i64) -> UInt {
    UInt::try_from(n.max(0)).unwrap_or(UInt::MAX)
}

/// The version keys are written to must be the latest one: `403 M_WRONG_ROOM_KEYS_VERSION`
/// with `current_version` otherwise (the spec's rule, so two devices do not split a backup).
async fn writable(
    state: &AppState,
    user: &str,
    version: &str,
) -> std::result::Result<i64, ApiError> {
    let latest = state.store.get_backup_version(user, None).await?;
    let wanted = version_of(version);
    match (latest, wanted) {
        (Some(latest), Ok(v)) if latest.version == v => Ok(v),
        (Some(latest), _) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "M_WRONG_ROOM_KEYS_VERSION",
            format!("Backup version {version} is not the current one"),
        )
        .with_extra("current_version", latest.version.to_string().into())),
        (None, _) => Err(no_version(version)),
    }
}

/// A readable version (any that is not deleted).
async fn readable(
    state: &AppState,
    user: &str,
    version: &str,
) -> std::result::Result<i64, ApiError> {
    let v = version_of(version)?;
    state
        .store
        .get_backup_version(user, Some(v))
        .await?
        .map(|b| b.version)
        .ok_or_else(|| no_version(version))
}

fn backup_key(
    room_id: &str,
    session_id: &str,
    raw: &Raw<KeyBackupData>,
) -> std::result::Result<BackupKey, ApiError> {
    let value: Value = serde_json::from_str(raw.json().get())
        .map_err(|e| ApiError::bad_json(format!("key {session_id}: {e}")))?;
    let int = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_i64)
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::bad_json(format!(
                    "key {session_id}: {name} must be a non-negative integer"
                ))
            })
    };
    let session_data = value
        .get("session_data")
        .filter(|d| d.is_object())
        .ok_or_else(|| {
            ApiError::bad_json(format!("key {session_id}: session_data must be an object"))
        })?;
    Ok(BackupKey {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        first_message_index: int("first_message_index")?,
        forwarded_count: int("forwarded_count")?,
        is_verified: value
            .get("is_verified")
            .and_then(Value::as_bool)
            .ok_or_else(|| {
                ApiError::bad_json(format!("key {session_id}: is_verified must be a boolean"))
            })?,
        session_data: session_data.to_string(),
    })
}

fn raw_key(key: &BackupKey) -> std::result::Result<Raw<KeyBackupData>, ApiError> {
    let session_data: Value = serde_json::from_str(&key.session_data).unwrap_or_else(|_| json!({}));
    let text = json!({
        "first_message_index": key.first_message_index,
        "forwarded_count": key.forwarded_count,
        "is_verified": key.is_verified,
        "session_data": session_data,
    })
    .to_string();
    serde_json::value::RawValue::from_string(text)
        .map(Raw::from_json)
        .map_err(|e| ApiError::internal(&e))
}

fn by_room(
    keys: &[BackupKey],
) -> std::result::Result<BTreeMap<OwnedRoomId, RoomKeyBackup>, ApiError> {
    let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>> = BTreeMap::new();
    for key in keys {
        let Ok(room) = OwnedRoomId::try_from(key.room_id.as_str()) else {
            continue;
        };
        rooms
            .entry(room)
            .or_default()
            .insert(key.session_id.clone(), raw_key(key)?);
    }
    Ok(rooms
        .into_iter()
        .map(|(room, sessions)| (room, RoomKeyBackup::new(sessions)))
        .collect())
}

fn store_error(version: &str) -> impl Fn(StorageError) -> ApiError + '_ {
    move |e| match e {
        StorageError::NotFound { .. } => no_version(version),
        other => other.into(),
    }
}

/// `POST /_matrix/client/v3/room_keys/version`.
pub async fn create_version_route(
    State(state): State<AppState>,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    let user = req.user()?.user_id.clone();
    let (algorithm, auth_data) = algorithm_of(&req.body.algorithm)?;
    let version = state
        .store
        .create_backup_version(user.as_str(), &algorithm, &auth_data)
        .await?;
    Ok(create_backup_version::v3::Response::new(version.to_string()).into())
}

/// `GET /_matrix/client/v3/room_keys/version`: the latest version.
pub async fn get_latest_version_route(
    State(state): State<AppState>,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    let user = req.user()?.user_id.clone();
    let version = state
        .store
        .get_backup_version(user.as_str(), None)
        .await?
        .ok_or_else(|| ApiError::not_found("No backup"))?;
    Ok(get_latest_backup_info::v3::Response::new(
        raw_algorithm(&version)?,
        count(version.count),
        version.etag.to_string(),
        version.version.to_string(),
    )
    .into())
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`.
pub async fn get_version_route(
    State(state): State<AppState>,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response> {
    let user = req.user()?.user_id.clone();
    let v = version_of(&req.body.version)?;
    let version = state
        .store
        .get_backup_version(user.as_str(), Some(v))
        .await?
        .ok_or_else(|| no_version(&req.body.version))?;
    Ok(get_backup_info::v3::Response::new(
        raw_algorithm(&version)?,
        count(version.count),
        version.etag.to_string(),
        version.version.to_string(),
    )
    .into())
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`: new `auth_data`; the algorithm (and
/// `version`, when the body names one) must stay.
pub async fn update_version_route(
    State(state): State<AppState>,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    let user = req.user()?.user_id.clone();
    let v = version_of(&req.body.version)?;
    let (algorithm, auth_data) = algorithm_of(&req.body.algorithm)?;
    let body: Value = serde_json::from_str(req.body.algorithm.json().get()).unwrap_or_default();
    if body
        .get("version")
        .and_then(Value::as_str)
        .is_some_and(|named| named != req.body.version)
    {
        return Err(ApiError::invalid_param(
            "the body's version differs from the path's",
        ));
    }
    let known = state
        .store
        .get_backup_version(user.as_str(), Some(v))
        .await?
        .ok_or_else(|| no_version(&req.body.version))?;
    if known.algorithm != algorithm {
        return Err(ApiError::invalid_param(
            "the algorithm of a backup version cannot change",
        ));
    }
    state
        .store
        .update_backup_version(user.as_str(), v, &auth_data)
        .await
        .map_err(store_error(&req.body.version))?;
    Ok(update_backup_version::v3::Response::new().into())
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`: the version and its keys.
pub async fn delete_version_route(
    State(state): State<AppState>,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    let user = req.user()?.user_id.clone();
    let v = version_of(&req.body.version)?;
    state
        .store
        .delete_backup_version(user.as_str(), v)
        .await
        .map_err(store_error(&req.body.version))?;
    Ok(delete_backup_version::v3::Response::new().into())
}

async fn put_keys(
    state: &AppState,
    user: &str,
    version: &str,
    keys: Vec<BackupKey>,
) -> std::result::Result<(String, UInt), ApiError> {
    let v = writable(state, user, version).await?;
    let (n, etag) = state
        .store
        .put_backup_keys(user, v, &keys)
        .await
        .map_err(store_error(version))?;
    Ok((etag.to_string(), count(n)))
}

/// `PUT /_matrix/client/v3/room_keys/keys?version=`.
pub async fn put_keys_route(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response> {
    let user = req.user()?.user_id.clone();
    let mut keys = Vec::new();
    for (room, backup) in &req.body.rooms {
        for (session, raw) in &backup.sessions {
            keys.push(backup_key(room.as_str(), session, raw)?);
        }
    }
    let (etag, n) = put_keys(&state, user.as_str(), &req.body.version, keys).await?;
    Ok(add_backup_keys::v3::Response::new(etag, n).into())
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}?version=`.
pub async fn put_room_keys_route(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let user = req.user()?.user_id.clone();
    let keys = req
        .body
        .sessions
        .iter()
        .map(|(session, raw)| backup_key(req.body.room_id.as_str(), session, raw))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let (etag, n) = put_keys(&state, user.as_str(), &req.body.version, keys).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, n).into())
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}?version=`.
pub async fn put_session_key_route(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let user = req.user()?.user_id.clone();
    let key = backup_key(
        req.body.room_id.as_str(),
        &req.body.session_id,
        &req.body.session_data,
    )?;
    let (etag, n) = put_keys(&state, user.as_str(), &req.body.version, vec![key]).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, n).into())
}

/// `GET /_matrix/client/v3/room_keys/keys?version=`.
pub async fn get_keys_route(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response> {
    let user = req.user()?.user_id.clone();
    let v = readable(&state, user.as_str(), &req.body.version).await?;
    let keys = state
        .store
        .get_backup_keys(user.as_str(), v, BackupScope::All)
        .await?;
    Ok(get_backup_keys::v3::Response::new(by_room(&keys)?).into())
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}?version=`.
pub async fn get_room_keys_route(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let user = req.user()?.user_id.clone();
    let v = readable(&state, user.as_str(), &req.body.version).await?;
    let keys = state
        .store
        .get_backup_keys(
            user.as_str(),
            v,
            BackupScope::Room(req.body.room_id.as_str()),
        )
        .await?;
    let sessions = keys
        .iter()
        .map(|k| Ok((k.session_id.clone(), raw_key(k)?)))
        .collect::<std::result::Result<BTreeMap<_, _>, ApiError>>()?;
    Ok(get_backup_keys_for_room::v3::Response::new(sessions).into())
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}?version=`.
pub async fn get_session_key_route(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let user = req.user()?.user_id.clone();
    let v = readable(&state, user.as_str(), &req.body.version).await?;
    let keys = state
        .store
        .get_backup_keys(
            user.as_str(),
            v,
            BackupScope::Session(req.body.room_id.as_str(), &req.body.session_id),
        )
        .await?;
    let key = keys
        .first()
        .ok_or_else(|| ApiError::not_found("No key for this session"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(raw_key(key)?).into())
}

async fn delete_keys(
    state: &AppState,
    user: &str,
    version: &str,
    scope: BackupScope<'_>,
) -> std::result::Result<(String, UInt), ApiError> {
    let v = readable(state, user, version).await?;
    let (n, etag) = state
        .store
        .delete_backup_keys(user, v, scope)
        .await
        .map_err(store_error(version))?;
    Ok((etag.to_string(), count(n)))
}

/// `DELETE /_matrix/client/v3/room_keys/keys?version=`.
pub async fn delete_keys_route(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    let user = req.user()?.user_id.clone();
    let (etag, n) = delete_keys(&state, user.as_str(), &req.body.version, BackupScope::All).await?;
    Ok(delete_backup_keys::v3::Response::new(etag, n).into())
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}?version=`.
pub async fn delete_room_keys_route(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let user = req.user()?.user_id.clone();
    let (etag, n) = delete_keys(
        &state,
        user.as_str(),
        &req.body.version,
        BackupScope::Room(req.body.room_id.as_str()),
    )
    .await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, n).into())
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}?version=`.
pub async fn delete_session_key_route(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let user = req.user()?.user_id.clone();
    let (etag, n) = delete_keys(
        &state,
        user.as_str(),
        &req.body.version,
        BackupScope::Session(req.body.room_id.as_str(), &req.body.session_id),
    )
    .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, n).into())
}

//! Federation endpoints: keys (our own and, as a notary, other servers'), and the read APIs
//! peers call with a signed request ([`Peer`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use ruma::api::federation::authenticated_media as fed_media;
use ruma::{CanonicalJsonObject, ServerName};
use serde_json::{Value, json};
use unitas_federation::server_keys::{OldVerifyKey, server_keys_document};
use unitas_storage::{Accounts, ClientData, SigningKeys};

use super::peer::Peer;
use super::ruma::RumaResponse;
use super::{ApiError, Territory};
use crate::state::{AppState, HostedTerritory};

/// `GET /_matrix/key/v2/server` (spec: server-server API, "Publishing Keys"): the territory's
/// verify keys, signed with its current key.
pub async fn get_server_keys_route(
    State(state): State<AppState>,
    Territory(t): Territory,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(own_document(&state, &t).await?))
}

/// A hosted territory's signed key document.
async fn own_document(state: &AppState, t: &HostedTerritory) -> Result<Value, ApiError> {
    let old_keys: Vec<OldVerifyKey> = state
        .store
        .list_signing_keys(t.config.code.as_str())
        .await?
        .into_iter()
        .filter_map(|k| {
            Some(OldVerifyKey {
                key_id: k.key_id,
                public_key: k.public_key,
                expired_ts: k.expired_ts?,
            })
        })
        .collect();
    let validity = Duration::from_secs(state.config.federation.key_validity_secs);
    let valid_until = SystemTime::now()
        .checked_add(validity)
        .unwrap_or(SystemTime::now());
    let valid_until_ts = valid_until
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Ok(server_keys_document(
        t.server_name(),
        &t.key,
        &old_keys,
        valid_until_ts,
    )?)
}

/// What a notary query asks about one server: `minimum_valid_until_ts` (the largest of the key
/// criteria; the key IDs themselves do not narrow the answer, as the spec allows).
fn minimum_valid_until(criteria: Option<&Value>) -> i64 {
    criteria
        .and_then(Value::as_object)
        .map(|keys| {
            keys.values()
                .filter_map(|c| c.get("minimum_valid_until_ts")?.as_i64())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Our notary answer for `servers`: each server's own document (ours built fresh, others' as
/// they signed them), countersigned by the territory the query reached.
async fn notary_answer(
    state: &AppState,
    notary: &HostedTerritory,
    servers: Vec<(String, i64)>,
) -> Result<Value, ApiError> {
    let mut documents = Vec::new();
    for (server, minimum) in servers.into_iter().take(MAX_NOTARY_SERVERS) {
        let Ok(name) = ServerName::parse(&server) else {
            continue;
        };
        let own = state.territories.by_server_name(&server).cloned();
        let document: Option<CanonicalJsonObject> = match own {
            Some(t) => serde_json::from_value(own_document(state, &t).await?).ok(),
            None => match state.key_ring.document_for_notary(&name, minimum).await {
                Ok(found) => found,
                Err(err) => {
                    tracing::debug!(server, error = %err, "notary: no keys");
                    None
                }
            },
        };
        let Some(mut document) = document else {
            continue;
        };
        if document.get("server_name").and_then(|v| v.as_str()) != Some(server.as_str()) {
            continue;
        }
        notary.key.sign_json(notary.server_name(), &mut document)?;
        documents.push(document);
    }
    Ok(json!({ "server_keys": documents }))
}

/// Most servers one notary query may ask about.
const MAX_NOTARY_SERVERS: usize = 100;

/// `POST /_matrix/key/v2/query`: keys of other servers, through us (notary).
pub async fn query_keys_route(
    State(state): State<AppState>,
    Territory(t): Territory,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::not_json(e.to_string()))?;
    let servers = request
        .get("server_keys")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_json("server_keys must be an object"))?;
    let servers = servers
        .iter()
        .map(|(name, criteria)| (name.clone(), minimum_valid_until(Some(criteria))))
        .collect();
    Ok(Json(notary_answer(&state, &t, servers).await?))
}

/// Query string of `GET /_matrix/key/v2/query/{serverName}`.
#[derive(Debug, serde::Deserialize)]
pub struct NotaryQuery {
    minimum_valid_until_ts: Option<i64>,
}

/// `GET /_matrix/key/v2/query/{serverName}`: one server's keys, through us.
pub async fn query_server_keys_route(
    State(state): State<AppState>,
    Territory(t): Territory,
    Path(server): Path<String>,
    Query(query): Query<NotaryQuery>,
) -> Result<Json<Value>, ApiError> {
    let minimum = query.minimum_valid_until_ts.unwrap_or(0);
    Ok(Json(
        notary_answer(&state, &t, vec![(server, minimum)]).await?,
    ))
}

/// Query string of `GET /_matrix/federation/v1/query/profile`.
#[derive(Debug, serde::Deserialize)]
pub struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

/// `GET /_matrix/federation/v1/query/profile`: a local user's display name and avatar.
pub async fn query_profile_route(
    State(state): State<AppState>,
    Query(query): Query<ProfileQuery>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let user_id = ruma::UserId::parse(&query.user_id)
        .map_err(|e| ApiError::invalid_param(format!("user_id: {e}")))?;
    if user_id.server_name().as_str() != peer.territory.server_name() {
        return Err(ApiError::invalid_param(
            "The user does not belong to this server",
        ));
    }
    if state.store.get_account(user_id.as_str()).await?.is_none() {
        return Err(ApiError::not_found("Profile not found"));
    }
    tracing::debug!(origin = %peer.origin, user = %user_id, "profile query");
    let profile = state.store.get_profile(user_id.as_str()).await?;
    let mut answer = serde_json::Map::new();
    let wanted = |name: &str| query.field.as_deref().is_none_or(|f| f == name);
    if let (Some(name), true) = (profile.displayname, wanted("displayname")) {
        answer.insert("displayname".into(), name.into());
    }
    if let (Some(url), true) = (profile.avatar_url, wanted("avatar_url")) {
        answer.insert("avatar_url".into(), url.into());
    }
    Ok(Json(Value::Object(answer)))
}

/// `GET /_matrix/key/v2/server/{keyId}`: deprecated form; the key ID is ignored, as the spec
/// says servers should.
pub async fn get_server_keys_by_id_route(
    state: State<AppState>,
    territory: Territory,
    Path(_key_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    get_server_keys_route(state, territory).await
}

/// `GET /_matrix/federation/v1/version`.
pub async fn get_server_version_route() -> Json<Value> {
    Json(
        json!({"server": {"name": unitas_spec::SOFTWARE_NAME, "version": env!("CARGO_PKG_VERSION")}}),
    )
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}`: one of the addressed territory's
/// uploads, as `multipart/mixed` (metadata, then the file). Files fetched from other servers
/// are never served on: each server serves its own.
pub async fn media_download_route(
    State(state): State<AppState>,
    Path(media_id): Path<String>,
    peer: Peer,
) -> Result<RumaResponse<fed_media::get_content::v1::Response>, ApiError> {
    let media = crate::media::local(&state, &peer.territory, &media_id).await?;
    tracing::debug!(origin = %peer.origin, media_id, "media download");
    Ok(media_answer(media).into())
}

/// Size and method of a federation thumbnail request.
#[derive(Debug, serde::Deserialize)]
pub struct ThumbnailQuery {
    width: u64,
    height: u64,
    method: Option<String>,
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`: a thumbnail of one of our uploads.
pub async fn media_thumbnail_route(
    State(state): State<AppState>,
    Path(media_id): Path<String>,
    Query(query): Query<ThumbnailQuery>,
    peer: Peer,
) -> Result<RumaResponse<fed_media::get_content_thumbnail::v1::Response>, ApiError> {
    let media = crate::media::local(&state, &peer.territory, &media_id).await?;
    let side = |v: u64| crate::media::dimension(ruma::UInt::new_saturating(v));
    let crop = query.method.as_deref() == Some("crop");
    let media = crate::media::thumbnail(media, side(query.width), side(query.height), crop).await;
    let fed_media::get_content::v1::Response {
        metadata, content, ..
    } = media_answer(media);
    Ok(fed_media::get_content_thumbnail::v1::Response::new(metadata, content).into())
}

fn media_answer(media: crate::media::MediaFile) -> fed_media::get_content::v1::Response {
    let disposition = media.disposition(None);
    fed_media::get_content::v1::Response::new(
        fed_media::ContentMetadata::new(),
        fed_media::FileOrLocation::File(fed_media::Content::new(
            media.file,
            media.content_type,
            disposition,
        )),
    )
}

/// A user ID of the territory a peer addressed (keys and devices of other territories are not
/// answered under this name).
fn own_user(peer: &Peer, user_id: &str) -> Result<(), ApiError> {
    let user = ruma::UserId::parse(user_id)
        .map_err(|e| ApiError::invalid_param(format!("user ID: {e}")))?;
    if user.server_name().as_str() == peer.territory.server_name() {
        Ok(())
    } else {
        Err(ApiError::invalid_param(
            "The user does not belong to this server",
        ))
    }
}

fn json_body(peer: &Peer) -> Result<Value, ApiError> {
    serde_json::from_slice(&peer.body).map_err(|e| ApiError::not_json(e.to_string()))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`: a user's devices with their keys and
/// names, and the device list version (`stream_id`). Devices without uploaded keys are left out
/// (the spec's `keys` is required).
pub async fn user_devices_route(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    use unitas_storage::DeviceKeys;
    own_user(&peer, &user_id)?;
    let keys = crate::e2ee::local_device_keys(&state, &user_id, &[]).await?;
    let devices: Vec<Value> = keys
        .into_iter()
        .map(|(device_id, mut keys)| {
            let name = crate::e2ee::take_display_name(&mut keys);
            let mut device = json!({"device_id": device_id, "keys": keys});
            if let Some(name) = name {
                device["device_display_name"] = name;
            }
            device
        })
        .collect();
    let stream_id = state.store.device_list_version(&user_id).await?;
    Ok(Json(
        json!({"user_id": user_id, "stream_id": stream_id, "devices": devices}),
    ))
}

/// `POST /_matrix/federation/v1/user/keys/query`: device keys of the addressed territory's
/// users (others in the request are left out).
pub async fn user_keys_query_route(
    State(state): State<AppState>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(&peer)?;
    let Some(Value::Object(wanted)) = body.get("device_keys") else {
        return Err(ApiError::bad_json("device_keys must be an object"));
    };
    let mut device_keys = serde_json::Map::new();
    let mut master_keys = serde_json::Map::new();
    let mut self_signing_keys = serde_json::Map::new();
    for (user_id, devices) in wanted {
        if own_user(&peer, user_id).is_err() {
            continue;
        }
        for (kind, key) in crate::e2ee::cross_signing_keys(&state, user_id).await? {
            match kind.as_str() {
                "master" => master_keys.insert(user_id.clone(), key),
                "self_signing" => self_signing_keys.insert(user_id.clone(), key),
                _ => None,
            };
        }
        let devices: Vec<String> = devices
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        device_keys.insert(
            user_id.clone(),
            Value::Object(crate::e2ee::local_device_keys(&state, user_id, &devices).await?),
        );
    }
    Ok(Json(json!({
        "device_keys": device_keys,
        "master_keys": master_keys,
        "self_signing_keys": self_signing_keys,
    })))
}

/// `POST /_matrix/federation/v1/user/keys/claim`: one key per device of the addressed
/// territory's users.
pub async fn user_keys_claim_route(
    State(state): State<AppState>,
    peer: Peer,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(&peer)?;
    let Some(Value::Object(wanted)) = body.get("one_time_keys") else {
        return Err(ApiError::bad_json("one_time_keys must be an object"));
    };
    let mut asked = crate::e2ee::Wanted::new();
    for (user_id, devices) in wanted {
        if own_user(&peer, user_id).is_err() {
            continue;
        }
        let Some(devices) = devices.as_object() else {
            return Err(ApiError::bad_json(
                "one_time_keys: devices must be an object",
            ));
        };
        let devices = devices
            .iter()
            .filter_map(|(device, algorithm)| {
                Some((device.clone(), algorithm.as_str()?.to_owned()))
            })
            .collect();
        asked.insert(user_id.clone(), devices);
    }
    let one_time_keys = crate::e2ee::claim_local(&state, &asked).await?;
    Ok(Json(json!({"one_time_keys": one_time_keys})))
}

//! Federation endpoints that need no request signature.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use unitas_federation::server_keys::{OldVerifyKey, server_keys_document};
use unitas_storage::SigningKeys;

use super::{ApiError, Territory};
use crate::state::AppState;

/// `GET /_matrix/key/v2/server` (spec: server-server API, "Publishing Keys"): the territory's
/// verify keys, signed with its current key.
pub async fn get_server_keys_route(
    State(state): State<AppState>,
    Territory(t): Territory,
) -> Result<Json<Value>, ApiError> {
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
    let document = server_keys_document(t.server_name(), &t.key, &old_keys, valid_until_ts)?;
    Ok(Json(document))
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

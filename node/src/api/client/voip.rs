//! Calls: TURN credentials (`/voip/turnServer`, coturn's shared-secret REST convention) and
//! MatrixRTC transport discovery for Element Call.

use axum::Json;
use axum::extract::State;
use base64::Engine;
use hmac::{Hmac, Mac};
use ruma::api::client::voip::get_turn_server_info;
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::api::ruma::Ruma;
use crate::state::AppState;

/// TURN credentials for `user_id` valid until `expiry` (Unix seconds): `(username, password)`
/// as coturn's `use-auth-secret` checks them.
pub fn turn_credentials(secret: &str, user_id: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{user_id}");
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return (username, String::new()),
    };
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// `GET /_matrix/client/v3/voip/turnServer`: time-limited credentials for the configured TURN
/// servers; `404 M_NOT_FOUND` when none is configured.
pub async fn turn_server_route(
    State(state): State<AppState>,
    req: Ruma<get_turn_server_info::v3::Request>,
) -> Result<Json<Value>, ApiError> {
    let user = req.user()?.clone();
    let voip = &state.config.voip;
    let Some(secret) = voip
        .turn_shared_secret
        .as_ref()
        .filter(|_| !voip.turn_uris.is_empty())
    else {
        return Err(ApiError::not_found("No TURN server is configured"));
    };
    let now = u64::try_from(crate::node::now_ms() / 1000).unwrap_or(0);
    let ttl = voip.turn_user_lifetime_secs.max(60);
    let (username, password) = turn_credentials(secret.expose(), user.user_id.as_str(), now + ttl);
    Ok(Json(json!({
        "username": username,
        "password": password,
        "uris": voip.turn_uris,
        "ttl": ttl,
    })))
}

/// `GET /_matrix/client/unstable/org.matrix.msc4143/rtc/transports`: the MatrixRTC transports
/// (LiveKit foci) Element Call should use.
pub async fn rtc_transports_route(
    State(state): State<AppState>,
    req: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = req
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                http::StatusCode::UNAUTHORIZED,
                "M_MISSING_TOKEN",
                "Missing access token",
            )
        })?;
    crate::api::ruma::authenticate(&state, token.trim()).await?;
    Ok(Json(
        json!({ "rtc_transports": state.config.voip.rtc_foci }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_coturns_rest_convention() {
        // Computed independently (Python's hmac): base64(HMAC-SHA1(secret, "<expiry>:<user>")).
        let (username, password) = turn_credentials("s3cret", "@alice:example.org", 1_700_000_000);
        assert_eq!(username, "1700000000:@alice:example.org");
        assert_eq!(password, "oKcYiX5WLXOJY95WjqLUBOVFmFk=");
    }
}

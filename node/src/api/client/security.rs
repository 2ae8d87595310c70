//! Password change, deactivation, device deletion (each behind user-interactive auth with the
//! account password), refresh tokens, and Synapse's shared-secret admin registration
//! (`/_synapse/admin/v1/register`, used by existing provisioning tools).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use hmac::{Hmac, Mac};
use ruma::api::client::account::{change_password, deactivate};
use ruma::api::client::device::{delete_device, delete_devices};
use ruma::api::client::session::refresh_token;
use ruma::api::client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier};
use serde::Deserialize;
use serde_json::{Value, json};
use unitas_storage::{AccessTokens, Accounts, ClientExtras, Devices};

use crate::api::ruma::{ClientUser, Ruma, RumaResponse, token_hash};
use crate::api::{ApiError, MatrixJson};
use crate::node::now_ms;
use crate::state::AppState;
use crate::users::{self, NewUser};

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

/// Checks user-interactive auth with the account password: a 401 with the flows when no auth
/// was given, `M_FORBIDDEN` when the password is wrong.
pub async fn require_password(
    state: &AppState,
    user: &ClientUser,
    auth: Option<&AuthData>,
) -> std::result::Result<(), ApiError> {
    let Some(AuthData::Password(password)) = auth else {
        let mut info = UiaaInfo::new(vec![AuthFlow::new(vec![AuthType::Password])]);
        info.session = Some(users::new_device_id()?.to_string());
        let mut error = ApiError::new(StatusCode::UNAUTHORIZED, "", "");
        if let Ok(Value::Object(map)) = serde_json::to_value(&info) {
            error.extra = map;
        }
        return Err(error);
    };
    if let UserIdentifier::Matrix(id) = &password.identifier {
        let named = ruma::UserId::parse(&id.user)
            .map(|u| u == user.user_id)
            .unwrap_or(id.user == user.user_id.localpart());
        if !named {
            return Err(ApiError::forbidden(
                "The identifier does not name the logged-in user",
            ));
        }
    }
    users::check_password(state, &user.user_id, &password.password).await
}

/// `POST /_matrix/client/v3/account/password`.
pub async fn change_password_route(
    State(state): State<AppState>,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let user = req.user()?.clone();
    require_password(&state, &user, req.body.auth.as_ref()).await?;
    let hash = users::hash_password(req.body.new_password.clone()).await?;
    state
        .store
        .set_password_hash(user.user_id.as_str(), Some(&hash))
        .await?;
    if req.body.logout_devices {
        for device in state.store.list_devices(user.user_id.as_str()).await? {
            if device.device_id != user.device_id.as_str() {
                state
                    .store
                    .delete_device(user.user_id.as_str(), &device.device_id)
                    .await?;
                crate::e2ee::device_changed(
                    &state,
                    user.user_id.as_str(),
                    &device.device_id,
                    false,
                )
                .await?;
            }
        }
    }
    state.tokens.forget_user(&user.user_id);
    Ok(change_password::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/account/deactivate`: the account is closed, every device logged
/// out, and the user leaves every room.
pub async fn deactivate_route(
    State(state): State<AppState>,
    req: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response> {
    let user = req.user()?.clone();
    require_password(&state, &user, req.body.auth.as_ref()).await?;
    use unitas_storage::ClientData;
    for room in state
        .store
        .list_membership_rooms(user.user_id.as_str())
        .await?
    {
        let Ok(room_id) = ruma::OwnedRoomId::try_from(room) else {
            continue;
        };
        if matches!(
            super::rooms::membership(&state, &room_id, &user.user_id)
                .await?
                .as_deref(),
            Some("join" | "invite" | "knock")
        ) {
            let leave = unitas_federation::rooms::EventTemplate::state(
                "m.room.member",
                user.user_id.as_str(),
                json!({"membership": "leave"}),
            );
            let signer = unitas_federation::rooms::Signer {
                server_name: user.territory.server_name(),
                key: &user.territory.key,
            };
            state
                .rooms
                .send_local(&room_id, &user.user_id, &leave, signer)
                .await?;
        }
    }
    for device in state.store.list_devices(user.user_id.as_str()).await? {
        state
            .store
            .delete_device(user.user_id.as_str(), &device.device_id)
            .await?;
    }
    state
        .store
        .deactivate_account(user.user_id.as_str(), now_ms())
        .await?;
    state.tokens.forget_user(&user.user_id);
    Ok(deactivate::v3::Response::new(
        ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport,
    )
    .into())
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`.
pub async fn delete_device_route(
    State(state): State<AppState>,
    req: Ruma<delete_device::v3::Request>,
) -> Result<delete_device::v3::Response> {
    let user = req.user()?.clone();
    require_password(&state, &user, req.body.auth.as_ref()).await?;
    if !state
        .store
        .delete_device(user.user_id.as_str(), req.body.device_id.as_str())
        .await?
    {
        return Err(ApiError::not_found("No such device"));
    }
    state.tokens.forget_user(&user.user_id);
    crate::e2ee::device_changed(
        &state,
        user.user_id.as_str(),
        req.body.device_id.as_str(),
        false,
    )
    .await?;
    Ok(delete_device::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/delete_devices`.
pub async fn delete_devices_route(
    State(state): State<AppState>,
    req: Ruma<delete_devices::v3::Request>,
) -> Result<delete_devices::v3::Response> {
    let user = req.user()?.clone();
    require_password(&state, &user, req.body.auth.as_ref()).await?;
    for device in &req.body.devices {
        if state
            .store
            .delete_device(user.user_id.as_str(), device.as_str())
            .await?
        {
            crate::e2ee::device_changed(&state, user.user_id.as_str(), device.as_str(), false)
                .await?;
        }
    }
    state.tokens.forget_user(&user.user_id);
    Ok(delete_devices::v3::Response::new().into())
}

/// How long an access token issued with a refresh token lives.
pub const REFRESHABLE_TOKEN_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Issues a refresh token for a device (stored as a digest).
pub async fn issue_refresh_token(
    state: &AppState,
    territory: &str,
    user_id: &str,
    device_id: &str,
) -> std::result::Result<String, ApiError> {
    let token = format!(
        "ur_{}",
        users::random_id(
            43,
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        )?
    );
    state
        .store
        .create_refresh_token(&token_hash(&token), territory, user_id, device_id, now_ms())
        .await?;
    Ok(token)
}

/// `POST /_matrix/client/v3/refresh`: a used refresh token is gone; a new pair comes back.
pub async fn refresh_token_route(
    State(state): State<AppState>,
    req: Ruma<refresh_token::v3::Request>,
) -> Result<refresh_token::v3::Response> {
    let unknown = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Unknown refresh token",
        )
    };
    let (territory, user_id, device_id) = state
        .store
        .take_refresh_token(&token_hash(&req.body.refresh_token))
        .await?
        .ok_or_else(unknown)?;
    let access_token = format!(
        "ut_{}",
        users::random_id(
            43,
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        )?
    );
    let expires = now_ms() + REFRESHABLE_TOKEN_LIFETIME.as_millis() as i64;
    state
        .store
        .create_access_token(&unitas_storage::NewAccessToken {
            token_hash: &token_hash(&access_token),
            territory: &territory,
            user_id: &user_id,
            device_id: &device_id,
            created_ts: now_ms(),
            expires_ts: Some(expires),
        })
        .await?;
    let refresh = issue_refresh_token(&state, &territory, &user_id, &device_id).await?;
    let mut response = refresh_token::v3::Response::new(access_token);
    response.refresh_token = Some(refresh);
    response.expires_in_ms = Some(REFRESHABLE_TOKEN_LIFETIME);
    Ok(response.into())
}

/// Nonces handed out for shared-secret registration, valid for a minute, used once.
fn nonces() -> &'static Mutex<HashMap<String, Instant>> {
    static NONCES: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    NONCES.get_or_init(Mutex::default)
}

/// `GET /_synapse/admin/v1/register`: a nonce for shared-secret registration.
pub async fn get_admin_register_nonce_route(
    State(state): State<AppState>,
) -> std::result::Result<Json<Value>, ApiError> {
    if state.config.registration_shared_secret()?.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Shared secret registration is not enabled",
        ));
    }
    let nonce = users::random_id(32, b"0123456789abcdef")?;
    let mut map = nonces().lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, issued| issued.elapsed() < Duration::from_secs(60));
    map.insert(nonce.clone(), Instant::now());
    Ok(Json(json!({"nonce": nonce})))
}

/// The body of `POST /_synapse/admin/v1/register`.
#[derive(Debug, Deserialize)]
pub struct AdminRegister {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    displayname: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    user_type: Option<String>,
    mac: String,
}

/// `POST /_synapse/admin/v1/register`: HMAC-SHA1 over `nonce\0username\0password\0admin|notadmin`
/// (and `\0user_type` when given), keyed with the shared secret, as Synapse defines it.
pub async fn post_admin_register_route(
    State(state): State<AppState>,
    territory: crate::api::Territory,
    MatrixJson(body): MatrixJson<AdminRegister>,
) -> std::result::Result<Json<Value>, ApiError> {
    let secret = state.config.registration_shared_secret()?.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Shared secret registration is not enabled",
        )
    })?;
    let fresh = nonces()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&body.nonce)
        .is_some_and(|issued| issued.elapsed() < Duration::from_secs(60));
    if !fresh {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Unknown or expired nonce",
        ));
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.expose().as_bytes())
        .map_err(|e| ApiError::internal(&e))?;
    mac.update(body.nonce.as_bytes());
    mac.update(b"\0");
    mac.update(body.username.as_bytes());
    mac.update(b"\0");
    mac.update(body.password.as_bytes());
    mac.update(b"\0");
    mac.update(if body.admin {
        b"admin".as_slice()
    } else {
        b"notadmin".as_slice()
    });
    if let Some(kind) = &body.user_type {
        mac.update(b"\0");
        mac.update(kind.as_bytes());
    }
    let expected = hex::decode(&body.mac).map_err(|_| ApiError::forbidden("HMAC incorrect"))?;
    mac.verify_slice(&expected)
        .map_err(|_| ApiError::forbidden("HMAC incorrect"))?;
    let (user_id, session) = users::register(
        &state,
        &territory.0,
        NewUser {
            localpart: &body.username.to_lowercase(),
            password: Some(body.password),
            display_name: body.displayname.as_deref(),
            is_admin: body.admin,
            ..Default::default()
        },
    )
    .await?;
    let session = session.ok_or_else(|| ApiError::internal(&"registration without a session"))?;
    Ok(Json(json!({
        "user_id": user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": territory.0.server_name(),
    })))
}

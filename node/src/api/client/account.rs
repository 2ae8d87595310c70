//! Registration, login, logout, whoami, devices, profiles, capabilities, filters (spec:
//! client-server API, "Client Authentication", "Device Management", "Profiles", "Filtering").

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ruma::UserId;
use ruma::api::client::account::{get_username_availability, register, whoami};
use ruma::api::client::device::{get_device, get_devices, update_device};
use ruma::api::client::discovery::get_capabilities;
use ruma::api::client::filter::{create_filter, get_filter};
use ruma::api::client::profile::{get_profile, set_avatar_url, set_display_name};
use ruma::api::client::session::{get_login_types, login, logout, logout_all};
use ruma::api::client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier};
use unitas_storage::{AccessTokens, Accounts, ClientData, Devices, ProfileField};

use crate::api::ApiError;
use crate::api::ruma::{Ruma, RumaResponse};
use crate::state::AppState;
use crate::users::{self, NewUser};

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

/// `GET /_matrix/client/v3/login`: password login only.
pub async fn get_login_types_route(
    _: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response> {
    use get_login_types::v3::{LoginType, PasswordLoginType};
    Ok(
        get_login_types::v3::Response::new(vec![LoginType::Password(PasswordLoginType::new())])
            .into(),
    )
}

/// `POST /_matrix/client/v3/login` with `m.login.password`.
pub async fn login_route(
    State(state): State<AppState>,
    req: Ruma<login::v3::Request>,
) -> Result<login::v3::Response> {
    let territory = req.territory.clone();
    let req_refresh = req.body.refresh_token;
    let login::v3::LoginInfo::Password(password) = req.body.login_info else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Only m.login.password is supported",
        ));
    };
    let localpart = match &password.identifier {
        Some(UserIdentifier::Matrix(id)) => id.user.clone(),
        _ => {
            return Err(ApiError::forbidden(
                "Log in with a user identifier (m.id.user)",
            ));
        }
    };
    let user_id = match UserId::parse(&localpart) {
        Ok(full) => full,
        Err(_) => users::user_id_for(&territory, &localpart.to_lowercase())?,
    };
    if user_id.server_name().as_str() != territory.server_name() {
        return Err(crate::registry::wrong_territory(&state, &user_id));
    }
    users::check_password(&state, &user_id, &password.password).await?;
    let session = users::login(
        &state,
        &territory,
        &user_id,
        req.body.device_id,
        req.body.initial_device_display_name.as_deref(),
    )
    .await?;
    let refresh = req_refresh;
    let mut response = login::v3::Response::new(
        session.user_id.clone(),
        session.access_token.clone(),
        session.device_id.clone(),
    );
    if refresh {
        // A refreshable session: the access token expires, the refresh token renews it.
        let expires =
            crate::node::now_ms() + super::security::REFRESHABLE_TOKEN_LIFETIME.as_millis() as i64;
        state
            .store
            .expire_access_token(
                &crate::api::ruma::token_hash(&session.access_token),
                expires,
            )
            .await?;
        response.refresh_token = Some(
            super::security::issue_refresh_token(
                &state,
                territory.config.code.as_str(),
                session.user_id.as_str(),
                session.device_id.as_str(),
            )
            .await?,
        );
        response.expires_in = Some(super::security::REFRESHABLE_TOKEN_LIFETIME);
    }
    Ok(response.into())
}

/// `POST /_matrix/client/v3/logout`.
pub async fn logout_route(
    State(state): State<AppState>,
    req: Ruma<logout::v3::Request>,
) -> Result<logout::v3::Response> {
    let user = req.user()?;
    state.store.delete_access_token(&user.token_hash).await?;
    state.tokens.forget_user(&user.user_id);
    Ok(logout::v3::Response::new().into())
}

/// `POST /_matrix/client/v3/logout/all`.
pub async fn logout_all_route(
    State(state): State<AppState>,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    let user = req.user()?;
    state
        .store
        .delete_user_access_tokens(user.user_id.as_str(), None)
        .await?;
    state.tokens.forget_user(&user.user_id);
    Ok(logout_all::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/account/whoami`.
pub async fn whoami_route(req: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response> {
    let user = req.user()?;
    let mut response = whoami::v3::Response::new(user.user_id.clone(), false);
    response.device_id = Some(user.device_id.clone());
    Ok(response.into())
}

/// `GET /_matrix/client/v3/register/available`.
pub async fn get_username_availability_route(
    State(state): State<AppState>,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    let user_id = users::user_id_for(&req.territory, &req.body.username)?;
    if state.store.get_account(user_id.as_str()).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_USER_IN_USE",
            "User ID already taken",
        ));
    }
    Ok(get_username_availability::v3::Response::new(true).into())
}

/// `POST /_matrix/client/v3/register`: `m.login.dummy` when open registration is enabled,
/// `m.login.registration_token` when registration tokens are configured.
pub async fn register_route(
    State(state): State<AppState>,
    req: Ruma<register::v3::Request>,
) -> Result<register::v3::Response> {
    let territory = req.territory.clone();
    let mut body = req.body;
    // A full user ID as the username: ours is its localpart; another territory's is told where
    // its node is (first, so the client learns it whatever this node's registration rules).
    if let Some(Ok(full)) = body
        .username
        .as_deref()
        .filter(|name| name.starts_with('@'))
        .map(UserId::parse)
    {
        if full.server_name().as_str() != territory.server_name() {
            return Err(crate::registry::wrong_territory(&state, &full));
        }
        body.username = Some(full.localpart().to_owned());
    }
    let tokens = state.config.registration_tokens()?;
    let open = state.config.registration.enabled;
    if !open && tokens.is_empty() {
        return Err(ApiError::forbidden(
            "Registration is disabled on this server",
        ));
    }
    if body.kind == register::RegistrationKind::Guest {
        return Err(ApiError::forbidden("Guest access is disabled"));
    }
    let authorised = match &body.auth {
        Some(AuthData::Dummy(_)) => open,
        Some(AuthData::RegistrationToken(given)) => {
            tokens.iter().any(|t| t.expose() == given.token)
        }
        _ => false,
    };
    if !authorised {
        // User-interactive auth: the flows this server offers.
        let mut flows = Vec::new();
        if open {
            flows.push(AuthFlow::new(vec![AuthType::Dummy]));
        }
        if !tokens.is_empty() {
            flows.push(AuthFlow::new(vec![AuthType::RegistrationToken]));
        }
        let mut info = UiaaInfo::new(flows);
        info.session = Some(users::new_device_id()?.to_string());
        let mut error = ApiError::new(StatusCode::UNAUTHORIZED, "", "");
        if body.auth.is_some() {
            error = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "M_FORBIDDEN",
                "Invalid registration token",
            );
        }
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&info) {
            error.extra.extend(map);
        }
        return Err(error);
    }
    let localpart = match &body.username {
        Some(name) => name.to_lowercase(),
        None => users::new_device_id()?.as_str().to_lowercase(),
    };
    let (user_id, session) = users::register(
        &state,
        &territory,
        NewUser {
            localpart: &localpart,
            password: body.password,
            device_id: body.device_id,
            display_name: None,
            device_display_name: body.initial_device_display_name.as_deref(),
            is_admin: false,
            inhibit_login: body.inhibit_login,
        },
    )
    .await?;
    let mut response = register::v3::Response::new(user_id);
    if let Some(session) = session {
        response.access_token = Some(session.access_token);
        response.device_id = Some(session.device_id);
    }
    Ok(response.into())
}

/// A device as clients see it; absent fields are left out (ruma would send `null`, which the
/// spec's schema does not allow).
fn device_json(d: unitas_storage::Device) -> serde_json::Value {
    let mut device = serde_json::json!({"device_id": d.device_id});
    if let Some(name) = d.display_name {
        device["display_name"] = name.into();
    }
    if let Some(ip) = d.last_seen_ip {
        device["last_seen_ip"] = ip.into();
    }
    if let Some(ts) = d.last_seen_ts {
        device["last_seen_ts"] = ts.into();
    }
    device
}

/// `GET /_matrix/client/v3/devices`.
pub async fn get_devices_route(
    State(state): State<AppState>,
    req: Ruma<get_devices::v3::Request>,
) -> std::result::Result<Json<serde_json::Value>, ApiError> {
    let user = req.user()?;
    let devices = state.store.list_devices(user.user_id.as_str()).await?;
    let devices: Vec<_> = devices.into_iter().map(device_json).collect();
    Ok(Json(serde_json::json!({"devices": devices})))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`.
pub async fn get_device_route(
    State(state): State<AppState>,
    req: Ruma<get_device::v3::Request>,
) -> std::result::Result<Json<serde_json::Value>, ApiError> {
    let user = req.user()?;
    let device = state
        .store
        .get_device(user.user_id.as_str(), req.body.device_id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("No such device"))?;
    Ok(Json(device_json(device)))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`.
pub async fn update_device_route(
    State(state): State<AppState>,
    req: Ruma<update_device::v3::Request>,
) -> Result<update_device::v3::Response> {
    let user = req.user()?;
    state
        .store
        .set_device_display_name(
            user.user_id.as_str(),
            req.body.device_id.as_str(),
            req.body.display_name.as_deref(),
        )
        .await?;
    crate::e2ee::device_changed(
        &state,
        user.user_id.as_str(),
        req.body.device_id.as_str(),
        true,
    )
    .await?;
    Ok(update_device::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/profile/{userId}`.
pub async fn get_profile_route(
    State(state): State<AppState>,
    req: Ruma<get_profile::v3::Request>,
) -> Result<get_profile::v3::Response> {
    let user_id = &req.body.user_id;
    if state.store.get_account(user_id.as_str()).await?.is_none() {
        return Err(ApiError::not_found("Profile not found"));
    }
    let profile = state.store.get_profile(user_id.as_str()).await?;
    let mut response = get_profile::v3::Response::new();
    if let Some(name) = profile.displayname {
        response.set("displayname".into(), name.into());
    }
    if let Some(url) = profile.avatar_url {
        response.set("avatar_url".into(), url.into());
    }
    Ok(response.into())
}

/// `PUT /_matrix/client/v3/profile/{userId}/displayname`.
pub async fn set_display_name_route(
    State(state): State<AppState>,
    req: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response> {
    let user = req.user()?;
    if req.body.user_id != user.user_id {
        return Err(ApiError::forbidden(
            "You can only set your own display name",
        ));
    }
    state
        .store
        .set_profile_field(
            user.user_id.as_str(),
            ProfileField::DisplayName,
            req.body.displayname.as_deref(),
        )
        .await?;
    super::rooms::profile_to_rooms(&state, user, "displayname", req.body.displayname.as_deref())
        .await?;
    Ok(set_display_name::v3::Response::new().into())
}

/// `PUT /_matrix/client/v3/profile/{userId}/avatar_url`.
pub async fn set_avatar_url_route(
    State(state): State<AppState>,
    req: Ruma<set_avatar_url::v3::Request>,
) -> Result<set_avatar_url::v3::Response> {
    let user = req.user()?;
    if req.body.user_id != user.user_id {
        return Err(ApiError::forbidden("You can only set your own avatar"));
    }
    let url = req.body.avatar_url.as_ref().map(|u| u.to_string());
    state
        .store
        .set_profile_field(
            user.user_id.as_str(),
            ProfileField::AvatarUrl,
            url.as_deref(),
        )
        .await?;
    super::rooms::profile_to_rooms(&state, user, "avatar_url", url.as_deref()).await?;
    Ok(set_avatar_url::v3::Response::new().into())
}

/// `GET /_matrix/client/v3/capabilities`.
pub async fn get_capabilities_route(
    State(state): State<AppState>,
    req: Ruma<get_capabilities::v3::Request>,
) -> Result<get_capabilities::v3::Response> {
    req.user()?;
    use get_capabilities::v3::{Capabilities, RoomVersionStability, RoomVersionsCapability};
    let mut capabilities = Capabilities::new();
    let available = unitas_federation::rooms::RoomVersion::SUPPORTED
        .iter()
        .filter_map(|v| ruma::RoomVersionId::try_from(*v).ok())
        .map(|v| (v, RoomVersionStability::Stable))
        .collect();
    let default = ruma::RoomVersionId::try_from(state.config.rooms.default_version.as_str())
        .map_err(|e| ApiError::internal(&e))?;
    capabilities.room_versions = RoomVersionsCapability::new(default, available);
    Ok(get_capabilities::v3::Response::new(capabilities).into())
}

/// `POST /_matrix/client/v3/user/{userId}/filter`.
pub async fn create_filter_route(
    State(state): State<AppState>,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    let user = req.user()?;
    if req.body.user_id != user.user_id {
        return Err(ApiError::forbidden("You can only create your own filters"));
    }
    let json = serde_json::to_string(&req.body.filter).map_err(|e| ApiError::internal(&e))?;
    let id = state
        .store
        .create_filter(user.user_id.as_str(), &json)
        .await?;
    Ok(create_filter::v3::Response::new(id.to_string()).into())
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`.
pub async fn get_filter_route(
    State(state): State<AppState>,
    req: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response> {
    let user = req.user()?;
    if req.body.user_id != user.user_id {
        return Err(ApiError::forbidden("You can only read your own filters"));
    }
    let id: i64 = req
        .body
        .filter_id
        .parse()
        .map_err(|_| ApiError::not_found("No such filter"))?;
    let json = state
        .store
        .get_filter(user.user_id.as_str(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("No such filter"))?;
    let filter = serde_json::from_str(&json).map_err(|e| ApiError::internal(&e))?;
    Ok(get_filter::v3::Response::new(filter).into())
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`.
pub async fn check_registration_token_validity_route(
    State(state): State<AppState>,
    req: Ruma<ruma::api::client::account::check_registration_token_validity::v1::Request>,
) -> Result<ruma::api::client::account::check_registration_token_validity::v1::Response> {
    let tokens = state.config.registration_tokens()?;
    let valid = tokens.iter().any(|t| t.expose() == req.body.token);
    Ok(
        ruma::api::client::account::check_registration_token_validity::v1::Response::new(valid)
            .into(),
    )
}

//! Accounts, devices and access tokens: the users service behind the client API.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::StatusCode;
use base64::Engine as _;
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use unitas_storage::{
    AccessTokens, Accounts, Devices, NewAccessToken, NewAccount, NewDevice, StorageError,
};

use crate::api::ApiError;
use crate::api::ruma::token_hash;
use crate::node::now_ms;
use crate::state::{AppState, HostedTerritory};

/// A fresh login: the user, its device and the token to give the client.
#[derive(Debug)]
pub struct Session {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device.
    pub device_id: OwnedDeviceId,
    /// The access token (only its digest is stored).
    pub access_token: String,
}

fn random_string(bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| ApiError::internal(&e))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// `len` random characters from `alphabet`.
pub fn random_id(len: usize, alphabet: &[u8]) -> Result<String, ApiError> {
    let mut buf = vec![0u8; len];
    getrandom::fill(&mut buf).map_err(|e| ApiError::internal(&e))?;
    Ok(buf
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect())
}

/// A new random device ID (10 capital letters, like other servers make them).
pub fn new_device_id() -> Result<OwnedDeviceId, ApiError> {
    Ok(OwnedDeviceId::from(random_id(
        10,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    )?))
}

/// Runs password work (argon2: slow and 19 MiB of memory on purpose) on one dedicated thread,
/// so it neither blocks the async executor nor leaves a 19 MiB allocator arena behind in every
/// thread of the blocking pool.
async fn on_password_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    type Job = Box<dyn FnOnce() + Send>;
    static WORKER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let sender = WORKER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("password-hashing".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(err) = spawned {
            tracing::error!(error = %err, "cannot start the password thread");
        }
        std::sync::Mutex::new(tx)
    });
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(work());
    });
    sender
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|e| ApiError::internal(&e))?;
    result.await.map_err(|e| ApiError::internal(&e))
}

/// argon2id with one of OWASP's recommended parameter sets (7 MiB, 5 passes, 1 lane): as strong
/// as the 19 MiB set, with a third of the memory per login.
fn argon2_hasher() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(7 * 1024, 5, 1, None).unwrap_or_default();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a password with argon2id (PHC string).
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    on_password_thread(move || {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| ApiError::internal(&e))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| ApiError::internal(&e))?;
        argon2_hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal(&e))
    })
    .await?
}

async fn verify_password(password: String, hash: String) -> bool {
    on_password_thread(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                argon2_hasher()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Checks a localpart per the spec's user ID grammar (lowercase historical set).
pub fn user_id_for(territory: &HostedTerritory, localpart: &str) -> Result<OwnedUserId, ApiError> {
    let valid = !localpart.is_empty()
        && localpart
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'));
    if !valid {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_USERNAME",
            "User ID may only contain a-z, 0-9, . _ = - / +",
        ));
    }
    let user_id = UserId::parse(format!("@{localpart}:{}", territory.server_name()))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", e.to_string()))?;
    if user_id.as_str().len() > 255 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_USERNAME",
            "User ID is too long",
        ));
    }
    Ok(user_id)
}

/// What a registration asks for.
#[derive(Debug, Default)]
pub struct NewUser<'a> {
    /// Localpart of the user ID.
    pub localpart: &'a str,
    /// Password (hashed before it is stored).
    pub password: Option<String>,
    /// Device ID the client wants.
    pub device_id: Option<OwnedDeviceId>,
    /// Display name of the account.
    pub display_name: Option<&'a str>,
    /// Display name of the first device.
    pub device_display_name: Option<&'a str>,
    /// Server admin.
    pub is_admin: bool,
    /// Create the account without logging in.
    pub inhibit_login: bool,
}

/// Creates an account (and its first device and token unless `inhibit_login`).
pub async fn register(
    state: &AppState,
    territory: &HostedTerritory,
    new: NewUser<'_>,
) -> Result<(OwnedUserId, Option<Session>), ApiError> {
    let NewUser {
        localpart,
        password,
        device_id,
        display_name,
        device_display_name,
        is_admin,
        inhibit_login,
    } = new;
    let user_id = user_id_for(territory, localpart)?;
    let password_hash = match password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    let created = state
        .store
        .create_account(&NewAccount {
            user_id: user_id.as_str(),
            territory: territory.config.code.as_str(),
            localpart,
            password_hash: password_hash.as_deref(),
            is_admin,
            is_guest: false,
            created_ts: now_ms(),
        })
        .await;
    match created {
        Ok(_) => {}
        Err(StorageError::Conflict { .. }) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_USER_IN_USE",
                "User ID already taken",
            ));
        }
        Err(err) => return Err(err.into()),
    }
    if let Some(name) = display_name.or(Some(localpart)) {
        use unitas_storage::{ClientData, ProfileField};
        state
            .store
            .set_profile_field(user_id.as_str(), ProfileField::DisplayName, Some(name))
            .await?;
    }
    if inhibit_login {
        return Ok((user_id, None));
    }
    let session = login(state, territory, &user_id, device_id, device_display_name).await?;
    Ok((user_id, Some(session)))
}

/// Opens a session: a device (new, or the given one re-used) and a fresh token.
pub async fn login(
    state: &AppState,
    territory: &HostedTerritory,
    user_id: &UserId,
    device_id: Option<OwnedDeviceId>,
    display_name: Option<&str>,
) -> Result<Session, ApiError> {
    let device_id = match device_id {
        Some(id) => id,
        None => new_device_id()?,
    };
    match state
        .store
        .create_device(&NewDevice {
            user_id: user_id.as_str(),
            device_id: device_id.as_str(),
            territory: territory.config.code.as_str(),
            display_name,
            created_ts: now_ms(),
        })
        .await
    {
        Ok(_) => {}
        // Logging in with an existing device ID replaces that device (and its tokens).
        Err(StorageError::Conflict { .. }) => {
            state
                .store
                .delete_device(user_id.as_str(), device_id.as_str())
                .await?;
            state.tokens.forget_user(user_id);
            state
                .store
                .create_device(&NewDevice {
                    user_id: user_id.as_str(),
                    device_id: device_id.as_str(),
                    territory: territory.config.code.as_str(),
                    display_name,
                    created_ts: now_ms(),
                })
                .await?;
        }
        Err(err) => return Err(err.into()),
    }
    let access_token = format!("ut_{}", random_string(32)?);
    state
        .store
        .create_access_token(&NewAccessToken {
            token_hash: &token_hash(&access_token),
            territory: territory.config.code.as_str(),
            user_id: user_id.as_str(),
            device_id: device_id.as_str(),
            created_ts: now_ms(),
            expires_ts: None,
        })
        .await?;
    Ok(Session {
        user_id: user_id.to_owned(),
        device_id,
        access_token,
    })
}

/// Checks a password login; `M_FORBIDDEN` for any mismatch (no hint which part was wrong).
pub async fn check_password(
    state: &AppState,
    user_id: &UserId,
    password: &str,
) -> Result<(), ApiError> {
    let forbidden = || ApiError::forbidden("Invalid username or password");
    let account = state
        .store
        .get_account(user_id.as_str())
        .await?
        .ok_or_else(forbidden)?;
    if account.deactivated_ts.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "M_USER_DEACTIVATED",
            "This account is deactivated",
        ));
    }
    let hash = account.password_hash.ok_or_else(forbidden)?;
    if verify_password(password.to_owned(), hash).await {
        Ok(())
    } else {
        Err(forbidden())
    }
}

//! The ruma <-> axum glue: `Ruma<R>` turns a request into ruma's typed request `R` (path, query,
//! body) and authenticates it per `R`'s auth scheme; `RumaResponse<T>` turns ruma's typed
//! response into an HTTP response; `route` registers a handler on every path ruma lists for `R`.
//!
//! Authentication yields a typed identity: client endpoints get a [`ClientUser`], never a
//! server; federation endpoints will get a server identity of their own.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use ruma::api::auth_scheme::{
    AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken,
    NoAuthentication,
};
use ruma::api::error::{DeserializationError, FromHttpRequestError};
use ruma::api::path_builder::PathBuilder;
use ruma::api::{IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt};
use ruma::{OwnedDeviceId, OwnedUserId};
use unitas_storage::AccessTokens;

use super::ApiError;
use crate::state::{AppState, HostedTerritory};

/// Whether an auth scheme needs, allows or ignores an access token.
pub trait TokenRule {
    /// `Some(true)`: required; `Some(false)`: optional; `None`: not used.
    const TOKEN: Option<bool>;
}

impl TokenRule for AccessToken {
    const TOKEN: Option<bool> = Some(true);
}
impl TokenRule for AccessTokenOptional {
    const TOKEN: Option<bool> = Some(false);
}
impl TokenRule for AppserviceToken {
    const TOKEN: Option<bool> = Some(true);
}
impl TokenRule for AppserviceTokenOptional {
    const TOKEN: Option<bool> = Some(false);
}
impl TokenRule for NoAuthentication {
    const TOKEN: Option<bool> = None;
}
impl TokenRule for NoAccessToken {
    const TOKEN: Option<bool> = None;
}

/// A logged-in user of this node, as an access token proves it.
#[derive(Debug, Clone)]
pub struct ClientUser {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device the token belongs to.
    pub device_id: OwnedDeviceId,
    /// SHA-256 of the token (for logout).
    pub token_hash: Vec<u8>,
    /// The user's territory.
    pub territory: Arc<HostedTerritory>,
}

/// A ruma request with the identity that sent it.
#[derive(Debug)]
pub struct Ruma<R> {
    /// The typed request.
    pub body: R,
    /// The authenticated user, when a token was given (or required).
    pub user: Option<ClientUser>,
    /// The territory the request was addressed to.
    pub territory: Arc<HostedTerritory>,
    /// Counts this request as a write of its territory until the handler is done with it.
    pub write: Option<crate::state::WriteGuard>,
}

impl<R> Ruma<R> {
    /// The authenticated user; endpoints whose scheme requires a token always have one.
    pub fn user(&self) -> Result<&ClientUser, ApiError> {
        self.user.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "M_MISSING_TOKEN",
                "Missing access token",
            )
        })
    }
}

/// SHA-256 of an access token: what the database keeps.
pub fn token_hash(token: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

fn access_token(parts: &axum::http::request::Parts) -> Option<String> {
    if let Some(token) = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(token.trim().to_owned());
    }
    let query = parts.uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// Looks a token up: the user it logs in, or `M_UNKNOWN_TOKEN`.
pub async fn authenticate(state: &AppState, token: &str) -> Result<ClientUser, ApiError> {
    let unknown = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Unknown or expired access token",
        )
    };
    let hash = token_hash(token);
    if let Some(user) = state.tokens.get(&hash, crate::node::now_ms()) {
        return Ok(user);
    }
    let row = state
        .store
        .find_access_token(&hash)
        .await?
        .ok_or_else(unknown)?;
    if row
        .expires_ts
        .is_some_and(|expires| expires <= crate::node::now_ms())
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Access token expired",
        )
        .with_extra("soft_logout", true.into()));
    }
    let territory = state
        .territories
        .all()
        .iter()
        .find(|t| t.config.code.as_str() == row.territory)
        .cloned()
        .ok_or_else(unknown)?;
    let user = ClientUser {
        user_id: OwnedUserId::try_from(row.user_id).map_err(|_| unknown())?,
        device_id: OwnedDeviceId::from(row.device_id),
        token_hash: hash,
        territory,
    };
    state.tokens.insert(user.clone(), row.expires_ts);
    Ok(user)
}

fn deserialization_error(err: FromHttpRequestError) -> ApiError {
    match err {
        FromHttpRequestError::MethodMismatch { .. } => ApiError::method_not_allowed(),
        FromHttpRequestError::Deserialization(DeserializationError::Json(e))
            if e.is_syntax() || e.is_eof() =>
        {
            ApiError::not_json(e.to_string())
        }
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            ApiError::bad_json(e.to_string())
        }
        FromHttpRequestError::Deserialization(DeserializationError::Ident(e)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", e.to_string())
        }
        FromHttpRequestError::Deserialization(other) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            other.to_string(),
        ),
        other => ApiError::bad_json(other.to_string()),
    }
}

impl<R> FromRequest<AppState> for Ruma<R>
where
    R: IncomingRequest + Send,
    R::Authentication: TokenRule,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let territory = super::Territory::from_request_parts(&mut parts, state)
            .await?
            .0;
        let path_args: Vec<String> = Path::<Vec<String>>::from_request_parts(&mut parts, state)
            .await
            .map(|Path(args)| args)
            .unwrap_or_default();
        let user = match (
            <R::Authentication as TokenRule>::TOKEN,
            access_token(&parts),
        ) {
            (Some(_), Some(token)) => Some(
                authenticate(state, &token)
                    .await
                    .map_err(IntoResponse::into_response)?,
            ),
            (Some(true), None) => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "M_MISSING_TOKEN",
                    "Missing access token",
                )
                .into_response());
            }
            _ => None,
        };
        // A territory that is being moved refuses writes; one that moved sends its users on.
        // A write is counted before the check, so an export that saw no write in progress
        // after turning the territory read-only knows none is left.
        let subject = user.as_ref().map_or(&territory, |u| &u.territory).clone();
        let is_write = !matches!(parts.method, http::Method::GET | http::Method::HEAD);
        let write = is_write.then(|| crate::state::WriteGuard::new(subject.clone()));
        crate::moves::check(state, subject.server_name(), is_write)
            .map_err(IntoResponse::into_response)?;
        if R::RATE_LIMITED
            && let Some(limiter) = &state.rate_limiter
        {
            let key = match &user {
                Some(user) => user.user_id.to_string(),
                None => parts
                    .extensions
                    .get::<crate::serve::ConnectionInfo>()
                    .map(|c| c.remote_addr.ip().to_string())
                    .unwrap_or_default(),
            };
            if let Err(wait) = limiter.check(&key) {
                let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "M_LIMIT_EXCEEDED",
                    "Too many requests",
                )
                .with_extra("retry_after_ms", wait_ms.into())
                .into_response());
            }
        }
        let limit = body_limit(state, &parts);
        let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .await
            .map_err(|_| ApiError::too_large(limit).into_response())?;
        // An empty body means "no fields" for POST/PUT (matrix-nio joins with one).
        let bytes = if bytes.is_empty() && parts.method != axum::http::Method::GET {
            Bytes::from_static(b"{}")
        } else {
            bytes
        };
        // An empty last segment (a state event with an empty state key) reaches us through the
        // shorter route: the missing arguments are empty strings.
        let mut args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        while args.len() < R::_path_parameters().len() {
            args.push("");
        }
        let http_request = axum::http::Request::from_parts(parts, &bytes[..]);
        let body = R::try_from_http_request(http_request, &args)
            .map_err(|e| deserialization_error(e).into_response())?;
        Ok(Ruma {
            body,
            user,
            territory,
            write,
        })
    }
}

/// The largest body a request may carry: uploads have the media limit, everything else the
/// server's.
pub fn body_limit(state: &AppState, parts: &axum::http::request::Parts) -> u64 {
    if is_upload(parts.method.as_str(), parts.uri.path()) {
        state.config.media.max_upload_bytes
    } else {
        state.config.server.max_request_body_bytes
    }
}

/// True for media upload requests.
pub fn is_upload(method: &str, path: &str) -> bool {
    method == "POST" && path.starts_with("/_matrix/media/") && path.ends_with("/upload")
}

/// A ruma response as an HTTP response.
#[derive(Debug)]
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                Response::from_parts(parts, axum::body::Body::from(body))
            }
            Err(err) => ApiError::internal(&err).into_response(),
        }
    }
}

impl<T> From<T> for RumaResponse<T> {
    fn from(value: T) -> Self {
        RumaResponse(value)
    }
}

/// Registers `handler` for every path and the method ruma lists for `R`.
pub fn route<R, H, T>(router: Router<AppState>, handler: H) -> Router<AppState>
where
    R: IncomingRequest,
    H: Handler<T, AppState>,
    T: 'static,
{
    let Ok(filter) = MethodFilter::try_from(R::METHOD) else {
        return router;
    };
    let mut router = router;
    for path in R::PATH_BUILDER.all_paths() {
        router = router.route(path, on(filter, handler.clone()));
        // `/state/{event_type}/{state_key}` with an empty state key ends in `/` or stops early.
        if let Some(short) = path.strip_suffix("/{state_key}") {
            router = router.route(&format!("{short}/"), on(filter, handler.clone()));
            router = router.route(short, on(filter, handler.clone()));
        }
    }
    router
}

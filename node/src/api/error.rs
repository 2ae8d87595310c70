//! `ApiError`: the one error type at the HTTP edge, rendered as a Matrix error body
//! (`{"errcode": "...", "error": "..."}`) with its status.
//!
//! Internal causes are logged here, once, and replaced by a generic message: they are never
//! sent to a client or a peer.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A Matrix error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Matrix error code (`M_NOT_FOUND`).
    pub errcode: &'static str,
    /// Human-readable message.
    pub message: String,
    /// More fields of the error body (`retry_after_ms`, `soft_logout`, UIA flows...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// Any error code with a status and message.
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            errcode,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }

    /// Adds a field to the error body.
    pub fn with_extra(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// `403 M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", message)
    }

    /// `400 M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
    }

    /// `404 M_UNRECOGNIZED`: no such endpoint.
    pub fn unrecognized() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        )
    }

    /// `405 M_UNRECOGNIZED`: the endpoint exists, not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_UNRECOGNIZED",
            "Method not allowed for this endpoint",
        )
    }

    /// `404 M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
    }

    /// `400 M_NOT_JSON`: the body is not JSON.
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", message)
    }

    /// `400 M_BAD_JSON`: JSON, but not of the expected shape.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }

    /// `413 M_TOO_LARGE`.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            format!("Request body is larger than {limit} bytes"),
        )
    }

    /// `500 M_UNKNOWN`; `cause` is logged, not sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "Internal server error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        // User-interactive auth answers 401 with flows and no errcode until a stage failed.
        if !self.errcode.is_empty() {
            body.insert("errcode".into(), self.errcode.into());
            body.insert("error".into(), self.message.into());
        }
        (self.status, Json(serde_json::Value::Object(body))).into_response()
    }
}

impl From<unitas_storage::StorageError> for ApiError {
    fn from(err: unitas_storage::StorageError) -> Self {
        use unitas_storage::StorageError as E;
        match &err {
            E::NotFound { what } => ApiError::not_found(format!("{what} not found")),
            _ => ApiError::internal(&err),
        }
    }
}

impl From<unitas_federation::KeyError> for ApiError {
    fn from(err: unitas_federation::KeyError) -> Self {
        ApiError::internal(&err)
    }
}

impl From<crate::config::ConfigError> for ApiError {
    fn from(err: crate::config::ConfigError) -> Self {
        ApiError::internal(&err)
    }
}

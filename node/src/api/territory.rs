//! Routing a request to a hosted territory by the host name it is addressed to.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::serve::ConnectionInfo;
use crate::state::{AppState, HostedTerritory};

/// What to do with a request whose host names no hosted territory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Client API: serve it as the default territory (clients often connect by IP address).
    DefaultTerritory,
    /// Federation: no territory; endpoints that need one answer 404.
    None,
}

/// The territory a request is for. Extracting it fails with `404 M_NOT_FOUND` when the request
/// was addressed to a name this node does not host.
#[derive(Debug, Clone)]
pub struct Territory(pub Arc<HostedTerritory>);

/// The host a request was addressed to: `Host` header, else the URI authority (HTTP/2), else
/// the TLS SNI name.
fn requested_host(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .or_else(|| {
            req.extensions()
                .get::<ConnectionInfo>()
                .and_then(|c| c.sni.clone())
        })
}

/// Middleware: resolves the territory and records it on the request span.
pub async fn route_territory(
    State(state): State<AppState>,
    fallback: Fallback,
    mut req: Request,
    next: Next,
) -> Response {
    let host = requested_host(&req);
    let found = match &host {
        Some(host) => state.territories.by_host(host),
        None => None,
    }
    .or_else(|| match fallback {
        Fallback::DefaultTerritory => state.territories.default_territory(),
        Fallback::None if host.is_none() => state.territories.default_territory(),
        Fallback::None => None,
    });
    match found {
        Some(territory) => {
            tracing::Span::current().record("territory", territory.config.code.as_str());
            req.extensions_mut().insert(Territory(territory.clone()));
        }
        None => {
            req.extensions_mut()
                .insert(UnknownHost(host.unwrap_or_default()));
        }
    }
    next.run(req).await
}

#[derive(Debug, Clone)]
struct UnknownHost(String);

impl<S: Send + Sync> FromRequestParts<S> for Territory {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(t) = parts.extensions.get::<Territory>() {
            return Ok(t.clone());
        }
        let host = parts
            .extensions
            .get::<UnknownHost>()
            .map(|h| h.0.clone())
            .unwrap_or_default();
        Err(ApiError::not_found(format!(
            "This node hosts no territory with the server name {host:?}"
        ))
        .into_response())
    }
}

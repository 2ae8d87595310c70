//! `GET /health`, `/live`, `/ready`: for load balancers and orchestrators (not Matrix).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// `GET /health`: the process answers HTTP.
pub async fn get_health_route() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /live`: the process is alive and its executor runs handlers.
pub async fn get_live_route() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// `GET /ready`: the database answers and every migration is applied; 503 otherwise.
pub async fn get_ready_route(State(state): State<AppState>) -> Response {
    match state.store.is_ready().await {
        Ok(true) => Json(json!({"status": "ready", "database": "ok", "migrations": "applied"}))
            .into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "database": "ok", "migrations": "pending"})),
        )
            .into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not_ready", "database": "unreachable"})),
            )
                .into_response()
        }
    }
}

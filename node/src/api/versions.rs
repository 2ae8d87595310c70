//! `GET /_matrix/client/versions` (spec: client-server API, "API Standards" / versions).

use axum::Json;
use serde_json::{Value, json};

/// Spec versions whose client-server surface this node aims to serve. Clients use this list to
/// decide which endpoints to call, so it only grows when the endpoints exist; each feature issue
/// that completes a spec version's requirements extends it. `unstable_features` lists only
/// features that are implemented: simplified sliding sync (MSC4186), which matrix-rust-sdk
/// (Element X) looks for before using it.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
    "v1.12",
];

/// `GET /_matrix/client/versions`: no authentication.
pub async fn get_versions_route() -> Json<Value> {
    Json(json!({
        "versions": SUPPORTED_VERSIONS,
        "unstable_features": {"org.matrix.simplified_msc3575": true},
    }))
}

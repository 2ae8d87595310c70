//! `/.well-known/matrix/server` and `/.well-known/matrix/client`, per territory (spec:
//! server-server API "Server discovery", client-server API "Server Discovery").

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::Territory;

/// `GET /.well-known/matrix/server`: where peers reach this territory's federation API.
pub async fn get_well_known_server_route(Territory(t): Territory) -> Json<Value> {
    Json(json!({"m.server": t.config.federation_host}))
}

/// `GET /.well-known/matrix/client`: the client API base URL of this territory, and the
/// MatrixRTC transports for Element Call when configured (`[voip] rtc_foci`).
pub async fn get_well_known_client_route(
    State(state): State<crate::state::AppState>,
    Territory(t): Territory,
) -> Json<Value> {
    let mut answer = json!({"m.homeserver": {"base_url": t.config.client_base_url}});
    if !state.config.voip.rtc_foci.is_empty() {
        answer["org.matrix.msc4143.rtc_foci"] = json!(state.config.voip.rtc_foci);
    }
    Json(answer)
}

//! The registry on a node: loading the records it starts with, and the client routing
//! endpoints (`/_unitas/client/v1/territories[/{code}]`, `/_unitas/client/v1/route`) that answer
//! from them on any node.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use unitas_territory::record::{AuthorityKey, NodeRecord, TerritoryRecord};
use unitas_territory::registry::{Registry, Route};

use crate::api::ApiError;
use crate::config::RegistryConfig;
use crate::node::StartError;
use crate::state::AppState;

fn now() -> u64 {
    u64::try_from(crate::node::now_ms()).unwrap_or(0)
}

/// The registry from the config: its authorities, and the records of `records_dir` that pass
/// the checks (the others are logged and left out).
pub fn load(config: &RegistryConfig) -> Result<Registry, StartError> {
    let authorities = config
        .authorities
        .iter()
        .map(|k| AuthorityKey::parse(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Registry(format!("registry.authorities: {e}")))?;
    let mut registry = Registry::new(authorities);
    let Some(dir) = &config.records_dir else {
        return Ok(registry);
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        StartError::Registry(format!("registry.records_dir {}: {e}", dir.display()))
    })?;
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let now = now();
    for path in paths {
        let outcome = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| offer(&mut registry, &text, now));
        if let Err(reason) = outcome {
            tracing::warn!(file = %path.display(), %reason, "registry record refused");
        }
    }
    Ok(registry)
}

/// Offers a record (territory or node, told apart by its fields) to the registry.
fn offer(registry: &mut Registry, text: &str, now: u64) -> Result<(), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if value.get("code").is_some() {
        let record: TerritoryRecord = serde_json::from_value(value).map_err(|e| e.to_string())?;
        registry
            .offer_territory(record, now)
            .map_err(|e| e.to_string())
    } else {
        let record: NodeRecord = serde_json::from_value(value).map_err(|e| e.to_string())?;
        registry.offer_node(record, now).map_err(|e| e.to_string())
    }
}

/// A route as clients see it.
fn describe(state: &AppState, route: &Route<'_>) -> Value {
    let t = route.territory;
    let hosted = state.territories.hosts(&t.server_name);
    let client_url = match (hosted, route.node) {
        (true, _) => state
            .territories
            .by_server_name(&t.server_name)
            .map(|h| h.config.client_base_url.clone()),
        (false, Some(node)) => Some(node.client_url.clone()),
        (false, None) => None,
    };
    json!({
        "code": t.code,
        "name": t.name,
        "server_name": t.server_name,
        "region": t.region,
        "node_id": t.node_id,
        "version": t.version,
        "client_url": client_url,
        "hosted_here": hosted,
    })
}

/// `GET /_unitas/client/v1/territories`: every territory the registry knows, with where its
/// users go.
pub async fn list_territories_route(State(state): State<AppState>) -> Json<Value> {
    let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
    let territories: Vec<Value> = registry
        .routes(now())
        .iter()
        .map(|r| describe(&state, r))
        .collect();
    Json(json!({ "territories": territories }))
}

/// `GET /_unitas/client/v1/territories/{code}`.
pub async fn get_territory_route(
    State(state): State<AppState>,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
    let route = registry
        .route(&code, now())
        .ok_or_else(|| ApiError::not_found(format!("No territory {code} in the registry")))?;
    Ok(Json(describe(&state, &route)))
}

/// Query of `/route`.
#[derive(Debug, serde::Deserialize)]
pub struct RouteQuery {
    user_id: Option<String>,
    territory: Option<String>,
}

/// `GET /_unitas/client/v1/route?user_id=...|territory=...`: the territory a user belongs to (by
/// the server name in the ID) or a territory by code, and its node's client URL.
pub async fn route_route(
    State(state): State<AppState>,
    Query(query): Query<RouteQuery>,
) -> Result<Json<Value>, ApiError> {
    let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
    let now = now();
    let route = match (&query.user_id, &query.territory) {
        (Some(user), None) => {
            let user = ruma::UserId::parse(user.as_str())
                .map_err(|e| ApiError::invalid_param(format!("user_id: {e}")))?;
            registry.route_server(user.server_name().as_str(), now)
        }
        (None, Some(code)) => registry.route(code, now),
        _ => {
            return Err(ApiError::invalid_param(
                "give exactly one of user_id and territory",
            ));
        }
    }
    .ok_or_else(|| ApiError::not_found("No such territory in the registry"))?;
    Ok(Json(describe(&state, &route)))
}

/// The answer to a user of another territory (login or registration here with another
/// territory's user ID):
/// `403 ORG.UNITAS.WRONG_TERRITORY` naming the user's territory and where its node is, when the
/// registry knows; a plain `403 M_FORBIDDEN` when it does not.
pub fn wrong_territory(state: &AppState, user_id: &ruma::UserId) -> ApiError {
    let server = user_id.server_name().as_str();
    let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
    let Some(route) = registry.route_server(server, now()) else {
        return ApiError::forbidden(format!("{user_id} is not a user of this territory"));
    };
    let home = describe(state, &route);
    ApiError::new(
        http::StatusCode::FORBIDDEN,
        unitas_spec::errcodes::WRONG_TERRITORY,
        format!(
            "{user_id} belongs to territory {}: log in on its node",
            route.territory.code
        ),
    )
    .with_extra("territory", home["code"].clone())
    .with_extra("home_server_name", home["server_name"].clone())
    .with_extra("home_client_url", home["client_url"].clone())
}

/// Federation's first stop for a server name: a territory in the registry goes to its node's
/// federation URL (no DNS needed between Unitas nodes); anything else through standard Matrix
/// discovery.
pub fn federation_router(
    registry: std::sync::Arc<std::sync::RwLock<Registry>>,
) -> unitas_federation::client::Router {
    std::sync::Arc::new(move |server_name: &str| {
        let registry = registry.read().unwrap_or_else(|e| e.into_inner());
        registry
            .route_server(server_name, now())
            .and_then(|route| route.node)
            .map(|node| node.federation_url.clone())
    })
}

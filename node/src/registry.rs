//! The registry on a node: loading the records it starts with, joining the DHT and publishing
//! the node's own record (its liveness) and the records of the territories it serves, and the
//! client routing endpoints (`/_unitas/client/v1/territories[/{code}]`,
//! `/_unitas/client/v1/route`, `/_unitas/client/v1/nodes`) that answer from them on any node.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use unitas_federation::SigningKey;
use unitas_territory::TerritoryCode;
use unitas_territory::dht::{DhtClient, DhtConfig, EventLoop, Multiaddr};
use unitas_territory::record::{AuthorityKey, NodeRecord, Signatures, TerritoryRecord};
use unitas_territory::registry::{Registry, Route, node_key, territory_key};

use crate::api::ApiError;
use crate::config::{Config, RegistryConfig};
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

/// Where the node key lives: `<data_dir>/keys/node.signing.key`. It signs the node record and is
/// the node's DHT identity.
pub fn node_key_file(config: &Config) -> std::path::PathBuf {
    config.server.data_dir.join("keys").join("node.signing.key")
}

/// The node's region: `[registry] region`, else the launch region of its first territory (a
/// region territory is its own region).
pub fn node_region(config: &Config) -> Result<TerritoryCode, String> {
    let region = match &config.registry.region {
        Some(region) => region.clone(),
        None => config
            .resolved_territories()
            .first()
            .and_then(|t| {
                if t.code.is_country() {
                    unitas_territory::catalog::region_of(t.code.as_str()).map(|r| r.code.to_owned())
                } else {
                    Some(t.code.to_string())
                }
            })
            .ok_or("the node's region is not known from its territories: set registry.region")?,
    };
    TerritoryCode::parse(&region).map_err(|e| e.to_string())
}

/// What the node says about itself in its record.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The node key.
    pub key: Arc<SigningKey>,
    /// Client API base URL.
    pub client_url: String,
    /// Client API base URLs of territories that have their own.
    pub client_urls: std::collections::BTreeMap<String, String>,
    /// Federation base URL.
    pub federation_url: String,
    /// Region.
    pub region: TerritoryCode,
    /// Codes of the hosted territories.
    pub territories: Vec<TerritoryCode>,
}

impl NodeIdentity {
    /// The node as its (effective) config describes it: client URL from `public_baseurl` or
    /// the listener, per-territory client URLs where they differ, federation URL from
    /// `[registry] federation_url` or the federation listener, region, hosted territories.
    pub fn of(config: &Config, key: Arc<SigningKey>) -> Result<NodeIdentity, String> {
        let client_url = config.client_base_url();
        let territories = config.resolved_territories();
        let client_urls = territories
            .iter()
            .filter(|t| t.client_base_url.trim_end_matches('/') != client_url)
            .map(|t| {
                (
                    t.code.to_string(),
                    t.client_base_url.trim_end_matches('/').to_owned(),
                )
            })
            .collect();
        let federation_url = config.federation_base_url();
        Ok(NodeIdentity {
            key,
            client_url,
            client_urls,
            federation_url,
            region: node_region(config)?,
            territories: territories.into_iter().map(|t| t.code).collect(),
        })
    }

    /// The node record as of now, signed.
    pub fn record(&self, dht_addrs: Vec<String>) -> Result<NodeRecord, String> {
        NodeRecord {
            node_id: String::new(),
            client_url: self.client_url.clone(),
            client_urls: self.client_urls.clone(),
            federation_url: self.federation_url.clone(),
            dht_addrs,
            region: self.region.clone(),
            territories: self.territories.clone(),
            updated_at: now(),
            signatures: Signatures::new(),
        }
        .sign(&self.key)
        .map_err(|e| e.to_string())
    }
}

/// Joins the DHT when `[dht] listen` is set: the swarm runs with the node key's identity and
/// feeds `registry`.
pub fn start_dht(
    config: &Config,
    key: &SigningKey,
    registry: Arc<RwLock<Registry>>,
) -> Result<Option<(DhtClient, EventLoop)>, StartError> {
    if config.dht.listen.is_empty() {
        return Ok(None);
    }
    let parse = |addrs: &[String]| {
        addrs
            .iter()
            .map(|a| a.parse::<Multiaddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StartError::Registry(format!("dht address: {e}")))
    };
    let dht_config = DhtConfig {
        listen: parse(&config.dht.listen)?,
        bootstrap: parse(&config.dht.bootstrap)?,
        sweep_interval: Duration::from_secs(config.dht.sweep_interval_secs),
        ..DhtConfig::default()
    };
    unitas_territory::dht::start(key.secret_seed(), dht_config, registry)
        .map(Some)
        .map_err(|e| StartError::Registry(e.to_string()))
}

/// Publishes the node's record (re-signed, so `updated_at` says it is alive) and the records of
/// the territories it serves, now and every `[dht] publish_interval_secs`, until `stop`.
pub async fn publish_loop(
    state: AppState,
    dht: DhtClient,
    identity: NodeIdentity,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(
        state.config.dht.publish_interval_secs.max(1),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = publish_once(&state, &dht, &identity).await {
            tracing::warn!(%error, "publishing registry records failed");
        }
    }
}

/// One round of [`publish_loop`].
pub async fn publish_once(
    state: &AppState,
    dht: &DhtClient,
    identity: &NodeIdentity,
) -> Result<(), String> {
    let addrs: Vec<String> = if state.config.dht.announce.is_empty() {
        dht.listen_addrs()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|a| unitas_territory::dht::routable(a))
            .map(ToString::to_string)
            .collect()
    } else {
        let ours = dht.peer_id();
        state
            .config
            .dht
            .announce
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .map(|a| a.with_p2p(ours).unwrap_or_else(|a| a).to_string())
            .collect()
    };
    let record = identity.record(addrs)?;
    let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
    dht.publish(node_key(&record.node_id), value)
        .await
        .map_err(|e| e.to_string())?;
    // The territory records naming this node for territories it hosts.
    let served: Vec<TerritoryRecord> = {
        let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
        registry
            .routes(now())
            .iter()
            .filter(|r| {
                r.territory.node_id == record.node_id
                    && state.territories.hosts(&r.territory.server_name)
            })
            .map(|r| r.territory.clone())
            .collect()
    };
    for territory in served {
        let value = serde_json::to_vec(&territory).map_err(|e| e.to_string())?;
        dht.publish(territory_key(territory.code.as_str()), value)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Asks the DHT for a territory's record (and its node's) when the registry lacks it, so a
/// route asked of any node is answered even before that node's sweep met the record.
async fn learn(state: &AppState, code: &str) {
    let Some(dht) = &state.dht else { return };
    let code = unitas_territory::catalog::iso_code(code).to_owned();
    // Only shipped codes are looked up: anyone may call this, with any string.
    if unitas_territory::catalog::country(&code).is_none()
        && unitas_territory::catalog::region(&code).is_none()
    {
        return;
    }
    let missing_node = {
        let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
        match registry.route(&code, now()) {
            Some(route) if route.node.is_some() => return,
            Some(route) => Some(route.territory.node_id.clone()),
            None => None,
        }
    };
    let ask = async {
        if missing_node.is_none() {
            let _ = dht.lookup(territory_key(&code)).await;
        }
        let node_id = {
            let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
            registry
                .route(&code, now())
                .filter(|r| r.node.is_none())
                .map(|r| r.territory.node_id.clone())
        };
        if let Some(node_id) = node_id {
            let _ = dht.lookup(node_key(&node_id)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), ask).await;
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
    // A territory that moved away is served by its new node, whatever the config says.
    let hosted = state.territories.hosts(&t.server_name)
        && !state
            .moves
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .has_moved(&t.server_name);
    let client_url = match (hosted, route.node) {
        (true, _) => state
            .territories
            .by_server_name(&t.server_name)
            .map(|h| h.config.client_base_url.clone()),
        (false, Some(node)) => Some(node.client_url_for(t.code.as_str()).to_owned()),
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
        "node_last_seen_ms": route.node.map(|n| n.updated_at),
        "state": state.territories.hosts(&t.server_name).then(|| {
            let moves = state.moves.read().unwrap_or_else(|e| e.into_inner());
            let drained = state
                .territories
                .by_server_name(&t.server_name)
                .is_none_or(|h| h.writes_drained());
            if moves.has_moved(&t.server_name) {
                "moved"
            } else if moves.is_read_only(&t.server_name) && drained {
                "read_only"
            } else if moves.is_read_only(&t.server_name) {
                // Writes that began before the mark are still running.
                "draining"
            } else {
                "serving"
            }
        }),
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
    learn(&state, &code).await;
    let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
    let route = registry
        .route(&code, now())
        .ok_or_else(|| ApiError::not_found(format!("No territory {code} in the registry")))?;
    let mut answer = describe(&state, &route);
    answer["record"] = serde_json::to_value(route.territory).unwrap_or_default();
    Ok(Json(answer))
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
    if let (None, Some(code)) = (&query.user_id, &query.territory) {
        learn(&state, code).await;
    }
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

/// `GET /_unitas/client/v1/nodes`: every node record this node knows (public: URLs, region,
/// territories, and `updated_at`, the last time the node republished it, i.e. was seen alive).
pub async fn list_nodes_route(State(state): State<AppState>) -> Json<Value> {
    let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
    let nodes: Vec<Value> = registry
        .nodes()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "client_url": n.client_url,
                "federation_url": n.federation_url,
                "dht_addrs": n.dht_addrs,
                "region": n.region,
                "territories": n.territories,
                "updated_at": n.updated_at,
            })
        })
        .collect();
    Json(json!({ "nodes": nodes, "now": now() }))
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

/// The answer to a user of a territory that moved from this node to another one: `403
/// ORG.UNITAS.WRONG_TERRITORY` with the new node's client URL from the registry.
pub fn moved_territory(state: &AppState, server_name: &str) -> ApiError {
    let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
    let Some(route) = registry.route_server(server_name, now()) else {
        return ApiError::forbidden(format!("{server_name} moved to another node"));
    };
    let code = route.territory.code.to_string();
    let client_url = route.node.map(|n| n.client_url_for(&code).to_owned());
    ApiError::new(
        http::StatusCode::FORBIDDEN,
        unitas_spec::errcodes::WRONG_TERRITORY,
        format!("territory {code} moved to another node: use it"),
    )
    .with_extra("territory", code.into())
    .with_extra("home_server_name", server_name.into())
    .with_extra("home_client_url", client_url.into())
}

/// Federation's first stop for a server name: a territory in the registry goes to its node's
/// federation URL (no DNS needed between Unitas nodes); anything else through standard Matrix
/// discovery.
pub fn federation_router(registry: Arc<RwLock<Registry>>) -> unitas_federation::client::Router {
    Arc::new(move |server_name: &str| {
        let registry = registry.read().unwrap_or_else(|e| e.into_inner());
        registry
            .route_server(server_name, now())
            .and_then(|route| route.node)
            .map(|node| node.federation_url.clone())
    })
}

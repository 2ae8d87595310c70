//! A territory moving to another node, as the old node sees it.
//!
//! `unitas territory export` marks the territory read-only in the database, noting the registry
//! record version in force. A running node reads the marks every [`CHECK_INTERVAL`]:
//! - read-only: reads are served, every write (any client request but GET/HEAD) of its users
//!   gets `403 ORG.UNITAS.TERRITORY_READ_ONLY`;
//! - moved: once a newer record of the territory names another node, its users are answered
//!   `403 ORG.UNITAS.WRONG_TERRITORY` with the new node's client URL on every request, and the
//!   rooms treat its server name as remote (their events reach the new node over federation);
//! - rolled back: a newer record naming this node again ends the read-only state (the mark is
//!   cleared) and the server name is ours again;
//! - the other side of a rollback: a territory this node was named for (it imported it) whose
//!   newer record names another node gets the read-only mark here by itself (with the version
//!   that named this node, kept in the database), so it is "moved" from then on, across
//!   restarts too.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use unitas_storage::TerritoryTransfer;

use crate::api::ApiError;
use crate::state::AppState;

/// How often the marks and the registry are looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Hosted territories that are read-only or gone, by server name.
#[derive(Debug, Default)]
pub struct Moves {
    /// Read-only territories: server name -> registry version at export.
    read_only: HashMap<String, i64>,
    /// Territories whose registry record names another node now.
    moved: HashSet<String>,
}

impl Moves {
    /// Whether requests for `server_name` may write.
    pub fn is_read_only(&self, server_name: &str) -> bool {
        self.read_only.contains_key(server_name)
    }

    /// Whether `server_name` moved to another node.
    pub fn has_moved(&self, server_name: &str) -> bool {
        self.moved.contains(server_name)
    }
}

/// The answer to a request of a user of a territory that is read-only or moved, if any.
pub fn check(state: &AppState, server_name: &str, write: bool) -> Result<(), ApiError> {
    let moves = state.moves.read().unwrap_or_else(|e| e.into_inner());
    if moves.has_moved(server_name) {
        drop(moves);
        return Err(crate::registry::moved_territory(state, server_name));
    }
    if write && moves.is_read_only(server_name) {
        return Err(ApiError::new(
            http::StatusCode::FORBIDDEN,
            unitas_spec::errcodes::TERRITORY_READ_ONLY,
            format!("{server_name} is read-only while it moves to another node"),
        ));
    }
    Ok(())
}

/// One look at the marks and the registry (see the module doc); `node_id` is this node's.
pub async fn refresh(state: &AppState, node_id: Option<&str>) -> Result<(), String> {
    let now = u64::try_from(crate::node::now_ms()).unwrap_or(0);
    if let Some(ours) = node_id {
        handed_over(state, ours, now).await?;
    }
    let marks = state
        .store
        .list_read_only_territories()
        .await
        .map_err(|e| e.to_string())?;
    let mut read_only = HashMap::new();
    let mut moved = HashSet::new();
    for (code, _, version) in marks {
        let Some(hosted) = state
            .territories
            .all()
            .iter()
            .find(|t| t.config.code.as_str() == code)
        else {
            continue;
        };
        let server_name = hosted.server_name().to_owned();
        let newer = {
            let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
            registry
                .route(&code, now)
                .filter(|r| i64::try_from(r.territory.version).unwrap_or(i64::MAX) > version)
                .map(|r| r.territory.node_id.clone())
        };
        match (newer, node_id) {
            (Some(named), Some(ours)) if named == ours => {
                // Rolled back: the authority named this node again.
                state
                    .store
                    .set_territory_read_only(&code, None)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(territory = %code, "territory served here again (rollback)");
                continue;
            }
            (Some(_), _) => {
                moved.insert(server_name.clone());
            }
            (None, _) => {}
        }
        read_only.insert(server_name, version);
    }
    let released: Vec<String>;
    let claimed: Vec<String>;
    {
        let mut moves = state.moves.write().unwrap_or_else(|e| e.into_inner());
        released = moved.difference(&moves.moved).cloned().collect();
        claimed = moves.moved.difference(&moved).cloned().collect();
        moves.read_only = read_only;
        moves.moved = moved;
    }
    for server in released {
        state.rooms.release_server(&server);
        tracing::info!(%server, "territory moved to another node: its rooms federate with it");
    }
    for server in claimed {
        state.rooms.claim_server(&server);
        tracing::info!(%server, "territory served here again");
    }
    Ok(())
}

/// Notes the record versions naming this node, and marks read-only a territory whose newer
/// record names another node after one named this node (the authority moved it away, e.g. a
/// rollback to the node it came from).
async fn handed_over(state: &AppState, ours: &str, now: u64) -> Result<(), String> {
    let records: Vec<(String, u64, String)> = {
        let registry = state.registry.read().unwrap_or_else(|e| e.into_inner());
        state
            .territories
            .all()
            .iter()
            .filter_map(|t| registry.route(t.config.code.as_str(), now))
            .map(|r| {
                (
                    r.territory.code.to_string(),
                    r.territory.version,
                    r.territory.node_id.clone(),
                )
            })
            .collect()
    };
    let named: std::collections::HashMap<String, i64> = state
        .store
        .list_named_versions()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    for (code, version, node) in records {
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        if node == ours {
            if named.get(&code).is_none_or(|seen| *seen < version) {
                state
                    .store
                    .note_named_version(&code, version)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            continue;
        }
        let Some(named) = named.get(&code).copied().filter(|named| version > *named) else {
            continue;
        };
        let marked = state
            .store
            .list_read_only_territories()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .any(|(c, _, _)| *c == code);
        if !marked {
            state
                .store
                .set_territory_read_only(&code, Some((crate::node::now_ms(), named)))
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(territory = %code, version, "the registry moved the territory to another node");
        }
    }
    Ok(())
}

/// Runs [`refresh`] every [`CHECK_INTERVAL`] until `stop`.
pub async fn watch_loop(
    state: AppState,
    node_id: Option<String>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = refresh(&state, node_id.as_deref()).await {
            tracing::warn!(%error, "checking territory moves failed");
        }
    }
}

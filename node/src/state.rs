//! Shared state of the HTTP handlers, built once at start.

use std::sync::Arc;

use unitas_federation::SigningKey;
use unitas_storage::Store;

use crate::config::{Config, ResolvedTerritory};

/// One territory this node serves, with its signing key loaded.
#[derive(Debug)]
pub struct HostedTerritory {
    /// Code, server name, URLs.
    pub config: ResolvedTerritory,
    /// The territory's current signing key.
    pub key: Arc<SigningKey>,
    /// Client write requests of the territory's users in progress (a move waits for them).
    pub writes: std::sync::atomic::AtomicUsize,
}

/// Counts a write request of a territory while it lives.
#[derive(Debug)]
pub struct WriteGuard(Arc<HostedTerritory>);

impl WriteGuard {
    /// Counts a write for `territory` until the guard is dropped.
    pub fn new(territory: Arc<HostedTerritory>) -> WriteGuard {
        territory
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        WriteGuard(territory)
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.0
            .writes
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl HostedTerritory {
    /// Whether no write request of the territory is in progress.
    pub fn writes_drained(&self) -> bool {
        self.writes.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// The territory's server name.
    pub fn server_name(&self) -> &str {
        &self.config.server_name
    }

    /// The territory as a federation request signer.
    pub fn local_server(&self) -> unitas_federation::inbound::LocalServer {
        unitas_federation::inbound::LocalServer {
            name: self.config.server_name.clone(),
            key: self.key.clone(),
        }
    }

    /// Host names (with and without port) requests for this territory may be addressed to.
    fn names(&self) -> impl Iterator<Item = String> + '_ {
        let client_host = url::Url::parse(&self.config.client_base_url)
            .ok()
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            });
        [
            Some(self.config.server_name.clone()),
            Some(self.config.federation_host.clone()),
            client_host,
        ]
        .into_iter()
        .flatten()
        .map(|n| n.to_ascii_lowercase())
    }
}

/// The territories of this node; the first is the default.
#[derive(Debug, Clone)]
pub struct HostedTerritories {
    list: Vec<Arc<HostedTerritory>>,
}

impl HostedTerritories {
    /// Wraps the loaded territories (at least one).
    pub fn new(list: Vec<HostedTerritory>) -> HostedTerritories {
        HostedTerritories {
            list: list.into_iter().map(Arc::new).collect(),
        }
    }

    /// All territories.
    pub fn all(&self) -> &[Arc<HostedTerritory>] {
        &self.list
    }

    /// The default territory (the first configured).
    pub fn default_territory(&self) -> Option<&Arc<HostedTerritory>> {
        self.list.first()
    }

    /// The territory whose server name is exactly `name`.
    pub fn by_server_name(&self, name: &str) -> Option<&Arc<HostedTerritory>> {
        self.list.iter().find(|t| t.server_name() == name)
    }

    /// Whether `name` is the server name of one of our territories.
    pub fn hosts(&self, name: &str) -> bool {
        self.by_server_name(name).is_some()
    }

    /// The territory a request addressed to `host` (a Host header, `name[:port]`) is for:
    /// exact match on a name with port first, then on the host name alone. With one
    /// territory, that one whatever the host.
    pub fn by_host(&self, host: &str) -> Option<&Arc<HostedTerritory>> {
        if self.list.len() == 1 {
            return self.list.first();
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(t) = self.list.iter().find(|t| t.names().any(|n| n == host)) {
            return Some(t);
        }
        let bare = host_without_port(&host);
        self.list
            .iter()
            .find(|t| t.names().any(|n| host_without_port(&n) == bare))
    }
}

/// The host of a server name or Host header: `name:port` -> `name`, `[v6]:port` -> `[v6]`.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// What every handler can reach: the node's services behind one `Arc` (a request clones the
/// state once; cloning every service's handles cost about 1.5 % of a busy node's CPU).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// The state of a node with these services.
    pub fn new(services: Services) -> AppState {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The node's services (reached through [`AppState`]).
#[derive(Debug)]
pub struct Services {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Store,
    /// Hosted territories.
    pub territories: HostedTerritories,
    /// Rooms: the one write path for room events.
    pub rooms: unitas_federation::rooms::Rooms,
    /// Account data, receipts and typing positions.
    pub ephemeral: Arc<crate::ephemeral::Ephemeral>,
    /// Who is online.
    pub presence: Arc<crate::presence::Presence>,
    /// Push rule evaluation and push gateway delivery.
    pub push: Arc<crate::push::Push>,
    /// Sliding sync connections (MSC4186).
    pub sliding: Arc<crate::api::client::sliding::Connections>,
    /// The territory registry as this node knows it.
    pub registry: Arc<std::sync::RwLock<unitas_territory::registry::Registry>>,
    /// Hosted territories that are read-only (being exported) or moved to another node.
    pub moves: Arc<std::sync::RwLock<crate::moves::Moves>>,
    /// The registry's DHT, when `[dht] listen` is set.
    pub dht: Option<unitas_territory::dht::DhtClient>,
    /// Stream positions of timeline events read by syncs.
    pub event_positions: crate::api::client::sync::EventPositions,
    /// Transaction IDs of the devices that sent since start.
    pub transactions: Arc<crate::tokens::TransactionCache>,
    /// Access tokens already looked up.
    pub tokens: Arc<crate::tokens::TokenCache>,
    /// Client rate limits (`None` when disabled).
    pub rate_limiter: Option<Arc<crate::ratelimit::RateLimiter>>,
    /// Outgoing federation requests.
    pub federation: Arc<unitas_federation::client::FederationClient>,
    /// The outbound federation queue.
    pub sender: unitas_federation::sender::FederationSender,
    /// Received events and remote joins.
    pub inbound: Arc<unitas_federation::inbound::Inbound>,
    /// Other servers' verify keys.
    pub key_ring: Arc<unitas_federation::key_ring::KeyRing>,
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(host_without_port("a.example:8448"), "a.example");
        assert_eq!(host_without_port("a.example"), "a.example");
        assert_eq!(host_without_port("[::1]:8448"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }
}

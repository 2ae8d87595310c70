//! Starting and stopping a node.
//!
//! Start order (each step fails with one clear [`StartError`], before the next touches anything):
//! 1. bind both listeners (a port in use fails here, before any file is written);
//! 2. open the database and apply migrations;
//! 3. load or generate each territory's signing key, and the TLS certificate;
//! 4. record the territories and their current keys in the database;
//! 5. serve; spawn upkeep (SQLite WAL checkpoints).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use unitas_federation::rooms::Rooms;
use unitas_federation::{KeyError, SigningKey};
use unitas_storage::{SigningKeys, StorageError, Store, Territories};

use crate::api;
use crate::config::{Config, ConfigError};
use crate::serve::serve;
use crate::state::{AppState, HostedTerritories, HostedTerritory, host_without_port};
use crate::tls::{self, TlsError};

/// Why a node could not start. Each message names the cause and, where there is one, the
/// config key or flag to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Invalid configuration or an unreadable secret file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        /// Which listener, with its config key.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Cause (e.g. address in use).
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened, reached or migrated.
    #[error("database: {0}")]
    Storage(#[from] StorageError),
    /// A territory's signing key could not be loaded or made.
    #[error("territory {territory}: {source}")]
    Key {
        /// Territory code.
        territory: String,
        /// Cause.
        #[source]
        source: KeyError,
    },
    /// The registry settings are unusable (a malformed authority key, an unreadable
    /// records directory).
    #[error("registry: {0}")]
    Registry(String),
    /// The federation TLS certificate could not be loaded or made.
    #[error("federation TLS: {0}")]
    Tls(#[from] TlsError),
    /// The federation client could not be set up.
    #[error("federation client: {0}")]
    Federation(String),
}

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
#[derive(Debug)]
pub struct Node {
    /// Where the client API listens.
    pub client_addr: SocketAddr,
    /// Where the federation API listens (HTTPS).
    pub federation_addr: SocketAddr,
    /// Shared state (for tests and admin commands).
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Resolves when `rx` says shutdown (or its sender is gone).
async fn shutdown_signalled(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

impl Node {
    /// Starts a node from a validated config (see the module doc for the order of steps).
    pub async fn start(config: Config) -> Result<Node, StartError> {
        config.validate()?;
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let client_listener = bind(
            "client API (server.listen / --listen)",
            config.server.listen,
        )
        .await?;
        let federation_listener = bind(
            "federation API (server.federation_listen / --federation-listen)",
            config.server.federation_listen,
        )
        .await?;
        Self::start_on(config, client_listener, federation_listener).await
    }

    /// [`Node::start`] on listeners bound by the caller (tests that must know the federation
    /// port before they can name the territory `127.0.0.1:<port>`).
    pub async fn start_on(
        mut config: Config,
        client_listener: TcpListener,
        federation_listener: TcpListener,
    ) -> Result<Node, StartError> {
        config.validate()?;
        let local_addr = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let client_addr = local_addr(&client_listener, "client API", config.server.listen)?;
        let federation_addr = local_addr(
            &federation_listener,
            "federation API",
            config.server.federation_listen,
        )?;
        // The effective config names the bound addresses (port 0 becomes the real port), so
        // every URL derived from them (well-known, node record) is reachable.
        config.server.listen = client_addr;
        config.server.federation_listen = federation_addr;

        let store = Store::connect(&config.database_url(), &config.store_options()?).await?;
        store.migrate().await?;

        let territories = load_territories(&config, &store).await?;
        let tls_config = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
            (Some(cert), Some(key)) => tls::server_config(cert, key)?,
            _ => {
                let hosts: Vec<String> = territories
                    .all()
                    .iter()
                    .flat_map(|t| {
                        [
                            t.config.server_name.clone(),
                            t.config.federation_host.clone(),
                        ]
                    })
                    .map(|name| {
                        host_without_port(&name)
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_owned()
                    })
                    .collect();
                if tls::ensure_self_signed(&config.server.data_dir, &hosts)? {
                    tracing::info!("generated a self-signed TLS certificate for federation");
                }
                let (cert, key) = tls::self_signed_paths(&config.server.data_dir);
                tls::server_config(&cert, &key)?
            }
        };

        let grace = Duration::from_secs(config.server.shutdown_grace_secs);
        let checkpoint_every = Duration::from_secs(config.storage.sqlite_checkpoint_interval_secs);
        let server_names: Vec<String> = territories
            .all()
            .iter()
            .map(|t| t.config.server_name.clone())
            .collect();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let federation = Arc::new(
            unitas_federation::client::FederationClient::new(
                unitas_federation::client::ClientOptions {
                    verify_tls: config.federation.verify_tls,
                    filter: unitas_federation::discovery::IpFilter::new(
                        config.federation.ip_range_allowlist.clone(),
                        config.federation.ip_range_denylist.clone(),
                    ),
                    timeout: Duration::from_secs(config.federation.request_timeout_secs.max(1)),
                },
            )
            .map_err(|e| StartError::Federation(e.to_string()))?,
        );
        // Our events reach other servers through the durable queue written with them.
        // The node key names this node's transactions (a territory that moved here keeps its
        // server name; its transaction IDs must not repeat the old node's).
        let (node_key, _) = unitas_federation::SigningKey::load_or_generate(
            &crate::registry::node_key_file(&config),
        )
        .map_err(|e| StartError::Registry(format!("node key: {e}")))?;
        let txn_prefix = format!("n{}", hex::encode(&node_key.public_key()[..4]));
        let node_public = node_key.public_key_base64();
        let sender = unitas_federation::sender::FederationSender::new(
            store.clone(),
            federation.clone(),
            territories
                .all()
                .iter()
                .map(|t| (t.config.server_name.clone(), t.key.clone()))
                .collect(),
            shutdown_rx.clone(),
            txn_prefix,
        );
        let (rooms, room_writer) =
            Rooms::new(store.clone(), server_names, Arc::new(sender.clone())).await?;
        let ephemeral = Arc::new(crate::ephemeral::Ephemeral::new(
            unitas_storage::ClientExtras::get_max_aux_position(&store).await?,
        ));
        let rate_limiter = config.rate_limits.enabled.then(|| {
            Arc::new(crate::ratelimit::RateLimiter::new(
                config.rate_limits.per_second,
                f64::from(config.rate_limits.burst),
            ))
        });
        let local_keys = territories
            .all()
            .iter()
            .map(|t| unitas_federation::key_ring::LocalKey {
                server_name: t.config.server_name.clone(),
                key_id: t.key.key_id(),
                public_key: t.key.public_key_base64(),
            })
            .collect();
        let key_ring = Arc::new(unitas_federation::key_ring::KeyRing::new(
            store.clone(),
            federation.clone(),
            config.federation.trusted_key_servers.clone(),
            local_keys,
        ));
        let inbound = Arc::new(unitas_federation::inbound::Inbound::new(
            rooms.clone(),
            key_ring.clone(),
            federation.clone(),
        ));
        let presence = Arc::new(crate::presence::Presence::new(config.presence.enabled));
        let push = Arc::new(
            crate::push::Push::new(&config.push)
                .map_err(|e| StartError::Federation(format!("push client: {e}")))?,
        );
        let registry = Arc::new(std::sync::RwLock::new(crate::registry::load(
            &config.registry,
        )?));
        federation.set_router(crate::registry::federation_router(registry.clone()));
        // The DHT and the node record, when [dht] listen is set.
        let mut dht_parts = None;
        if !config.dht.listen.is_empty() {
            let identity = crate::registry::NodeIdentity::of(&config, Arc::new(node_key))
                .map_err(StartError::Registry)?;
            if let Some((client, event_loop)) =
                crate::registry::start_dht(&config, &identity.key, registry.clone())?
            {
                dht_parts = Some((client, event_loop, identity));
            }
        }
        let state = AppState::new(crate::state::Services {
            inbound,
            federation,
            sender: sender.clone(),
            key_ring,
            config: config.into(),
            store: store.clone(),
            territories,
            rooms,
            ephemeral,
            presence,
            push,
            sliding: Default::default(),
            registry,
            dht: dht_parts.as_ref().map(|(client, _, _)| client.clone()),
            moves: Default::default(),
            rate_limiter,
            tokens: Default::default(),
            transactions: Default::default(),
            event_positions: Default::default(),
        });
        let mut tasks = JoinSet::new();
        sender
            .start()
            .await
            .map_err(|e| StartError::Federation(e.to_string()))?;
        // The room writer stops after the listeners drained, writing what is queued first.
        let (serving_done, serving_done_rx) = watch::channel(false);
        tasks.spawn(room_writer.run(shutdown_signalled(serving_done_rx)));
        let client = serve(
            client_listener,
            None,
            api::client_router(state.clone()),
            shutdown_signalled(shutdown_rx.clone()),
            grace,
        );
        let federation = serve(
            federation_listener,
            Some(tls_config),
            api::federation_router(state.clone()),
            shutdown_signalled(shutdown_rx.clone()),
            grace,
        );
        tasks.spawn(async move {
            tokio::join!(client, federation);
            let _ = serving_done.send(true);
        });
        // This node's ID, to tell a rollback (a record naming us again) from a move.
        let node_id = match &dht_parts {
            Some((_, _, identity)) => Some(identity.key.public_key_base64()),
            None => Some(node_public),
        };
        if let Err(error) = crate::moves::refresh(&state, node_id.as_deref()).await {
            tracing::warn!(%error, "checking territory moves failed");
        }
        tasks.spawn(crate::moves::watch_loop(
            state.clone(),
            node_id,
            shutdown_signalled(shutdown_rx.clone()),
        ));
        if let Some((client, event_loop, identity)) = dht_parts {
            tasks.spawn(event_loop.run(shutdown_signalled(shutdown_rx.clone())));
            tasks.spawn(crate::registry::publish_loop(
                state.clone(),
                client,
                identity,
                shutdown_signalled(shutdown_rx.clone()),
            ));
        }
        tasks.spawn(crate::push::evaluate_loop(
            state.clone(),
            shutdown_signalled(shutdown_rx.clone()),
        ));
        tasks.spawn(crate::push::deliver_loop(
            state.clone(),
            shutdown_signalled(shutdown_rx.clone()),
        ));
        if state.presence.enabled() {
            tasks.spawn(crate::presence::sweep_loop(
                state.clone(),
                shutdown_signalled(shutdown_rx.clone()),
            ));
        }
        if store.sqlite_path().is_some() && !checkpoint_every.is_zero() {
            tasks.spawn(checkpoint_loop(
                store,
                checkpoint_every,
                shutdown_signalled(shutdown_rx),
            ));
        }
        Ok(Node {
            client_addr,
            federation_addr,
            state,
            shutdown,
            tasks,
        })
    }

    /// The URL Matrix clients use (the configured public URL, else the bound address).
    pub fn client_url(&self) -> String {
        match &self.state.config.server.public_baseurl {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let mut config = (*self.state.config).clone();
                config.server.listen = self.client_addr;
                config.client_base_url()
            }
        }
    }

    /// Asks the node to stop: listeners close at once, in-flight requests may finish.
    pub fn trigger_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// A future that resolves once every task of the node has ended (after a shutdown).
    pub async fn wait(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(err) = result {
                tracing::error!(error = %err, "node task failed");
            }
        }
        self.state.store.close().await;
    }

    /// Stops the node and waits for it.
    pub async fn shutdown(self) {
        self.trigger_shutdown();
        self.wait().await;
    }
}

/// Loads (or generates) each territory's key and records territory and key in the database.
async fn load_territories(config: &Config, store: &Store) -> Result<HostedTerritories, StartError> {
    let now = now_ms();
    let mut hosted = Vec::new();
    for resolved in config.resolved_territories() {
        let code = resolved.code.as_str().to_owned();
        let key_error = |source| StartError::Key {
            territory: code.clone(),
            source,
        };
        store
            .ensure_territory(&code, &resolved.server_name, now)
            .await?;
        let (key, generated) =
            SigningKey::load_or_generate(&resolved.signing_key_file).map_err(key_error)?;
        if generated {
            tracing::info!(
                territory = %code,
                key_id = %key.key_id(),
                file = %resolved.signing_key_file.display(),
                "generated a signing key"
            );
        }
        store
            .record_current_signing_key(&code, &key.key_id(), &key.public_key_base64(), now)
            .await?;
        hosted.push(HostedTerritory {
            config: resolved,
            key: key.into(),
            writes: Default::default(),
        });
    }
    Ok(HostedTerritories::new(hosted))
}

/// Truncates the SQLite WAL every `every`, so it never grows without bound even when readers
/// keep SQLite's own automatic checkpoints from finishing.
async fn checkpoint_loop(
    store: Store,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut shutdown => return,
        }
        match store.checkpoint().await {
            Ok(Some(stats)) if stats.busy => {
                tracing::debug!(
                    wal_frames = stats.wal_frames,
                    "WAL checkpoint postponed by readers"
                );
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "WAL checkpoint failed; retrying next interval")
            }
        }
    }
}

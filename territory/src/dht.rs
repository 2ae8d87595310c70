//! The registry's Kademlia DHT: libp2p-kad over TCP (with DNS names) and noise and yamux, under our own
//! protocol names (`/unitas/kad/1.0.0`, `/unitas/id/1.0.0`) so it never meets the IPFS DHT.
//!
//! Split as a [`DhtClient`] (cheap to clone, used by the node's tasks and handlers) and an
//! [`EventLoop`] that owns the libp2p swarm; they talk over a channel.
//!
//! libp2p-kad does not sign records, so every record is checked by [`Registry::admit`] before it
//! is stored: on every inbound put (the behaviour runs with `StoreInserts::FilterBoth`, so
//! nothing is stored unless we store it) and on every record a lookup returns. A bad signature,
//! an unknown authority, a closed window, an older version or a record under another key's name
//! is refused and logged; whatever is taken goes into the shared [`Registry`] at once.
//!
//! Keeping records alive and reaching late nodes:
//! - the publisher (a node, for its own node record and the territories it serves) puts its
//!   records again every publish interval (the node's task, see `unitas`); kad also replicates
//!   what each node stores every [`REPLICATION_INTERVAL`];
//! - when a peer enters the routing table, every stored record whose closest known peers include
//!   it is put to it at once (the rule of the Kademlia paper), so a node that restarts or joins
//!   late gets the records from its first peers;
//! - [`FIRST_SWEEP_DELAY`] after start and then every sweep interval, the loop looks up the
//!   record of every ISO 3166-1 country and launch region, and the node record of every
//!   territory's node it lacks (after the handing-over above, so a joining network is not
//!   flooded with lookups while it forms).
//!
//! Identity: the swarm's key is the node's ed25519 key, so the libp2p peer ID and the registry
//! node ID (the unpadded base64 of the same public key) name the same node; a node record whose
//! DHT addresses carry another peer ID is refused.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{self, GetRecordOk, QueryId, QueryResult, Quorum, Record, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{PeerId, StreamProtocol, Swarm, identify, identity, noise, tcp, yamux};
use tokio::sync::{mpsc, oneshot};

pub use libp2p::Multiaddr;

use crate::record::RecordError;
use crate::registry::{Admitted, Registry, node_key, territory_key};

/// The Kademlia protocol name of the Unitas network.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/unitas/kad/1.0.0");
/// The identify protocol version of the Unitas network (peers tell each other their listen
/// addresses with it, so a node that dialled us can be routed to).
pub const IDENTIFY_PROTOCOL: &str = "/unitas/id/1.0.0";
/// How often kad re-puts every stored record to the closest peers.
pub const REPLICATION_INTERVAL: Duration = Duration::from_secs(600);
/// When the first sweep runs after start.
pub const FIRST_SWEEP_DELAY: Duration = Duration::from_secs(30);
/// How long a record lives in a node's store without being put again.
pub const RECORD_TTL: Duration = Duration::from_secs(48 * 3600);

/// How a DHT node runs.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/4001`). Empty: a client that only dials out
    /// (`unitas registry publish`).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through (`/ip4/10.0.0.5/tcp/4001`, optionally ending in `/p2p/<peer id>`).
    /// Dialled at start and again while the routing table is empty.
    pub bootstrap: Vec<Multiaddr>,
    /// Look up every country's and region's record this often (the first time
    /// [`FIRST_SWEEP_DELAY`] after start, or this interval if shorter).
    pub sweep_interval: Duration,
    /// How long one query may take.
    pub query_timeout: Duration,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            sweep_interval: Duration::from_secs(600),
            query_timeout: Duration::from_secs(20),
        }
    }
}

/// Why the DHT could not start or answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The key, transport or a listener could not be set up.
    #[error("DHT setup: {0}")]
    Setup(String),
    /// The record was refused by our own checks before it was published.
    #[error("record refused: {0}")]
    Refused(#[from] RecordError),
    /// The event loop has stopped.
    #[error("the DHT has stopped")]
    Stopped,
    /// No peer answered in time.
    #[error("no DHT peer reached: {0}")]
    NoPeers(String),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

/// A valid record a lookup found, and the peer that held it (`None`: our own store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The holder.
    pub peer: Option<PeerId>,
    /// The record's JSON.
    pub value: Vec<u8>,
}

enum Command {
    Publish {
        key: String,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), DhtError>>,
    },
    Lookup {
        key: String,
        reply: oneshot::Sender<Vec<Found>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    WaitPeers {
        count: usize,
        reply: oneshot::Sender<()>,
    },
    Peers {
        reply: oneshot::Sender<usize>,
    },
    Refused {
        reply: oneshot::Sender<u64>,
    },
    /// Tests: put a record as a misbehaving peer would, without our own checks.
    #[cfg(any(test, feature = "testing"))]
    PutUnchecked {
        key: String,
        value: Vec<u8>,
        reply: oneshot::Sender<()>,
    },
}

/// The handle the rest of the node uses.
#[derive(Debug, Clone)]
pub struct DhtClient {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Publish { .. } => "Publish",
            Command::Lookup { .. } => "Lookup",
            Command::ListenAddrs { .. } => "ListenAddrs",
            Command::WaitPeers { .. } => "WaitPeers",
            Command::Peers { .. } => "Peers",
            Command::Refused { .. } => "Refused",
            #[cfg(any(test, feature = "testing"))]
            Command::PutUnchecked { .. } => "PutUnchecked",
        })
    }
}

impl DhtClient {
    /// Our peer ID (derived from the node key).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DhtError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| DhtError::Stopped)?;
        answer.await.map_err(|_| DhtError::Stopped)
    }

    /// Checks a record as every node will, takes it into our own registry and store, and puts
    /// it to the closest peers. `Ok` once it is stored here; peers check it on arrival.
    pub async fn publish(&self, key: String, value: Vec<u8>) -> Result<(), DhtError> {
        self.ask(|reply| Command::Publish { key, value, reply })
            .await?
    }

    /// Looks a key up in the DHT; every valid record found is taken into the registry and
    /// returned with its holder.
    pub async fn lookup(&self, key: String) -> Result<Vec<Found>, DhtError> {
        self.ask(|reply| Command::Lookup { key, reply }).await
    }

    /// The addresses we listen on, each ending in `/p2p/<our peer id>` (once the first
    /// listener is up, when there are listeners).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, DhtError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Resolves once the routing table holds at least `count` peers.
    pub async fn wait_for_peers(&self, count: usize) -> Result<(), DhtError> {
        self.ask(|reply| Command::WaitPeers { count, reply }).await
    }

    /// How many peers the routing table holds.
    pub async fn peers(&self) -> Result<usize, DhtError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Puts a record to the closest peers as a misbehaving peer would, without our own checks
    /// (tests of the other nodes' defences; feature `testing`).
    #[cfg(any(test, feature = "testing"))]
    pub async fn put_unchecked(&self, key: String, value: Vec<u8>) -> Result<(), DhtError> {
        self.ask(|reply| Command::PutUnchecked { key, value, reply })
            .await
    }

    /// How many records met in the DHT were refused since start.
    pub async fn refused(&self) -> Result<u64, DhtError> {
        self.ask(|reply| Command::Refused { reply }).await
    }
}

/// The peer ID of a registry node ID (unpadded base64 ed25519 public key).
pub fn peer_id_of(node_id: &str) -> Option<PeerId> {
    let bytes = unitas_federation::keys::decode_base64(node_id)?;
    let key = identity::ed25519::PublicKey::try_from_bytes(&bytes).ok()?;
    Some(identity::PublicKey::from(key).to_peer_id())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A lookup in flight: the valid records found so far, and who asked (nobody for the loop's
/// own sweeps).
type Lookup = (Vec<Found>, Option<oneshot::Sender<Vec<Found>>>);

/// The swarm and what it waits on. Run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    registry: Arc<RwLock<Registry>>,
    config: DhtConfig,
    lookups: HashMap<QueryId, Lookup>,
    publishes: HashMap<QueryId, oneshot::Sender<Result<(), DhtError>>>,
    waiting: Vec<(usize, oneshot::Sender<()>)>,
    listen_addrs: Vec<Multiaddr>,
    addr_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    refused: u64,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer_id", self.swarm.local_peer_id())
            .finish_non_exhaustive()
    }
}

/// Sets up the DHT node with the identity of `seed` (the node key's seed; a random key for a
/// one-off client) and listens; nothing happens until [`EventLoop::run`] is polled.
pub fn start(
    seed: [u8; 32],
    config: DhtConfig,
    registry: Arc<RwLock<Registry>>,
) -> Result<(DhtClient, EventLoop), DhtError> {
    let setup = |e: &dyn std::fmt::Display| DhtError::Setup(e.to_string());
    let mut seed = seed;
    let keypair = identity::Keypair::ed25519_from_bytes(&mut seed).map_err(|e| setup(&e))?;
    let peer_id = keypair.public().to_peer_id();
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_record_ttl(Some(RECORD_TTL))
        .set_replication_interval(Some(REPLICATION_INTERVAL))
        .set_query_timeout(config.query_timeout);
    let server = !config.listen.is_empty();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        // `/dns4/eu.example/tcp/4001` peers resolve through the system resolver.
        .with_dns()
        .map_err(|e| setup(&e))?
        .with_behaviour(|key| {
            let store = MemoryStore::with_config(
                peer_id,
                MemoryStoreConfig {
                    max_value_bytes: 16 * 1024,
                    ..MemoryStoreConfig::default()
                },
            );
            Behaviour {
                kad: kad::Behaviour::with_config(peer_id, store, kad_config),
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.to_owned(),
                    key.public(),
                )),
            }
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    // Answer queries from the start (kad otherwise waits for a confirmed external address);
    // a one-off client never serves.
    swarm.behaviour_mut().kad.set_mode(Some(if server {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    }));
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| DhtError::Setup(format!("listening on {addr}: {e}")))?;
    }
    let (commands, receiver) = mpsc::channel(64);
    let mut event_loop = EventLoop {
        swarm,
        commands: receiver,
        registry,
        config,
        lookups: HashMap::new(),
        publishes: HashMap::new(),
        waiting: Vec::new(),
        listen_addrs: Vec::new(),
        addr_waiters: Vec::new(),
        refused: 0,
    };
    event_loop.dial_bootstrap();
    Ok((DhtClient { commands, peer_id }, event_loop))
}

impl EventLoop {
    /// Runs until `stop` resolves or every [`DhtClient`] is gone.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let first = tokio::time::Instant::now() + FIRST_SWEEP_DELAY.min(self.config.sweep_interval);
        let mut sweep = tokio::time::interval_at(first, self.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(Duration::from_secs(5));
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = sweep.tick() => self.sweep(),
                _ = redial.tick() => {
                    if self.routing_table_size() == 0 {
                        self.dial_bootstrap();
                    }
                }
            }
        }
    }

    fn dial_bootstrap(&mut self) {
        for addr in self.config.bootstrap.clone() {
            if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                if peer == *self.swarm.local_peer_id() {
                    continue;
                }
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "DHT bootstrap dial failed");
            }
        }
    }

    fn routing_table_size(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|bucket| bucket.num_entries())
            .sum()
    }

    /// Looks up every country's and launch region's record, and the node record of every
    /// territory's node we lack.
    fn sweep(&mut self) {
        if self.routing_table_size() == 0 {
            return;
        }
        let keys: Vec<String> = crate::catalog::countries()
            .iter()
            .map(|c| territory_key(c.code.as_str()))
            .chain(
                crate::catalog::LAUNCH_REGIONS
                    .iter()
                    .map(|r| territory_key(r.code)),
            )
            .collect();
        for key in keys {
            self.start_lookup(key, None);
        }
        self.lookup_missing_nodes();
    }

    fn lookup_missing_nodes(&mut self) {
        let missing = self
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .nodes_missing();
        for node_id in missing {
            self.start_lookup(node_key(&node_id), None);
        }
    }

    fn start_lookup(&mut self, key: String, reply: Option<oneshot::Sender<Vec<Found>>>) {
        let id = self
            .swarm
            .behaviour_mut()
            .kad
            .get_record(RecordKey::new(&key));
        self.lookups.insert(id, (Vec::new(), reply));
    }

    /// Checks a record met anywhere; stores it (replacing an older one) when it is taken.
    fn admit(&mut self, record: &Record, from: Option<PeerId>) -> Result<(), RecordError> {
        let outcome = check_addresses(record).and_then(|()| {
            let mut registry = self.registry.write().unwrap_or_else(|e| e.into_inner());
            registry.admit(record.key.as_ref(), &record.value, now_ms())
        });
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                self.refused += 1;
                tracing::warn!(
                    key = %String::from_utf8_lossy(record.key.as_ref()),
                    from = ?from,
                    %error,
                    "registry record refused"
                );
                return Err(error);
            }
        };
        let stored = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .get(&record.key)
            .is_some_and(|r| r.value == record.value);
        if !stored {
            let mut copy = record.clone();
            copy.publisher = record.publisher.or(from);
            if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(copy) {
                tracing::warn!(error = %e, "DHT store full");
            }
        }
        match outcome {
            Admitted::NewTerritory { node_id } => {
                tracing::info!(
                    key = %String::from_utf8_lossy(record.key.as_ref()),
                    "registry: new territory record"
                );
                let known = self
                    .registry
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .node(&node_id)
                    .is_some();
                if !known && self.routing_table_size() > 0 {
                    self.start_lookup(node_key(&node_id), None);
                }
            }
            Admitted::NewNode(node) => {
                if let Some(peer) = peer_id_of(&node.node_id)
                    && peer != *self.swarm.local_peer_id()
                {
                    for addr in node.dht_addrs.iter().filter_map(|a| a.parse().ok()) {
                        self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    }
                }
            }
            Admitted::Known => {}
        }
        Ok(())
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { key, value, reply } => {
                let record = Record::new(RecordKey::new(&key), value);
                if let Err(e) = self.admit(&record, None) {
                    let _ = reply.send(Err(DhtError::Refused(e)));
                    return;
                }
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, Quorum::One)
                {
                    Ok(id) => {
                        self.publishes.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(DhtError::Setup(e.to_string())));
                    }
                }
            }
            Command::Lookup { key, reply } => self.start_lookup(key, Some(reply)),
            Command::ListenAddrs { reply } => {
                if self.listen_addrs.is_empty() && !self.config.listen.is_empty() {
                    self.addr_waiters.push(reply);
                } else {
                    let _ = reply.send(self.own_addrs());
                }
            }
            Command::WaitPeers { count, reply } => {
                if self.routing_table_size() >= count {
                    let _ = reply.send(());
                } else {
                    self.waiting.push((count, reply));
                }
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.routing_table_size());
            }
            Command::Refused { reply } => {
                let _ = reply.send(self.refused);
            }
            #[cfg(any(test, feature = "testing"))]
            Command::PutUnchecked { key, value, reply } => {
                let record = Record::new(RecordKey::new(&key), value);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, Quorum::One);
                let _ = reply.send(());
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "DHT listening");
                self.listen_addrs.push(address);
                for waiter in std::mem::take(&mut self.addr_waiters) {
                    let _ = waiter.send(self.own_addrs());
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                for addr in info.listen_addrs {
                    if routable(&addr) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad_event(event),
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => {
                let _ = self.admit(&record, Some(source));
            }
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                ..
            } => {
                tracing::debug!(%peer, "DHT peer added");
                self.hand_records_to(peer);
                let size = self.routing_table_size();
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
                    .into_iter()
                    .partition(|(count, _)| size >= *count);
                self.waiting = waiting;
                for (_, reply) in ready {
                    let _ = reply.send(());
                }
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(found))) => {
                    let valid = self.admit(&found.record, found.peer).is_ok();
                    if let Some((records, _)) = self.lookups.get_mut(&id)
                        && valid
                    {
                        records.push(Found {
                            peer: found.peer,
                            value: found.record.value,
                        });
                    }
                    if step.last {
                        self.finish_lookup(id);
                    }
                }
                QueryResult::GetRecord(_) => self.finish_lookup(id),
                QueryResult::PutRecord(result) => {
                    if let Some(reply) = self.publishes.remove(&id) {
                        if let Err(e) = &result {
                            // Stored here and offered to every peer we reached; they may
                            // have none yet (a lone first node) or be down.
                            tracing::info!(error = %e, "DHT put reached no peer yet");
                        }
                        let _ = reply.send(Ok(()));
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn own_addrs(&self) -> Vec<Multiaddr> {
        let ours = *self.swarm.local_peer_id();
        self.listen_addrs
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(ours)))
            .collect()
    }

    fn finish_lookup(&mut self, id: QueryId) {
        if let Some((records, reply)) = self.lookups.remove(&id)
            && let Some(reply) = reply
        {
            let _ = reply.send(records);
        }
    }

    /// Puts every stored record to a new peer when it is among the closest we know to the
    /// record's key (so a node that joins late or restarted gets them from its first peers).
    fn hand_records_to(&mut self, peer: PeerId) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let records: Vec<Record> = kad.store_mut().records().map(|r| r.into_owned()).collect();
        for record in records {
            let target = kad::KBucketKey::new(record.key.clone());
            let close = kad
                .get_closest_local_peers(&target)
                .take(kad::K_VALUE.get())
                .any(|k| *k.preimage() == peer);
            if close {
                kad.put_record_to(record, std::iter::once(peer), Quorum::One);
            }
        }
    }
}

/// Whether an address is worth dialling (not `0.0.0.0`/`::`).
pub fn routable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// A node record's DHT addresses must name the node itself (`/p2p/<its peer id>`), so no
/// record can send peers to another node's identity.
fn check_addresses(record: &Record) -> Result<(), RecordError> {
    if !record.key.as_ref().starts_with(b"/unitas/node/") {
        return Ok(());
    }
    let node: crate::record::NodeRecord = serde_json::from_slice(&record.value)
        .map_err(|e| RecordError::Invalid(format!("node record: {e}")))?;
    let peer = peer_id_of(&node.node_id)
        .ok_or_else(|| RecordError::Invalid(format!("node_id {:?}", node.node_id)))?;
    for addr in &node.dht_addrs {
        let addr: Multiaddr = addr
            .parse()
            .map_err(|e| RecordError::Invalid(format!("dht address {addr:?}: {e}")))?;
        if let Some(Protocol::P2p(named)) = addr.iter().last()
            && named != peer
        {
            return Err(RecordError::Invalid(format!(
                "dht address {addr} names another peer than node {}",
                node.node_id
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use unitas_federation::SigningKey;

    use super::*;
    use crate::TerritoryCode;
    use crate::record::{AuthorityKey, NodeRecord, Signatures, TerritoryRecord};

    const DAY: u64 = 86_400_000;

    struct Peer {
        key: SigningKey,
        client: DhtClient,
        registry: Arc<RwLock<Registry>>,
        addr: Multiaddr,
        _stop: oneshot::Sender<()>,
    }

    async fn peer(authorities: &[&SigningKey], bootstrap: Option<&Peer>) -> Peer {
        let key = SigningKey::generate().unwrap();
        let registry = Arc::new(RwLock::new(Registry::new(
            authorities.iter().map(|k| AuthorityKey::of(k)).collect(),
        )));
        let config = DhtConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: bootstrap.map(|b| b.addr.clone()).into_iter().collect(),
            ..DhtConfig::default()
        };
        let (client, event_loop) = start(key.secret_seed(), config, registry.clone()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(event_loop.run(async move {
            let _ = stopped.await;
        }));
        let addr = client.listen_addrs().await.unwrap().pop().unwrap();
        if bootstrap.is_some() {
            client.wait_for_peers(1).await.unwrap();
        }
        Peer {
            key,
            client,
            registry,
            addr,
            _stop: stop,
        }
    }

    fn territory(node: &SigningKey, version: u64, authority: &SigningKey) -> Vec<u8> {
        let now = now_ms();
        let record = TerritoryRecord {
            code: TerritoryCode::parse("DK").unwrap(),
            name: "Denmark".into(),
            server_name: "dk.unitas.test".into(),
            node_id: node.public_key_base64(),
            region: TerritoryCode::parse("eu").unwrap(),
            version,
            not_before: now - DAY,
            not_after: now + DAY,
            signatures: Signatures::new(),
        }
        .sign(authority)
        .unwrap();
        serde_json::to_vec(&record).unwrap()
    }

    fn version_of_dk(peer: &Peer) -> Option<(u64, String)> {
        let registry = peer.registry.read().unwrap();
        registry
            .route("DK", now_ms())
            .map(|r| (r.territory.version, r.territory.node_id.clone()))
    }

    /// Waits (bounded) until `check` holds; the DHT delivers on its own schedule.
    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_spread_and_forged_or_replayed_ones_are_refused_by_every_node() {
        let authority = SigningKey::generate().unwrap();
        let forger = SigningKey::generate().unwrap();
        let a = peer(&[&authority], None).await;
        let b = peer(&[&authority], Some(&a)).await;
        let c = peer(&[&authority], Some(&a)).await;
        let all = [&a, &b, &c];

        // Version 1 published at A reaches everyone.
        a.client
            .publish(territory_key("DK"), territory(&b.key, 1, &authority))
            .await
            .unwrap();
        for p in all {
            let found = p.client.lookup(territory_key("DK")).await.unwrap();
            assert!(!found.is_empty());
            assert_eq!(version_of_dk(p), Some((1, b.key.public_key_base64())));
        }
        // Version 2 (migrated to C) replaces it everywhere.
        b.client
            .publish(territory_key("DK"), territory(&c.key, 2, &authority))
            .await
            .unwrap();
        for p in all {
            p.client.lookup(territory_key("DK")).await.unwrap();
            assert_eq!(version_of_dk(p), Some((2, c.key.public_key_base64())));
        }

        // A rogue node puts the replayed version 1 and a forged version 9 (signed by a key no
        // node trusts) to everyone, skipping the checks: every honest node refuses both, and
        // a lookup that meets the forgery in the rogue's store refuses it again.
        let rogue = peer(&[&authority], Some(&a)).await;
        rogue.client.wait_for_peers(3).await.unwrap();
        let refused_before: Vec<u64> = {
            let mut counts = Vec::new();
            for p in all {
                counts.push(p.client.refused().await.unwrap());
            }
            counts
        };
        for value in [
            territory(&b.key, 1, &authority),
            territory(&rogue.key, 9, &forger),
        ] {
            rogue
                .client
                .put_unchecked(territory_key("DK"), value)
                .await
                .unwrap();
        }
        for (p, before) in all.iter().zip(refused_before) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while p.client.refused().await.unwrap() < before + 2 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "an honest node did not refuse the replay and the forgery"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for p in all {
            let found = p.client.lookup(territory_key("DK")).await.unwrap();
            let versions: Vec<u64> = found
                .iter()
                .map(|f| {
                    serde_json::from_slice::<TerritoryRecord>(&f.value)
                        .unwrap()
                        .version
                })
                .collect();
            assert!(versions.iter().all(|v| *v == 2), "{versions:?}");
            assert_eq!(version_of_dk(p), Some((2, c.key.public_key_base64())));
        }
        // An honest node refuses to publish a forgery itself.
        assert!(matches!(
            a.client
                .publish(territory_key("DK"), territory(&a.key, 10, &forger))
                .await,
            Err(DhtError::Refused(RecordError::UnknownAuthority))
        ));

        // A node record under its own key, carried to everyone; one naming another peer in its
        // addresses is refused.
        let node = NodeRecord {
            node_id: String::new(),
            client_url: "http://127.0.0.1:1".into(),
            client_urls: Default::default(),
            federation_url: "https://127.0.0.1:2".into(),
            dht_addrs: vec![c.addr.to_string()],
            region: TerritoryCode::parse("eu").unwrap(),
            territories: vec![TerritoryCode::parse("DK").unwrap()],
            updated_at: now_ms(),
            signatures: Signatures::new(),
        };
        let signed = node.clone().sign(&c.key).unwrap();
        c.client
            .publish(
                node_key(&signed.node_id),
                serde_json::to_vec(&signed).unwrap(),
            )
            .await
            .unwrap();
        let stolen = NodeRecord {
            dht_addrs: vec![c.addr.to_string()],
            ..node
        }
        .sign(&b.key)
        .unwrap();
        assert!(matches!(
            b.client
                .publish(
                    node_key(&stolen.node_id),
                    serde_json::to_vec(&stolen).unwrap()
                )
                .await,
            Err(DhtError::Refused(RecordError::Invalid(_)))
        ));

        // A node that joins late learns the records from its first peers without asking.
        let late = peer(&[&authority], Some(&b)).await;
        until("the late node learns DK v2", || {
            version_of_dk(&late) == Some((2, c.key.public_key_base64()))
        })
        .await;
        until("the late node learns C's node record", || {
            late.registry
                .read()
                .unwrap()
                .node(&signed.node_id)
                .is_some()
        })
        .await;
    }
}

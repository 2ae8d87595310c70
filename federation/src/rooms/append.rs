//! The one write path for room events.
//!
//! ```text
//!  send_local / append_remote            (per-room lock: order and in-memory state)
//!      |  1. format checks (Pdu)          2. auth against its auth_events
//!      |  3. state before: current state when the parents are the forward extremities,
//!      |     else the parents' states (resolved when there are several)
//!      |  4. auth against the state before -> rejected: nothing stored, nothing changed
//!      |  5. auth against the current state -> soft-failed: stored, not shown, not an extremity
//!      |  6. state group for a state event (one delta row), stream position, extremities
//!      v
//!  writer task (group commit) <- batches of many appends share ONE transaction; the writer
//!      |  assigns stream positions in commit order, so a position is published only when
//!      |  every position below it is durable (a syncing client can never skip an event)
//!      |  7. durable -> publish the position (wakes waiters) -> reply
//!      v
//!  8. hand to the outbound sink for the other servers
//! ```
//!
//! State is kept as deltas ([`unitas_storage::NewStateGroup`]): a message writes no state rows at
//! all, a state event one group and one delta row, whatever the size of the room.
//!
//! Positions and state group IDs are allocated here, in memory, from the database's maxima at
//! start: one process writes a database (workers over PostgreSQL will allocate from sequences).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use ruma::{
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, UserId,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use unitas_storage::{
    EventBatch, EventRow, NewEvent, NewStateGroup, RoomEvents, RoomRow, StorageError, Store,
};

use super::auth::{self, State};
use super::build::{EventTemplate, Placement, build_pdu};
use super::pdu::{EventError, Pdu};
use super::version::RoomVersion;
use crate::keys::SigningKey;

/// Where appended events go for delivery to other servers (the durable federation queue).
pub trait OutboundSink: Send + Sync + 'static {
    /// `pdu` was appended and should reach `destinations` (never one of our own server names).
    fn enqueue(&self, pdu: &Arc<Pdu>, destinations: &[String]);
}

/// An outbound sink that drops everything (a node without federation).
#[derive(Debug, Default)]
pub struct NoOutbound;

impl OutboundSink for NoOutbound {
    fn enqueue(&self, _pdu: &Arc<Pdu>, _destinations: &[String]) {}
}

/// Failures of the append path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The event is bad; nothing was stored or changed.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The room is not known here.
    #[error("unknown room {0}")]
    UnknownRoom(OwnedRoomId),
    /// The database failed; the room's cached state was dropped and will be reloaded.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The writer task is gone (the node is shutting down).
    #[error("the event writer has stopped")]
    WriterGone,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored in the timeline at this stream position.
    Timeline(i64),
    /// Stored but soft-failed: not shown, not a forward extremity.
    SoftFailed,
    /// Stored as an outlier: known, not in the timeline, no state.
    Outlier,
    /// Already stored: nothing done.
    Duplicate,
}

/// The signing identity of a local territory.
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    /// The territory's server name.
    pub server_name: &'a str,
    /// Its key.
    pub key: &'a SigningKey,
}

/// Settings of a new room.
#[derive(Debug, Clone)]
pub struct NewRoom {
    /// Room version.
    pub version: RoomVersion,
    /// `public` or `invite`.
    pub join_rule: String,
    /// Extra state events after the defaults.
    pub initial_state: Vec<EventTemplate>,
}

/// Optional parts of a new room a client may ask for (spec: `/createRoom`).
#[derive(Debug, Clone, Default)]
pub struct RoomOptions {
    /// Extra keys of the `m.room.create` content (`type`, `m.federate`...).
    pub creation_content: serde_json::Map<String, serde_json::Value>,
    /// Keys that replace the default power levels' keys.
    pub power_levels_override: serde_json::Map<String, serde_json::Value>,
    /// Users given power 100 (trusted private chats).
    pub extra_admins: Vec<ruma::OwnedUserId>,
}

/// In-memory view of one room (derived from the database; dropped on write failures).
#[derive(Debug)]
struct RoomEntry {
    version: RoomVersion,
    created_ts: i64,
    state: State,
    state_group: Option<i64>,
    extremities: Vec<OwnedEventId>,
    max_depth: u64,
    /// Joined members per server, for outbound destinations.
    servers: HashMap<String, usize>,
    /// This node's users who are joined, invited or knocking: whose syncs a new event wakes.
    /// Shared with the writes that wake them (copied only when a membership changes).
    local_members: Members,
}

impl RoomEntry {
    /// A room with nothing but its create event yet to be appended.
    fn new(version: &RoomVersion, create: &Pdu) -> RoomEntry {
        RoomEntry {
            version: version.clone(),
            created_ts: i64::from(create.origin_server_ts.0),
            state: State::new(),
            state_group: None,
            extremities: vec![],
            max_depth: 0,
            servers: HashMap::new(),
            local_members: Members::default(),
        }
    }
}

type RoomSlot = Arc<tokio::sync::Mutex<Option<RoomEntry>>>;
type RoomGuard = tokio::sync::OwnedMutexGuard<Option<RoomEntry>>;

/// Where the writer answers a request: the stream positions of its timeline events, or why the
/// batch was not written.
type Done = oneshot::Sender<Result<Vec<i64>, StorageError>>;

struct WriteRequest {
    batch: EventBatch,
    /// Who waits for which events of the batch, in order: each gets the stream positions the
    /// writer gave its timeline events (several after [`WriteRequest::merge`]).
    done: Vec<(Done, usize)>,
}

impl WriteRequest {
    fn new(batch: EventBatch, done: Done) -> Self {
        let count = batch.events.len();
        WriteRequest {
            batch,
            done: vec![(done, count)],
        }
    }

    /// One request (one commit) for two, each waiter still answered for its own events.
    fn merge(mut self, other: WriteRequest) -> WriteRequest {
        self.batch.extend(other.batch);
        self.done.extend(other.done);
        self
    }
}

/// Marks a timeline event whose stream position the writer assigns at commit time (a value no
/// real position takes: backfilled history counts down from 0).
const POSITION_PENDING: i64 = i64::MIN;

/// Events recently used, bounded (oldest dropped first), in two queues: state events (what auth
/// checks and state lookups ask for again and again) and the rest (messages: asked for again
/// only as the prev_events of the next few events), so a busy room's messages do not push its
/// state out and are not held by the thousand.
#[derive(Default)]
struct EventCache {
    map: HashMap<OwnedEventId, (Arc<Pdu>, Option<i64>)>,
    state: VecDeque<OwnedEventId>,
    other: VecDeque<OwnedEventId>,
}

/// State events the cache holds.
const EVENT_CACHE_STATE: usize = 4_000;
/// Other events the cache holds: enough for the prev_events of a burst of concurrent appends
/// and of a received transaction (at most 50 PDUs).
const EVENT_CACHE_OTHER: usize = 512;
/// Events loaded for an event's checks, held by the check itself: the shared cache may evict
/// them meanwhile (other rooms append concurrently), and a check that misses an auth event
/// would wrongly reject.
type Preloaded = HashMap<OwnedEventId, Arc<Pdu>>;

/// Most appends one group commit carries.
const MAX_BATCH_EVENTS: usize = 2_000;
/// A group of fewer events waits once for the tasks that are ready to run (`yield_now`, which
/// also polls the sockets): requests that arrived meanwhile join the commit. A commit's cost is
/// mostly its pages, shared by its events, so larger groups cost less per event; when nothing
/// else is ready the wait is one turn of the scheduler.
const SMALL_GROUP: usize = 8;
/// How long push verdicts written alone wait for an append to share its commit (one commit per
/// message instead of two while messages keep coming; counts lag by at most this when they
/// stop).
const PUSH_DEFER: std::time::Duration = std::time::Duration::from_millis(5);
/// Most prev_events a new local event names.
const MAX_PREV_EVENTS_LOCAL: usize = 10;

impl EventCache {
    fn get(&self, id: &EventId) -> Option<(Arc<Pdu>, Option<i64>)> {
        self.map.get(id).cloned()
    }

    fn insert(&mut self, pdu: Arc<Pdu>, state_after: Option<i64>) {
        if self
            .map
            .insert(pdu.event_id.clone(), (pdu.clone(), state_after))
            .is_none()
        {
            let (order, limit) = if pdu.state_key.is_some() {
                (&mut self.state, EVENT_CACHE_STATE)
            } else {
                (&mut self.other, EVENT_CACHE_OTHER)
            };
            order.push_back(pdu.event_id.clone());
            while order.len() > limit {
                if let Some(old) = order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

struct Inner {
    store: Store,
    rooms: Mutex<HashMap<OwnedRoomId, RoomSlot>>,
    events: Mutex<EventCache>,
    next_group: AtomicI64,
    writer: mpsc::Sender<WriteRequest>,
    position: Arc<watch::Sender<i64>>,
    outbound: Arc<dyn OutboundSink>,
    /// Hosted territories' server names; a territory that moved to another node is released.
    local_servers: std::sync::RwLock<HashSet<String>>,
    /// Per local user: bumped when a committed event concerns them (their syncs wait on it).
    user_watches: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
    /// The lowest stream position handed to backfilled history (`None`: not read yet).
    history_floor: tokio::sync::Mutex<Option<i64>>,
    /// The timestamp of the last create event made here (see [`Rooms::create_ts`]).
    last_create_ts: AtomicI64,
}

/// The rooms service: the append path and room state. Cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("position", &*self.inner.position.borrow())
            .finish_non_exhaustive()
    }
}

/// The group-commit writer; run it with [`RoomWriter::run`].
pub struct RoomWriter {
    store: Store,
    requests: mpsc::Receiver<WriteRequest>,
    /// The next stream position to give out.
    next_stream: i64,
    /// Published after each commit.
    position: Arc<watch::Sender<i64>>,
    /// A write of push verdicts alone, held until the next append's commit or its deadline.
    deferred: Option<(WriteRequest, tokio::time::Instant)>,
    /// How long such a write waits ([`PUSH_DEFER`]).
    push_defer: std::time::Duration,
}

impl std::fmt::Debug for RoomWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomWriter").finish_non_exhaustive()
    }
}

impl RoomWriter {
    /// How long push verdicts written alone wait for an append to share its commit (zero:
    /// written at once).
    pub fn with_push_defer(mut self, defer: std::time::Duration) -> RoomWriter {
        self.push_defer = defer;
        self
    }

    /// Writes batches until every [`Rooms`] handle is dropped or `shutdown` completes; on
    /// shutdown, what is already queued is still written. Requests that queued up while a
    /// transaction was open are merged into the next one (group commit).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let deadline = self.deferred.as_ref().map(|(_, at)| *at);
            let first = tokio::select! {
                request = self.requests.recv() => match request {
                    Some(request) => request,
                    None => break,
                },
                () = &mut shutdown => {
                    while let Ok(request) = self.requests.try_recv() {
                        self.write(request).await;
                    }
                    break;
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if deadline.is_some() => {
                    if let Some((deferred, _)) = self.deferred.take() {
                        self.commit(deferred).await;
                    }
                    continue;
                }
            };
            self.write(first).await;
        }
        if let Some((deferred, _)) = self.deferred.take() {
            self.commit(deferred).await;
        }
    }

    /// Writes `first` and everything queued behind it, in one transaction; push verdicts alone
    /// wait for the next append (or [`PUSH_DEFER`]).
    async fn write(&mut self, first: WriteRequest) {
        let mut request = first;
        let mut waited = false;
        loop {
            while request.batch.events.len() < MAX_BATCH_EVENTS {
                match self.requests.try_recv() {
                    Ok(next) => request = request.merge(next),
                    Err(_) => break,
                }
            }
            let events = request.batch.events.len();
            if waited || events == 0 || events >= SMALL_GROUP {
                break;
            }
            waited = true;
            tokio::task::yield_now().await;
        }
        let push_only = {
            let b = &request.batch;
            b.events.is_empty()
                && b.rooms.is_empty()
                && b.state_groups.is_empty()
                && b.transactions.is_empty()
                && b.outbound.is_empty()
        };
        if push_only && !self.push_defer.is_zero() {
            self.deferred = Some(match self.deferred.take() {
                Some((held, at)) => (held.merge(request), at),
                None => (request, tokio::time::Instant::now() + self.push_defer),
            });
            return;
        }
        // The held verdicts go first (their waiters wait for no events).
        if let Some((held, _)) = self.deferred.take() {
            request = held.merge(request);
        }
        self.commit(request).await;
    }

    /// One transaction.
    async fn commit(&mut self, request: WriteRequest) {
        let WriteRequest {
            done: waiters,
            mut batch,
        } = request;
        // Positions in commit order: everything below a published position is durable.
        let first = self.next_stream;
        for event in &mut batch.events {
            if event.row.stream_ordering == Some(POSITION_PENDING) {
                event.row.stream_ordering = Some(self.next_stream);
                self.next_stream += 1;
            }
        }
        let result = self.store.persist_events(&batch).await;
        match &result {
            Ok(()) => {
                let last = self.next_stream - 1;
                if last >= first {
                    self.position.send_modify(|p| *p = (*p).max(last));
                }
            }
            Err(err) => {
                // Nothing was written: the positions are given out again.
                self.next_stream = first;
                tracing::error!(error = %err, events = batch.events.len(), "event batch not written");
            }
        }
        let mut streams = batch.events.iter().map(|e| e.row.stream_ordering);
        for (waiter, count) in waiters {
            let mine: Vec<i64> = streams.by_ref().take(count).flatten().collect();
            let _ = waiter.send(match &result {
                Ok(()) => Ok(mine),
                Err(err) => Err(StorageError::Corrupt(format!("batch write failed: {err}"))),
            });
        }
    }
}

fn now_ts() -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch::now()
}

fn membership(pdu: &Pdu) -> Option<String> {
    if pdu.kind.to_string() != "m.room.member" {
        return None;
    }
    let content: serde_json::Value = serde_json::from_str(pdu.content.get()).ok()?;
    content.get("membership")?.as_str().map(str::to_owned)
}

fn server_of(user_id: &str) -> Option<&str> {
    user_id.split_once(':').map(|(_, server)| server)
}

impl Rooms {
    /// Builds the service over `store`. `local_servers` are the hosted territories' server
    /// names (never outbound destinations).
    pub async fn new(
        store: Store,
        local_servers: impl IntoIterator<Item = String>,
        outbound: Arc<dyn OutboundSink>,
    ) -> Result<(Rooms, RoomWriter), StorageError> {
        let (max_stream, max_group) = store.get_max_ids().await?;
        let (writer, requests) = mpsc::channel(4 * MAX_BATCH_EVENTS);
        let position = Arc::new(watch::channel(max_stream).0);
        let inner = Inner {
            store: store.clone(),
            rooms: Mutex::new(HashMap::new()),
            events: Mutex::new(EventCache::default()),
            next_group: AtomicI64::new(max_group + 1),
            writer,
            position: position.clone(),
            outbound,
            local_servers: std::sync::RwLock::new(local_servers.into_iter().collect()),
            user_watches: Mutex::new(HashMap::new()),
            history_floor: tokio::sync::Mutex::new(None),
            last_create_ts: AtomicI64::new(0),
        };
        let writer = RoomWriter {
            store,
            requests,
            next_stream: max_stream + 1,
            position,
            deferred: None,
            push_defer: PUSH_DEFER,
        };
        Ok((
            Rooms {
                inner: Arc::new(inner),
            },
            writer,
        ))
    }

    /// A watch that changes whenever a committed event concerns `user` (an event in a room they
    /// are in, invited to or knocking on, or a change of their membership). Subscribe before
    /// reading the position, then wait: nothing is missed.
    pub fn subscribe_user(&self, user: &UserId) -> watch::Receiver<u64> {
        let mut watches = self
            .inner
            .user_watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if watches.len() > 10_000 {
            watches.retain(|_, tx| tx.receiver_count() > 0);
        }
        watches
            .entry(user.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the waiting syncs of `users` (something of theirs changed outside the event
    /// stream, such as their unread counts).
    pub fn wake<'a>(&self, users: impl Iterator<Item = &'a OwnedUserId>) {
        let watches = self
            .inner
            .user_watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for user in users {
            if let Some(tx) = watches.get(user) {
                bump(tx);
            }
        }
    }

    /// Wakes the syncs of a room's local members and of `extra` users: whichever is smaller
    /// is walked, the users with a waiting sync or the members (a room of 10,000 local members
    /// with a few syncing costs a few lookups per event).
    fn wake_users(&self, wake: &Wake) {
        let watches = self
            .inner
            .user_watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let members = wake
            .members
            .as_ref()
            .map(|m| m.read().unwrap_or_else(|e| e.into_inner()));
        if let Some(members) = &members {
            if watches.len() <= members.len() {
                for (user, tx) in watches.iter() {
                    if members.contains(user) {
                        bump(tx);
                    }
                }
            } else {
                for user in members.iter() {
                    if let Some(tx) = watches.get(user) {
                        bump(tx);
                    }
                }
            }
        }
        for user in &wake.extra {
            if members.as_ref().is_some_and(|m| m.contains(user)) {
                continue;
            }
            if let Some(tx) = watches.get(user) {
                bump(tx);
            }
        }
    }

    /// Counts a member event of the state into the joined servers and the local members.
    fn count_member(
        &self,
        user: &str,
        pdu: &Pdu,
        servers: &mut HashMap<String, usize>,
        local_members: &mut HashSet<OwnedUserId>,
    ) {
        let membership = membership(pdu);
        if membership.as_deref() == Some("join")
            && let Some(server) = server_of(user)
        {
            *servers.entry(server.to_owned()).or_insert(0) += 1;
        }
        if matches!(membership.as_deref(), Some("join" | "invite" | "knock"))
            && self.is_local(user)
            && let Ok(user) = OwnedUserId::try_from(user)
        {
            local_members.insert(user);
        }
    }

    fn is_local(&self, user_id: &str) -> bool {
        server_of(user_id).is_some_and(|server| self.is_local_server(server))
    }

    /// Whether `server` is one of our territories.
    pub fn is_local_server(&self, server: &str) -> bool {
        self.inner
            .local_servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(server)
    }

    /// Stops treating `server` as ours: its territory moved to another node, which now gets
    /// our rooms' events over federation like any other server. Returns whether it was ours.
    pub fn release_server(&self, server: &str) -> bool {
        self.inner
            .local_servers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(server)
    }

    /// Treats `server` as ours again (a move rolled back). Returns whether it was not ours.
    pub fn claim_server(&self, server: &str) -> bool {
        self.inner
            .local_servers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server.to_owned())
    }

    /// The durable stream position, for waiters (sync): changes after each group commit.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.inner.position.subscribe()
    }

    fn slot(&self, room_id: &RoomId) -> RoomSlot {
        let mut rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.entry(room_id.to_owned()).or_default().clone()
    }

    /// A room's slot, locked, with the room loaded from the database when it is not in memory
    /// (`None` inside for an unknown room). An unknown room's slot leaves the map again, unless
    /// someone else holds it (a room being created keeps the one slot every appender shares):
    /// clients may name any room ID.
    async fn lock_room(&self, room_id: &RoomId) -> Result<(RoomSlot, RoomGuard), AppendError> {
        let slot = self.slot(room_id);
        let mut guard = Arc::clone(&slot).lock_owned().await;
        if guard.is_none() {
            *guard = self.load_room(room_id).await?;
            if guard.is_none() {
                let mut rooms = self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner());
                // The map, `slot` and the guard: nobody else.
                if rooms.get(room_id).is_some_and(|s| Arc::ptr_eq(s, &slot))
                    && Arc::strong_count(&slot) <= 3
                {
                    rooms.remove(room_id);
                }
            }
        }
        Ok((slot, guard))
    }

    /// Whether an event is already known (cache, then database): appending it again is a no-op.
    async fn is_stored(&self, id: &EventId) -> Result<bool, AppendError> {
        Ok(self.cached(id).is_some() || self.inner.store.get_event(id.as_str()).await?.is_some())
    }

    fn cached(&self, id: &EventId) -> Option<(Arc<Pdu>, Option<i64>)> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
    }

    fn remember(&self, pdu: Arc<Pdu>, state_after: Option<i64>) {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pdu, state_after);
    }

    /// Drops an event staged but never written from the cache.
    fn forget(&self, id: &EventId) {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .remove(id);
    }

    /// An event by ID (cache, then database), with the state group after it.
    async fn load_event(
        &self,
        id: &EventId,
        version: &RoomVersion,
    ) -> Result<Option<(Arc<Pdu>, Option<i64>)>, AppendError> {
        if let Some(hit) = self.cached(id) {
            return Ok(Some(hit));
        }
        let Some(row) = self.inner.store.get_event(id.as_str()).await? else {
            return Ok(None);
        };
        let pdu = Arc::new(Pdu::from_json(&row.json, version, None)?);
        self.remember(pdu.clone(), row.state_group_after);
        Ok(Some((pdu, row.state_group_after)))
    }

    /// Loads `ids` and, recursively, their auth events into `into`.
    async fn load_with_auth_chain(
        &self,
        ids: impl IntoIterator<Item = OwnedEventId>,
        version: &RoomVersion,
        into: &mut HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> Result<(), AppendError> {
        let mut todo: Vec<OwnedEventId> = ids.into_iter().collect();
        while let Some(id) = todo.pop() {
            if into.contains_key(&id) {
                continue;
            }
            if let Some((pdu, _)) = self.load_event(&id, version).await? {
                todo.extend(pdu.auth_events.iter().cloned());
                into.insert(id, pdu);
            }
        }
        Ok(())
    }

    async fn load_state(&self, group: Option<i64>) -> Result<State, AppendError> {
        let Some(group) = group else {
            return Ok(State::new());
        };
        let mut state = State::new();
        for (kind, key, id) in self.inner.store.load_state_group(group).await? {
            let id = EventId::parse(&id).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            state.insert((kind, key), id);
        }
        Ok(state)
    }

    /// Loads a room into memory from the database.
    async fn load_room(&self, room_id: &RoomId) -> Result<Option<RoomEntry>, AppendError> {
        let Some(row) = self.inner.store.get_room(room_id.as_str()).await? else {
            return Ok(None);
        };
        let version = RoomVersion::parse(&row.room_version)
            .ok_or_else(|| EventError::UnsupportedRoomVersion(row.room_version.clone()))?;
        let extremities: Vec<OwnedEventId> = serde_json::from_str(&row.forward_extremities)
            .map_err(|e| StorageError::Corrupt(format!("forward extremities of {room_id}: {e}")))?;
        let state = self.load_state(row.current_state_group).await?;
        let mut max_depth = 0;
        for id in &extremities {
            if let Some((pdu, _)) = self.load_event(id, &version).await? {
                max_depth = max_depth.max(pdu.depth);
            }
        }
        let mut servers = HashMap::new();
        let mut local_members = HashSet::new();
        for ((kind, key), id) in &state {
            if kind != "m.room.member" {
                continue;
            }
            let Some((pdu, _)) = self.load_event(id, &version).await? else {
                continue;
            };
            self.count_member(key, &pdu, &mut servers, &mut local_members);
        }
        Ok(Some(RoomEntry {
            version,
            created_ts: row.created_ts,
            state,
            state_group: row.current_state_group,
            extremities,
            max_depth,
            servers,
            local_members: Arc::new(std::sync::RwLock::new(local_members)),
        }))
    }

    /// The current state of a room (`None` for an unknown room).
    pub async fn current_state(&self, room_id: &RoomId) -> Result<Option<State>, AppendError> {
        let (_slot, guard) = self.lock_room(room_id).await?;
        Ok(guard.as_ref().map(|entry| entry.state.clone()))
    }

    /// The servers with a joined member in a room's current state, sorted (ours included; empty
    /// for an unknown room). Kept in memory with the state: no event is loaded.
    pub async fn joined_servers(&self, room_id: &RoomId) -> Result<Vec<String>, AppendError> {
        let (_slot, guard) = self.lock_room(room_id).await?;
        let mut servers: Vec<String> = guard
            .as_ref()
            .map(|e| {
                e.servers
                    .iter()
                    .filter(|(_, count)| **count > 0)
                    .map(|(server, _)| server.clone())
                    .collect()
            })
            .unwrap_or_default();
        servers.sort();
        Ok(servers)
    }

    /// How many members a room has joined, and its local members (joined, invited or
    /// knocking); both kept in memory with the state (`None` for an unknown room).
    pub async fn member_summary(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<(usize, Vec<OwnedUserId>)>, AppendError> {
        let (_slot, guard) = self.lock_room(room_id).await?;
        Ok(guard.as_ref().map(|entry| {
            let joined = entry.servers.values().sum();
            let local = entry
                .local_members
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            (joined, local)
        }))
    }

    /// How many members a room has joined (`None`: not a room here).
    pub async fn joined_count(&self, room_id: &RoomId) -> Result<Option<usize>, AppendError> {
        let (_slot, guard) = self.lock_room(room_id).await?;
        Ok(guard.as_ref().map(|entry| entry.servers.values().sum()))
    }

    /// The event ID in one slot of a room's current state, without copying the state.
    pub async fn current_state_event_id(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>, AppendError> {
        let (_slot, guard) = self.lock_room(room_id).await?;
        Ok(guard.as_ref().and_then(|e| {
            e.state
                .get(&(kind.to_owned(), state_key.to_owned()))
                .cloned()
        }))
    }

    /// The forward extremities of a room.
    pub async fn forward_extremities(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<OwnedEventId>, AppendError> {
        let (_slot, guard) = self.lock_room(room_id).await?;
        Ok(guard
            .as_ref()
            .map(|e| e.extremities.clone())
            .unwrap_or_default())
    }

    /// The state after an event (`None` when the event is unknown or an outlier).
    pub async fn state_after(&self, event_id: &EventId) -> Result<Option<State>, AppendError> {
        let Some(row) = self.inner.store.get_event(event_id.as_str()).await? else {
            return Ok(None);
        };
        // Outliers and backfilled history are stored without their state.
        if row.outlier || row.state_group_after.is_none() {
            return Ok(None);
        }
        Ok(Some(self.load_state(row.state_group_after).await?))
    }

    /// The state before an event (`None` when the event is unknown or an outlier).
    pub async fn state_before(&self, event_id: &EventId) -> Result<Option<State>, AppendError> {
        let Some(row) = self.inner.store.get_event(event_id.as_str()).await? else {
            return Ok(None);
        };
        // Outliers and backfilled history are stored without their state (the create event
        // alone has an empty state before it).
        if row.outlier || (row.state_group_before.is_none() && row.event_type != "m.room.create") {
            return Ok(None);
        }
        Ok(Some(self.load_state(row.state_group_before).await?))
    }

    /// An event by ID.
    pub async fn get_pdu(&self, event_id: &EventId) -> Result<Option<Arc<Pdu>>, AppendError> {
        if let Some((pdu, _)) = self.cached(event_id) {
            return Ok(Some(pdu));
        }
        let Some(row) = self.inner.store.get_event(event_id.as_str()).await? else {
            return Ok(None);
        };
        let room_id =
            RoomId::parse(&row.room_id).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        // The version from the room in memory: one query per event, not two.
        let version = self
            .room_version(&room_id)
            .await?
            .ok_or_else(|| AppendError::UnknownRoom(room_id.clone()))?;
        Ok(Some(Arc::new(Pdu::from_json(&row.json, &version, None)?)))
    }

    /// Creates a room: `m.room.create`, the creator's join, power levels, join rules, history
    /// visibility, then `initial_state`. Returns the room ID.
    pub async fn create_room(
        &self,
        signer: Signer<'_>,
        creator: &UserId,
        room: NewRoom,
    ) -> Result<OwnedRoomId, AppendError> {
        self.create_room_with(signer, creator, room, RoomOptions::default())
            .await
    }

    /// [`Rooms::create_room`] with a client's options.
    pub async fn create_room_with(
        &self,
        signer: Signer<'_>,
        creator: &UserId,
        room: NewRoom,
        options: RoomOptions,
    ) -> Result<OwnedRoomId, AppendError> {
        let version = room.version.clone();
        let mut create_content = json!({"room_version": version.id().as_str()});
        for (key, value) in options.creation_content {
            if key != "room_version" && key != "creator" {
                create_content[key] = value;
            }
        }
        if !version.rules().authorization.use_room_create_sender {
            create_content["creator"] = json!(creator.as_str());
        }
        let create_template = EventTemplate::state("m.room.create", "", create_content);
        let old_style_room_id = if version.room_id_from_create_event() {
            None
        } else {
            Some(placeholder_room_id(signer.server_name)?)
        };
        let create = build_pdu(
            &version,
            &create_template,
            Placement {
                room_id: old_style_room_id.as_deref(),
                sender: creator,
                prev_events: vec![],
                auth_events: vec![],
                depth: 1,
                origin_server_ts: self.create_ts(),
                origin: signer.server_name,
                key: signer.key,
            },
        )?;
        let room_id = create.room_id.clone();

        // Creators of v12 rooms have implicit power and must not be listed.
        let mut users = serde_json::Map::new();
        if !version
            .rules()
            .authorization
            .explicitly_privilege_room_creators
        {
            users.insert(creator.to_string(), json!(100));
        }
        for admin in &options.extra_admins {
            users.insert(admin.to_string(), json!(100));
        }
        let mut levels = json!({"users": users, "users_default": 0, "events_default": 0,
            "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
            "events": {"m.room.name": 50, "m.room.power_levels": 100,
                "m.room.history_visibility": 100, "m.room.canonical_alias": 50,
                "m.room.avatar": 50, "m.room.tombstone": 100, "m.room.server_acl": 100,
                "m.room.encryption": 100}});
        for (key, value) in options.power_levels_override {
            levels[key] = value;
        }
        let mut templates = vec![
            EventTemplate::state(
                "m.room.member",
                creator.as_str(),
                json!({"membership": "join"}),
            ),
            EventTemplate::state("m.room.power_levels", "", levels),
            EventTemplate::state(
                "m.room.join_rules",
                "",
                json!({"join_rule": room.join_rule}),
            ),
            EventTemplate::state(
                "m.room.history_visibility",
                "",
                json!({"history_visibility": "shared"}),
            ),
        ];
        templates.extend(room.initial_state);
        // One commit: a creation that the rules would stop half-way (an override that takes the
        // creator's power, an initial state event they reject, an event too large) stores
        // nothing.
        self.append_new_room(create, &version, creator, &templates, signer)
            .await?;
        Ok(room_id)
    }

    /// A timestamp for a new room's create event, later than every one before it here: the ID
    /// of a version 12 room is the hash of its create event, so two rooms made by the same user
    /// with the same options in the same millisecond would otherwise be one room.
    fn create_ts(&self) -> MilliSecondsSinceUnixEpoch {
        let now = i64::from(now_ts().0);
        let mut last = self.inner.last_create_ts.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.inner.last_create_ts.compare_exchange(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return MilliSecondsSinceUnixEpoch(
                        ruma::UInt::try_from(next).unwrap_or_else(|_| now_ts().0),
                    );
                }
                Err(seen) => last = seen,
            }
        }
    }

    /// Appends a new room: its create event and the events after it, each built on the state
    /// the ones before it leave and checked as the append path checks a local event, all
    /// staged under the room's lock and written as ONE commit. A creation that the rules refuse
    /// part-way, or whose write fails, leaves nothing behind.
    async fn append_new_room(
        &self,
        create: Pdu,
        version: &RoomVersion,
        creator: &UserId,
        templates: &[EventTemplate],
        signer: Signer<'_>,
    ) -> Result<(), AppendError> {
        let room_id = create.room_id.clone();
        let slot = self.slot(&room_id);
        let mut guard = slot.lock().await;
        if guard.is_some() || self.inner.store.get_room(room_id.as_str()).await?.is_some() {
            return Err(EventError::WrongRoom(format!("room {room_id} exists")).into());
        }
        let fetch = |_: &EventId| None::<Arc<Pdu>>;
        auth::check_against_auth_events(version, &create, &fetch)?;
        *guard = Some(RoomEntry::new(version, &create));
        let mut staged = Vec::with_capacity(templates.len() + 1);
        let mut failure = self
            .stage(
                guard.as_mut().map(|e| (e, true)),
                create,
                None,
                &Preloaded::new(),
                Origin::Local,
            )
            .map(|s| staged.push(s))
            .err();
        for template in templates {
            let Some(entry) = guard.as_mut().filter(|_| failure.is_none()) else {
                break;
            };
            let step = async {
                let pdu = build_on(entry, &room_id, creator, template, signer)?;
                let preloaded = self.preload_for_auth(&pdu, entry, version).await?;
                self.stage(Some((entry, false)), pdu, None, &preloaded, Origin::Local)
            };
            match step.await {
                Ok(s) => staged.push(s),
                Err(err) => failure = Some(err),
            }
        }
        if let Some(err) = failure {
            // Nothing was submitted: the room and its staged events are forgotten.
            *guard = None;
            for (_, pdu) in &staged {
                self.forget(&pdu.event_id);
            }
            return Err(err);
        }
        // Every event's write goes into the first one's request: one request, one commit.
        let Some(((first, _), rest)) = staged.split_first_mut() else {
            *guard = None;
            return Err(AppendError::WriterGone);
        };
        for (s, _) in rest {
            if let Some(request) = s.request.take() {
                first.request = first.request.take().map(|into| into.merge(request));
            }
        }
        let submitted = self.submit(first).await;
        drop(guard);
        let mut first_error = None;
        for (s, pdu) in staged {
            let submitted = submitted
                .as_ref()
                .map(|_| ())
                .map_err(|_| AppendError::WriterGone);
            if let Err(err) = self.complete(s, submitted, pdu, &slot).await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Builds, signs and appends an event from a local user: prev_events are the room's forward
    /// extremities, auth_events are chosen from the current state.
    pub async fn send_local(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: &EventTemplate,
        signer: Signer<'_>,
    ) -> Result<Arc<Pdu>, AppendError> {
        self.send_local_with(room_id, sender, template, signer, None)
            .await
    }

    /// [`Rooms::send_local`] recording a client transaction ID (`device_id`, `txn_id`) in the
    /// same transaction as the event.
    pub async fn send_local_with(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: &EventTemplate,
        signer: Signer<'_>,
        transaction: Option<(&str, &str)>,
    ) -> Result<Arc<Pdu>, AppendError> {
        self.send_local_signed(room_id, sender, template, signer, None, transaction)
            .await
    }

    /// [`Rooms::send_local`] also signed by `cosigner` (another of our territories, whose user
    /// vouches for a restricted join).
    pub async fn send_local_cosigned(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: &EventTemplate,
        signer: Signer<'_>,
        cosigner: Signer<'_>,
    ) -> Result<Arc<Pdu>, AppendError> {
        self.send_local_signed(room_id, sender, template, signer, Some(cosigner), None)
            .await
    }

    async fn send_local_signed(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: &EventTemplate,
        signer: Signer<'_>,
        cosigner: Option<Signer<'_>>,
        transaction: Option<(&str, &str)>,
    ) -> Result<Arc<Pdu>, AppendError> {
        let (slot, mut guard) = self.lock_room(room_id).await?;
        let Some(entry) = guard.as_mut() else {
            return Err(AppendError::UnknownRoom(room_id.to_owned()));
        };
        let mut pdu = build_on(entry, room_id, sender, template, signer)?;
        if let Some(cosigner) = cosigner {
            pdu = super::build::cosign(&pdu, &entry.version, cosigner.server_name, cosigner.key)?;
        }
        let version = entry.version.clone();
        let preloaded = self.preload_for_auth(&pdu, entry, &version).await?;
        let (mut staged, pdu) =
            self.stage(Some((entry, false)), pdu, None, &preloaded, Origin::Local)?;
        if let (Some((device, txn)), Some(request)) = (transaction, staged.request.as_mut()) {
            request.batch.transactions.push((
                sender.to_string(),
                device.to_owned(),
                txn.to_owned(),
                pdu.event_id.to_string(),
                i64::from(pdu.origin_server_ts.0),
            ));
        }
        let submitted = self.submit(&mut staged).await;
        drop(guard);
        let (pdu, _) = self.complete(staged, submitted, pdu, &slot).await?;
        Ok(pdu)
    }

    /// The version of a room known here.
    pub async fn room_version(&self, room_id: &RoomId) -> Result<Option<RoomVersion>, AppendError> {
        let (_slot, guard) = self.lock_room(room_id).await?;
        Ok(guard.as_ref().map(|e| e.version.clone()))
    }

    /// Whether an event is stored here (in the timeline, soft-failed or as an outlier).
    pub async fn has_event(&self, id: &EventId) -> Result<bool, AppendError> {
        self.is_stored(id).await
    }

    /// An unsigned membership event of `user` (of another server) placed on the room's current
    /// state, for `make_join`/`make_leave`/`make_knock` (`content`: the membership, and for a
    /// restricted join who vouches): the room's version and the template.
    pub async fn membership_template(
        &self,
        room_id: &RoomId,
        user: &UserId,
        content: serde_json::Value,
        signer: Signer<'_>,
    ) -> Result<(RoomVersion, CanonicalJsonObject), AppendError> {
        let (_slot, guard) = self.lock_room(room_id).await?;
        let Some(entry) = guard.as_ref() else {
            return Err(AppendError::UnknownRoom(room_id.to_owned()));
        };
        let template = EventTemplate::state("m.room.member", user.as_str(), content);
        let placement = placement_on(entry, room_id, user, &template, signer)?;
        let object = super::build::unsigned_event(&entry.version, &template, &placement)?;
        Ok((entry.version.clone(), object))
    }

    /// Checks `pending` (events of `room_id` fetched from a peer, signatures already verified)
    /// against their own auth events, in memory, parents before children as far as depth tells
    /// (what still misses an auth event waits for a later pass), and stores the ones not stored
    /// yet as outliers in batches. Auth events outside `pending` must be stored here already.
    /// Returns every event looked at, by ID. `what` names the source in errors.
    async fn store_outliers(
        &self,
        version: &RoomVersion,
        room_id: &RoomId,
        pending: Vec<Pdu>,
        what: &str,
    ) -> Result<HashMap<OwnedEventId, Arc<Pdu>>, AppendError> {
        let started = std::time::Instant::now();
        let (known, accepted) = self
            .check_against_own_auth(version, room_id, pending, what)
            .await?;
        let checked = started.elapsed();
        let ids: Vec<String> = accepted.iter().map(|p| p.event_id.to_string()).collect();
        let stored = self.inner.store.stored_event_ids(&ids).await?;
        let rows: Vec<NewEvent> = accepted
            .iter()
            .filter(|p| !stored.contains(p.event_id.as_str()))
            .map(|p| NewEvent {
                row: event_row(p, None, None, None, true, false),
                prev_events: p.prev_events.iter().map(|e| e.to_string()).collect(),
            })
            .collect();
        let mut waits = Vec::new();
        for chunk in rows.chunks(MAX_BATCH_EVENTS) {
            let batch = EventBatch {
                events: chunk.to_vec(),
                ..Default::default()
            };
            waits.push(self.enqueue_write(batch).await?);
        }
        for rx in waits {
            rx.await.map_err(|_| AppendError::WriterGone)??;
        }
        for pdu in &accepted {
            self.remember(pdu.clone(), None);
        }
        tracing::debug!(
            %room_id, events = accepted.len(),
            check_ms = checked.as_millis(),
            write_ms = (started.elapsed() - checked).as_millis(),
            "outliers stored"
        );
        Ok(known)
    }

    /// The check half of [`Rooms::store_outliers`]: every event looked at by ID, and the events
    /// of `pending` that passed, parents first.
    async fn check_against_own_auth(
        &self,
        version: &RoomVersion,
        room_id: &RoomId,
        mut pending: Vec<Pdu>,
        what: &str,
    ) -> Result<(HashMap<OwnedEventId, Arc<Pdu>>, Vec<Arc<Pdu>>), AppendError> {
        pending.sort_by_key(|p| p.depth);
        pending.dedup_by(|a, b| a.event_id == b.event_id);
        let in_answer: HashSet<OwnedEventId> = pending.iter().map(|p| p.event_id.clone()).collect();
        let mut known: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        let create_id = if version.room_id_from_create_event() {
            Some(auth::create_event_id(room_id)?)
        } else {
            None
        };
        // Auth events not in `pending` (the create event too, which rooms of version 12 do not
        // list) must be stored here.
        let outside: Vec<OwnedEventId> = pending
            .iter()
            .flat_map(|p| p.auth_events.iter())
            .chain(create_id.iter())
            .filter(|id| !in_answer.contains(*id))
            .cloned()
            .collect();
        self.load_with_auth_chain(outside, version, &mut known)
            .await?;
        let mut accepted: Vec<Arc<Pdu>> = Vec::new();
        loop {
            let before = pending.len();
            let mut later = Vec::new();
            for pdu in pending {
                if known.contains_key(&pdu.event_id) {
                    continue;
                }
                if pdu.room_id != room_id {
                    return Err(EventError::WrongRoom(format!(
                        "{} in {what} is in another room",
                        pdu.event_id
                    ))
                    .into());
                }
                let is_create = pdu.kind.to_string() == "m.room.create";
                let ready = pdu
                    .auth_events
                    .iter()
                    .chain(create_id.iter().filter(|_| !is_create))
                    .all(|id| known.contains_key(id));
                if !ready {
                    later.push(pdu);
                    continue;
                }
                let fetch = |id: &EventId| known.get(id).cloned();
                auth::check_against_auth_events(version, &pdu, &fetch).map_err(|e| {
                    EventError::Unauthorized(format!(
                        "{} in {what} does not pass its auth events: {e}",
                        pdu.event_id
                    ))
                })?;
                let pdu = Arc::new(pdu);
                known.insert(pdu.event_id.clone(), pdu.clone());
                accepted.push(pdu);
            }
            if later.is_empty() || later.len() == before {
                if let Some(bad) = later.first() {
                    return Err(EventError::Missing(format!(
                        "auth events of {} are not in {what}",
                        bad.event_id
                    ))
                    .into());
                }
                break;
            }
            pending = later;
        }
        Ok((known, accepted))
    }

    /// The room's earliest event in this server's timeline (lowest stream position).
    pub async fn earliest_event(&self, room_id: &RoomId) -> Result<Option<Arc<Pdu>>, AppendError> {
        let rows = self
            .inner
            .store
            .get_room_events_after(room_id.as_str(), i64::MIN, 1)
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let id = EventId::parse(&row.event_id).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        self.get_pdu(&id).await
    }

    /// Stores events a peer answered to `/backfill` (signatures already verified) as the room's
    /// history before its earliest event here. `auth` are auth events of theirs fetched on the
    /// side (kept as outliers). Every event is checked against its own auth events (the whole
    /// answer is refused if one fails), then the history events not yet in the timeline get
    /// stream positions below every position in use, older events lower, so `/messages` pages
    /// back into them while sync (which only moves forward) never shows them. Events stored
    /// before as outliers (a join's state) join the timeline in place. Returns how many
    /// events joined the timeline.
    pub async fn store_backfill(
        &self,
        version: &RoomVersion,
        room_id: &RoomId,
        history: Vec<Pdu>,
        auth: Vec<Pdu>,
    ) -> Result<usize, AppendError> {
        if self.room_version(room_id).await?.is_none() {
            return Err(AppendError::UnknownRoom(room_id.to_owned()));
        }
        let wanted: Vec<OwnedEventId> = history.iter().map(|p| p.event_id.clone()).collect();
        let pending: Vec<Pdu> = history.into_iter().chain(auth).collect();
        let (known, accepted) = self
            .check_against_own_auth(version, room_id, pending, "a backfill answer")
            .await?;
        // One backfill at a time hands out positions, so a later (older) batch sits lower.
        let mut lowest = self.inner.history_floor.lock().await;
        let floor = match *lowest {
            Some(floor) => floor,
            None => self.inner.store.get_min_stream_ordering().await?.min(1),
        };
        // New events are written; history events stored before as outliers (a join's state,
        // checked when they were stored) move into the timeline; timeline events stay.
        let mut rows = Vec::new();
        let mut timeline = Vec::new();
        let mut promoted = Vec::new();
        for pdu in &accepted {
            let stored = self.inner.store.get_event(pdu.event_id.as_str()).await?;
            match stored {
                None if wanted.contains(&pdu.event_id) => timeline.push((pdu.clone(), false)),
                None => rows.push(NewEvent {
                    row: event_row(pdu, None, None, None, true, false),
                    prev_events: pdu.prev_events.iter().map(|e| e.to_string()).collect(),
                }),
                Some(row) if row.outlier && wanted.contains(&pdu.event_id) => {
                    timeline.push((pdu.clone(), true));
                }
                Some(_) => {}
            }
        }
        // Answer events the check found stored already (auth events of stored outliers).
        for id in &wanted {
            if timeline.iter().any(|(p, _)| &p.event_id == id) {
                continue;
            }
            if let (Some(pdu), Some(row)) = (
                known.get(id),
                self.inner.store.get_event(id.as_str()).await?,
            ) && row.outlier
            {
                timeline.push((pdu.clone(), true));
            }
        }
        timeline.sort_by_key(|(p, _)| (p.depth, p.origin_server_ts.0));
        let count = timeline.len();
        let first = floor - i64::try_from(count).unwrap_or(i64::MAX / 2);
        for (i, (pdu, stored)) in timeline.iter().enumerate() {
            let position = first + i64::try_from(i).unwrap_or(0);
            if *stored {
                promoted.push((pdu.event_id.to_string(), position));
            } else {
                rows.push(NewEvent {
                    row: event_row(pdu, Some(position), None, None, false, false),
                    prev_events: pdu.prev_events.iter().map(|e| e.to_string()).collect(),
                });
            }
        }
        if rows.is_empty() && promoted.is_empty() {
            return Ok(0);
        }
        if !rows.is_empty() {
            self.write_and_wait(EventBatch {
                events: rows,
                ..Default::default()
            })
            .await?;
        }
        if !promoted.is_empty() {
            self.inner.store.promote_outliers(&promoted).await?;
        }
        *lowest = Some(first);
        for pdu in accepted {
            self.remember(pdu, None);
        }
        tracing::debug!(%room_id, events = count, lowest = first, "history backfilled");
        Ok(count)
    }

    /// Fills a gap in a known room: `missing` is an event whose parents we do not have, `state`
    /// the state before it and `auth_chain` that state's auth chain, as a peer answered
    /// `/state_ids` (signatures already verified). The state and chain are stored as outliers
    /// (each checked against its own auth events), `missing` is checked against its auth events
    /// and stored as an outlier that carries the state after it as a full state group. A child of
    /// `missing` then appends on that state like on any fork.
    pub async fn store_gap(
        &self,
        version: &RoomVersion,
        missing: Pdu,
        state: Vec<Pdu>,
        auth_chain: Vec<Pdu>,
    ) -> Result<(), AppendError> {
        let room_id = missing.room_id.clone();
        if self.room_version(&room_id).await?.is_none() {
            return Err(AppendError::UnknownRoom(room_id));
        }
        if self.has_event(&missing.event_id).await? {
            return Ok(());
        }
        let pending: Vec<Pdu> = auth_chain
            .into_iter()
            .chain(state.iter().cloned())
            .collect();
        let mut known = self
            .store_outliers(version, &room_id, pending, "the gap's state")
            .await?;
        let mut after = State::new();
        for pdu in &state {
            if let Some(slot) = pdu.state_slot() {
                after.insert(slot, pdu.event_id.clone());
            }
        }
        if !after.contains_key(&("m.room.create".to_owned(), String::new())) {
            return Err(EventError::Missing("the gap's state has no m.room.create".into()).into());
        }
        let mut ids: Vec<OwnedEventId> = missing.auth_events.clone();
        if version.room_id_from_create_event() {
            ids.push(auth::create_event_id(&room_id)?);
        }
        self.load_with_auth_chain(ids, version, &mut known).await?;
        let fetch = |id: &EventId| known.get(id).cloned();
        auth::check_against_auth_events(version, &missing, &fetch).map_err(|e| {
            EventError::Unauthorized(format!(
                "{} does not pass its auth events: {e}",
                missing.event_id
            ))
        })?;
        if let Some(slot) = missing.state_slot() {
            after.insert(slot, missing.event_id.clone());
        }
        let group = self.inner.next_group.fetch_add(1, Ordering::Relaxed);
        let full_group = NewStateGroup {
            id: group,
            room_id: room_id.to_string(),
            prev_group: None,
            delta: after
                .iter()
                .map(|((kind, key), id)| (kind.clone(), key.clone(), Some(id.to_string())))
                .collect(),
        };
        let batch = EventBatch {
            state_groups: vec![full_group],
            events: vec![NewEvent {
                row: event_row(&missing, None, None, Some(group), true, false),
                prev_events: missing.prev_events.iter().map(|e| e.to_string()).collect(),
            }],
            ..Default::default()
        };
        self.write_and_wait(batch).await?;
        self.remember(Arc::new(missing), Some(group));
        Ok(())
    }

    /// Joins a room this node did not know, from a resident server's `send_join` answer: the
    /// auth chain and state are stored as outliers (each checked against its own auth events),
    /// the state becomes one full state group, and `join` (our signed join) is appended on it.
    /// Every event must already have passed signature and hash checks. When the room is known
    /// here already, the join is appended like any received event.
    pub async fn join_from_state(
        &self,
        version: &RoomVersion,
        join: Pdu,
        state: Vec<Pdu>,
        auth_chain: Vec<Pdu>,
    ) -> Result<Appended, AppendError> {
        let room_id = join.room_id.clone();
        if self.room_version(&room_id).await?.is_some() {
            return self.append_remote(join).await;
        }
        // Outliers, checked in memory against their own auth events, written in batches: a
        // join into a room of 30,000 state events must not wait for 30,000 commits.
        let pending: Vec<Pdu> = auth_chain
            .into_iter()
            .chain(state.iter().cloned())
            .collect();
        let known = self
            .store_outliers(version, &room_id, pending, "the join answer")
            .await?;
        let mut snapshot = State::new();
        for pdu in &state {
            if let Some(slot) = pdu.state_slot() {
                snapshot.insert(slot, pdu.event_id.clone());
            }
        }
        if !snapshot.contains_key(&("m.room.create".to_owned(), String::new())) {
            return Err(EventError::Missing("the join answer has no m.room.create".into()).into());
        }
        let (slot, mut guard) = self.lock_room(&room_id).await?;
        if guard.is_some() {
            drop(guard);
            return self.append_remote(join).await;
        }
        let group = self.inner.next_group.fetch_add(1, Ordering::Relaxed);
        let mut servers = HashMap::new();
        let mut local_members = HashSet::new();
        for ((kind, key), id) in &snapshot {
            let Some(pdu) = known.get(id) else { continue };
            if kind != "m.room.member" {
                continue;
            }
            self.count_member(key, pdu, &mut servers, &mut local_members);
        }
        *guard = Some(RoomEntry {
            version: version.clone(),
            created_ts: i64::from(now_ts().get()),
            state: snapshot.clone(),
            state_group: Some(group),
            extremities: join.prev_events.clone(),
            max_depth: join.depth.saturating_sub(1),
            servers,
            local_members: Arc::new(std::sync::RwLock::new(local_members)),
        });
        let full_group = NewStateGroup {
            id: group,
            room_id: room_id.to_string(),
            prev_group: None,
            delta: snapshot
                .iter()
                .map(|((kind, key), id)| (kind.clone(), key.clone(), Some(id.to_string())))
                .collect(),
        };
        let fork = Fork {
            state: snapshot,
            group: Some(group),
            base: None,
            known,
        };
        let staged = self.stage(
            guard.as_mut().map(|e| (e, false)),
            join,
            Some(fork),
            &Preloaded::new(),
            Origin::Remote,
        );
        let (mut staged, pdu) = match staged {
            Ok(staged) => staged,
            Err(err) => {
                *guard = None;
                return Err(err);
            }
        };
        if let Some(request) = staged.request.as_mut() {
            request.batch.state_groups.insert(0, full_group);
        }
        let submitted = self.submit(&mut staged).await;
        drop(guard);
        let (_, outcome) = self.complete(staged, submitted, pdu, &slot).await?;
        Ok(outcome)
    }

    /// Builds and signs an event of a local user on the current state without appending it (an
    /// invite that the invitee's server must countersign first); append it with
    /// [`Rooms::append_own`].
    pub async fn build_local(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: &EventTemplate,
        signer: Signer<'_>,
    ) -> Result<Pdu, AppendError> {
        let (_slot, guard) = self.lock_room(room_id).await?;
        let Some(entry) = guard.as_ref() else {
            return Err(AppendError::UnknownRoom(room_id.to_owned()));
        };
        build_on(entry, room_id, sender, template, signer)
    }

    /// Appends one of our own events built earlier (by [`Rooms::build_local`]): checked like a
    /// received one (the room may have moved on meanwhile), sent to the other servers like a
    /// local one.
    pub async fn append_own(&self, pdu: Pdu) -> Result<Appended, AppendError> {
        self.append_built(pdu, Origin::Local).await
    }

    /// Appends an event received from another server (its signatures already verified by the
    /// caller). Parents must be known: fetching missing ones is the caller's job.
    pub async fn append_remote(&self, pdu: Pdu) -> Result<Appended, AppendError> {
        self.append_built(pdu, Origin::Remote).await
    }

    async fn append_built(&self, pdu: Pdu, origin: Origin) -> Result<Appended, AppendError> {
        match self.stage_built(pdu, origin, true).await? {
            Ok((staged, submitted, pdu, slot)) => {
                let (_, outcome) = self.complete(staged, submitted, pdu, &slot).await?;
                Ok(outcome)
            }
            Err(done) => Ok(done),
        }
    }

    /// Appends received events of one room in order, sharing group commits: each is checked
    /// and staged after the one before, then all commits are awaited together. One result per
    /// event, in order; a rejected event does not stop the ones after it.
    pub async fn append_remote_batch(&self, pdus: Vec<Pdu>) -> Vec<Result<Appended, AppendError>> {
        let mut results: Vec<Option<Result<Appended, AppendError>>> =
            pdus.iter().map(|_| None).collect();
        // One query for the whole batch instead of one per event; what is staged meanwhile is
        // caught by the event cache under the room's lock.
        let ids: Vec<String> = pdus.iter().map(|p| p.event_id.to_string()).collect();
        let stored = match self.inner.store.stored_event_ids(&ids).await {
            Ok(stored) => stored,
            Err(err) => {
                let message = err.to_string();
                return pdus
                    .iter()
                    .map(|_| Err(AppendError::Storage(StorageError::Corrupt(message.clone()))))
                    .collect();
            }
        };
        let started = std::time::Instant::now();
        let mut todo = Vec::new();
        for (index, pdu) in pdus.into_iter().enumerate() {
            if stored.contains(pdu.event_id.as_str()) {
                results[index] = Some(Ok(Appended::Duplicate));
            } else {
                todo.push((index, pdu));
            }
        }
        // Each run of one room's events is staged under one hold of its lock and written as
        // ONE request (one commit), submitted before the lock is let go: stream positions
        // follow the staging order, as for events staged one at a time.
        let mut pending = Vec::new();
        let mut todo = todo.into_iter().peekable();
        while let Some((index, pdu)) = todo.next() {
            let room_id = pdu.room_id.clone();
            let mut run = vec![(index, pdu)];
            while let Some(next) = todo.next_if(|(_, p)| p.room_id == room_id) {
                run.push(next);
            }
            let (slot, mut guard) = match self.lock_room(&room_id).await {
                Ok(locked) => locked,
                Err(err) => {
                    let message = err.to_string();
                    for (index, _) in run {
                        results[index] = Some(Err(AppendError::Storage(StorageError::Corrupt(
                            message.clone(),
                        ))));
                    }
                    continue;
                }
            };
            let mut staged_run = Vec::new();
            for (index, pdu) in run {
                let Some(entry) = guard.as_mut() else {
                    results[index] = Some(Err(AppendError::UnknownRoom(room_id.clone())));
                    continue;
                };
                match self.stage_on(entry, pdu, Origin::Remote, false).await {
                    Ok(Ok((staged, pdu))) => staged_run.push((index, staged, pdu)),
                    Ok(Err(done)) => results[index] = Some(Ok(done)),
                    Err(err) => results[index] = Some(Err(err)),
                }
            }
            let merged = staged_run
                .iter_mut()
                .filter_map(|(_, staged, _)| staged.request.take())
                .reduce(WriteRequest::merge);
            let submitted = match merged {
                Some(request) => self.inner.writer.send(request).await.is_ok(),
                None => true,
            };
            drop(guard);
            for (index, staged, pdu) in staged_run {
                let submitted = if submitted {
                    Ok(())
                } else {
                    Err(AppendError::WriterGone)
                };
                pending.push((index, staged, submitted, pdu, slot.clone()));
            }
        }
        let staged_at = started.elapsed();
        let count = pending.len();
        for (index, staged, submitted, pdu, slot) in pending {
            results[index] = Some(
                self.complete(staged, submitted, pdu, &slot)
                    .await
                    .map(|(_, o)| o),
            );
        }
        tracing::trace!(
            count,
            stage_us = staged_at.as_micros(),
            commit_us = (started.elapsed() - staged_at).as_micros(),
            "remote batch appended"
        );
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(AppendError::WriterGone)))
            .collect()
    }

    /// The checks and staging of a built event (received, or ours countersigned), submitted to
    /// the writer under the room's lock; `Ok(Err(outcome))` when nothing is to be written (a
    /// duplicate).
    #[allow(clippy::type_complexity)]
    async fn stage_built(
        &self,
        pdu: Pdu,
        origin: Origin,
        check_database: bool,
    ) -> Result<Result<(Staged, Result<(), AppendError>, Arc<Pdu>, RoomSlot), Appended>, AppendError>
    {
        let (slot, mut guard) = self.lock_room(&pdu.room_id).await?;
        let Some(entry) = guard.as_mut() else {
            return Err(AppendError::UnknownRoom(pdu.room_id.clone()));
        };
        let (mut staged, pdu) = match self.stage_on(entry, pdu, origin, check_database).await? {
            Ok(staged) => staged,
            Err(done) => return Ok(Err(done)),
        };
        let submitted = self.submit(&mut staged).await;
        drop(guard);
        Ok(Ok((staged, submitted, pdu, slot)))
    }

    /// The checks and staging of a built event on its room's entry (the caller holds the
    /// room's lock and submits the write before letting it go); `Ok(Err(outcome))` for a
    /// duplicate.
    async fn stage_on(
        &self,
        entry: &mut RoomEntry,
        pdu: Pdu,
        origin: Origin,
        check_database: bool,
    ) -> Result<Result<(Staged, Arc<Pdu>), Appended>, AppendError> {
        let known = if check_database {
            self.is_stored(&pdu.event_id).await?
        } else {
            self.cached(&pdu.event_id).is_some()
        };
        if known {
            return Ok(Err(Appended::Duplicate));
        }
        let version = entry.version.clone();
        let preloaded = self.preload_for_auth(&pdu, entry, &version).await?;
        let fork = self.fork_state(&pdu, entry, &version).await?;
        Ok(Ok(self.stage(
            Some((entry, false)),
            pdu,
            fork,
            &preloaded,
            origin,
        )?))
    }

    /// Stores an event without its state (an outlier: auth events and state fetched from peers).
    /// It is checked against its own auth events only and never enters the timeline.
    pub async fn append_outlier(
        &self,
        pdu: Pdu,
        version: &RoomVersion,
    ) -> Result<Appended, AppendError> {
        if self.is_stored(&pdu.event_id).await? {
            return Ok(Appended::Duplicate);
        }
        let mut known = HashMap::new();
        let mut ids = pdu.auth_events.clone();
        // Version 12 events do not list the create event: it is named by the room ID.
        if version.room_id_from_create_event() && pdu.kind.to_string() != "m.room.create" {
            ids.push(auth::create_event_id(&pdu.room_id)?);
        }
        self.load_with_auth_chain(ids, version, &mut known).await?;
        let fetch = |id: &EventId| known.get(id).cloned();
        auth::check_against_auth_events(version, &pdu, &fetch)?;
        let row = event_row(&pdu, None, None, None, true, false);
        let prev_events = pdu.prev_events.iter().map(|p| p.to_string()).collect();
        let batch = EventBatch {
            events: vec![NewEvent { row, prev_events }],
            ..Default::default()
        };
        self.write_and_wait(batch).await?;
        self.remember(Arc::new(pdu), None);
        Ok(Appended::Outlier)
    }

    /// Hands a batch to the group commit: the receiver of its outcome.
    async fn enqueue_write(
        &self,
        batch: EventBatch,
    ) -> Result<oneshot::Receiver<Result<Vec<i64>, StorageError>>, AppendError> {
        let (done, rx) = oneshot::channel();
        self.inner
            .writer
            .send(WriteRequest::new(batch, done))
            .await
            .map_err(|_| AppendError::WriterGone)?;
        Ok(rx)
    }

    /// Writes the push worker's verdicts through the group commit (the one writer), and waits
    /// until they are durable.
    pub async fn write_push(&self, push: unitas_storage::PushWrite) -> Result<(), AppendError> {
        self.write_and_wait(EventBatch {
            push,
            ..Default::default()
        })
        .await
    }

    /// Writes a batch through the group commit and waits until it is durable.
    async fn write_and_wait(&self, batch: EventBatch) -> Result<(), AppendError> {
        let rx = self.enqueue_write(batch).await?;
        rx.await.map_err(|_| AppendError::WriterGone)??;
        Ok(())
    }

    /// For an event whose parents are not exactly the forward extremities: the state before it
    /// (its parent's state, or the resolution of its parents' states) and every event the checks
    /// and resolutions need. `None` on the linear path.
    async fn fork_state(
        &self,
        pdu: &Pdu,
        entry: &RoomEntry,
        version: &RoomVersion,
    ) -> Result<Option<Fork>, AppendError> {
        let mut parents: Vec<&OwnedEventId> = pdu.prev_events.iter().collect();
        parents.sort();
        let mut current: Vec<&OwnedEventId> = entry.extremities.iter().collect();
        current.sort();
        if parents == current {
            return Ok(None);
        }
        let mut states = Vec::new();
        for parent in &pdu.prev_events {
            let Some((parent_pdu, group)) = self.load_event(parent, version).await? else {
                return Err(EventError::Missing(format!("prev_event {parent}")).into());
            };
            if parent_pdu.room_id != pdu.room_id {
                return Err(EventError::WrongRoom(format!(
                    "prev_event {parent} is in another room"
                ))
                .into());
            }
            // A parent stored without its state (an outlier, or backfilled history) cannot say
            // what the state before this event is: as good as missing.
            if group.is_none() && parent_pdu.kind.to_string() != "m.room.create" {
                return Err(
                    EventError::Missing(format!("the state at prev_event {parent}")).into(),
                );
            }
            states.push((group, self.load_state(group).await?));
        }
        let mut known = HashMap::new();
        let create = if version.room_id_from_create_event() {
            Some(auth::create_event_id(&pdu.room_id)?)
        } else {
            None
        };
        let ids = states
            .iter()
            .flat_map(|(_, s)| s.values().cloned())
            .chain(entry.state.values().cloned())
            .chain(pdu.auth_events.iter().cloned())
            .chain(create);
        self.load_with_auth_chain(ids.collect::<Vec<_>>(), version, &mut known)
            .await?;
        if states.len() == 1 {
            let (group, state) = states.remove(0);
            return Ok(Some(Fork {
                state,
                group,
                base: None,
                known,
            }));
        }
        let fetch = |id: &EventId| known.get(id).cloned();
        let only_states: Vec<State> = states.iter().map(|(_, s)| s.clone()).collect();
        let state = auth::resolve(version, &only_states, &fetch)?;
        let base = states
            .into_iter()
            .find_map(|(group, state)| group.map(|g| (g, state)));
        Ok(Some(Fork {
            state,
            group: None,
            base,
            known,
        }))
    }

    /// Loads the events auth will look at (the auth events, and the current state's create, power
    /// levels, join rules and memberships of the sender and target), for the check to hold.
    async fn preload_for_auth(
        &self,
        pdu: &Pdu,
        entry: &RoomEntry,
        version: &RoomVersion,
    ) -> Result<Preloaded, AppendError> {
        let mut ids: Vec<OwnedEventId> = pdu.auth_events.clone();
        if version.room_id_from_create_event() {
            ids.push(auth::create_event_id(&pdu.room_id)?);
        }
        // The current state's events for every slot the rules read for this event (the same
        // selection as for a new event's auth events).
        ids.extend(auth::auth_event_ids(
            version,
            &pdu.kind.to_string(),
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
            &entry.state,
        )?);
        let mut loaded = Preloaded::new();
        for id in ids {
            if let Some((pdu, _)) = self.load_event(&id, version).await? {
                loaded.insert(id, pdu);
            }
        }
        Ok(loaded)
    }

    /// Steps 2-6 of the append path (see the module doc), under the room's lock. Changes the
    /// in-memory room only when every check passed; returns the write to wait for.
    fn stage(
        &self,
        entry: Option<(&mut RoomEntry, bool)>,
        pdu: Pdu,
        fork: Option<Fork>,
        preloaded: &Preloaded,
        origin: Origin,
    ) -> Result<(Staged, Arc<Pdu>), AppendError> {
        let Some((entry, is_create)) = entry else {
            return Err(AppendError::UnknownRoom(pdu.room_id.clone()));
        };
        let version = entry.version.clone();
        let pdu = Arc::new(pdu);
        let known = fork.as_ref().map(|f| &f.known);
        // State resolution may need the event itself.
        let fetch = |id: &EventId| {
            if id == pdu.event_id {
                return Some(pdu.clone());
            }
            known
                .and_then(|k| k.get(id).cloned())
                .or_else(|| preloaded.get(id).cloned())
                .or_else(|| self.cached(id).map(|(pdu, _)| pdu))
        };

        // 2. Against its own auth events. Our own events' auth events were just selected from
        //    the current state under this lock, which step 4 checks them against anyway.
        if !is_create && origin == Origin::Remote {
            auth::check_against_auth_events(&version, &pdu, &fetch)?;
        }

        // 3.-5. Against the state before (rejection), then the current state (soft failure).
        let mut groups = Vec::new();
        let mut soft_failed = false;
        let (state_before, group_before): (Option<&State>, Option<i64>) = match &fork {
            None => (None, entry.state_group),
            Some(fork) => {
                let group = match (&fork.group, &fork.base) {
                    (Some(group), _) => Some(*group),
                    (None, Some((base_group, base_state))) => {
                        let id = self.inner.next_group.fetch_add(1, Ordering::Relaxed);
                        groups.push(NewStateGroup {
                            id,
                            room_id: pdu.room_id.to_string(),
                            prev_group: Some(*base_group),
                            delta: state_delta(base_state, &fork.state),
                        });
                        Some(id)
                    }
                    (None, None) => None,
                };
                (Some(&fork.state), group)
            }
        };
        if !is_create {
            let before = state_before.unwrap_or(&entry.state);
            // A received event that passed against its auth events needs no second check when
            // the state before holds exactly those events in the slots the rules read.
            let decided =
                origin == Origin::Remote && auth::auth_events_match_state(&version, &pdu, before)?;
            if !decided {
                auth::check_against_state(&version, &pdu, before, &fetch)?;
            }
            if state_before.is_some() {
                soft_failed =
                    auth::check_against_state(&version, &pdu, &entry.state, &fetch).is_err();
            }
        }

        // 6. State group after, position, extremities.
        let group_after = match pdu.state_slot() {
            Some((kind, key)) => {
                let id = self.inner.next_group.fetch_add(1, Ordering::Relaxed);
                groups.push(NewStateGroup {
                    id,
                    room_id: pdu.room_id.to_string(),
                    prev_group: group_before,
                    delta: vec![(kind, key, Some(pdu.event_id.to_string()))],
                });
                Some(id)
            }
            None => group_before,
        };
        let stream = if soft_failed {
            None
        } else {
            Some(POSITION_PENDING)
        };
        let row = event_row(&pdu, stream, group_before, group_after, false, soft_failed);

        if !soft_failed {
            self.advance_room(entry, &pdu, fork.as_ref(), group_after, &mut groups, &fetch)?;
        }
        // Whose syncs this event wakes: the local members, and a local target of a membership
        // change (an invitee, or someone leaving, who must still see their leave).
        let mut wake = Wake {
            members: (!soft_failed).then(|| entry.local_members.clone()),
            extra: Vec::new(),
        };
        if !soft_failed
            && pdu.kind.to_string() == "m.room.member"
            && let Some(target) = pdu.state_key.as_deref()
            && self.is_local(target)
            && let Ok(target) = OwnedUserId::try_from(target)
        {
            if matches!(
                membership(&pdu).as_deref(),
                Some("join" | "invite" | "knock")
            ) {
                entry
                    .local_members
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(target.clone());
            } else {
                entry
                    .local_members
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&target);
            }
            wake.extra.push(target);
        }
        // Our own events go to every other server in the room (after this event: a joining
        // server gets its join), and a membership change also to its target's server (a kicked
        // or leaving server gets its leave). Received events are not passed on: their origin
        // sends them to everyone.
        let mut destinations: Vec<String> = if soft_failed || origin == Origin::Remote {
            Vec::new()
        } else {
            entry
                .servers
                .iter()
                .filter(|(server, count)| **count > 0 && !self.is_local_server(server))
                .map(|(server, _)| server.clone())
                .collect()
        };
        if !soft_failed
            && origin == Origin::Local
            && pdu.kind.to_string() == "m.room.member"
            && let Some(server) = pdu.state_key.as_deref().and_then(server_of)
            && !self.is_local_server(server)
            && !destinations.iter().any(|d| d == server)
        {
            destinations.push(server.to_owned());
        }
        destinations.sort();
        let queued_ts = i64::from(now_ts().get());
        let outbound = destinations
            .iter()
            .map(|d| {
                (
                    pdu.sender.server_name().to_string(),
                    d.clone(),
                    pdu.event_id.to_string(),
                    queued_ts,
                )
            })
            .collect();

        let batch = EventBatch {
            rooms: vec![RoomRow {
                room_id: pdu.room_id.to_string(),
                room_version: version.to_string(),
                created_ts: entry.created_ts,
                forward_extremities: serde_json::to_string(&entry.extremities)
                    .map_err(|e| StorageError::Corrupt(e.to_string()))?,
                current_state_group: entry.state_group,
            }],
            state_groups: groups,
            events: vec![NewEvent {
                row,
                prev_events: pdu.prev_events.iter().map(|p| p.to_string()).collect(),
            }],
            transactions: Vec::new(),
            outbound,
            push: Default::default(),
        };
        self.remember(pdu.clone(), group_after);
        let (done, rx) = oneshot::channel();
        Ok((
            Staged {
                request: Some(WriteRequest::new(batch, done)),
                rx,
                destinations,
                wake,
            },
            pdu,
        ))
    }

    /// Moves the room's current state and forward extremities past an accepted event.
    fn advance_room(
        &self,
        entry: &mut RoomEntry,
        pdu: &Pdu,
        fork: Option<&Fork>,
        group_after: Option<i64>,
        groups: &mut Vec<NewStateGroup>,
        fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
    ) -> Result<(), AppendError> {
        let old_state = entry.state.clone_if(fork.is_some());
        // The state after the event.
        let mut after = match fork {
            Some(fork) => fork.state.clone(),
            None => std::mem::take(&mut entry.state),
        };
        if let Some(slot) = pdu.state_slot() {
            if slot.0 == "m.room.member" {
                let was_joined = after
                    .get(&slot)
                    .and_then(|id| fetch(id))
                    .is_some_and(|old| membership(&old).as_deref() == Some("join"));
                let now_joined = membership(pdu).as_deref() == Some("join");
                if let Some(server) = server_of(&slot.1) {
                    let count = entry.servers.entry(server.to_owned()).or_insert(0);
                    match (was_joined, now_joined) {
                        (false, true) => *count += 1,
                        (true, false) => *count = count.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            after.insert(slot, pdu.event_id.clone());
        }
        entry.extremities.retain(|id| !pdu.prev_events.contains(id));
        entry.extremities.push(pdu.event_id.clone());
        entry.max_depth = entry.max_depth.max(pdu.depth);
        match old_state {
            // Linear, or the fork now the only extremity: the state after the event is current.
            None => {
                entry.state = after;
                entry.state_group = group_after;
            }
            Some(old) if entry.extremities.len() == 1 => {
                let _ = old;
                entry.state = after;
                entry.state_group = group_after;
            }
            // Several extremities: the current state resolves the old current state with this
            // branch's.
            Some(old) => {
                let version = entry.version.clone();
                let resolved = auth::resolve(&version, &[old.clone(), after], fetch)?;
                let id = self.inner.next_group.fetch_add(1, Ordering::Relaxed);
                groups.push(NewStateGroup {
                    id,
                    room_id: pdu.room_id.to_string(),
                    prev_group: entry.state_group,
                    delta: state_delta(&old, &resolved),
                });
                entry.state = resolved;
                entry.state_group = Some(id);
            }
        }
        Ok(())
    }

    /// Steps 7-9: hand the write to the group commit, wait until durable, wake waiters and
    /// enqueue for other servers.
    /// Hands a staged write to the writer. Called under the room's lock, so the writer receives
    /// a room's events in the order they were staged (a child never gets a stream position
    /// below its parent's).
    async fn submit(&self, staged: &mut Staged) -> Result<(), AppendError> {
        let request = staged.request.take().ok_or(AppendError::WriterGone)?;
        self.inner
            .writer
            .send(request)
            .await
            .map_err(|_| AppendError::WriterGone)
    }

    /// Waits for a submitted write, then wakes syncs and hands the event to the outbound queue.
    async fn complete(
        &self,
        staged: Staged,
        submitted: Result<(), AppendError>,
        pdu: Arc<Pdu>,
        slot: &RoomSlot,
    ) -> Result<(Arc<Pdu>, Appended), AppendError> {
        let result = match submitted {
            Ok(()) => staged
                .rx
                .await
                .map_err(|_| AppendError::WriterGone)
                .and_then(|r| r.map_err(AppendError::from)),
            Err(err) => Err(err),
        };
        let streams = match result {
            Ok(streams) => streams,
            Err(err) => {
                // Memory ran ahead of the database: forget the room; it reloads from storage.
                *slot.lock().await = None;
                self.forget(&pdu.event_id);
                return Err(err);
            }
        };
        let Some(&stream) = streams.first() else {
            return Ok((pdu, Appended::SoftFailed));
        };
        self.wake_users(&staged.wake);
        if !staged.destinations.is_empty() {
            self.inner.outbound.enqueue(&pdu, &staged.destinations);
        }
        Ok((pdu, Appended::Timeline(stream)))
    }
}

/// Builds and signs an event from a local user on the room's current state: prev_events are
/// the forward extremities, auth_events are chosen from the current state.
fn build_on(
    entry: &RoomEntry,
    room_id: &RoomId,
    sender: &UserId,
    template: &EventTemplate,
    signer: Signer<'_>,
) -> Result<Pdu, AppendError> {
    let placement = placement_on(entry, room_id, sender, template, signer)?;
    Ok(build_pdu(&entry.version, template, placement)?)
}

/// Where an event of `sender` goes on the room's current state: prev_events are the forward
/// extremities, auth_events are chosen from the current state, depth one more than the
/// deepest.
fn placement_on<'a>(
    entry: &RoomEntry,
    room_id: &'a RoomId,
    sender: &'a UserId,
    template: &EventTemplate,
    signer: Signer<'a>,
) -> Result<Placement<'a>, AppendError> {
    let mut content = template.content.clone();
    if let (Some(redacts), true) = (
        &template.redacts,
        entry.version.rules().redaction.content_field_redacts,
    ) {
        content["redacts"] = json!(redacts.as_str());
    }
    let raw =
        serde_json::value::to_raw_value(&content).map_err(|e| EventError::Format(e.to_string()))?;
    let auth_events = auth::auth_event_ids(
        &entry.version,
        &template.kind,
        sender,
        template.state_key.as_deref(),
        &raw,
        &entry.state,
    )?;
    let mut prev_events = entry.extremities.clone();
    prev_events.sort();
    prev_events.truncate(MAX_PREV_EVENTS_LOCAL);
    Ok(Placement {
        room_id: Some(room_id),
        sender,
        prev_events,
        auth_events,
        depth: entry.max_depth.saturating_add(1),
        origin_server_ts: now_ts(),
        origin: signer.server_name,
        key: signer.key,
    })
}

/// Who built the event being appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// This server, from its current state.
    Local,
    /// Another server.
    Remote,
}

/// The state before an event that does not extend the current forward extremities.
struct Fork {
    /// The (possibly resolved) state before the event.
    state: State,
    /// Its stored group, when it is one parent's state as stored.
    group: Option<i64>,
    /// A parent's group and state to store a resolved state as a delta against.
    base: Option<(i64, State)>,
    /// Every event the checks and resolutions may look at.
    known: HashMap<OwnedEventId, Arc<Pdu>>,
}

struct Staged {
    request: Option<WriteRequest>,
    rx: oneshot::Receiver<Result<Vec<i64>, StorageError>>,
    destinations: Vec<String>,
    wake: Wake,
}

/// A room's local members, shared by the room and the writes that wake them (changed in place:
/// a join in a room of 30,000 members copies nothing).
type Members = Arc<std::sync::RwLock<HashSet<OwnedUserId>>>;

/// Wakes whoever waits on a user's watch.
fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

/// Whose syncs a committed event wakes: the room's local members (as they are when the write
/// commits) and the target of a membership change (who may have just left).
struct Wake {
    members: Option<Members>,
    extra: Vec<OwnedUserId>,
}

trait CloneIf {
    fn clone_if(&self, condition: bool) -> Option<Self>
    where
        Self: Sized;
}

impl CloneIf for State {
    fn clone_if(&self, condition: bool) -> Option<State> {
        condition.then(|| self.clone())
    }
}

/// The changes that turn `from` into `to` (`None` removes a slot).
fn state_delta(from: &State, to: &State) -> Vec<(String, String, Option<String>)> {
    let mut delta: Vec<(String, String, Option<String>)> = to
        .iter()
        .filter(|(slot, id)| from.get(*slot) != Some(*id))
        .map(|((kind, key), id)| (kind.clone(), key.clone(), Some(id.to_string())))
        .collect();
    delta.extend(
        from.keys()
            .filter(|slot| !to.contains_key(*slot))
            .map(|(kind, key)| (kind.clone(), key.clone(), None)),
    );
    delta
}

fn event_row(
    pdu: &Pdu,
    stream: Option<i64>,
    before: Option<i64>,
    after: Option<i64>,
    outlier: bool,
    soft_failed: bool,
) -> EventRow {
    EventRow {
        event_id: pdu.event_id.to_string(),
        room_id: pdu.room_id.to_string(),
        stream_ordering: stream,
        event_type: pdu.kind.to_string(),
        state_key: pdu.state_key.clone(),
        sender: pdu.sender.to_string(),
        depth: i64::try_from(pdu.depth).unwrap_or(i64::MAX),
        origin_server_ts: i64::from(pdu.origin_server_ts.0),
        json: pdu.json.to_string(),
        state_group_before: before,
        state_group_after: after,
        outlier,
        soft_failed,
        redacted_by: None,
    }
}

/// A fresh random room ID for room versions before 12 (`!<random>:<server>`).
fn placeholder_room_id(server_name: &str) -> Result<OwnedRoomId, EventError> {
    let mut random = [0u8; 18];
    getrandom::fill(&mut random).map_err(|e| EventError::Format(format!("no randomness: {e}")))?;
    let local: String = random.iter().map(|b| (b'a' + b % 26) as char).collect();
    RoomId::parse(format!("!{local}:{server_name}")).map_err(|e| EventError::Format(e.to_string()))
}

use std::future::Future;
use std::sync::atomic::Ordering;

use sqlx::QueryBuilder;

use crate::sqlite_writer::{Derived, write_batch};
use crate::store::{Writer, on_pool};
use crate::{Result, StorageError, Store};

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RoomRow {
    /// Room ID.
    pub room_id: String,
    /// Room version (`"12"`).
    pub room_version: String,
    /// When this server first stored it.
    pub created_ts: i64,
    /// JSON array of the forward extremities' event IDs.
    pub forward_extremities: String,
    /// State group of the current state.
    pub current_state_group: Option<i64>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EventRow {
    /// Event ID.
    pub event_id: String,
    /// Room ID.
    pub room_id: String,
    /// Stream position; `None` for outliers and soft-failed events.
    pub stream_ordering: Option<i64>,
    /// Event type.
    pub event_type: String,
    /// State key.
    pub state_key: Option<String>,
    /// Sender.
    pub sender: String,
    /// Depth.
    pub depth: i64,
    /// Sender's timestamp.
    pub origin_server_ts: i64,
    /// Canonical JSON.
    pub json: String,
    /// State before the event.
    pub state_group_before: Option<i64>,
    /// State after the event.
    pub state_group_after: Option<i64>,
    /// Known without its state.
    pub outlier: bool,
    /// Stored, but failed auth against the current state: never shown.
    pub soft_failed: bool,
    /// The redaction that redacted this event, if any: clients get the redacted form.
    pub redacted_by: Option<String>,
}

/// A new event for [`RoomEvents::persist_events`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The stored row.
    pub row: EventRow,
    /// Its `prev_events` (DAG edges).
    pub prev_events: Vec<String>,
}

/// One change of a state group: `(type, state_key, event_id)`; `None` removes the slot.
pub type StateDelta = (String, String, Option<String>);

/// A new state group: `prev_group` plus `delta` (`event_id` `None` removes the slot).
#[derive(Debug, Clone)]
pub struct NewStateGroup {
    /// Group ID (allocated by the caller).
    pub id: i64,
    /// Room.
    pub room_id: String,
    /// The group this one changes.
    pub prev_group: Option<i64>,
    /// `(type, state_key, event_id)` changes.
    pub delta: Vec<StateDelta>,
}

/// Everything one group commit writes, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct EventBatch {
    /// New rooms and the new extremities/current state of existing ones (last one per room wins).
    pub rooms: Vec<RoomRow>,
    /// New state groups.
    pub state_groups: Vec<NewStateGroup>,
    /// New events; an event ID already stored is skipped (appending twice is a no-op).
    pub events: Vec<NewEvent>,
    /// Client transaction IDs and the events they produced, stored with the events so a retry
    /// after a crash finds the event it already sent.
    pub transactions: Vec<TransactionRow>,
    /// Events to deliver to other servers, queued durably with the events themselves.
    pub outbound: Vec<OutboundRow>,
    /// The push rules' verdicts on earlier events, written by the same writer (SQLite has one
    /// writer at a time: a second one would make the event path wait for its lock).
    pub push: PushWrite,
}

/// Push verdicts, notifications for gateways and the push worker's new position.
#[derive(Debug, Clone, Default)]
pub struct PushWrite {
    /// Verdicts: the events' (empty `user_id`) and members' exceptions.
    pub actions: Vec<crate::repos::PushAction>,
    /// Notifications for push gateways.
    pub queue: Vec<crate::repos::QueuedPush>,
    /// How far the worker got (the highest wins).
    pub position: Option<i64>,
}

/// `(origin, destination, event_id, created_ts)`: an event of our territory `origin` that
/// `destination` must receive.
pub type OutboundRow = (String, String, String, i64);

/// `(user_id, device_id, txn_id, event_id, created_ts)` of a client send.
pub type TransactionRow = (String, String, String, String, i64);

impl EventBatch {
    /// Appends another batch, keeping order.
    pub fn extend(&mut self, other: EventBatch) {
        self.rooms.extend(other.rooms);
        self.state_groups.extend(other.state_groups);
        self.events.extend(other.events);
        self.transactions.extend(other.transactions);
        self.outbound.extend(other.outbound);
        self.push.actions.extend(other.push.actions);
        self.push.queue.extend(other.push.queue);
        self.push.position = self.push.position.max(other.push.position);
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
            && self.state_groups.is_empty()
            && self.events.is_empty()
            && self.push.position.is_none()
    }
}

pub(crate) const EVENT_COLUMNS: &str = "event_id, room_id, stream_ordering, event_type, state_key, sender, depth, \
     origin_server_ts, json, state_group_before, state_group_after, outlier, soft_failed, redacted_by";
/// Searchable rows that wait for SQLite's full-text index before an event batch moves them in
/// (a search moves whatever waits first; migrations 0027 and 0029: the rows after the
/// watermark `search_indexed.upto` wait).
pub const SEARCH_BATCH: u64 = 256;
/// Events (and state changes) of an event batch that SQLite's writer writes on the calling
/// task's thread; larger batches go through `block_in_place` (see `SqliteWriter::run`).
const SMALL_BATCH: usize = 32;

/// Rows per multi-row INSERT (PostgreSQL allows 65,535 parameters; 14 columns each).
const CHUNK: usize = 500;

/// A relation row: event, room, related event, rel_type, event type, sender, position.
pub(crate) type RelationRow<'a> = (&'a str, &'a str, String, String, &'a str, &'a str, i64);

/// The relations (`content.m.relates_to`) of new timeline events.
fn relations_of(events: &[NewEvent]) -> Vec<RelationRow<'_>> {
    events
        .iter()
        .filter(|e| !e.row.outlier && !e.row.soft_failed && e.row.json.contains("m.relates_to"))
        .filter_map(|e| {
            let position = e.row.stream_ordering?;
            let event: serde_json::Value = serde_json::from_str(&e.row.json).ok()?;
            let relation = event.get("content")?.get("m.relates_to")?;
            // NUL cannot be stored in PostgreSQL text (and names no event): no relation then.
            let target = relation
                .get("event_id")?
                .as_str()
                .filter(|t| !t.contains('\0'))?;
            let rel_type = relation
                .get("rel_type")?
                .as_str()
                .filter(|t| !t.contains('\0'))?;
            Some((
                e.row.event_id.as_str(),
                e.row.room_id.as_str(),
                target.to_owned(),
                rel_type.to_owned(),
                e.row.event_type.as_str(),
                e.row.sender.as_str(),
                position,
            ))
        })
        .collect()
}

/// A searchable text: `(position, event_id, room_id, key, text)`.
pub(crate) type SearchRow<'a> = (i64, &'a str, &'a str, &'static str, String);

/// The fields of an event's content that can be searched (each any JSON: only a string counts).
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct TextFields {
    content: SearchableContent,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SearchableContent {
    body: Option<serde_json::Value>,
    name: Option<serde_json::Value>,
    topic: Option<serde_json::Value>,
}

/// The searchable text of new timeline events: `(position, event_id, room_id, key, text)` for
/// `m.room.message` (`content.body`), `m.room.name` (`content.name`) and `m.room.topic`
/// (`content.topic`); outliers and soft-failed events are not searchable.
fn searchable_text(events: &[NewEvent]) -> Vec<SearchRow<'_>> {
    events
        .iter()
        .filter(|e| !e.row.outlier && !e.row.soft_failed && e.row.redacted_by.is_none())
        .filter_map(|e| {
            let position = e.row.stream_ordering?;
            // Only the three fields are read from the JSON; the rest is skipped unbuilt (the
            // whole event as a `Value` tree was a parse and ~30 allocations per message).
            let content = || {
                serde_json::from_str::<TextFields>(&e.row.json)
                    .ok()
                    .map(|t| t.content)
            };
            let (key, text) = match e.row.event_type.as_str() {
                "m.room.message" => ("content.body", content()?.body),
                "m.room.name" => ("content.name", content()?.name),
                "m.room.topic" => ("content.topic", content()?.topic),
                _ => return None,
            };
            // PostgreSQL text cannot hold NUL: a body with one is indexed without it.
            let text = text?.as_str()?.replace('\0', "");
            (!text.is_empty()).then_some((
                position,
                e.row.event_id.as_str(),
                e.row.room_id.as_str(),
                key,
                text,
            ))
        })
        .collect()
}

/// Rooms, events, DAG edges and state groups.
pub trait RoomEvents {
    /// Writes a batch in ONE transaction: rooms upserted, state groups, events (duplicates
    /// skipped) and their edges.
    fn persist_events(&self, batch: &EventBatch) -> impl Future<Output = Result<()>> + Send;
    /// One room.
    fn get_room(&self, room_id: &str) -> impl Future<Output = Result<Option<RoomRow>>> + Send;
    /// Every room, by ID.
    fn list_rooms(&self) -> impl Future<Output = Result<Vec<RoomRow>>> + Send;
    /// One event.
    fn get_event(&self, event_id: &str) -> impl Future<Output = Result<Option<EventRow>>> + Send;
    /// Which of `event_ids` are stored (one query for a batch of received events).
    fn stored_event_ids(
        &self,
        event_ids: &[String],
    ) -> impl Future<Output = Result<std::collections::HashSet<String>>> + Send;
    /// The stored JSON of each of `event_ids` that is stored: `(event_id, json)`, in no
    /// particular order (one query per few hundred IDs; answers to peers of whole states).
    fn get_event_jsons(
        &self,
        event_ids: &[String],
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    /// The room's timeline after `since` (exclusive), oldest first, without soft-failed events or
    /// outliers.
    fn get_room_events_after(
        &self,
        room_id: &str,
        since: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<EventRow>>> + Send;
    /// Users whose membership event in the room is in the stream range `(after, up_to]`
    /// (sync's `device_lists`: who started or stopped sharing a room).
    fn list_member_changes(
        &self,
        room_id: &str,
        after: i64,
        up_to: i64,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The room's timeline before `before` (exclusive), newest first.
    fn get_room_events_before(
        &self,
        room_id: &str,
        before: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<EventRow>>> + Send;
    /// Marks an event redacted by `redaction_id` (the first redaction wins).
    fn set_redacted_by(
        &self,
        event_id: &str,
        redaction_id: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The full state of a group: `(type, state_key)` -> event ID.
    fn load_state_group(
        &self,
        group: i64,
    ) -> impl Future<Output = Result<Vec<(String, String, String)>>> + Send;
    /// Highest stream position and state group ID in use (0 when none).
    fn get_max_ids(&self) -> impl Future<Output = Result<(i64, i64)>> + Send;
    /// Puts events stored as outliers into the timeline at the given positions (backfilled
    /// history that was known as part of a state); events not stored as outliers are left as
    /// they are. Returns how many moved.
    fn promote_outliers(
        &self,
        positions: &[(String, i64)],
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Lowest stream position in use (backfilled history sits below 1; 1 when none).
    fn get_min_stream_ordering(&self) -> impl Future<Output = Result<i64>> + Send;
    /// Number of rows in a table (for tests of what a write costs).
    fn count_rows(&self, table: &str) -> impl Future<Output = Result<i64>> + Send;
}

impl Store {
    /// [`RoomEvents::persist_events`] on PostgreSQL: one query per multi-row statement, in one
    /// transaction.
    async fn persist_postgres(
        &self,
        pool: &sqlx::PgPool,
        batch: &EventBatch,
        rooms: &[&RoomRow],
        searchable: &[SearchRow<'_>],
        relations: &[RelationRow<'_>],
    ) -> std::result::Result<(), sqlx::Error> {
        let deltas: Vec<(i64, &StateDelta)> = batch
            .state_groups
            .iter()
            .flat_map(|g| g.delta.iter().map(move |d| (g.id, d)))
            .collect();
        let edges: Vec<(&str, i64, &str, &str)> = batch
            .events
            .iter()
            .flat_map(|e| {
                e.prev_events.iter().map(move |p| {
                    let r = &e.row;
                    (r.room_id.as_str(), r.depth, r.event_id.as_str(), p.as_str())
                })
            })
            .collect();
        let mut queries = Vec::new();
        let mut q = QueryBuilder::new("");
        for room in rooms {
            q.push(
                "INSERT INTO rooms (room_id, room_version, created_ts, forward_extremities, current_state_group) VALUES (",
            );
            q.separated(", ")
                .push_bind(&room.room_id)
                .push_bind(&room.room_version)
                .push_bind(room.created_ts)
                .push_bind(&room.forward_extremities)
                .push_bind(room.current_state_group);
            q.push(
                ") ON CONFLICT (room_id) DO UPDATE SET
                   forward_extremities = excluded.forward_extremities,
                   current_state_group = excluded.current_state_group",
            );
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        for chunk in batch.state_groups.chunks(CHUNK) {
            q.push("INSERT INTO state_groups (id, room_id, prev_group) ");
            q.push_values(chunk, |mut b, g| {
                b.push_bind(g.id)
                    .push_bind(&g.room_id)
                    .push_bind(g.prev_group);
            });
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        for chunk in deltas.chunks(CHUNK) {
            q.push(
                "INSERT INTO state_group_deltas (state_group, event_type, state_key, event_id) ",
            );
            q.push_values(chunk, |mut b, (group, (kind, key, id))| {
                b.push_bind(*group)
                    .push_bind(kind)
                    .push_bind(key)
                    .push_bind(id);
            });
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        for chunk in batch.events.chunks(CHUNK) {
            q.push(format!("INSERT INTO events ({EVENT_COLUMNS}) "));
            q.push_values(chunk, |mut b, e| {
                let r = &e.row;
                b.push_bind(&r.event_id)
                    .push_bind(&r.room_id)
                    .push_bind(r.stream_ordering)
                    .push_bind(&r.event_type)
                    .push_bind(&r.state_key)
                    .push_bind(&r.sender)
                    .push_bind(r.depth)
                    .push_bind(r.origin_server_ts)
                    .push_bind(&r.json)
                    .push_bind(r.state_group_before)
                    .push_bind(r.state_group_after)
                    .push_bind(r.outlier)
                    .push_bind(r.soft_failed)
                    .push_bind(&r.redacted_by);
            });
            q.push(" ON CONFLICT (event_id) DO NOTHING");
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        for chunk in relations.chunks(CHUNK) {
            q.push("INSERT INTO event_relations (event_id, room_id, relates_to, rel_type, event_type, sender, stream_ordering) ");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.0)
                    .push_bind(r.1)
                    .push_bind(&r.2)
                    .push_bind(&r.3)
                    .push_bind(r.4)
                    .push_bind(r.5)
                    .push_bind(r.6);
            });
            q.push(" ON CONFLICT (event_id) DO NOTHING");
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        for chunk in searchable.chunks(CHUNK) {
            q.push("INSERT INTO event_search (event_id, room_id, key, body) ");
            q.push_values(chunk, |mut b, (_, id, room, key, body)| {
                b.push_bind(*id)
                    .push_bind(*room)
                    .push_bind(*key)
                    .push_bind(body);
            });
            q.push(" ON CONFLICT (event_id) DO NOTHING");
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        for chunk in edges.chunks(CHUNK) {
            q.push("INSERT INTO event_edges (room_id, depth, event_id, prev_event_id) ");
            q.push_values(chunk, |mut b, (room, depth, id, prev)| {
                b.push_bind(*room)
                    .push_bind(*depth)
                    .push_bind(*id)
                    .push_bind(*prev);
            });
            q.push(" ON CONFLICT DO NOTHING");
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        for chunk in batch.transactions.chunks(CHUNK) {
            q.push(
                "INSERT INTO transaction_ids (user_id, device_id, txn_id, event_id, created_ts) ",
            );
            q.push_values(chunk, |mut b, (user, device, txn, event, ts)| {
                b.push_bind(user)
                    .push_bind(device)
                    .push_bind(txn)
                    .push_bind(event)
                    .push_bind(*ts);
            });
            q.push(" ON CONFLICT DO NOTHING");
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        for chunk in batch.outbound.chunks(CHUNK) {
            q.push("INSERT INTO federation_outbound (origin, destination, event_id, created_ts) ");
            q.push_values(chunk, |mut b, (origin, destination, event, ts)| {
                b.push_bind(origin)
                    .push_bind(destination)
                    .push_bind(event)
                    .push_bind(*ts);
            });
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        let (common, exceptions): (Vec<_>, Vec<_>) = batch
            .push
            .actions
            .iter()
            .partition(|a| a.user_id.is_empty());
        for chunk in common.chunks(CHUNK) {
            q.push("INSERT INTO event_push (room_id, stream_ordering, sender, thread_id, notify, highlight, actions) ");
            q.push_values(chunk, |mut b, a| {
                b.push_bind(&a.room_id)
                    .push_bind(a.stream_ordering)
                    .push_bind(&a.sender)
                    .push_bind(&a.thread_id)
                    .push_bind(a.notify)
                    .push_bind(a.highlight)
                    .push_bind(&a.actions);
            });
            q.push(" ON CONFLICT (room_id, stream_ordering) DO NOTHING");
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        for chunk in exceptions.chunks(CHUNK) {
            q.push("INSERT INTO event_push_exceptions (user_id, room_id, stream_ordering, notify, highlight, actions) ");
            q.push_values(chunk, |mut b, a| {
                b.push_bind(&a.user_id)
                    .push_bind(&a.room_id)
                    .push_bind(a.stream_ordering)
                    .push_bind(a.notify)
                    .push_bind(a.highlight)
                    .push_bind(&a.actions);
            });
            q.push(" ON CONFLICT (user_id, room_id, stream_ordering) DO NOTHING");
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        for chunk in batch.push.queue.chunks(CHUNK) {
            q.push("INSERT INTO push_queue (user_id, app_id, pushkey, url, body, attempts, next_attempt_ts, created_ts) ");
            q.push_values(chunk, |mut b, p| {
                b.push_bind(&p.user_id)
                    .push_bind(&p.app_id)
                    .push_bind(&p.pushkey)
                    .push_bind(&p.url)
                    .push_bind(&p.body)
                    .push_bind(0_i64)
                    .push_bind(p.next_attempt_ts)
                    .push_bind(p.created_ts);
            });
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        if let Some(position) = batch.push.position {
            q.push("INSERT INTO push_position (id, position) VALUES (1, ");
            q.push_bind(position);
            q.push(
                ") ON CONFLICT (id) DO UPDATE SET position = CASE
                WHEN excluded.position > push_position.position THEN excluded.position
                ELSE push_position.position END",
            );
            queries.push(std::mem::replace(&mut q, QueryBuilder::new("")));
        }
        let mut tx = pool.begin().await?;
        for mut q in queries {
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await
    }
}

impl RoomEvents for Store {
    async fn persist_events(&self, batch: &EventBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Only the last update of each room matters.
        let mut rooms: Vec<&RoomRow> = Vec::new();
        for room in batch.rooms.iter().rev() {
            if !rooms.iter().any(|r| r.room_id == room.room_id) {
                rooms.push(room);
            }
        }
        let searchable = searchable_text(&batch.events);
        let relations = relations_of(&batch.events);
        let written = match &self.writer {
            // SQLite: single-row statements prepared once, run by this task on the writer's
            // own connection (`sqlite_writer`).
            Writer::Sqlite(writer) => {
                let waiting = self.search_pending.load(Ordering::Relaxed) + searchable.len() as u64;
                let index_search = waiting >= SEARCH_BATCH;
                let count = searchable.len() as u64;
                let derived = Derived {
                    rooms,
                    searchable,
                    relations,
                    index_search,
                };
                // A client's send (or a few events): written on this task's thread.
                let small = !index_search
                    && batch.events.len() <= SMALL_BATCH
                    && batch
                        .state_groups
                        .iter()
                        .map(|g| g.delta.len())
                        .sum::<usize>()
                        <= SMALL_BATCH;
                let result = writer
                    .run(small, |conn| write_batch(conn, batch, &derived))
                    .await;
                if result.is_ok() {
                    if index_search {
                        self.search_pending.store(0, Ordering::Relaxed);
                    } else if count > 0 {
                        self.search_pending.fetch_add(count, Ordering::Relaxed);
                    }
                    self.after_writer_commit();
                }
                result
            }
            // PostgreSQL: multi-row statements, each a query of its own in one transaction
            // (it cannot bind parameters across statements).
            Writer::Postgres(pool) => self
                .persist_postgres(pool, batch, &rooms, &searchable, &relations)
                .await
                .map_err(|e| StorageError::from_sqlx(e, || "event batch".to_owned())),
        };
        for event in &batch.events {
            if let ("m.room.member", Some(user)) =
                (event.row.event_type.as_str(), &event.row.state_key)
            {
                self.member_rooms.forget(user);
            }
        }
        written
    }

    async fn stored_event_ids(
        &self,
        event_ids: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        let mut found = std::collections::HashSet::new();
        for chunk in event_ids.chunks(CHUNK) {
            let ids: Vec<String> = on_pool!(self, pool => {
                let mut q = QueryBuilder::new("SELECT event_id FROM events WHERE event_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id);
                }
                q.push(")");
                q.build_query_scalar().persistent(false).fetch_all(pool).await
            })?;
            found.extend(ids);
        }
        Ok(found)
    }

    async fn get_event_jsons(&self, event_ids: &[String]) -> Result<Vec<(String, String)>> {
        let mut found = Vec::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(CHUNK) {
            let rows: Vec<(String, String)> = on_pool!(self, pool => {
                let mut q =
                    QueryBuilder::new("SELECT event_id, json FROM events WHERE event_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id);
                }
                q.push(")");
                q.build_query_as().persistent(false).fetch_all(pool).await
            })?;
            found.extend(rows);
        }
        Ok(found)
    }

    async fn get_room(&self, room_id: &str) -> Result<Option<RoomRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT room_id, room_version, created_ts, forward_extremities, current_state_group
                 FROM rooms WHERE room_id = $1",
            )
            .bind(room_id)
            .fetch_optional(pool)
            .await
        })?)
    }

    async fn list_rooms(&self) -> Result<Vec<RoomRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT room_id, room_version, created_ts, forward_extremities, current_state_group
                 FROM rooms ORDER BY room_id",
            )
            .fetch_all(pool)
            .await
        })?)
    }

    async fn get_event(&self, event_id: &str) -> Result<Option<EventRow>> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1");
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(event_id).fetch_optional(pool).await
        })?)
    }

    async fn get_room_events_after(
        &self,
        room_id: &str,
        since: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE room_id = $1 AND stream_ordering > $2 AND soft_failed = FALSE AND outlier = FALSE
             ORDER BY stream_ordering LIMIT $3"
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(room_id).bind(since).bind(limit).fetch_all(pool).await
        })?)
    }

    async fn list_member_changes(
        &self,
        room_id: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT DISTINCT state_key FROM events
                 WHERE room_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3
                   AND event_type = 'm.room.member' AND state_key IS NOT NULL
                   AND soft_failed = FALSE AND outlier = FALSE",
            )
            .bind(room_id)
            .bind(after)
            .bind(up_to)
            .fetch_all(pool)
            .await
        })?)
    }

    async fn get_room_events_before(
        &self,
        room_id: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE room_id = $1 AND stream_ordering < $2 AND soft_failed = FALSE AND outlier = FALSE
             ORDER BY stream_ordering DESC LIMIT $3"
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(room_id).bind(before).bind(limit).fetch_all(pool).await
        })?)
    }

    async fn set_redacted_by(&self, event_id: &str, redaction_id: &str) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE events SET redacted_by = $1 WHERE event_id = $2 AND redacted_by IS NULL")
                .bind(redaction_id)
                .bind(event_id)
                .execute(&mut *tx)
                .await?;
            // A redacted event's text is no longer searchable, and its relation is gone.
            // SQLite's rows are keyed by the event's stream position (migration 0026).
            sqlx::query(if self.kind() == crate::BackendKind::Sqlite {
                "DELETE FROM event_search
                 WHERE stream_ordering = (SELECT stream_ordering FROM events WHERE event_id = $1)"
            } else {
                "DELETE FROM event_search WHERE event_id = $1"
            })
                .bind(event_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM event_relations WHERE event_id = $1")
                .bind(event_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })?;
        Ok(())
    }

    async fn load_state_group(&self, group: i64) -> Result<Vec<(String, String, String)>> {
        // Walk the delta chain to its root, then apply the deltas root first.
        let rows: Vec<(String, String, Option<String>, i64)> = on_pool!(self, pool => {
            sqlx::query_as(
                "WITH RECURSIVE chain (id, prev, n) AS (
                     SELECT id, prev_group, CAST(0 AS BIGINT) FROM state_groups WHERE id = $1
                     UNION ALL
                     SELECT g.id, g.prev_group, c.n + 1 FROM state_groups g JOIN chain c ON g.id = c.prev
                 )
                 SELECT d.event_type, d.state_key, d.event_id, c.n
                 FROM state_group_deltas d JOIN chain c ON d.state_group = c.id
                 ORDER BY c.n DESC",
            )
            .bind(group)
            .fetch_all(pool)
            .await
        })?;
        let mut state: std::collections::HashMap<(String, String), Option<String>> =
            std::collections::HashMap::with_capacity(rows.len());
        for (kind, key, id, _) in rows {
            state.insert((kind, key), id);
        }
        Ok(state
            .into_iter()
            .filter_map(|((k, s), id)| id.map(|id| (k, s, id)))
            .collect())
    }

    async fn get_max_ids(&self) -> Result<(i64, i64)> {
        let stream: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT MAX(stream_ordering) FROM events").fetch_one(pool).await
        })?;
        let group: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT MAX(id) FROM state_groups").fetch_one(pool).await
        })?;
        Ok((stream.unwrap_or(0), group.unwrap_or(0)))
    }

    async fn promote_outliers(&self, positions: &[(String, i64)]) -> Result<u64> {
        let promoted = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut moved = 0;
            for (event_id, position) in positions {
                moved += sqlx::query(
                    "UPDATE events SET stream_ordering = $1, outlier = FALSE
                     WHERE event_id = $2 AND outlier = TRUE",
                )
                .bind(position)
                .bind(event_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await.map(|()| moved)
        });
        // Some may be membership events (which rooms a user is in).
        self.member_rooms.forget_all();
        Ok(promoted?)
    }

    async fn get_min_stream_ordering(&self) -> Result<i64> {
        let min: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT MIN(stream_ordering) FROM events")
                .fetch_one(pool)
                .await
        })?;
        Ok(min.unwrap_or(1))
    }

    async fn count_rows(&self, table: &str) -> Result<i64> {
        const TABLES: &[&str] = &[
            "rooms",
            "events",
            "event_edges",
            "state_groups",
            "state_group_deltas",
        ];
        if !TABLES.contains(&table) {
            return Err(StorageError::NotFound {
                what: format!("table {table}"),
            });
        }
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(pool).await
        })?)
    }
}

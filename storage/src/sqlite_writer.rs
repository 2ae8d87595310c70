//! The room writer's SQLite connection: event batches run as one transaction of single-row
//! statements, each prepared once per connection, on the thread of the task that writes.
//!
//! Through sqlx every statement went to the connection's worker thread and its result came
//! back through a channel: a commit of a few messages took three to four times the CPU time
//! SQLite spent on it, in hand-offs between the writer task, the worker thread and the tokio
//! workers; and as a commit's statement text depends on its row counts, each was parsed again.
//! Here the writer's task runs SQLite itself: a small write right where it is, anything that
//! may take long (a large batch, a lock held elsewhere, a sync to disk) inside
//! `block_in_place`; the statements are cached by their text, which never changes. Why this
//! is rusqlite beside sqlx: sqlx runs SQLite only on its worker threads, and its raw handle
//! needs `unsafe`. See docs/decisions.md, "Synchronous SQLite writer".

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::Mutex;

use crate::repos::rooms::{EventBatch, RelationRow, SearchRow};
use crate::store::SqliteSynchronous;
use crate::{Result, StorageError};

/// Statements the writer keeps prepared (one per kind of row, and a few more).
const STATEMENT_CACHE: usize = 32;

/// How the writer's connection is opened (again, after a failure that left it unusable).
#[derive(Debug, Clone)]
pub(crate) struct WriterOptions {
    pub(crate) path: PathBuf,
    pub(crate) synchronous: SqliteSynchronous,
    pub(crate) busy_timeout: Duration,
    pub(crate) wal_size_limit: u64,
    pub(crate) cache_size_kib: u64,
}

/// The connection, behind an async lock: one write at a time, in the order they asked.
pub(crate) struct SqliteWriter {
    conn: Mutex<Option<Connection>>,
    options: WriterOptions,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("path", &self.options.path)
            .finish_non_exhaustive()
    }
}

/// Opens a connection with the same settings as the pool's, except that it never checkpoints
/// after its own commits (`wal_autocheckpoint=0`: the store checkpoints beside it).
fn open(options: &WriterOptions) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        &options.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(options.busy_timeout)?;
    let synchronous = match options.synchronous {
        SqliteSynchronous::Normal => "NORMAL",
        SqliteSynchronous::Full => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = {synchronous};
         PRAGMA journal_size_limit = {};
         PRAGMA cache_size = -{};
         PRAGMA wal_autocheckpoint = 0;",
        options.wal_size_limit, options.cache_size_kib
    ))?;
    // The pool put the file into WAL mode (a property of the file); checked, not assumed.
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!("journal_mode is {mode}, expected wal")),
        ));
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // No waiting for locks on the fast path (`SqliteWriter::run`).
    conn.busy_timeout(Duration::ZERO)?;
    Ok(conn)
}

impl SqliteWriter {
    /// Opens the writer's connection to a database file the pool has created.
    pub(crate) fn open(options: WriterOptions) -> rusqlite::Result<SqliteWriter> {
        let conn = open(&options)?;
        Ok(SqliteWriter {
            conn: Mutex::new(Some(conn)),
            options,
        })
    }

    /// Runs `work`, one transaction, on the connection after the writes before it.
    ///
    /// A `small` write (a few events: the client send path) runs right here on the calling
    /// task's thread without waiting for a lock another connection holds; if the database is
    /// busy, or the write is large or must sync to disk (`synchronous = FULL`), `work` runs
    /// (again) inside `block_in_place`, waiting up to the busy timeout, while the runtime
    /// hands this thread's other tasks to another thread. So a tokio worker is never held
    /// longer than SQLite takes to write a few rows into the WAL. `work` must be one
    /// transaction: a busy attempt left nothing behind and is simply run again.
    ///
    /// A connection left inside a transaction (its rollback failed) is closed, and the next
    /// call opens a new one.
    pub(crate) async fn run<T>(
        &self,
        small: bool,
        mut work: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut slot = self.conn.lock().await;
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => open(&self.options).map_err(from_rusqlite)?,
        };
        let mut done = None;
        if small && self.options.synchronous == SqliteSynchronous::Normal {
            let first = work(&mut conn);
            if !is_busy(&first) {
                done = Some((first, true));
            }
        }
        let (result, reset) = match done {
            Some(done) => done,
            None => {
                let timeout = self.options.busy_timeout;
                blocking(|| {
                    let result = conn.busy_timeout(timeout).and_then(|()| work(&mut conn));
                    let reset = conn.busy_timeout(Duration::ZERO).is_ok();
                    (result, reset)
                })
            }
        };
        // A connection still inside `work`'s transaction (neither committed nor rolled back),
        // or whose busy timeout could not be set back, is dropped, which closes it.
        if reset && conn.is_autocommit() {
            *slot = Some(conn);
        }
        result.map_err(from_rusqlite)
    }

    /// Closes the connection (after the write in progress).
    pub(crate) async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take()
            && let Err((_, error)) = conn.close()
        {
            tracing::warn!(%error, "closing the SQLite writer's connection failed");
        }
    }
}

/// Runs `f` where it may block: inside `block_in_place` on a multi-threaded runtime (tests'
/// single-threaded runtimes cannot hand their tasks over, and run it as it is).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// True when another connection held the lock (`SQLITE_BUSY`, any extended code).
fn is_busy<T>(result: &rusqlite::Result<T>) -> bool {
    matches!(
        result,
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy
    )
}

/// Unique-key violations become [`StorageError::Conflict`], foreign-key violations
/// [`StorageError::NotFound`] (as [`StorageError::from_sqlx`] does).
fn from_rusqlite(err: rusqlite::Error) -> StorageError {
    use rusqlite::ffi;
    if let rusqlite::Error::SqliteFailure(failure, _) = &err {
        match failure.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                return StorageError::Conflict {
                    what: "event batch row".to_owned(),
                };
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                return StorageError::NotFound {
                    what: "owner of event batch row".to_owned(),
                };
            }
            _ => {}
        }
    }
    StorageError::Writer(err)
}

/// What [`write_batch`] writes besides the batch itself (derived by the caller).
pub(crate) struct Derived<'a> {
    /// The last update of each room.
    pub(crate) rooms: Vec<&'a crate::repos::RoomRow>,
    pub(crate) searchable: Vec<SearchRow<'a>>,
    pub(crate) relations: Vec<RelationRow<'a>>,
    /// Move the rows that wait into the full-text index in the same transaction.
    pub(crate) index_search: bool,
}

/// Writes a batch in one `BEGIN IMMEDIATE` transaction; on any error nothing of it stays.
/// `OR FAIL`: a statement whose constraints default to ABORT, and that may write more than one
/// row (the search table's trigger), makes SQLite copy each page it first touches into a
/// statement journal so that the statement alone could be undone; the whole transaction is
/// rolled back on any error, so that copy would never be used.
pub(crate) fn write_batch(
    conn: &mut Connection,
    batch: &EventBatch,
    derived: &Derived<'_>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if !derived.rooms.is_empty() {
        let mut st = tx.prepare_cached(
            "INSERT INTO rooms (room_id, room_version, created_ts, forward_extremities, current_state_group)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (room_id) DO UPDATE SET
               forward_extremities = excluded.forward_extremities,
               current_state_group = excluded.current_state_group",
        )?;
        for room in &derived.rooms {
            st.execute(params![
                room.room_id,
                room.room_version,
                room.created_ts,
                room.forward_extremities,
                room.current_state_group
            ])?;
        }
    }
    if !batch.state_groups.is_empty() {
        let mut group = tx.prepare_cached(
            "INSERT OR FAIL INTO state_groups (id, room_id, prev_group) VALUES (?1, ?2, ?3)",
        )?;
        let mut delta = tx.prepare_cached(
            "INSERT OR FAIL INTO state_group_deltas (state_group, event_type, state_key, event_id)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for g in &batch.state_groups {
            group.execute(params![g.id, g.room_id, g.prev_group])?;
        }
        for g in &batch.state_groups {
            for (kind, key, id) in &g.delta {
                delta.execute(params![g.id, kind, key, id])?;
            }
        }
    }
    if !batch.events.is_empty() {
        let mut st = tx.prepare_cached(
            "INSERT OR FAIL INTO events (event_id, room_id, stream_ordering, event_type, state_key,
               sender, depth, origin_server_ts, json, state_group_before, state_group_after,
               outlier, soft_failed, redacted_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (event_id) DO NOTHING",
        )?;
        for e in &batch.events {
            let r = &e.row;
            st.execute(params![
                r.event_id,
                r.room_id,
                r.stream_ordering,
                r.event_type,
                r.state_key,
                r.sender,
                r.depth,
                r.origin_server_ts,
                r.json,
                r.state_group_before,
                r.state_group_after,
                r.outlier,
                r.soft_failed,
                r.redacted_by
            ])?;
        }
    }
    if !derived.relations.is_empty() {
        let mut st = tx.prepare_cached(
            "INSERT OR FAIL INTO event_relations
               (event_id, room_id, relates_to, rel_type, event_type, sender, stream_ordering)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (event_id) DO NOTHING",
        )?;
        for r in &derived.relations {
            st.execute(params![r.0, r.1, r.2, r.3, r.4, r.5, r.6])?;
        }
    }
    if !derived.searchable.is_empty() {
        // Keyed by stream position (appended, migration 0026).
        let mut st = tx.prepare_cached(
            "INSERT OR FAIL INTO event_search (stream_ordering, event_id, room_id, key, body)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (stream_ordering) DO NOTHING",
        )?;
        for (position, id, room, key, body) in &derived.searchable {
            st.execute(params![position, id, room, key, body])?;
        }
    }
    if batch.events.iter().any(|e| !e.prev_events.is_empty()) {
        let mut st = tx.prepare_cached(
            "INSERT OR FAIL INTO event_edges (room_id, depth, event_id, prev_event_id)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )?;
        for e in &batch.events {
            for prev in &e.prev_events {
                st.execute(params![e.row.room_id, e.row.depth, e.row.event_id, prev])?;
            }
        }
    }
    if !batch.transactions.is_empty() {
        let mut st = tx.prepare_cached(
            "INSERT OR FAIL INTO transaction_ids (user_id, device_id, txn_id, event_id, created_ts)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )?;
        for (user, device, txn, event, ts) in &batch.transactions {
            st.execute(params![user, device, txn, event, ts])?;
        }
    }
    if !batch.outbound.is_empty() {
        let mut st = tx.prepare_cached(
            "INSERT OR FAIL INTO federation_outbound (origin, destination, event_id, created_ts)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (origin, destination, event, ts) in &batch.outbound {
            st.execute(params![origin, destination, event, ts])?;
        }
    }
    for a in &batch.push.actions {
        if a.user_id.is_empty() {
            let mut st = tx.prepare_cached(
                "INSERT OR FAIL INTO event_push
                   (room_id, stream_ordering, sender, thread_id, notify, highlight, actions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (room_id, stream_ordering) DO NOTHING",
            )?;
            st.execute(params![
                a.room_id,
                a.stream_ordering,
                a.sender,
                a.thread_id,
                a.notify,
                a.highlight,
                a.actions
            ])?;
        } else {
            let mut st = tx.prepare_cached(
                "INSERT OR FAIL INTO event_push_exceptions
                   (user_id, room_id, stream_ordering, notify, highlight, actions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user_id, room_id, stream_ordering) DO NOTHING",
            )?;
            st.execute(params![
                a.user_id,
                a.room_id,
                a.stream_ordering,
                a.notify,
                a.highlight,
                a.actions
            ])?;
        }
    }
    if !batch.push.queue.is_empty() {
        let mut st = tx.prepare_cached(
            "INSERT OR FAIL INTO push_queue
               (user_id, app_id, pushkey, url, body, attempts, next_attempt_ts, created_ts)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7)",
        )?;
        for p in &batch.push.queue {
            st.execute(params![
                p.user_id,
                p.app_id,
                p.pushkey,
                p.url,
                p.body,
                p.next_attempt_ts,
                p.created_ts
            ])?;
        }
    }
    if let Some(position) = batch.push.position {
        tx.prepare_cached(
            "INSERT OR FAIL INTO push_position (id, position) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET position = CASE
               WHEN excluded.position > push_position.position THEN excluded.position
               ELSE push_position.position END",
        )?
        .execute(params![position])?;
    }
    if derived.index_search {
        index_pending_search(&tx)?;
    }
    tx.commit()
}

/// Moves the searchable rows after the watermark into the full-text index and moves the
/// watermark (migrations 0027, 0029), inside the caller's transaction.
pub(crate) fn index_pending_search(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO event_search_fts (rowid, body)
         SELECT stream_ordering, body FROM event_search
         WHERE stream_ordering > (SELECT upto FROM search_indexed)",
    )?
    .execute([])?;
    conn.prepare_cached(
        "UPDATE search_indexed SET upto = (SELECT MAX(stream_ordering) FROM event_search)
         WHERE upto < (SELECT MAX(stream_ordering) FROM event_search)",
    )?
    .execute([])?;
    Ok(())
}

//! Push: the push rules' verdict on each event for each local member (`event_push_actions`,
//! behind unread counts and `/notifications`), pushers, and the durable queue of notifications
//! for push gateways.

use std::future::Future;

use crate::repos::EventRow;
use crate::repos::rooms::EVENT_COLUMNS;
use crate::store::on_pool;
use crate::{Result, Store};

/// What the rules said about one event: for every member without an exception (`user_id`
/// empty), or for one member (an exception).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PushAction {
    /// The local user of an exception; empty for the event's verdict.
    pub user_id: String,
    /// The event's sender (the event's verdict; empty in exceptions).
    pub sender: String,
    /// The event's room.
    pub room_id: String,
    /// The event (not stored: read from `events` by its stream position).
    pub event_id: String,
    /// The event's stream position.
    pub stream_ordering: i64,
    /// The actions notify.
    pub notify: bool,
    /// The actions highlight.
    pub highlight: bool,
    /// The thread root of an event in a thread (`""` for the main timeline).
    pub thread_id: String,
    /// The actions, as a JSON array.
    pub actions: String,
    /// When the event was sent (ms; not stored: read from `events`).
    pub ts: i64,
}

/// A pusher as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Pusher {
    /// Owner.
    pub user_id: String,
    /// Application ID.
    pub app_id: String,
    /// Push key (unique per app and user).
    pub pushkey: String,
    /// `http`.
    pub kind: String,
    /// Application name for the user.
    pub app_display_name: String,
    /// Device name for the user.
    pub device_display_name: String,
    /// Profile tag.
    pub profile_tag: Option<String>,
    /// Language.
    pub lang: String,
    /// JSON object: `url`, `format`, the client's own keys.
    pub data: String,
    /// The device that set it.
    pub device_id: Option<String>,
    /// When (ms).
    pub created_ts: i64,
}

/// A notification for a push gateway.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct QueuedPush {
    /// Row ID (ignored when queueing).
    pub id: i64,
    /// The pusher's owner.
    pub user_id: String,
    /// The pusher's app ID.
    pub app_id: String,
    /// The pusher's key.
    pub pushkey: String,
    /// The gateway's notify URL.
    pub url: String,
    /// The request body.
    pub body: String,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Not before (ms).
    pub next_attempt_ts: i64,
    /// When queued (ms).
    pub created_ts: i64,
}

/// Push rules' results, pushers and the push queue.
pub trait PushStore {
    /// How far the push worker got (`None` before its first run).
    fn get_push_position(&self) -> impl Future<Output = Result<Option<i64>>> + Send;
    /// Timeline events of every room after stream position `after`, oldest first.
    fn list_stream_events(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<EventRow>>> + Send;
    /// Stores a batch of verdicts and notifications and the new position, in one transaction
    /// (the node sends these through the room writer instead: [`crate::EventBatch::push`]).
    fn save_push_batch(
        &self,
        actions: &[PushAction],
        queue: &[QueuedPush],
        position: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The unread counts of `user_id` in a room, in one read: the main timeline's
    /// `(notifications, highlights)` after their newest main-timeline read receipt (`m.read` or
    /// `m.read.private`, unthreaded or `main`; from the start when its event is unknown), else
    /// after stream position `unread_from` (their membership); and each thread's `(root,
    /// notifications, highlights)` after `unread_from` and after their receipt in that thread
    /// or an unthreaded one. Each counted up to 100 (clients show "99+").
    fn count_unread(
        &self,
        user_id: &str,
        room_id: &str,
        unread_from: i64,
    ) -> impl Future<Output = Result<UnreadCounts>> + Send;
    /// The user's notifications in a room between stream positions `after` (their membership)
    /// and `before`, newest first, highlights only when asked; each with its event ID and time.
    fn list_notifications(
        &self,
        user_id: &str,
        room_id: &str,
        window: (i64, i64),
        limit: i64,
        only_highlight: bool,
    ) -> impl Future<Output = Result<Vec<PushAction>>> + Send;
    /// Adds or replaces a pusher; unless `append`, other users' pushers with the same app ID
    /// and key go (the spec's `append: false`).
    fn set_pusher(&self, pusher: &Pusher, append: bool) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a user's pusher and its queued notifications; returns whether it existed.
    fn delete_pusher(
        &self,
        user_id: &str,
        app_id: &str,
        pushkey: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// A user's pushers.
    fn list_pushers(&self, user_id: &str) -> impl Future<Output = Result<Vec<Pusher>>> + Send;
    /// Queued notifications due at `now`, oldest first.
    fn list_due_pushes(
        &self,
        now: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<QueuedPush>>> + Send;
    /// When the next queued notification is due (`None` when the queue is empty).
    fn next_push_due(&self) -> impl Future<Output = Result<Option<i64>>> + Send;
    /// Removes a delivered (or abandoned) notification.
    fn delete_queued_push(&self, id: i64) -> impl Future<Output = Result<()>> + Send;
    /// Records a failed attempt and when to try again.
    fn retry_queued_push(
        &self,
        id: i64,
        next_attempt_ts: i64,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A room's unread counts: the main timeline's `(notifications, highlights)`, and each thread's
/// `(root, notifications, highlights)`.
pub type UnreadCounts = ((i64, i64), Vec<(String, i64, i64)>);

/// A member's verdict on the events of `event_push c` (SQL, user `$1`): their exception, else
/// the event's, never for their own events.
const VERDICT: &str = "FROM event_push c
    LEFT JOIN event_push_exceptions x
      ON x.user_id = $1 AND x.room_id = c.room_id AND x.stream_ordering = c.stream_ordering
    WHERE c.sender <> $1";
const PUSHER_COLUMNS: &str = "user_id, app_id, pushkey, kind, app_display_name, \
    device_display_name, profile_tag, lang, data, device_id, created_ts";
const QUEUE_COLUMNS: &str =
    "id, user_id, app_id, pushkey, url, body, attempts, next_attempt_ts, created_ts";

impl PushStore for Store {
    async fn get_push_position(&self) -> Result<Option<i64>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT position FROM push_position WHERE id = 1")
                .fetch_optional(pool)
                .await
        })?)
    }

    async fn list_stream_events(&self, after: i64, limit: i64) -> Result<Vec<EventRow>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE stream_ordering > $1 AND soft_failed = FALSE AND outlier = FALSE
             ORDER BY stream_ordering LIMIT $2"
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(after).bind(limit).fetch_all(pool).await
        })?)
    }

    async fn save_push_batch(
        &self,
        actions: &[PushAction],
        queue: &[QueuedPush],
        position: i64,
    ) -> Result<()> {
        let batch = crate::repos::EventBatch {
            push: crate::repos::PushWrite {
                actions: actions.to_vec(),
                queue: queue.to_vec(),
                position: Some(position),
            },
            ..Default::default()
        };
        crate::repos::RoomEvents::persist_events(self, &batch).await
    }

    async fn count_unread(
        &self,
        user_id: &str,
        room_id: &str,
        unread_from: i64,
    ) -> Result<UnreadCounts> {
        let sql = unread_sql();
        // The main timeline's row has thread '' (no thread's does).
        let rows: Vec<(String, i64, Option<i64>)> = on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(user_id)
                .bind(room_id)
                .bind(unread_from)
                .fetch_all(pool)
                .await
        })?;
        let mut main = (0, 0);
        let mut threads = Vec::with_capacity(rows.len());
        for (thread, n, h) in rows {
            if thread.is_empty() {
                main = (n, h.unwrap_or(0));
            } else {
                threads.push((thread, n, h.unwrap_or(0)));
            }
        }
        Ok((main, threads))
    }

    async fn list_notifications(
        &self,
        user_id: &str,
        room_id: &str,
        (after, before): (i64, i64),
        limit: i64,
        only_highlight: bool,
    ) -> Result<Vec<PushAction>> {
        let sql = format!(
            "SELECT $1 AS user_id, c.sender, c.room_id, c.stream_ordering,
                    COALESCE(x.notify, c.notify) AS notify,
                    COALESCE(x.highlight, c.highlight) AS highlight, c.thread_id,
                    COALESCE(x.actions, c.actions) AS actions, e.event_id,
                    e.origin_server_ts AS ts
             {VERDICT} AND c.room_id = $2 AND c.stream_ordering > $3 AND c.stream_ordering < $4
               AND COALESCE(x.notify, c.notify) {}
             ORDER BY c.stream_ordering DESC LIMIT $5",
            if only_highlight {
                "AND COALESCE(x.highlight, c.highlight)"
            } else {
                ""
            }
        )
        .replace(
            "FROM event_push c",
            "FROM event_push c JOIN events e ON e.stream_ordering = c.stream_ordering",
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(user_id)
                .bind(room_id)
                .bind(after)
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?)
    }

    async fn set_pusher(&self, pusher: &Pusher, append: bool) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if !append {
                sqlx::query(
                    "DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3",
                )
                .bind(&pusher.app_id)
                .bind(&pusher.pushkey)
                .bind(&pusher.user_id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(&format!(
                "INSERT INTO pushers ({PUSHER_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET
                   kind = excluded.kind, app_display_name = excluded.app_display_name,
                   device_display_name = excluded.device_display_name,
                   profile_tag = excluded.profile_tag, lang = excluded.lang,
                   data = excluded.data, device_id = excluded.device_id"
            ))
            .bind(&pusher.user_id)
            .bind(&pusher.app_id)
            .bind(&pusher.pushkey)
            .bind(&pusher.kind)
            .bind(&pusher.app_display_name)
            .bind(&pusher.device_display_name)
            .bind(&pusher.profile_tag)
            .bind(&pusher.lang)
            .bind(&pusher.data)
            .bind(&pusher.device_id)
            .bind(pusher.created_ts)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })?;
        Ok(())
    }

    async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<bool> {
        let deleted = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query(
                "DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
            )
            .bind(user_id)
            .bind(app_id)
            .bind(pushkey)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "DELETE FROM push_queue WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
            )
            .bind(user_id)
            .bind(app_id)
            .bind(pushkey)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(deleted)
        })?;
        Ok(deleted > 0)
    }

    async fn list_pushers(&self, user_id: &str) -> Result<Vec<Pusher>> {
        let sql = format!(
            "SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY created_ts, app_id"
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(user_id).fetch_all(pool).await
        })?)
    }

    async fn list_due_pushes(&self, now: i64, limit: i64) -> Result<Vec<QueuedPush>> {
        let sql = format!(
            "SELECT {QUEUE_COLUMNS} FROM push_queue WHERE next_attempt_ts <= $1
             ORDER BY id LIMIT $2"
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(now).bind(limit).fetch_all(pool).await
        })?)
    }

    async fn next_push_due(&self) -> Result<Option<i64>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT MIN(next_attempt_ts) FROM push_queue")
                .fetch_one(pool)
                .await
        })?)
    }

    async fn delete_queued_push(&self, id: i64) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM push_queue WHERE id = $1").bind(id).execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    async fn retry_queued_push(&self, id: i64, next_attempt_ts: i64) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE push_queue SET attempts = attempts + 1, next_attempt_ts = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(next_attempt_ts)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }
}

/// The statement of [`PushStore::count_unread`] (user `$1`, room `$2`, `unread_from` `$3`):
/// the main timeline's row (thread `''`) and one per thread.
fn unread_sql() -> String {
    // Where they read the main timeline up to is found in the same statement.
    format!(
        "WITH read_up_to (after) AS (SELECT COALESCE((
             SELECT COALESCE(e.stream_ordering, 0)
             FROM receipts r LEFT JOIN events e ON e.event_id = r.event_id
             WHERE r.room_id = $2 AND r.user_id = $1
               AND r.receipt_type IN ('m.read', 'm.read.private')
               AND r.thread_id IN ('', 'main')
             ORDER BY COALESCE(e.stream_ordering, -1) DESC, r.aux_position DESC LIMIT 1), $3))
         SELECT '' AS thread_id,
           (SELECT COUNT(*) FROM (SELECT 1 AS n {VERDICT} AND c.room_id = $2
              AND c.stream_ordering > (SELECT after FROM read_up_to)
              AND COALESCE(x.notify, c.notify) AND c.thread_id = ''
              LIMIT 100) notifications),
           (SELECT COUNT(*) FROM (
              SELECT 1 AS n FROM event_push c
              WHERE c.room_id = $2 AND c.highlight = TRUE
                AND c.stream_ordering > (SELECT after FROM read_up_to)
                AND c.sender <> $1 AND c.notify AND c.thread_id = ''
                AND NOT EXISTS (SELECT 1 FROM event_push_exceptions x WHERE x.user_id = $1
                  AND x.room_id = c.room_id AND x.stream_ordering = c.stream_ordering)
              UNION ALL
              SELECT 1 AS n FROM event_push_exceptions x
              JOIN event_push c
                ON c.room_id = x.room_id AND c.stream_ordering = x.stream_ordering
              WHERE x.user_id = $1 AND x.room_id = $2
                AND x.stream_ordering > (SELECT after FROM read_up_to)
                AND x.highlight AND x.notify AND c.sender <> $1 AND c.thread_id = ''
              LIMIT 100) highlights)
         UNION ALL
         SELECT * FROM (
           SELECT c.thread_id, COUNT(*),
                  SUM(CASE WHEN COALESCE(x.highlight, c.highlight) THEN 1 ELSE 0 END)
           {VERDICT} AND c.room_id = $2 AND c.thread_id <> '' AND c.stream_ordering + 0 > $3
             AND COALESCE(x.notify, c.notify)
             AND c.stream_ordering > COALESCE((SELECT MAX(e.stream_ordering)
                 FROM receipts r JOIN events e ON e.event_id = r.event_id
                 WHERE r.room_id = c.room_id AND r.user_id = $1
                   AND r.receipt_type IN ('m.read', 'm.read.private')
                   AND (r.thread_id = c.thread_id OR r.thread_id = '')), 0)
           GROUP BY c.thread_id ORDER BY c.thread_id LIMIT 100) threads"
    )
    // Highlights are the events everyone's verdict highlights (their own index) that the user
    // has no exception for, and the user's exceptions that highlight: neither reads every event
    // since the receipt (a room without mentions has no highlights to find). In the threads'
    // part, `+ 0` keeps SQLite off the primary key's range (every event of the room since the
    // user joined) and on the index of threads' events.
}

#[cfg(feature = "testing")]
impl Store {
    /// Tests: how SQLite plans the unread count (`EXPLAIN QUERY PLAN`, one line per step; empty
    /// on PostgreSQL).
    pub async fn count_unread_plan(&self) -> Result<Vec<String>> {
        let crate::store::Pool::Sqlite(pool) = &self.pool else {
            return Ok(Vec::new());
        };
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {}", unread_sql()))
                .bind("@u:a.test")
                .bind("!r:a.test")
                .bind(0_i64)
                .fetch_all(pool)
                .await
                .map_err(|e| crate::StorageError::from_sqlx(e, || "query plan".to_owned()))?;
        Ok(rows.into_iter().map(|(_, _, _, detail)| detail).collect())
    }
}

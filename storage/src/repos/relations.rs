//! Relations between events (edits, reactions, references, threads) as recorded when events
//! are stored: `/relations`, `/threads` and thread summaries read them.

use std::future::Future;

use crate::store::on_pool;
use crate::{Result, Store};

/// Which relations of an event to list.
#[derive(Debug, Clone, Copy)]
pub struct RelationQuery<'a> {
    /// The room both events are in.
    pub room_id: &'a str,
    /// The related-to event.
    pub target: &'a str,
    /// Only this `rel_type`.
    pub rel_type: Option<&'a str>,
    /// Only this event type.
    pub event_type: Option<&'a str>,
    /// Start after this position (exclusive), in the direction.
    pub from: Option<i64>,
    /// Oldest first (`true`) or newest first.
    pub forward: bool,
    /// At most this many.
    pub limit: i64,
}

/// A thread: its root and the position of its latest event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ThreadRow {
    /// The root event.
    pub root: String,
    /// Position of the thread's latest event.
    pub latest: i64,
}

/// Relations.
pub trait Relations {
    /// Events relating to an event: `(event_id, position)`.
    fn list_relations(
        &self,
        query: RelationQuery<'_>,
    ) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;
    /// Threads of a room, the most recently active first, before position `before`; with
    /// `participant`, only threads the user started or wrote in.
    fn list_threads(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ThreadRow>>> + Send;
    /// Which of `event_ids` other events relate to as threads, edits or references (the
    /// relations that are bundled).
    fn related_targets(
        &self,
        event_ids: &[String],
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// A thread's size, its latest event, and whether `user` wrote in it.
    fn thread_summary(
        &self,
        room_id: &str,
        root: &str,
        user: &str,
    ) -> impl Future<Output = Result<(i64, Option<String>, bool)>> + Send;
}

impl Relations for Store {
    async fn list_relations(&self, query: RelationQuery<'_>) -> Result<Vec<(String, i64)>> {
        let sql = format!(
            "SELECT event_id, stream_ordering FROM event_relations
             WHERE relates_to = $1 AND ($2 IS NULL OR rel_type = $2)
               AND ($3 IS NULL OR event_type = $3) AND stream_ordering {} $4 AND room_id = $6
             ORDER BY stream_ordering {} LIMIT $5",
            if query.forward { ">" } else { "<" },
            if query.forward { "ASC" } else { "DESC" },
        );
        let from = query
            .from
            .unwrap_or(if query.forward { i64::MIN } else { i64::MAX });
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(query.target)
                .bind(query.rel_type)
                .bind(query.event_type)
                .bind(from)
                .bind(query.limit)
                .bind(query.room_id)
                .fetch_all(pool)
                .await
        })?)
    }

    async fn list_threads(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ThreadRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT r.relates_to AS root, MAX(r.stream_ordering) AS latest
                 FROM event_relations r
                 WHERE r.room_id = $1 AND r.rel_type = 'm.thread'
                   AND ($2 IS NULL
                        OR EXISTS (SELECT 1 FROM event_relations p
                                   WHERE p.relates_to = r.relates_to AND p.rel_type = 'm.thread'
                                     AND p.sender = $2)
                        OR EXISTS (SELECT 1 FROM events e
                                   WHERE e.event_id = r.relates_to AND e.sender = $2))
                 GROUP BY r.relates_to
                 HAVING MAX(r.stream_ordering) < $3
                 ORDER BY latest DESC LIMIT $4",
            )
            .bind(room_id)
            .bind(participant)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }

    async fn related_targets(&self, event_ids: &[String]) -> Result<Vec<String>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(on_pool!(self, pool => {
            // Only the relations that are bundled (reactions are not).
            let mut q = sqlx::QueryBuilder::new(
                "SELECT DISTINCT relates_to FROM event_relations
                 WHERE rel_type IN ('m.thread', 'm.replace', 'm.reference') AND relates_to IN (",
            );
            let mut ids = q.separated(", ");
            for id in event_ids {
                ids.push_bind(id.clone());
            }
            q.push(")");
            q.build_query_scalar().fetch_all(pool).await
        })?)
    }

    async fn thread_summary(
        &self,
        room_id: &str,
        root: &str,
        user: &str,
    ) -> Result<(i64, Option<String>, bool)> {
        let (count, latest, mine): (i64, Option<String>, i64) = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT COUNT(*),
                        (SELECT event_id FROM event_relations
                         WHERE relates_to = $1 AND rel_type = 'm.thread' AND room_id = $3
                         ORDER BY stream_ordering DESC LIMIT 1),
                        COALESCE(SUM(CASE WHEN sender = $2 THEN 1 ELSE 0 END), 0)
                 FROM event_relations
                 WHERE relates_to = $1 AND rel_type = 'm.thread' AND room_id = $3",
            )
            .bind(root)
            .bind(user)
            .bind(room_id)
            .fetch_one(pool)
            .await
        })?;
        Ok((count, latest, mine > 0))
    }
}

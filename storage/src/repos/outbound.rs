use std::future::Future;

use crate::Result;
use crate::Store;
use crate::store::on_pool;

/// The durable outbound federation queue (rows are written by [`crate::RoomEvents::persist_events`]
/// with their events).
pub trait FederationQueue {
    /// Every `(origin, destination)` pair with queued events.
    fn list_outbound_destinations(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    /// The oldest queued events for a pair: `(queue id, event JSON as stored)`, oldest first.
    fn peek_outbound(
        &self,
        origin: &str,
        destination: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(i64, String)>>> + Send;
    /// Removes what a delivered transaction carried, a pair's PDUs and durable EDUs up to and
    /// including the given queue ids, in one database transaction (so a retry never carries
    /// half of it again): how many of each went.
    fn delete_sent(
        &self,
        origin: &str,
        destination: &str,
        pdus_up_to: Option<i64>,
        edus_up_to: Option<i64>,
    ) -> impl Future<Output = Result<(u64, u64)>> + Send;
    /// Queues one EDU (JSON) from `origin` for each of `destinations`, durably.
    fn queue_outbound_edu(
        &self,
        origin: &str,
        destinations: &[String],
        edu: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The oldest durably queued EDUs for a pair: `(queue id, EDU JSON)`, oldest first.
    fn peek_outbound_edus(
        &self,
        origin: &str,
        destination: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(i64, String)>>> + Send;
}

impl FederationQueue for Store {
    async fn list_outbound_destinations(&self) -> Result<Vec<(String, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT origin, destination FROM federation_outbound
                 UNION
                 SELECT origin, destination FROM federation_outbound_edus
                 ORDER BY origin, destination",
            )
            .fetch_all(pool)
            .await
        })?)
    }

    async fn peek_outbound(
        &self,
        origin: &str,
        destination: &str,
        limit: i64,
    ) -> Result<Vec<(i64, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT q.id, e.json FROM federation_outbound q
                 JOIN events e ON e.event_id = q.event_id
                 WHERE q.origin = $1 AND q.destination = $2
                 ORDER BY q.id LIMIT $3",
            )
            .bind(origin)
            .bind(destination)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }

    async fn delete_sent(
        &self,
        origin: &str,
        destination: &str,
        pdus_up_to: Option<i64>,
        edus_up_to: Option<i64>,
    ) -> Result<(u64, u64)> {
        Ok(on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut deleted = [0u64; 2];
            for (n, table, up_to) in [
                (0, "federation_outbound", pdus_up_to),
                (1, "federation_outbound_edus", edus_up_to),
            ] {
                let Some(up_to) = up_to else { continue };
                deleted[n] = sqlx::query(&format!(
                    "DELETE FROM {table} WHERE origin = $1 AND destination = $2 AND id <= $3"
                ))
                .bind(origin)
                .bind(destination)
                .bind(up_to)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await.map(|()| (deleted[0], deleted[1]))
        })?)
    }

    async fn queue_outbound_edu(
        &self,
        origin: &str,
        destinations: &[String],
        edu: &str,
        now_ms: i64,
    ) -> Result<()> {
        if destinations.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO federation_outbound_edus (origin, destination, edu, created_ts) ",
            );
            q.push_values(destinations, |mut row, destination| {
                row.push_bind(origin)
                    .push_bind(destination)
                    .push_bind(edu)
                    .push_bind(now_ms);
            });
            q.build().execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    async fn peek_outbound_edus(
        &self,
        origin: &str,
        destination: &str,
        limit: i64,
    ) -> Result<Vec<(i64, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, edu FROM federation_outbound_edus
                 WHERE origin = $1 AND destination = $2 ORDER BY id LIMIT $3",
            )
            .bind(origin)
            .bind(destination)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }
}

/// An invite of a local user into a room this node is not in.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RemoteInvite {
    /// The invited local user.
    pub user_id: String,
    /// The room.
    pub room_id: String,
    /// The invite event, as signed by both servers.
    pub event_json: String,
    /// JSON array of stripped state events.
    pub invite_state: String,
    /// The server to join or decline through.
    pub via: String,
    /// Aux stream position of its arrival.
    pub position: i64,
    /// `invite` (received) or `knock` (sent by the user; `event_json` is the knock and
    /// `invite_state` what the room showed the knocker).
    pub membership: String,
}

/// Invites into rooms this node is not in.
pub trait RemoteInvites {
    /// Keeps (or replaces) a user's invite into (or knock on) a room.
    fn store_remote_invite(&self, invite: &RemoteInvite)
    -> impl Future<Output = Result<()>> + Send;
    /// A user's pending invites.
    fn list_remote_invites(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<RemoteInvite>>> + Send;
    /// Forgets a user's invite into a room (joined or declined); true when there was one.
    fn delete_remote_invite(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
}

impl RemoteInvites for Store {
    async fn store_remote_invite(&self, invite: &RemoteInvite) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO remote_invites
                   (user_id, room_id, event_json, invite_state, via, position, membership)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (user_id, room_id) DO UPDATE SET
                   event_json = excluded.event_json, invite_state = excluded.invite_state,
                   via = excluded.via, position = excluded.position,
                   membership = excluded.membership",
            )
            .bind(&invite.user_id)
            .bind(&invite.room_id)
            .bind(&invite.event_json)
            .bind(&invite.invite_state)
            .bind(&invite.via)
            .bind(invite.position)
            .bind(&invite.membership)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    async fn list_remote_invites(&self, user_id: &str) -> Result<Vec<RemoteInvite>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT user_id, room_id, event_json, invite_state, via, position, membership
                 FROM remote_invites WHERE user_id = $1 ORDER BY position",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await
        })?)
    }

    async fn delete_remote_invite(&self, user_id: &str, room_id: &str) -> Result<bool> {
        Ok(on_pool!(self, pool => {
            sqlx::query("DELETE FROM remote_invites WHERE user_id = $1 AND room_id = $2")
                .bind(user_id)
                .bind(room_id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() > 0)
        })?)
    }
}

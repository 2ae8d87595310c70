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
    /// Removes a pair's queued events up to and including queue id `up_to`.
    fn delete_outbound(
        &self,
        origin: &str,
        destination: &str,
        up_to: i64,
    ) -> impl Future<Output = Result<u64>> + Send;
}

impl FederationQueue for Store {
    async fn list_outbound_destinations(&self) -> Result<Vec<(String, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT DISTINCT origin, destination FROM federation_outbound
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

    async fn delete_outbound(&self, origin: &str, destination: &str, up_to: i64) -> Result<u64> {
        Ok(on_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM federation_outbound WHERE origin = $1 AND destination = $2 AND id <= $3",
            )
            .bind(origin)
            .bind(destination)
            .bind(up_to)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?)
    }
}

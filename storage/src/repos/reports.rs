//! Reports of events, rooms and users, kept for the node's admins.

use std::future::Future;

use crate::store::on_pool;
use crate::{Result, Store};

/// A report as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Report {
    /// Row ID.
    pub id: i64,
    /// `event`, `room` or `user`.
    pub kind: String,
    /// Who reported.
    pub reporter: String,
    /// The room (events and rooms).
    pub room_id: Option<String>,
    /// The event (events).
    pub event_id: Option<String>,
    /// The user (users).
    pub user_id: Option<String>,
    /// The reporter's reason.
    pub reason: Option<String>,
    /// When (ms).
    pub created_ts: i64,
}

/// Reports.
pub trait Reports {
    /// Stores a report (its `id` is ignored); returns the new ID.
    fn add_report(&self, report: &Report) -> impl Future<Output = Result<i64>> + Send;
    /// The newest reports first, at most `limit`.
    fn list_reports(&self, limit: i64) -> impl Future<Output = Result<Vec<Report>>> + Send;
}

impl Reports for Store {
    async fn add_report(&self, report: &Report) -> Result<i64> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "INSERT INTO reports (kind, reporter, room_id, event_id, user_id, reason, created_ts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(&report.kind)
            .bind(&report.reporter)
            .bind(&report.room_id)
            .bind(&report.event_id)
            .bind(&report.user_id)
            .bind(&report.reason)
            .bind(report.created_ts)
            .fetch_one(pool)
            .await
        })?)
    }

    async fn list_reports(&self, limit: i64) -> Result<Vec<Report>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, kind, reporter, room_id, event_id, user_id, reason, created_ts
                 FROM reports ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }
}

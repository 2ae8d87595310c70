use std::future::Future;

use crate::store::on_pool;
use crate::{Result, Store};

/// Display name and avatar of a local user.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct ProfileRow {
    /// Display name.
    pub displayname: Option<String>,
    /// Avatar (an `mxc://` URI).
    pub avatar_url: Option<String>,
}

/// Client API state: profiles, transaction IDs, filters.
pub trait ClientData {
    /// A user's profile (empty when never set).
    fn get_profile(&self, user_id: &str) -> impl Future<Output = Result<ProfileRow>> + Send;
    /// Sets the display name (`Some`) or avatar URL; `None` clears it.
    fn set_profile_field(
        &self,
        user_id: &str,
        field: ProfileField,
        value: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The event a transaction ID produced, if it was used before.
    fn get_transaction(
        &self,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Records what a transaction ID produced; the first record wins.
    fn set_transaction(
        &self,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
        event_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The latest `limit` transaction IDs a device used, with their events, oldest first (to
    /// warm a cache).
    fn list_transactions(
        &self,
        user_id: &str,
        device_id: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    /// Stores a filter; returns its ID.
    fn create_filter(&self, user_id: &str, json: &str) -> impl Future<Output = Result<i64>> + Send;
    /// A stored filter.
    fn get_filter(
        &self,
        user_id: &str,
        filter_id: i64,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Active local users whose ID or display name contains `term` (case-insensitive):
    /// `(user_id, displayname, avatar_url)`, by user ID.
    fn search_users(
        &self,
        term: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<UserHit>>> + Send;
    /// Rooms in which `user_id` has a membership event (candidates for its room list).
    fn list_membership_rooms(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Rooms where any stored membership event of the user is, outliers included (a remote
    /// user's join often arrives as part of a room's state, stored as an outlier).
    fn list_rooms_with_member_event(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
}

/// A user directory hit: `(user_id, displayname, avatar_url)`.
pub type UserHit = (String, Option<String>, Option<String>);

/// Which profile field to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileField {
    /// `displayname`
    DisplayName,
    /// `avatar_url`
    AvatarUrl,
}

impl ClientData for Store {
    async fn get_profile(&self, user_id: &str) -> Result<ProfileRow> {
        let row: Option<ProfileRow> = on_pool!(self, pool => {
            sqlx::query_as("SELECT displayname, avatar_url FROM profiles WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(pool)
                .await
        })?;
        Ok(row.unwrap_or_default())
    }

    async fn set_profile_field(
        &self,
        user_id: &str,
        field: ProfileField,
        value: Option<&str>,
    ) -> Result<()> {
        let sql = match field {
            ProfileField::DisplayName => {
                "INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname"
            }
            ProfileField::AvatarUrl => {
                "INSERT INTO profiles (user_id, avatar_url) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET avatar_url = excluded.avatar_url"
            }
        };
        on_pool!(self, pool => {
            sqlx::query(sql).bind(user_id).bind(value).execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    async fn get_transaction(
        &self,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
    ) -> Result<Option<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT event_id FROM transaction_ids WHERE user_id = $1 AND device_id = $2 AND txn_id = $3",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(txn_id)
            .fetch_optional(pool)
            .await
        })?)
    }

    async fn set_transaction(
        &self,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
        event_id: &str,
        now_ms: i64,
    ) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO transaction_ids (user_id, device_id, txn_id, event_id, created_ts)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(txn_id)
            .bind(event_id)
            .bind(now_ms)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    async fn list_transactions(
        &self,
        user_id: &str,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>> {
        let mut rows: Vec<(String, String)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT txn_id, event_id FROM transaction_ids WHERE user_id = $1 AND device_id = $2
                 ORDER BY created_ts DESC LIMIT $3",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?;
        rows.reverse();
        Ok(rows)
    }

    async fn create_filter(&self, user_id: &str, json: &str) -> Result<i64> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "INSERT INTO filters (user_id, filter_id, json)
                 VALUES ($1, (SELECT COALESCE(MAX(filter_id), 0) + 1 FROM filters WHERE user_id = $1), $2)
                 RETURNING filter_id",
            )
            .bind(user_id)
            .bind(json)
            .fetch_one(pool)
            .await
        })?)
    }

    async fn get_filter(&self, user_id: &str, filter_id: i64) -> Result<Option<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT json FROM filters WHERE user_id = $1 AND filter_id = $2")
                .bind(user_id)
                .bind(filter_id)
                .fetch_optional(pool)
                .await
        })?)
    }

    async fn search_users(&self, term: &str, limit: i64) -> Result<Vec<UserHit>> {
        let escaped: String = term
            .to_lowercase()
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let pattern = format!("%{escaped}%");
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT a.user_id, p.displayname, p.avatar_url FROM accounts a
                 LEFT JOIN profiles p ON p.user_id = a.user_id
                 WHERE a.deactivated_ts IS NULL
                   AND (LOWER(a.user_id) LIKE $1 ESCAPE '\\' OR LOWER(COALESCE(p.displayname, '')) LIKE $1 ESCAPE '\\')
                 ORDER BY a.user_id LIMIT $2",
            )
            .bind(&pattern)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }

    async fn list_membership_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        let generation = match self.member_rooms.get(user_id) {
            Ok(rooms) => return Ok(rooms),
            Err(generation) => generation,
        };
        let rooms: Vec<String> = on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT DISTINCT room_id FROM events
                 WHERE state_key = $1 AND event_type = 'm.room.member' AND outlier = FALSE",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await
        })?;
        self.member_rooms
            .fill(user_id.to_owned(), rooms.clone(), generation);
        Ok(rooms)
    }

    async fn list_rooms_with_member_event(&self, user_id: &str) -> Result<Vec<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT DISTINCT room_id FROM events
                 WHERE state_key = $1 AND event_type = 'm.room.member'",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await
        })?)
    }
}

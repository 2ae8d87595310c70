//! Server-side key backup (`/room_keys`): versions and the encrypted room keys of each.

use std::future::Future;

use crate::store::on_pool;
use crate::{Result, StorageError, Store};

/// A backup version.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BackupVersion {
    /// Version (counts up per user).
    pub version: i64,
    /// Algorithm name.
    pub algorithm: String,
    /// `auth_data` JSON.
    pub auth_data: String,
    /// Moves on with every change of the keys.
    pub etag: i64,
    /// Keys stored.
    pub count: i64,
}

/// One backed-up room key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BackupKey {
    /// Room.
    pub room_id: String,
    /// Megolm session.
    pub session_id: String,
    /// First message index the key decrypts.
    pub first_message_index: i64,
    /// How often the key was forwarded.
    pub forwarded_count: i64,
    /// Whether the device that sent it was verified.
    pub is_verified: bool,
    /// The encrypted key (`session_data` JSON).
    pub session_data: String,
}

impl BackupKey {
    /// Whether this key should replace `old` (the spec's rule): a verified key beats an
    /// unverified one; then the lower first message index; then the fewer forwards.
    pub fn better_than(&self, old: &BackupKey) -> bool {
        if self.is_verified != old.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != old.first_message_index {
            return self.first_message_index < old.first_message_index;
        }
        self.forwarded_count < old.forwarded_count
    }
}

/// Which keys of a version a read or delete is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupScope<'a> {
    /// Every key.
    All,
    /// A room's keys.
    Room(&'a str),
    /// One session's key.
    Session(&'a str, &'a str),
}

/// Key backups.
pub trait KeyBackups {
    /// Creates a version (one above every version the user ever had); returns it.
    fn create_backup_version(
        &self,
        user_id: &str,
        algorithm: &str,
        auth_data: &str,
    ) -> impl Future<Output = Result<i64>> + Send;
    /// A version that is not deleted (`None`: the latest).
    fn get_backup_version(
        &self,
        user_id: &str,
        version: Option<i64>,
    ) -> impl Future<Output = Result<Option<BackupVersion>>> + Send;
    /// Replaces a version's `auth_data`; `NotFound` when it does not exist.
    fn update_backup_version(
        &self,
        user_id: &str,
        version: i64,
        auth_data: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a version and its keys; `NotFound` when it does not exist.
    fn delete_backup_version(
        &self,
        user_id: &str,
        version: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Stores keys in a version, each replacing a stored one only when better; returns the
    /// version's key count and etag after.
    fn put_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        keys: &[BackupKey],
    ) -> impl Future<Output = Result<(i64, i64)>> + Send;
    /// Keys of a version.
    fn get_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        scope: BackupScope<'_>,
    ) -> impl Future<Output = Result<Vec<BackupKey>>> + Send;
    /// Deletes keys of a version; returns the count and etag after.
    fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        scope: BackupScope<'_>,
    ) -> impl Future<Output = Result<(i64, i64)>> + Send;
}

const KEY_COLUMNS: &str = "room_id, session_id, first_message_index, forwarded_count, \
                           is_verified <> 0 AS is_verified, session_data";

fn scope_sql(scope: BackupScope<'_>) -> &'static str {
    match scope {
        BackupScope::All => "",
        BackupScope::Room(_) => " AND room_id = $3",
        BackupScope::Session(..) => " AND room_id = $3 AND session_id = $4",
    }
}

fn not_found(version: i64) -> StorageError {
    StorageError::NotFound {
        what: format!("backup version {version}"),
    }
}

/// The end of a change to a version's keys, inside its transaction: the etag moves on when
/// something changed, then the count and the etag are read and the transaction committed.
/// (A macro: the transaction's type differs per backend.)
macro_rules! finish {
    ($tx:ident, $user:expr, $version:expr, $etag:ident, $changed:expr) => {{
        if $changed {
            $etag += 1;
            sqlx::query(
                "UPDATE key_backup_versions SET etag = $3 WHERE user_id = $1 AND version = $2",
            )
            .bind($user)
            .bind($version)
            .bind($etag)
            .execute(&mut *$tx)
            .await?;
        }
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM key_backup_keys WHERE user_id = $1 AND version = $2",
        )
        .bind($user)
        .bind($version)
        .fetch_one(&mut *$tx)
        .await?;
        $tx.commit().await?;
        Ok(Some((count, $etag)))
    }};
}

impl KeyBackups for Store {
    async fn create_backup_version(
        &self,
        user_id: &str,
        algorithm: &str,
        auth_data: &str,
    ) -> Result<i64> {
        // One statement picks the next number and inserts it; two devices creating a version
        // at the same moment may pick the same one, and the loser simply tries again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = on_pool!(self, pool => {
                sqlx::query_scalar(
                    "INSERT INTO key_backup_versions (user_id, version, algorithm, auth_data, etag)
                     SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, 0
                     FROM key_backup_versions WHERE user_id = $1
                     RETURNING version",
                )
                .bind(user_id)
                .bind(algorithm)
                .bind(auth_data)
                .fetch_one(pool)
                .await
            });
            match outcome {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() && attempt < 5 => {}
                other => return Ok(other?),
            }
        }
    }

    async fn get_backup_version(
        &self,
        user_id: &str,
        version: Option<i64>,
    ) -> Result<Option<BackupVersion>> {
        let sql = format!(
            "SELECT v.version, v.algorithm, v.auth_data, v.etag,
                    (SELECT COUNT(*) FROM key_backup_keys k
                     WHERE k.user_id = v.user_id AND k.version = v.version) AS count
             FROM key_backup_versions v WHERE v.user_id = $1 AND v.deleted = 0 {}
             ORDER BY v.version DESC LIMIT 1",
            if version.is_some() {
                "AND v.version = $2"
            } else {
                "AND $2 IS NULL"
            }
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(user_id).bind(version).fetch_optional(pool).await
        })?)
    }

    async fn update_backup_version(
        &self,
        user_id: &str,
        version: i64,
        auth_data: &str,
    ) -> Result<()> {
        let updated = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE key_backup_versions SET auth_data = $3
                 WHERE user_id = $1 AND version = $2 AND deleted = 0",
            )
            .bind(user_id)
            .bind(version)
            .bind(auth_data)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        if updated == 0 {
            return Err(not_found(version));
        }
        Ok(())
    }

    async fn delete_backup_version(&self, user_id: &str, version: i64) -> Result<()> {
        let updated = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let updated = sqlx::query(
                "UPDATE key_backup_versions SET deleted = 1
                 WHERE user_id = $1 AND version = $2 AND deleted = 0",
            )
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM key_backup_keys WHERE user_id = $1 AND version = $2")
                .bind(user_id)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(updated)
        })?;
        if updated == 0 {
            return Err(not_found(version));
        }
        Ok(())
    }

    async fn put_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        keys: &[BackupKey],
    ) -> Result<(i64, i64)> {
        let select = format!(
            "SELECT {KEY_COLUMNS} FROM key_backup_keys
             WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4"
        );
        let outcome = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            // Writing the row first locks the version: concurrent changes take turns, so each
            // moves the etag on and sees the other's keys.
            let live: Option<i64> = sqlx::query_scalar(
                "UPDATE key_backup_versions SET etag = etag
                 WHERE user_id = $1 AND version = $2 AND deleted = 0 RETURNING etag",
            )
            .bind(user_id)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(mut etag) = live else {
                return Ok::<_, sqlx::Error>(None);
            };
            let mut changed = false;
            for key in keys {
                let old: Option<BackupKey> = sqlx::query_as(&select)
                    .bind(user_id)
                    .bind(version)
                    .bind(&key.room_id)
                    .bind(&key.session_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if old.as_ref().is_some_and(|old| !key.better_than(old)) {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO key_backup_keys (user_id, version, room_id, session_id,
                         first_message_index, forwarded_count, is_verified, session_data)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
                         first_message_index = excluded.first_message_index,
                         forwarded_count = excluded.forwarded_count,
                         is_verified = excluded.is_verified,
                         session_data = excluded.session_data",
                )
                .bind(user_id)
                .bind(version)
                .bind(&key.room_id)
                .bind(&key.session_id)
                .bind(key.first_message_index)
                .bind(key.forwarded_count)
                .bind(i64::from(key.is_verified))
                .bind(&key.session_data)
                .execute(&mut *tx)
                .await?;
                changed = true;
            }
            finish!(tx, user_id, version, etag, changed)
        }
        .await)?;
        outcome.ok_or_else(|| not_found(version))
    }

    async fn get_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        scope: BackupScope<'_>,
    ) -> Result<Vec<BackupKey>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM key_backup_keys WHERE user_id = $1 AND version = $2{}
             ORDER BY room_id, session_id",
            scope_sql(scope)
        );
        Ok(on_pool!(self, pool => {
            let mut query = sqlx::query_as(&sql).bind(user_id).bind(version);
            match scope {
                BackupScope::All => {}
                BackupScope::Room(room) => query = query.bind(room),
                BackupScope::Session(room, session) => query = query.bind(room).bind(session),
            }
            query.fetch_all(pool).await
        })?)
    }

    async fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        scope: BackupScope<'_>,
    ) -> Result<(i64, i64)> {
        let sql = format!(
            "DELETE FROM key_backup_keys WHERE user_id = $1 AND version = $2{}",
            scope_sql(scope)
        );
        let outcome = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            // Writing the row first locks the version: concurrent changes take turns, so each
            // moves the etag on and sees the other's keys.
            let live: Option<i64> = sqlx::query_scalar(
                "UPDATE key_backup_versions SET etag = etag
                 WHERE user_id = $1 AND version = $2 AND deleted = 0 RETURNING etag",
            )
            .bind(user_id)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(mut etag) = live else {
                return Ok::<_, sqlx::Error>(None);
            };
            let mut query = sqlx::query(&sql).bind(user_id).bind(version);
            match scope {
                BackupScope::All => {}
                BackupScope::Room(room) => query = query.bind(room),
                BackupScope::Session(room, session) => query = query.bind(room).bind(session),
            }
            let changed = query.execute(&mut *tx).await?.rows_affected() > 0;
            finish!(tx, user_id, version, etag, changed)
        }
        .await)?;
        outcome.ok_or_else(|| not_found(version))
    }
}

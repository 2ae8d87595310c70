use std::future::Future;

use crate::store::on_pool;
use crate::{Result, StorageError, Store};

/// A device (a login session) of an account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Device {
    /// Owner.
    pub user_id: String,
    /// Device ID, unique per user.
    pub device_id: String,
    /// Territory of the owner.
    pub territory: String,
    /// Human-readable name, set by the client.
    pub display_name: Option<String>,
    /// Creation time.
    pub created_ts: i64,
    /// Last time the device was used.
    pub last_seen_ts: Option<i64>,
    /// Last IP address the device was used from.
    pub last_seen_ip: Option<String>,
}

/// What [`Devices::create_device`] needs.
#[derive(Debug, Clone)]
pub struct NewDevice<'a> {
    /// Owner.
    pub user_id: &'a str,
    /// Device ID.
    pub device_id: &'a str,
    /// Territory of the owner.
    pub territory: &'a str,
    /// Initial display name.
    pub display_name: Option<&'a str>,
    /// Creation time.
    pub created_ts: i64,
}

/// An access token, as stored (only its digest is known to the database).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccessToken {
    /// SHA-256 of the token.
    pub token_hash: Vec<u8>,
    /// Territory of the owner.
    pub territory: String,
    /// Owner.
    pub user_id: String,
    /// Device the token logs in.
    pub device_id: String,
    /// Creation time.
    pub created_ts: i64,
    /// Expiry, for tokens issued with a refresh token.
    pub expires_ts: Option<i64>,
}

/// What [`AccessTokens::create_access_token`] needs.
#[derive(Debug, Clone)]
pub struct NewAccessToken<'a> {
    /// SHA-256 of the token.
    pub token_hash: &'a [u8],
    /// Territory of the owner.
    pub territory: &'a str,
    /// Owner.
    pub user_id: &'a str,
    /// Device the token logs in (must exist).
    pub device_id: &'a str,
    /// Creation time.
    pub created_ts: i64,
    /// Expiry, if any.
    pub expires_ts: Option<i64>,
}

const DEVICE_COLUMNS: &str =
    "user_id, device_id, territory, display_name, created_ts, last_seen_ts, last_seen_ip";
const TOKEN_COLUMNS: &str = "token_hash, territory, user_id, device_id, created_ts, expires_ts";

/// Devices of accounts.
pub trait Devices {
    /// Creates a device; [`StorageError::Conflict`] if the user has one with that ID,
    /// [`StorageError::NotFound`] if the account does not exist.
    fn create_device(&self, new: &NewDevice<'_>) -> impl Future<Output = Result<Device>> + Send;
    /// One device.
    fn get_device(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> impl Future<Output = Result<Option<Device>>> + Send;
    /// A user's devices, by device ID.
    fn list_devices(&self, user_id: &str) -> impl Future<Output = Result<Vec<Device>>> + Send;
    /// Sets (or clears) a device's display name.
    fn set_device_display_name(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Records use of a device.
    fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        now_ms: i64,
        ip: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a device and every access token of it, in one transaction. Returns whether the
    /// device existed.
    fn delete_device(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
}

impl Devices for Store {
    async fn create_device(&self, new: &NewDevice<'_>) -> Result<Device> {
        let sql = format!(
            "INSERT INTO devices ({DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, NULL, NULL)
             RETURNING {DEVICE_COLUMNS}"
        );
        on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(new.user_id)
                .bind(new.device_id)
                .bind(new.territory)
                .bind(new.display_name)
                .bind(new.created_ts)
                .fetch_one(pool)
                .await
        })
        .map_err(|e| {
            StorageError::from_sqlx(e, || format!("device {} of {}", new.device_id, new.user_id))
        })
    }

    async fn get_device(&self, user_id: &str, device_id: &str) -> Result<Option<Device>> {
        let sql =
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 AND device_id = $2");
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(user_id).bind(device_id).fetch_optional(pool).await
        })?)
    }

    async fn list_devices(&self, user_id: &str) -> Result<Vec<Device>> {
        let sql =
            format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 ORDER BY device_id");
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(user_id).fetch_all(pool).await
        })?)
    }

    async fn set_device_display_name(
        &self,
        user_id: &str,
        device_id: &str,
        display_name: Option<&str>,
    ) -> Result<()> {
        let affected = on_pool!(self, pool => {
            sqlx::query("UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3")
                .bind(display_name)
                .bind(user_id)
                .bind(device_id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if affected == 0 {
            return Err(StorageError::NotFound {
                what: format!("device {device_id} of {user_id}"),
            });
        }
        Ok(())
    }

    async fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        now_ms: i64,
        ip: Option<&str>,
    ) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE devices SET last_seen_ts = $1, last_seen_ip = COALESCE($2, last_seen_ip)
                 WHERE user_id = $3 AND device_id = $4",
            )
            .bind(now_ms)
            .bind(ip)
            .bind(user_id)
            .bind(device_id)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    async fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool> {
        let deleted = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
            let deleted = sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind(user_id)
                .bind(device_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // The device's encryption keys go with it, and its owner's device list moves on.
            for table in ["device_keys", "one_time_keys", "fallback_keys", "pushers"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1 AND device_id = $2"))
                    .bind(user_id)
                    .bind(device_id)
                    .execute(&mut *tx)
                    .await?;
            }
            if deleted > 0 {
                sqlx::query(
                    "INSERT INTO device_list_versions (user_id, version) VALUES ($1, 1)
                     ON CONFLICT (user_id) DO UPDATE SET version = device_list_versions.version + 1",
                )
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(deleted)
        });
        self.key_counts
            .forget(&crate::memo::device_key(user_id, device_id));
        Ok(deleted? > 0)
    }
}

/// Access tokens, by digest.
pub trait AccessTokens {
    /// Stores a token; the device must exist ([`StorageError::NotFound`] otherwise).
    fn create_access_token(
        &self,
        new: &NewAccessToken<'_>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Looks a token up by digest. Expiry is the caller's to check.
    fn find_access_token(
        &self,
        token_hash: &[u8],
    ) -> impl Future<Output = Result<Option<AccessToken>>> + Send;
    /// Gives a token an expiry time (tokens issued with a refresh token).
    fn expire_access_token(
        &self,
        token_hash: &[u8],
        expires_ts: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Deletes one token; returns whether it existed.
    fn delete_access_token(&self, token_hash: &[u8]) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes every token of a user, except those of `keep_device`. Returns how many.
    fn delete_user_access_tokens(
        &self,
        user_id: &str,
        keep_device: Option<&str>,
    ) -> impl Future<Output = Result<u64>> + Send;
}

impl AccessTokens for Store {
    async fn create_access_token(&self, new: &NewAccessToken<'_>) -> Result<()> {
        let sql =
            format!("INSERT INTO access_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)");
        on_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(new.token_hash)
                .bind(new.territory)
                .bind(new.user_id)
                .bind(new.device_id)
                .bind(new.created_ts)
                .bind(new.expires_ts)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(|e| {
            StorageError::from_sqlx(e, || {
                format!("access token for {} {}", new.user_id, new.device_id)
            })
        })?;
        Ok(())
    }

    async fn find_access_token(&self, token_hash: &[u8]) -> Result<Option<AccessToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM access_tokens WHERE token_hash = $1");
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(token_hash).fetch_optional(pool).await
        })?)
    }

    async fn expire_access_token(&self, token_hash: &[u8], expires_ts: i64) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE access_tokens SET expires_ts = $1 WHERE token_hash = $2")
                .bind(expires_ts)
                .bind(token_hash)
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    async fn delete_access_token(&self, token_hash: &[u8]) -> Result<bool> {
        let affected = on_pool!(self, pool => {
            sqlx::query("DELETE FROM access_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(affected > 0)
    }

    async fn delete_user_access_tokens(
        &self,
        user_id: &str,
        keep_device: Option<&str>,
    ) -> Result<u64> {
        Ok(on_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM access_tokens WHERE user_id = $1
                 AND ($2 IS NULL OR device_id <> $2)",
            )
            .bind(user_id)
            .bind(keep_device)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?)
    }
}

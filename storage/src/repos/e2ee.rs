use std::future::Future;

use crate::Result;
use crate::Store;
use crate::memo::device_key;
use crate::store::on_pool;

/// A one-time or fallback key to store: algorithm, key ID (without the algorithm), signed JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUpload {
    /// `signed_curve25519`, ...
    pub algorithm: String,
    /// The part after `algorithm:`.
    pub key_id: String,
    /// The key object as uploaded.
    pub key_json: String,
}

/// A device's one-time key counts per algorithm and its unused fallback key algorithms.
pub type KeyCounts = (Vec<(String, i64)>, Vec<String>);

/// End-to-end encryption keys of our users' devices (stored as uploaded, handed out as stored).
pub trait DeviceKeys {
    /// Sets a device's identity keys and moves the user's device list version on.
    fn set_device_keys(
        &self,
        user_id: &str,
        device_id: &str,
        key_json: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The identity keys of a user's devices: `(device_id, key JSON)`, by device.
    fn list_device_keys(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    /// Adds one-time keys; a key ID already stored keeps its first key.
    fn add_one_time_keys(
        &self,
        user_id: &str,
        device_id: &str,
        keys: &[KeyUpload],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Sets fallback keys (one per algorithm; a new one replaces the old, unused again).
    fn set_fallback_keys(
        &self,
        user_id: &str,
        device_id: &str,
        keys: &[KeyUpload],
    ) -> impl Future<Output = Result<()>> + Send;
    /// How many one-time keys a device has left, by algorithm.
    fn count_one_time_keys(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;
    /// The one-time key counts and the algorithms of the fallback keys not handed out yet, in
    /// one read (what every sync response carries).
    fn key_counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> impl Future<Output = Result<KeyCounts>> + Send;
    /// Hands out one key of `algorithm` for a device: a one-time key (deleted), or else its
    /// fallback key (marked used, kept). `(key_id, key JSON)`.
    fn claim_key(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> impl Future<Output = Result<Option<(String, String)>>> + Send;
    /// The user's device list version (0 before any change).
    fn device_list_version(&self, user_id: &str) -> impl Future<Output = Result<i64>> + Send;
    /// Sets one of a user's cross-signing keys (`master`, `self_signing`, `user_signing`).
    fn set_cross_signing_key(
        &self,
        user_id: &str,
        key_type: &str,
        key_json: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A user's cross-signing keys: `(key_type, key JSON)`.
    fn list_cross_signing_keys(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;
    /// Moves the user's device list version on (a device was added, renamed or deleted).
    fn bump_device_list(&self, user_id: &str) -> impl Future<Output = Result<i64>> + Send;
}

const BUMP: &str = "INSERT INTO device_list_versions (user_id, version) VALUES ($1, 1)
     ON CONFLICT (user_id) DO UPDATE SET version = device_list_versions.version + 1
     RETURNING version";

impl DeviceKeys for Store {
    async fn set_device_keys(&self, user_id: &str, device_id: &str, key_json: &str) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
            )
            .bind(user_id).bind(device_id).bind(key_json)
            .execute(&mut *tx).await?;
            sqlx::query(BUMP).bind(user_id).execute(&mut *tx).await?;
            tx.commit().await
        })?;
        Ok(())
    }

    async fn list_device_keys(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT device_id, key_json FROM device_keys WHERE user_id = $1 ORDER BY device_id",
            )
            .bind(user_id).fetch_all(pool).await
        })?)
    }

    async fn add_one_time_keys(
        &self,
        user_id: &str,
        device_id: &str,
        keys: &[KeyUpload],
    ) -> Result<()> {
        let written = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for key in keys {
                sqlx::query(
                    "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING",
                )
                .bind(user_id).bind(device_id).bind(&key.algorithm).bind(&key.key_id)
                .bind(&key.key_json)
                .execute(&mut *tx).await?;
            }
            tx.commit().await
        });
        self.key_counts.forget(&device_key(user_id, device_id));
        Ok(written?)
    }

    async fn set_fallback_keys(
        &self,
        user_id: &str,
        device_id: &str,
        keys: &[KeyUpload],
    ) -> Result<()> {
        let written = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for key in keys {
                sqlx::query(
                    "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
                     VALUES ($1, $2, $3, $4, $5, 0)
                     ON CONFLICT (user_id, device_id, algorithm) DO UPDATE
                     SET key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
                )
                .bind(user_id).bind(device_id).bind(&key.algorithm).bind(&key.key_id)
                .bind(&key.key_json)
                .execute(&mut *tx).await?;
            }
            tx.commit().await
        });
        self.key_counts.forget(&device_key(user_id, device_id));
        Ok(written?)
    }

    async fn count_one_time_keys(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> Result<Vec<(String, i64)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT algorithm, COUNT(*) FROM one_time_keys
                 WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm ORDER BY algorithm",
            )
            .bind(user_id).bind(device_id).fetch_all(pool).await
        })?)
    }

    async fn key_counts(&self, user_id: &str, device_id: &str) -> Result<KeyCounts> {
        let key = device_key(user_id, device_id);
        let generation = match self.key_counts.get(&key) {
            Ok(counts) => return Ok(counts),
            Err(generation) => generation,
        };
        // One-time key counts (count > 0) and unused fallback keys (count 0), in one round trip.
        let rows: Vec<(String, i64)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT algorithm, COUNT(*) FROM one_time_keys
                 WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm
                 UNION ALL
                 SELECT algorithm, 0 FROM fallback_keys
                 WHERE user_id = $1 AND device_id = $2 AND used = 0
                 ORDER BY 1",
            )
            .bind(user_id).bind(device_id).fetch_all(pool).await
        })?;
        let (counts, fallback): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, n)| *n > 0);
        let counts = (counts, fallback.into_iter().map(|(a, _)| a).collect());
        self.key_counts.fill(key, counts.clone(), generation);
        Ok(counts)
    }

    async fn claim_key(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> Result<Option<(String, String)>> {
        let claimed = self.take_key(user_id, device_id, algorithm).await;
        self.key_counts.forget(&device_key(user_id, device_id));
        claimed
    }

    async fn set_cross_signing_key(
        &self,
        user_id: &str,
        key_type: &str,
        key_json: &str,
    ) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
            )
            .bind(user_id)
            .bind(key_type)
            .bind(key_json)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    async fn list_cross_signing_keys(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT key_type, key_json FROM cross_signing_keys WHERE user_id = $1
                 ORDER BY key_type",
            )
            .bind(user_id)
            .fetch_all(pool)
            .await
        })?)
    }

    async fn device_list_version(&self, user_id: &str) -> Result<i64> {
        let version: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT version FROM device_list_versions WHERE user_id = $1")
                .bind(user_id).fetch_optional(pool).await
        })?;
        Ok(version.unwrap_or(0))
    }

    async fn bump_device_list(&self, user_id: &str) -> Result<i64> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(BUMP).bind(user_id).fetch_one(pool).await
        })?)
    }
}

/// A to-device message for one of our users' devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToDeviceMessage {
    /// Recipient.
    pub user_id: String,
    /// Recipient device.
    pub device_id: String,
    /// Aux position.
    pub position: i64,
    /// Sending user.
    pub sender: String,
    /// Event type.
    pub event_type: String,
    /// Content JSON.
    pub content: String,
    /// Deduplication key (see the migration).
    pub message_id: String,
}

/// To-device messages and device list changes, by aux position.
pub trait DeviceInbox {
    /// Stores messages; one already stored (same recipient, sender and message ID) is skipped.
    fn add_to_device(
        &self,
        messages: &[ToDeviceMessage],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a device's messages up to `acked` (the client has them), then returns the rest up
    /// to `up_to`: `(sender, type, content)`, oldest first.
    fn take_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        acked: Option<i64>,
        up_to: i64,
    ) -> impl Future<Output = Result<Vec<(String, String, String)>>> + Send;
    /// Records that a user's devices changed at `position`.
    fn add_device_list_change(
        &self,
        user_id: &str,
        position: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Users whose devices changed in `(since, up_to]`.
    fn list_device_list_changes(
        &self,
        since: i64,
        up_to: i64,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
}

impl DeviceInbox for Store {
    async fn add_to_device(&self, messages: &[ToDeviceMessage]) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for m in messages {
                sqlx::query(
                    "INSERT INTO to_device_inbox
                       (user_id, device_id, position, sender, event_type, content, message_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (user_id, device_id, sender, message_id) DO NOTHING",
                )
                .bind(&m.user_id).bind(&m.device_id).bind(m.position).bind(&m.sender)
                .bind(&m.event_type).bind(&m.content).bind(&m.message_id)
                .execute(&mut *tx).await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    async fn take_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        acked: Option<i64>,
        up_to: i64,
    ) -> Result<Vec<(String, String, String)>> {
        // Read first: the delete (a write, waiting for SQLite's one writer) runs only when the
        // last response delivered something.
        let rows: Vec<(i64, String, String, String)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT position, sender, event_type, content FROM to_device_inbox
                 WHERE user_id = $1 AND device_id = $2 AND position <= $3 ORDER BY position",
            )
            .bind(user_id).bind(device_id).bind(up_to).fetch_all(pool).await
        })?;
        let acked = acked.unwrap_or(i64::MIN);
        if rows
            .first()
            .is_some_and(|(position, ..)| *position <= acked)
        {
            on_pool!(self, pool => {
                sqlx::query(
                    "DELETE FROM to_device_inbox
                     WHERE user_id = $1 AND device_id = $2 AND position <= $3",
                )
                .bind(user_id).bind(device_id).bind(acked).execute(pool).await.map(|_| ())
            })?;
        }
        Ok(rows
            .into_iter()
            .filter(|(position, ..)| *position > acked)
            .map(|(_, sender, kind, content)| (sender, kind, content))
            .collect())
    }

    async fn add_device_list_change(&self, user_id: &str, position: i64) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO device_list_changes (user_id, position) VALUES ($1, $2)
                 ON CONFLICT (position, user_id) DO NOTHING",
            )
            .bind(user_id).bind(position).execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    async fn list_device_list_changes(&self, since: i64, up_to: i64) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT DISTINCT user_id FROM device_list_changes
                 WHERE position > $1 AND position <= $2 ORDER BY user_id",
            )
            .bind(since).bind(up_to).fetch_all(pool).await
        })?;
        Ok(rows.into_iter().map(|(u,)| u).collect())
    }
}

impl Store {
    /// Takes a one-time key of `algorithm`, else the fallback key (marked used).
    async fn take_key(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> Result<Option<(String, String)>> {
        // Two claims racing for the same key: the loser deletes nothing and tries the next one.
        for _ in 0..3 {
            let one_time: Option<(String, String)> = on_pool!(self, pool => {
                sqlx::query_as(
                    "DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2
                       AND algorithm = $3
                       AND key_id = (SELECT key_id FROM one_time_keys
                                     WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                                     ORDER BY key_id LIMIT 1)
                     RETURNING key_id, key_json",
                )
                .bind(user_id).bind(device_id).bind(algorithm).fetch_optional(pool).await
            })?;
            if one_time.is_some() {
                return Ok(one_time);
            }
            let left: i64 = on_pool!(self, pool => {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM one_time_keys
                     WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
                )
                .bind(user_id).bind(device_id).bind(algorithm).fetch_one(pool).await
            })?;
            if left == 0 {
                break;
            }
        }
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "UPDATE fallback_keys SET used = 1
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                 RETURNING key_id, key_json",
            )
            .bind(user_id).bind(device_id).bind(algorithm).fetch_optional(pool).await
        })?)
    }
}

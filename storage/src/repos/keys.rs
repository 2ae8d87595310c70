use std::future::Future;

use crate::store::on_pool;
use crate::{Result, StorageError, Store};

/// The public half of one of a territory's own signing keys.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SigningKeyRecord {
    /// Territory code.
    pub territory: String,
    /// Key ID, `ed25519:<version>`.
    pub key_id: String,
    /// Unpadded base64 public key.
    pub public_key: String,
    /// First seen.
    pub created_ts: i64,
    /// When the key stopped being used; `None` for the current key.
    pub expired_ts: Option<i64>,
}

/// A verify key of another server, as cached.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RemoteServerKey {
    /// The server the key belongs to.
    pub server_name: String,
    /// Key ID, `ed25519:<version>`.
    pub key_id: String,
    /// Unpadded base64 public key.
    pub public_key: String,
    /// The key may be trusted for signatures made until then.
    pub valid_until_ts: i64,
    /// For old verify keys: when the server stopped using it.
    pub expired_ts: Option<i64>,
    /// When we learnt it.
    pub fetched_ts: i64,
}

/// Public keys of the territories' own signing keys. The private halves live in key files.
pub trait SigningKeys {
    /// Records `key_id` as the territory's current key and retires (sets `expired_ts` on) every
    /// other current key of the territory, in one transaction. Idempotent.
    fn record_current_signing_key(
        &self,
        territory: &str,
        key_id: &str,
        public_key: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Every key of the territory, current and retired, by key ID.
    fn list_signing_keys(
        &self,
        territory: &str,
    ) -> impl Future<Output = Result<Vec<SigningKeyRecord>>> + Send;
}

impl SigningKeys for Store {
    async fn record_current_signing_key(
        &self,
        territory: &str,
        key_id: &str,
        public_key: &str,
        now_ms: i64,
    ) -> Result<()> {
        let stored: Option<String> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO signing_keys (territory, key_id, public_key, created_ts, expired_ts)
                 VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (territory, key_id) DO NOTHING",
            )
            .bind(territory)
            .bind(key_id)
            .bind(public_key)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            let stored = sqlx::query_scalar(
                "SELECT public_key FROM signing_keys WHERE territory = $1 AND key_id = $2",
            )
            .bind(territory)
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE signing_keys SET expired_ts = $1
                 WHERE territory = $2 AND key_id <> $3 AND expired_ts IS NULL",
            )
            .bind(now_ms)
            .bind(territory)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE signing_keys SET expired_ts = NULL WHERE territory = $1 AND key_id = $2",
            )
            .bind(territory)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
            // A key ID must never be reused for other key material: peers cache by ID.
            if stored.as_deref() == Some(public_key) {
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(stored)
        })
        .map_err(|e| StorageError::from_sqlx(e, || format!("territory {territory}")))?;
        if stored.as_deref() != Some(public_key) {
            return Err(StorageError::Conflict {
                what: format!(
                    "signing key {key_id} of territory {territory} with other key material"
                ),
            });
        }
        Ok(())
    }

    async fn list_signing_keys(&self, territory: &str) -> Result<Vec<SigningKeyRecord>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT territory, key_id, public_key, created_ts, expired_ts FROM signing_keys
                 WHERE territory = $1 ORDER BY key_id",
            )
            .bind(territory)
            .fetch_all(pool)
            .await
        })?)
    }
}

/// Cache of other servers' verify keys.
pub trait RemoteServerKeys {
    /// Stores a key; an entry already cached with a later `valid_until_ts` is kept.
    fn store_remote_server_key(
        &self,
        key: &RemoteServerKey,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Every cached key of a server, by key ID.
    fn get_remote_server_keys(
        &self,
        server_name: &str,
    ) -> impl Future<Output = Result<Vec<RemoteServerKey>>> + Send;
    /// Keeps a server's signed key document (replacing one that expires sooner).
    fn store_key_document(
        &self,
        server_name: &str,
        json: &str,
        valid_until_ts: i64,
        fetched_ts: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A server's last key document and its `valid_until_ts`.
    fn get_key_document(
        &self,
        server_name: &str,
    ) -> impl Future<Output = Result<Option<(String, i64)>>> + Send;
}

impl RemoteServerKeys for Store {
    async fn store_remote_server_key(&self, key: &RemoteServerKey) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO remote_server_keys
                 (server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (server_name, key_id) DO UPDATE SET
                   public_key = excluded.public_key,
                   valid_until_ts = excluded.valid_until_ts,
                   expired_ts = excluded.expired_ts,
                   fetched_ts = excluded.fetched_ts
                 WHERE excluded.valid_until_ts >= remote_server_keys.valid_until_ts",
            )
            .bind(&key.server_name)
            .bind(&key.key_id)
            .bind(&key.public_key)
            .bind(key.valid_until_ts)
            .bind(key.expired_ts)
            .bind(key.fetched_ts)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    async fn store_key_document(
        &self,
        server_name: &str,
        json: &str,
        valid_until_ts: i64,
        fetched_ts: i64,
    ) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO remote_key_documents (server_name, json, valid_until_ts, fetched_ts)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (server_name) DO UPDATE SET
                   json = excluded.json,
                   valid_until_ts = excluded.valid_until_ts,
                   fetched_ts = excluded.fetched_ts
                 WHERE excluded.valid_until_ts >= remote_key_documents.valid_until_ts",
            )
            .bind(server_name)
            .bind(json)
            .bind(valid_until_ts)
            .bind(fetched_ts)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    async fn get_key_document(&self, server_name: &str) -> Result<Option<(String, i64)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT json, valid_until_ts FROM remote_key_documents WHERE server_name = $1",
            )
            .bind(server_name)
            .fetch_optional(pool)
            .await
        })?)
    }

    async fn get_remote_server_keys(&self, server_name: &str) -> Result<Vec<RemoteServerKey>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts
                 FROM remote_server_keys WHERE server_name = $1 ORDER BY key_id",
            )
            .bind(server_name)
            .fetch_all(pool)
            .await
        })?)
    }
}

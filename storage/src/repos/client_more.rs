use std::future::Future;

use crate::store::on_pool;
use crate::{Result, StorageError, Store};

/// An uploaded file's metadata (the bytes are on disk).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MediaRow {
    /// Media ID (the part after the server name in `mxc://`).
    pub media_id: String,
    /// Territory of the uploader.
    pub territory: String,
    /// Uploader.
    pub uploader: String,
    /// Content type given at upload.
    pub content_type: Option<String>,
    /// File name given at upload.
    pub filename: Option<String>,
    /// Size in bytes.
    pub size: i64,
    /// Upload time.
    pub created_ts: i64,
}

/// A file of another server kept for our users (the bytes are on disk).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RemoteMediaRow {
    /// The server in the `mxc://` URI.
    pub origin: String,
    /// Media ID.
    pub media_id: String,
    /// Content type the origin gave.
    pub content_type: Option<String>,
    /// File name from the origin's `Content-Disposition`.
    pub filename: Option<String>,
    /// Size in bytes.
    pub size: i64,
    /// When it was fetched.
    pub fetched_ts: i64,
}

/// A receipt to store.
#[derive(Debug, Clone)]
pub struct NewReceipt<'a> {
    /// Room.
    pub room_id: &'a str,
    /// Reader.
    pub user_id: &'a str,
    /// `m.read`, `m.read.private`.
    pub receipt_type: &'a str,
    /// Thread ID, `main`, or `""` for unthreaded.
    pub thread_id: &'a str,
    /// The event read up to.
    pub event_id: &'a str,
    /// When.
    pub ts: i64,
    /// Aux position of the change.
    pub aux: i64,
}

/// A receipt row: `(user_id, receipt_type, thread_id, event_id, ts)`.
pub type ReceiptRow = (String, String, String, String, i64);

/// Account data, receipts, media, aliases and the room directory.
pub trait ClientExtras {
    /// Sets account data (`room_id` `""` for global).
    fn set_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        kind: &str,
        content: &str,
        aux: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// One account data entry.
    fn get_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        kind: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Account data changed after `since`: `(room_id, type, content)`.
    fn list_account_data_since(
        &self,
        user_id: &str,
        since: i64,
    ) -> impl Future<Output = Result<Vec<(String, String, String)>>> + Send;
    /// Sets a user's receipt in a room (one per type and thread).
    fn set_receipt(&self, receipt: &NewReceipt<'_>) -> impl Future<Output = Result<()>> + Send;
    /// Receipts of a room changed after `since`.
    fn list_receipts_since(
        &self,
        room_id: &str,
        since: i64,
    ) -> impl Future<Output = Result<Vec<ReceiptRow>>> + Send;
    /// The event a user's read receipt for the main timeline (unthreaded or `main`, the later
    /// of the two) points at in a room.
    fn get_read_receipt(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Highest aux position in use.
    fn get_max_aux_position(&self) -> impl Future<Output = Result<i64>> + Send;
    /// Stores a refresh token digest for a device.
    fn create_refresh_token(
        &self,
        hash: &[u8],
        territory: &str,
        user_id: &str,
        device_id: &str,
        ts: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Uses up a refresh token: deletes it and returns `(territory, user_id, device_id)`.
    fn take_refresh_token(
        &self,
        hash: &[u8],
    ) -> impl Future<Output = Result<Option<(String, String, String)>>> + Send;
    /// Records an upload.
    fn create_media(&self, media: &MediaRow) -> impl Future<Output = Result<()>> + Send;
    /// An upload's metadata.
    fn get_media(&self, media_id: &str) -> impl Future<Output = Result<Option<MediaRow>>> + Send;
    /// Records a fetched remote file; a second record of the same file keeps the first.
    fn put_remote_media(&self, media: &RemoteMediaRow) -> impl Future<Output = Result<()>> + Send;
    /// A remote file fetched before.
    fn get_remote_media(
        &self,
        origin: &str,
        media_id: &str,
    ) -> impl Future<Output = Result<Option<RemoteMediaRow>>> + Send;
    /// Creates an alias; [`StorageError::Conflict`] when taken.
    fn create_alias(
        &self,
        alias: &str,
        room_id: &str,
        creator: &str,
        ts: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The room and creator of an alias.
    fn get_alias(
        &self,
        alias: &str,
    ) -> impl Future<Output = Result<Option<(String, String)>>> + Send;
    /// Deletes an alias; returns whether it existed.
    fn delete_alias(&self, alias: &str) -> impl Future<Output = Result<bool>> + Send;
    /// A room's local aliases.
    fn list_aliases(&self, room_id: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Publishes (`public`) or hides (`private`) a room in the directory.
    fn set_room_visibility(
        &self,
        room_id: &str,
        visibility: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A room's directory visibility (`private` when never set).
    fn get_room_visibility(&self, room_id: &str) -> impl Future<Output = Result<String>> + Send;
    /// Rooms published in the directory.
    fn list_public_rooms(&self) -> impl Future<Output = Result<Vec<String>>> + Send;
}

impl ClientExtras for Store {
    async fn set_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        kind: &str,
        content: &str,
        aux: i64,
    ) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO account_data (user_id, room_id, data_type, content, aux_position)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET
                   content = excluded.content, aux_position = excluded.aux_position",
            )
            .bind(user_id).bind(room_id).bind(kind).bind(content).bind(aux)
            .execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    async fn get_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        kind: &str,
    ) -> Result<Option<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3")
                .bind(user_id).bind(room_id).bind(kind).fetch_optional(pool).await
        })?)
    }

    async fn list_account_data_since(
        &self,
        user_id: &str,
        since: i64,
    ) -> Result<Vec<(String, String, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT room_id, data_type, content FROM account_data
                 WHERE user_id = $1 AND aux_position > $2 ORDER BY aux_position",
            )
            .bind(user_id).bind(since).fetch_all(pool).await
        })?)
    }

    async fn set_receipt(&self, r: &NewReceipt<'_>) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, aux_position)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE SET
                   event_id = excluded.event_id, ts = excluded.ts, aux_position = excluded.aux_position",
            )
            .bind(r.room_id).bind(r.user_id).bind(r.receipt_type).bind(r.thread_id).bind(r.event_id).bind(r.ts).bind(r.aux)
            .execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    async fn list_receipts_since(&self, room_id: &str, since: i64) -> Result<Vec<ReceiptRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT user_id, receipt_type, thread_id, event_id, ts FROM receipts
                 WHERE room_id = $1 AND aux_position > $2 ORDER BY aux_position",
            )
            .bind(room_id).bind(since).fetch_all(pool).await
        })?)
    }

    async fn get_read_receipt(&self, room_id: &str, user_id: &str) -> Result<Option<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT r.event_id FROM receipts r LEFT JOIN events e ON e.event_id = r.event_id
                 WHERE r.room_id = $1 AND r.user_id = $2
                   AND r.receipt_type IN ('m.read', 'm.read.private')
                   AND r.thread_id IN ('', 'main')
                 ORDER BY COALESCE(e.stream_ordering, -1) DESC, r.aux_position DESC LIMIT 1",
            )
            .bind(room_id).bind(user_id).fetch_optional(pool).await
        })?)
    }

    async fn get_max_aux_position(&self) -> Result<i64> {
        let a: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT MAX(aux_position) FROM account_data").fetch_one(pool).await
        })?;
        let r: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT MAX(aux_position) FROM receipts").fetch_one(pool).await
        })?;
        let mut max = a.unwrap_or(0).max(r.unwrap_or(0));
        for query in [
            "SELECT MAX(position) FROM remote_invites",
            "SELECT MAX(position) FROM to_device_inbox",
            "SELECT MAX(position) FROM device_list_changes",
        ] {
            let other: Option<i64> = on_pool!(self, pool => {
                sqlx::query_scalar(query).fetch_one(pool).await
            })?;
            max = max.max(other.unwrap_or(0));
        }
        Ok(max)
    }

    async fn create_refresh_token(
        &self,
        hash: &[u8],
        territory: &str,
        user_id: &str,
        device_id: &str,
        ts: i64,
    ) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, territory, user_id, device_id, created_ts)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(hash).bind(territory).bind(user_id).bind(device_id).bind(ts)
            .execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    async fn take_refresh_token(&self, hash: &[u8]) -> Result<Option<(String, String, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("DELETE FROM refresh_tokens WHERE token_hash = $1 RETURNING territory, user_id, device_id")
                .bind(hash).fetch_optional(pool).await
        })?)
    }

    async fn create_media(&self, m: &MediaRow) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO media (media_id, territory, uploader, content_type, filename, size, created_ts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&m.media_id).bind(&m.territory).bind(&m.uploader).bind(&m.content_type)
            .bind(&m.filename).bind(m.size).bind(m.created_ts)
            .execute(pool).await.map(|_| ())
        })
        .map_err(|e| StorageError::from_sqlx(e, || format!("media {}", m.media_id)))?;
        Ok(())
    }

    async fn get_media(&self, media_id: &str) -> Result<Option<MediaRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT media_id, territory, uploader, content_type, filename, size, created_ts
                 FROM media WHERE media_id = $1",
            )
            .bind(media_id).fetch_optional(pool).await
        })?)
    }

    async fn put_remote_media(&self, m: &RemoteMediaRow) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO remote_media (origin, media_id, content_type, filename, size, fetched_ts)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (origin, media_id) DO NOTHING",
            )
            .bind(&m.origin).bind(&m.media_id).bind(&m.content_type).bind(&m.filename)
            .bind(m.size).bind(m.fetched_ts)
            .execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    async fn get_remote_media(
        &self,
        origin: &str,
        media_id: &str,
    ) -> Result<Option<RemoteMediaRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT origin, media_id, content_type, filename, size, fetched_ts
                 FROM remote_media WHERE origin = $1 AND media_id = $2",
            )
            .bind(origin).bind(media_id).fetch_optional(pool).await
        })?)
    }

    async fn create_alias(&self, alias: &str, room_id: &str, creator: &str, ts: i64) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)")
                .bind(alias).bind(room_id).bind(creator).bind(ts)
                .execute(pool).await.map(|_| ())
        })
        .map_err(|e| StorageError::from_sqlx(e, || format!("alias {alias}")))?;
        Ok(())
    }

    async fn get_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
                .bind(alias).fetch_optional(pool).await
        })?)
    }

    async fn delete_alias(&self, alias: &str) -> Result<bool> {
        let n = on_pool!(self, pool => {
            sqlx::query("DELETE FROM room_aliases WHERE alias = $1").bind(alias).execute(pool).await.map(|r| r.rows_affected())
        })?;
        Ok(n > 0)
    }

    async fn list_aliases(&self, room_id: &str) -> Result<Vec<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
                .bind(room_id).fetch_all(pool).await
        })?)
    }

    async fn set_room_visibility(&self, room_id: &str, visibility: &str) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO room_directory (room_id, visibility) VALUES ($1, $2)
                 ON CONFLICT (room_id) DO UPDATE SET visibility = excluded.visibility",
            )
            .bind(room_id).bind(visibility).execute(pool).await.map(|_| ())
        })?;
        Ok(())
    }

    async fn get_room_visibility(&self, room_id: &str) -> Result<String> {
        let v: Option<String> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT visibility FROM room_directory WHERE room_id = $1")
                .bind(room_id).fetch_optional(pool).await
        })?;
        Ok(v.unwrap_or_else(|| "private".to_owned()))
    }

    async fn list_public_rooms(&self) -> Result<Vec<String>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT room_id FROM room_directory WHERE visibility = 'public' ORDER BY room_id")
                .fetch_all(pool).await
        })?)
    }
}

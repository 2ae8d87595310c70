//! The store handle: connection pools, migrations, readiness and SQLite WAL upkeep.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous as SqlxSynchronous,
};

use crate::error::BackendName;
use crate::memo::Memo;
use crate::sqlite_writer::{SqliteWriter, WriterOptions};
use crate::{KeyCounts, Result, StorageError, migrate};

/// Users (and devices) whose hot answers each memo keeps.
const MEMO_KEYS: usize = 10_000;

/// How SQLite makes commits durable (`PRAGMA synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSynchronous {
    /// Commits survive a crash of the process; the last commits before a power loss or kernel
    /// crash may be rolled back (the database stays consistent). The WAL is synced at checkpoints.
    #[default]
    Normal,
    /// Every commit is synced to disk before it returns: survives power loss too.
    Full,
}

/// Tuning for [`Store::connect`]. `Default` gives the documented defaults of the node config.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long to wait for the first connection (PostgreSQL) before giving up.
    pub connect_timeout: Duration,
    /// PostgreSQL password, when not in the URL (read from a secret file by the caller).
    pub password: Option<String>,
    /// SQLite durability.
    pub sqlite_synchronous: SqliteSynchronous,
    /// How long a SQLite connection waits for a lock before failing with `SQLITE_BUSY`.
    pub sqlite_busy_timeout: Duration,
    /// After a checkpoint, SQLite truncates the WAL file down to at most this many bytes.
    pub sqlite_wal_size_limit: u64,
    /// Page cache per SQLite connection, in KiB.
    pub sqlite_cache_size_kib: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            password: None,
            sqlite_synchronous: SqliteSynchronous::Normal,
            sqlite_busy_timeout: Duration::from_secs(5),
            sqlite_wal_size_limit: 64 * 1024 * 1024,
            sqlite_cache_size_kib: 2 * 1024,
        }
    }
}

/// Room writer commits between two passive WAL checkpoints (a message commit writes about 20
/// pages; SQLite's own automatic checkpoint would run every 1,000 pages, in the committing
/// connection).
pub const CHECKPOINT_EVERY: u64 = 32;
/// WAL frames (pages) past which a checkpoint makes the WAL start over (32 MiB of 4 KiB
/// pages).
pub const RESTART_FRAMES: i64 = 8_192;

/// The room writer's commit count and whether a checkpoint is running.
#[derive(Debug, Default)]
struct Checkpoints {
    commits: AtomicU64,
    running: AtomicBool,
}

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The room writer's connection (SQLite) or pool (PostgreSQL).
#[derive(Debug, Clone)]
pub(crate) enum Writer {
    Sqlite(Arc<SqliteWriter>),
    Postgres(PgPool),
}

/// What a WAL checkpoint did (SQLite's `PRAGMA wal_checkpoint` result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointStats {
    /// True when a reader or writer kept the checkpoint from finishing.
    pub busy: bool,
    /// Frames in the WAL before the checkpoint.
    pub wal_frames: i64,
    /// Frames copied back into the database.
    pub checkpointed_frames: i64,
}

/// The handle every repository trait is implemented on. Cheap to clone (pools are shared).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    /// Where the room writer's commits go: on SQLite a connection of its own that the writing
    /// task drives itself (`sqlite_writer`); on PostgreSQL the pool.
    pub(crate) writer: Writer,
    /// Checkpoints run beside the writer (SQLite).
    checkpoints: Arc<Checkpoints>,
    /// Searchable rows written since the SQLite full-text index last took the pending ones in
    /// (0: none; it starts at 1, as rows of an earlier run may wait).
    pub(crate) search_pending: Arc<AtomicU64>,
    /// Each user's rooms with a membership (`list_membership_rooms`), dropped when one of
    /// their membership events is written.
    pub(crate) member_rooms: Arc<Memo<Vec<String>>>,
    /// Each device's one-time key counts and unused fallback keys (`key_counts`), dropped by
    /// uploads, claims and the device's deletion.
    pub(crate) key_counts: Arc<Memo<KeyCounts>>,
    /// The URL with any password removed, for messages.
    display_url: String,
    /// The SQLite database file, for WAL size checks.
    sqlite_path: Option<PathBuf>,
}

/// Runs the same query-building expression against whichever pool the store has (or, with
/// `pool:`, against the given [`Pool`], such as the writer's).
/// `$pool` is bound to `&SqlitePool` or `&PgPool`; the expression's SQL must suit both.
macro_rules! on_pool {
    (pool: $which:expr, $pool:ident => $body:expr) => {
        match $which {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
    ($store:expr, $pool:ident => $body:expr) => {
        on_pool!(pool: &$store.pool, $pool => $body)
    };
}
pub(crate) use on_pool;

impl Store {
    /// Opens the database named by `url` (`sqlite://path`, `sqlite::memory:` is refused because
    /// each pooled connection would see its own database; `postgres://` or `postgresql://`).
    /// Creates a SQLite file and its directory when missing. Does not migrate: call
    /// [`Store::migrate`].
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Store> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or(url);
        match scheme {
            "sqlite" => Self::connect_sqlite(url, options).await,
            "postgres" | "postgresql" => Self::connect_postgres(url, options).await,
            other => Err(StorageError::UnsupportedScheme {
                scheme: other.to_owned(),
            }),
        }
    }

    async fn connect_sqlite(url: &str, options: &StoreOptions) -> Result<Store> {
        let connect_err = |source| StorageError::Connect {
            backend: BackendName::Sqlite,
            url: url.to_owned(),
            source,
        };
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(connect_err(sqlx::Error::Configuration(
                "in-memory SQLite is not supported: use a file path".into(),
            )));
        }
        let connect_options = SqliteConnectOptions::from_str(url)
            .map_err(connect_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.sqlite_synchronous {
                SqliteSynchronous::Normal => SqlxSynchronous::Normal,
                SqliteSynchronous::Full => SqlxSynchronous::Full,
            })
            .busy_timeout(options.sqlite_busy_timeout)
            .foreign_keys(true)
            .pragma(
                "journal_size_limit",
                options.sqlite_wal_size_limit.to_string(),
            )
            // Negative: KiB rather than pages.
            .pragma("cache_size", format!("-{}", options.sqlite_cache_size_kib));
        let path = connect_options.get_filename().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| connect_err(sqlx::Error::Io(e)))?;
        }
        let pool = SqlitePoolOptions::new()
            // A connection to a local file does not go stale: no ping (a round trip to the
            // connection's worker thread) before every query.
            .test_before_acquire(false)
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.connect_timeout.max(options.sqlite_busy_timeout))
            .connect_with(connect_options.clone())
            .await
            .map_err(connect_err)?;
        // The writer never checkpoints after its own commits (that would put the checkpoint's
        // fsync of the database file into a send's latency): see `after_writer_commit`. The
        // pool has created the file and put it into WAL mode.
        let writer = SqliteWriter::open(WriterOptions {
            path: path.clone(),
            synchronous: options.sqlite_synchronous,
            busy_timeout: options.sqlite_busy_timeout,
            wal_size_limit: options.sqlite_wal_size_limit,
            cache_size_kib: options.sqlite_cache_size_kib,
        })
        .map_err(|e| connect_err(sqlx::Error::Configuration(Box::new(e))))?;
        Ok(Store {
            pool: Pool::Sqlite(pool),
            writer: Writer::Sqlite(Arc::new(writer)),
            checkpoints: Arc::default(),
            search_pending: Arc::new(AtomicU64::new(1)),
            member_rooms: Arc::new(Memo::new(MEMO_KEYS)),
            key_counts: Arc::new(Memo::new(MEMO_KEYS)),
            display_url: url.to_owned(),
            sqlite_path: Some(path),
        })
    }

    async fn connect_postgres(url: &str, options: &StoreOptions) -> Result<Store> {
        let display_url = redact_url(url);
        let connect_err = |source| StorageError::Connect {
            backend: BackendName::Postgres,
            url: display_url.clone(),
            source,
        };
        let mut connect_options = PgConnectOptions::from_str(url).map_err(connect_err)?;
        if let Some(password) = &options.password {
            connect_options = connect_options.password(password);
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.connect_timeout)
            .connect_with(connect_options)
            .await
            .map_err(connect_err)?;
        Ok(Store {
            writer: Writer::Postgres(pool.clone()),
            checkpoints: Arc::default(),
            search_pending: Arc::new(AtomicU64::new(0)),
            member_rooms: Arc::new(Memo::new(MEMO_KEYS)),
            key_counts: Arc::new(Memo::new(MEMO_KEYS)),
            pool: Pool::Postgres(pool),
            display_url,
            sqlite_path: None,
        })
    }

    /// Which backend this store uses.
    pub fn kind(&self) -> BackendKind {
        match self.pool {
            Pool::Sqlite(_) => BackendKind::Sqlite,
            Pool::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// The database URL with any password removed.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// The SQLite database file, if this is a SQLite store.
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.sqlite_path.as_deref()
    }

    /// Applies every embedded migration not yet applied, each in its own transaction.
    pub async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(pool) => migrate::migrator(migrate::SQLITE).await?.run(pool).await?,
            Pool::Postgres(pool) => {
                migrate::migrator(migrate::POSTGRES)
                    .await?
                    .run(pool)
                    .await?
            }
        }
        Ok(())
    }

    /// True when the database answers and every embedded migration has been applied.
    pub async fn is_ready(&self) -> Result<bool> {
        let latest = match self.pool {
            Pool::Sqlite(_) => migrate::latest(migrate::SQLITE),
            Pool::Postgres(_) => migrate::latest(migrate::POSTGRES),
        };
        let applied: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE",
            )
            .fetch_one(pool)
            .await
        })
        .or_else(|err| match &err {
            // No migration table yet: reachable, but not migrated.
            sqlx::Error::Database(db) if is_undefined_table(db.as_ref()) => Ok(None),
            _ => Err(err),
        })?;
        Ok(applied == Some(latest))
    }

    /// Counts a commit of the room writer; every [`CHECKPOINT_EVERY`] commits a passive
    /// checkpoint copies the WAL into the database file on another connection, one at a time,
    /// while the writer goes on (SQLite: the writer's connection does not checkpoint itself).
    pub(crate) fn after_writer_commit(&self) {
        let Pool::Sqlite(pool) = &self.pool else {
            return;
        };
        let commits = self.checkpoints.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if !commits.is_multiple_of(CHECKPOINT_EVERY)
            || self.checkpoints.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (pool, checkpoints) = (pool.clone(), self.checkpoints.clone());
        tokio::spawn(async move {
            let passive: std::result::Result<(i64, i64, i64), _> =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(&pool)
                    .await;
            // A passive checkpoint never catches up with a writer that goes on writing, and
            // SQLite starts the WAL over only once one did: past RESTART_FRAMES one checkpoint
            // holds new writes back until it copied the rest (little, after the passive one)
            // and the readers moved on, so the WAL starts over (and is cut back to the size
            // limit).
            let result = match passive {
                Ok((_, frames, _)) if frames > RESTART_FRAMES => {
                    sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                        .execute(&pool)
                        .await
                        .map(|_| ())
                }
                other => other.map(|_| ()),
            };
            if let Err(error) = result {
                tracing::warn!(%error, "WAL checkpoint failed; retrying after more commits");
            }
            checkpoints.running.store(false, Ordering::Release);
        });
    }

    /// Checkpoints the SQLite WAL into the database file and truncates the WAL to zero bytes
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`). Waits up to the busy timeout for readers; returns
    /// `busy` when they did not finish, in which case the next call catches up. `None` on
    /// PostgreSQL, which manages its own WAL.
    pub async fn checkpoint(&self) -> Result<Option<CheckpointStats>> {
        let Pool::Sqlite(pool) = &self.pool else {
            return Ok(None);
        };
        let (busy, wal_frames, checkpointed_frames): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(pool)
                .await?;
        Ok(Some(CheckpointStats {
            busy: busy != 0,
            wal_frames,
            checkpointed_frames,
        }))
    }

    /// Reads a SQLite pragma (`journal_mode`, `synchronous`, ...) from a pooled connection, for
    /// diagnostics. `None` on PostgreSQL. Only names made of letters and `_` are accepted.
    pub async fn sqlite_pragma(&self, name: &str) -> Result<Option<String>> {
        let Pool::Sqlite(pool) = &self.pool else {
            return Ok(None);
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphabetic() || c == '_') {
            return Err(StorageError::Corrupt(format!(
                "not a pragma name: {name:?}"
            )));
        }
        let row: sqlx::sqlite::SqliteRow = sqlx::query(&format!("PRAGMA {name}"))
            .fetch_one(pool)
            .await?;
        use sqlx::{Row, ValueRef};
        let raw = row.try_get_raw(0)?;
        if raw.is_null() {
            return Ok(Some(String::new()));
        }
        let value = row
            .try_get::<String, _>(0)
            .or_else(|_| row.try_get::<i64, _>(0).map(|v| v.to_string()))?;
        Ok(Some(value))
    }

    /// Size in bytes of the SQLite WAL file (0 when absent); `None` on PostgreSQL.
    pub fn wal_size(&self) -> Option<u64> {
        let path = self.sqlite_path.as_ref()?;
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        Some(std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0))
    }

    /// Closes every pooled connection (SQLite checkpoints on the last close).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
        if let Writer::Sqlite(writer) = &self.writer {
            writer.close().await;
        }
    }
}

fn is_undefined_table(err: &dyn sqlx::error::DatabaseError) -> bool {
    // PostgreSQL: 42P01 undefined_table. SQLite: generic error with "no such table".
    err.code().as_deref() == Some("42P01") || err.message().contains("no such table")
}

/// Removes the password from `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("sqlite://./data/unitas.db"),
            "sqlite://./data/unitas.db"
        );
        assert_eq!(
            redact_url("postgres://u:p%40ss@h/db?x=1"),
            "postgres://u:***@h/db?x=1"
        );
    }
}

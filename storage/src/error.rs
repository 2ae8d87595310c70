use std::fmt;

/// What can go wrong in storage. Callers map these onto their own errors; the `Database`
/// variant's details are for logs only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database URL's scheme is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error("unsupported database URL scheme `{scheme}` (expected sqlite:// or postgres://)")]
    UnsupportedScheme {
        /// The scheme as written (text before the first `:`).
        scheme: String,
    },
    /// The URL could not be parsed or the database could not be opened or reached.
    #[error("cannot connect to the {backend} database at {url}: {source}")]
    Connect {
        /// `SQLite` or `PostgreSQL`.
        backend: BackendName,
        /// The URL with any password removed.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row with the same unique key exists already.
    #[error("{what} already exists")]
    Conflict {
        /// What collided, e.g. `account @a:b`.
        what: String,
    },
    /// A row the operation needs does not exist (for updates and foreign keys).
    #[error("{what} not found")]
    NotFound {
        /// What is missing.
        what: String,
    },
    /// A stored value could not be interpreted (corrupt or hand-edited row).
    #[error("invalid stored data: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// An error of the SQLite room writer's own connection (not through sqlx).
    #[error("database error: {0}")]
    Writer(#[source] rusqlite::Error),
}

/// The two backends, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendName {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendName::Sqlite => "SQLite",
            BackendName::Postgres => "PostgreSQL",
        })
    }
}

impl StorageError {
    /// Maps a driver error, turning unique-key violations into [`StorageError::Conflict`] and
    /// foreign-key violations into [`StorageError::NotFound`].
    pub(crate) fn from_sqlx(err: sqlx::Error, what: impl FnOnce() -> String) -> Self {
        if let sqlx::Error::Database(db) = &err {
            match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => {
                    return StorageError::Conflict { what: what() };
                }
                sqlx::error::ErrorKind::ForeignKeyViolation => {
                    return StorageError::NotFound {
                        what: format!("owner of {}", what()),
                    };
                }
                _ => {}
            }
        }
        StorageError::Database(err)
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(err: sqlx::Error) -> Self {
        StorageError::Database(err)
    }
}

//! Throwaway databases for test suites, on both backends.
//!
//! PostgreSQL comes from the cluster the test command starts: `UNITAS_TEST_POSTGRES_URL` names a
//! superuser connection to it. Each call creates a fresh database there, so tests never share
//! state. When the variable is missing, PostgreSQL tests fail under CI (`CI` set) and are
//! skipped loudly elsewhere.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Store, StoreOptions};

/// Environment variable naming the test cluster's superuser URL.
pub const POSTGRES_URL_VAR: &str = "UNITAS_TEST_POSTGRES_URL";

/// A migrated store and what keeps it alive.
#[derive(Debug)]
pub struct TestDb {
    /// The store, migrated.
    pub store: Store,
    /// Its URL (for starting a node on the same database).
    pub url: String,
    /// Keeps a SQLite database's directory until the test ends.
    pub dir: Option<tempfile::TempDir>,
}

/// A fresh SQLite database in a temporary directory, migrated.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temporary directory for a test database");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .expect("open test SQLite");
    store.migrate().await.expect("migrate test SQLite");
    TestDb {
        store,
        url,
        dir: Some(dir),
    }
}

/// The test cluster's superuser URL, or `None` (after saying so on stderr) outside CI.
/// Panics under CI when it is missing: nothing is skipped silently there.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{POSTGRES_URL_VAR} is not set under CI: run the suite through scripts/test")
        }
        _ => {
            eprintln!(
                "SKIPPED: PostgreSQL test, because {POSTGRES_URL_VAR} is not set \
                 (scripts/test starts a throwaway cluster and sets it)"
            );
            None
        }
    }
}

/// Creates an empty database in the test cluster and returns its URL; `None` when there is no
/// cluster outside CI (see [`postgres_admin_url`]).
pub async fn postgres_database() -> Option<String> {
    let admin_url = postgres_admin_url()?;
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).expect("system randomness");
    let name = format!(
        "unitas_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        u32::from_le_bytes(random)
    );
    let admin = Store::connect(
        &admin_url,
        &StoreOptions {
            max_connections: 1,
            ..Default::default()
        },
    )
    .await
    .expect("connect to the test PostgreSQL cluster");
    let crate::store::Pool::Postgres(pool) = &admin.pool else {
        panic!("{POSTGRES_URL_VAR} must be a postgres:// URL");
    };
    // The name is generated above from digits and underscores only.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(pool)
        .await
        .expect("create a test database");
    admin.close().await;
    Some(with_database(&admin_url, &name))
}

/// A fresh PostgreSQL database, migrated; `None` when there is no cluster outside CI.
pub async fn postgres() -> Option<TestDb> {
    let url = postgres_database().await?;
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .expect("open test database");
    store.migrate().await.expect("migrate test database");
    Some(TestDb {
        store,
        url,
        dir: None,
    })
}

/// Replaces the database name (the URL path) of a `postgres://` URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    match query {
        Some(q) => format!("{scheme}://{authority}/{database}?{q}"),
        None => format!("{scheme}://{authority}/{database}"),
    }
}

/// Turns `module::case` functions (`async fn(Store)`) into one `#[tokio::test]` per backend:
/// `sqlite::case` on a fresh SQLite database, `postgres::case` on a fresh PostgreSQL database
/// (skipped loudly outside CI when there is no test cluster). Invoke it in the test crate's root;
/// the modules are looked up there.
// `crate::` is meant: the cases live in the crate that invokes the macro.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! both_backends {
    ($($module:ident :: $case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = $crate::testing::sqlite().await;
                    crate::$module::$case(db.store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(db) = $crate::testing::postgres().await else { return };
                    crate::$module::$case(db.store.clone()).await;
                    db.store.close().await;
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@localhost/postgres?host=/tmp/s", "x"),
            "postgres://postgres@localhost/x?host=/tmp/s"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5/db", "y"),
            "postgres://u:p@h:5/y"
        );
        assert_eq!(with_database("postgres://h", "z"), "postgres://h/z");
    }
}

//! Commit throughput of the storage backends: single-row upserts, one commit each, sequential and
//! with 8 concurrent writers. Prints figures; asserts nothing. Run:
//!
//! ```text
//! cargo bench -p unitas-storage --bench commit            # SQLite normal vs full
//! UNITAS_TEST_POSTGRES_URL=postgres://... cargo bench -p unitas-storage --bench commit
//! ```
//!
//! Used to choose SQLite's default `synchronous` setting (see README, "Performance").

use std::time::Instant;

use unitas_storage::{RemoteServerKey, RemoteServerKeys, SqliteSynchronous, Store, StoreOptions};

const SEQUENTIAL: usize = 2_000;
const CONCURRENT_TASKS: usize = 8;
const PER_TASK: usize = 500;

fn key(i: usize) -> RemoteServerKey {
    RemoteServerKey {
        server_name: format!("s{}.example", i % 97),
        key_id: format!("ed25519:k{i}"),
        public_key: "cHVibGljIGtleSBieXRlcyBnbyBoZXJlLi4uLi4uLi4".into(),
        valid_until_ts: i as i64,
        expired_ts: None,
        fetched_ts: 1,
    }
}

async fn measure(label: &str, store: Store) {
    let start = Instant::now();
    for i in 0..SEQUENTIAL {
        store
            .store_remote_server_key(&key(i))
            .await
            .expect("commit");
    }
    let sequential = SEQUENTIAL as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..CONCURRENT_TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..PER_TASK {
                store
                    .store_remote_server_key(&key(100_000 + t * PER_TASK + i))
                    .await
                    .expect("commit");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let concurrent = (CONCURRENT_TASKS * PER_TASK) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{label:<24} sequential {sequential:>8.0} commits/s ({:>6.1} us each)   {CONCURRENT_TASKS} writers {concurrent:>8.0} commits/s",
        1e6 / sequential
    );
    store.close().await;
}

#[tokio::main]
async fn main() {
    // Test runners list targets with `--list`; a bench has no tests to list.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut results = Vec::new();
    for (label, sync) in [
        ("sqlite synchronous=normal", SqliteSynchronous::Normal),
        ("sqlite synchronous=full", SqliteSynchronous::Full),
    ] {
        let url = format!("sqlite://{}/{}.db", dir.path().display(), label.len());
        let options = StoreOptions {
            sqlite_synchronous: sync,
            ..Default::default()
        };
        let store = Store::connect(&url, &options).await.expect("open SQLite");
        store.migrate().await.expect("migrate");
        results.push((label, store));
    }
    for (label, store) in results {
        measure(label, store).await;
    }
    match std::env::var("UNITAS_TEST_POSTGRES_URL") {
        Ok(_) => {
            let url = unitas_storage::testing::postgres_database()
                .await
                .expect("test database");
            let store = Store::connect(&url, &StoreOptions::default())
                .await
                .expect("open PostgreSQL");
            store.migrate().await.expect("migrate");
            measure("postgresql", store).await;
        }
        Err(_) => println!("postgresql: skipped (UNITAS_TEST_POSTGRES_URL not set)"),
    }
}

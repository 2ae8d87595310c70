//! SQLite only: WAL mode, durability setting, and a WAL that never grows without bound.

use unitas_storage::{SqliteSynchronous, Store, StoreOptions, Territories};

async fn pragma(store: &Store, name: &str) -> String {
    store.sqlite_pragma(name).await.unwrap().unwrap()
}

#[tokio::test]
async fn opens_in_wal_mode_with_the_configured_durability() {
    let dir = tempfile::tempdir().unwrap();
    for (setting, expected) in [
        (SqliteSynchronous::Normal, "1"),
        (SqliteSynchronous::Full, "2"),
    ] {
        let url = format!("sqlite://{}/{expected}.db", dir.path().display());
        let options = StoreOptions {
            sqlite_synchronous: setting,
            sqlite_cache_size_kib: 3 * 1024,
            ..Default::default()
        };
        let store = Store::connect(&url, &options).await.unwrap();
        assert_eq!(pragma(&store, "journal_mode").await, "wal");
        assert_eq!(pragma(&store, "synchronous").await, expected);
        assert_eq!(pragma(&store, "busy_timeout").await, "5000");
        assert_eq!(pragma(&store, "foreign_keys").await, "1");
        // Negative: KiB.
        assert_eq!(pragma(&store, "cache_size").await, "-3072");
        store.close().await;
    }
}

#[tokio::test]
async fn checkpoint_truncates_the_wal() {
    let db = unitas_storage::testing::sqlite().await;
    let store = &db.store;
    for i in 0..2_000 {
        store
            .ensure_territory(&format!("T{i}"), &format!("t{i}.example"), i)
            .await
            .unwrap();
    }
    assert!(store.wal_size().unwrap() > 0, "writes went to the WAL");
    let stats = store.checkpoint().await.unwrap().unwrap();
    assert!(!stats.busy);
    assert_eq!(store.wal_size(), Some(0));
    // Every row survived the checkpoint.
    assert_eq!(store.list_territories().await.unwrap().len(), 2_000);
}

#[tokio::test]
async fn wal_stays_under_the_size_limit_without_explicit_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bounded.db", dir.path().display());
    let limit = 256 * 1024;
    let options = StoreOptions {
        sqlite_wal_size_limit: limit,
        ..Default::default()
    };
    let store = Store::connect(&url, &options).await.unwrap();
    store.migrate().await.unwrap();
    // ~8k single-row commits (~3 pages each): far more than one auto-checkpoint's worth (1,000 pages).
    for i in 0..8_000 {
        store
            .ensure_territory(&format!("T{i}"), &format!("t{i}.example"), i)
            .await
            .unwrap();
    }
    // SQLite's auto-checkpoint restarts the WAL and journal_size_limit trims it: the file is
    // bounded by one checkpoint interval of pages, not by the number of commits.
    let wal = store.wal_size().unwrap();
    assert!(wal < 8 * 1024 * 1024, "WAL grew to {wal} bytes");
    store.close().await;
}

#[tokio::test]
async fn postgres_has_no_wal_to_manage() {
    let Some(db) = unitas_storage::testing::postgres().await else {
        return;
    };
    assert_eq!(db.store.checkpoint().await.unwrap(), None);
    assert_eq!(db.store.wal_size(), None);
}

/// The room writer does not checkpoint after its own commits (a checkpoint's fsync would land in
/// a send's latency); checkpoints beside it keep the WAL bounded all the same.
#[tokio::test]
async fn the_writers_wal_is_checkpointed_beside_it() {
    use unitas_storage::{EventBatch, RoomEvents};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/writer.db", dir.path().display());
    let options = StoreOptions {
        sqlite_wal_size_limit: 256 * 1024,
        ..Default::default()
    };
    let store = Store::connect(&url, &options).await.unwrap();
    store.migrate().await.unwrap();
    // Big enough events that the commits' pages pass the restart threshold several times
    // (without checkpoints the WAL would hold every one of them: over 100 MiB).
    let body = "x".repeat(8 * 1024);
    let mut largest = 0;
    for n in 1..=4_000 {
        let mut event = crate::rooms::event(&format!("${n}"), n);
        event.row.json = format!("{{\"body\":\"{body}\"}}");
        store
            .persist_events(&EventBatch {
                events: vec![event],
                ..Default::default()
            })
            .await
            .unwrap();
        largest = largest.max(store.wal_size().unwrap());
    }
    let limit = 2 * unitas_storage::RESTART_FRAMES as u64 * 4096;
    assert!(largest < limit, "the WAL grew to {largest} bytes");
    store.close().await;
}

/// The room writer writes a message on the calling task's thread without waiting for locks; when
/// another connection holds the write lock it waits for it (up to the busy timeout) instead of
/// failing, and writes once the lock is free. With `synchronous = FULL` every commit takes that
/// waiting path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_waits_for_a_lock_held_elsewhere() {
    use sqlx::{Connection, Executor};
    use unitas_storage::{EventBatch, RoomEvents};
    let dir = tempfile::tempdir().unwrap();
    for (n, setting) in [SqliteSynchronous::Normal, SqliteSynchronous::Full]
        .into_iter()
        .enumerate()
    {
        let url = format!("sqlite://{}/busy{n}.db", dir.path().display());
        let options = StoreOptions {
            sqlite_synchronous: setting,
            ..Default::default()
        };
        let store = Store::connect(&url, &options).await.unwrap();
        store.migrate().await.unwrap();
        let write = |id: &str, position: i64| {
            let store = store.clone();
            let batch = EventBatch {
                events: vec![crate::rooms::event(id, position)],
                ..Default::default()
            };
            tokio::spawn(async move { store.persist_events(&batch).await })
        };
        write("$before", 1).await.unwrap().unwrap();

        let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
        other.execute("BEGIN IMMEDIATE").await.unwrap();
        let mut pending = write("$during", 2);
        // It can neither finish nor fail while the lock is held.
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut pending).await;
        assert!(
            early.is_err(),
            "the write ended while another connection held the lock: {early:?}"
        );
        other.execute("COMMIT").await.unwrap();
        pending.await.unwrap().unwrap();

        for id in ["$before", "$during"] {
            assert!(
                store.get_event(id).await.unwrap().is_some(),
                "{id} is stored"
            );
        }
        store.close().await;
    }
}

//! Append throughput: message events appended through the one write path (build, hash, sign,
//! auth, state, group commit) into rooms of 1, 100 and 10,000 members, on SQLite and on
//! PostgreSQL. Prints figures; asserts nothing.
//!
//! ```text
//! scripts/bench                     # both backends (starts a durable PostgreSQL cluster)
//! cargo bench -p unitas-federation --bench append   # SQLite only
//! ```

use std::sync::Arc;
use std::time::Instant;

use ruma::{OwnedRoomId, UserId};
use serde_json::json;
use unitas_federation::SigningKey;
use unitas_federation::rooms::{EventTemplate, NewRoom, NoOutbound, RoomVersion, Rooms, Signer};
use unitas_storage::{SqliteSynchronous, Store, StoreOptions};

const MESSAGES: usize = 20_000;
const SENDERS: usize = 256;
const SERVER: &str = "bench.test";

async fn room_with_members(rooms: &Rooms, key: &SigningKey, members: usize) -> OwnedRoomId {
    let signer = Signer {
        server_name: SERVER,
        key,
    };
    let alice = UserId::parse(format!("@alice:{SERVER}")).expect("user id");
    let room = NewRoom {
        version: RoomVersion::parse("12").expect("v12"),
        join_rule: "public".into(),
        initial_state: vec![],
    };
    let room_id = rooms
        .create_room(signer, &alice, room)
        .await
        .expect("create room");
    // Joins go in concurrently, so they share group commits too.
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = (members.saturating_sub(1)).div_ceil(SENDERS).max(1);
    for t in 0..SENDERS {
        let (rooms, room_id, key) = (rooms.clone(), room_id.clone(), key.to_key_file());
        tasks.spawn(async move {
            let key = SigningKey::from_key_file(&key, std::path::Path::new("bench")).expect("key");
            let signer = Signer {
                server_name: SERVER,
                key: &key,
            };
            for i in (t * per_task)..((t + 1) * per_task) {
                if i + 1 >= members {
                    break;
                }
                let user = UserId::parse(format!("@u{i}:{SERVER}")).expect("user id");
                let join = EventTemplate::state(
                    "m.room.member",
                    user.as_str(),
                    json!({"membership": "join"}),
                );
                rooms
                    .send_local(&room_id, &user, &join, signer)
                    .await
                    .expect("join");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    room_id
}

/// Every measurement starts from a fresh database holding the same number of joins (the
/// measured room's plus a filler room's), so the figures differ by room size alone.
const JOINS_IN_DATABASE: usize = 10_000;

async fn measure(label: &str, open: impl AsyncFn() -> Store) {
    for members in [1usize, 100, 10_000] {
        let store = open().await;
        let (rooms, writer) = Rooms::new(store.clone(), [SERVER.to_owned()], Arc::new(NoOutbound))
            .await
            .expect("rooms");
        let writer = tokio::spawn(writer.run(std::future::pending()));
        let key = SigningKey::generate().expect("key");
        let setup = Instant::now();
        if members < JOINS_IN_DATABASE {
            room_with_members(&rooms, &key, JOINS_IN_DATABASE - members + 1).await;
        }
        let room_id = room_with_members(&rooms, &key, members).await;
        let setup = setup.elapsed();

        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..SENDERS {
            let (rooms, room_id, key) = (rooms.clone(), room_id.clone(), key.to_key_file());
            tasks.spawn(async move {
                let key =
                    SigningKey::from_key_file(&key, std::path::Path::new("bench")).expect("key");
                let signer = Signer {
                    server_name: SERVER,
                    key: &key,
                };
                // Members send (alice when the room has only her).
                let sender = if members > 1 {
                    format!("@u{}:{SERVER}", t % (members - 1))
                } else {
                    format!("@alice:{SERVER}")
                };
                let sender = UserId::parse(sender).expect("user id");
                for i in 0..MESSAGES / SENDERS {
                    let message = EventTemplate::message(
                        "m.room.message",
                        json!({"msgtype": "m.text", "body": format!("message {i} from task {t}")}),
                    );
                    rooms
                        .send_local(&room_id, &sender, &message, signer)
                        .await
                        .expect("append");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = start.elapsed();
        let sent = (MESSAGES / SENDERS) * SENDERS;
        println!(
            "{label:<28} {members:>6} members   {:>8.0} appends/s   ({sent} messages, {SENDERS} senders; setup {:.1}s)",
            sent as f64 / elapsed.as_secs_f64(),
            setup.as_secs_f64()
        );
        drop(rooms);
        let _ = writer.await;
        store.close().await;
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let counter = std::sync::atomic::AtomicUsize::new(0);
    for (label, sync) in [
        ("sqlite synchronous=normal", SqliteSynchronous::Normal),
        ("sqlite synchronous=full", SqliteSynchronous::Full),
    ] {
        let open = async || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let url = format!("sqlite://{}/{n}.db", dir.path().display());
            let options = StoreOptions {
                sqlite_synchronous: sync,
                ..Default::default()
            };
            let store = Store::connect(&url, &options).await.expect("open SQLite");
            store.migrate().await.expect("migrate");
            store
        };
        measure(label, open).await;
    }
    if std::env::var("UNITAS_TEST_POSTGRES_URL").is_ok() {
        let open = async || {
            let url = unitas_storage::testing::postgres_database()
                .await
                .expect("test database");
            let store = Store::connect(&url, &StoreOptions::default())
                .await
                .expect("open PostgreSQL");
            store.migrate().await.expect("migrate");
            store
        };
        measure("postgresql", open).await;
    } else {
        println!("postgresql: skipped (UNITAS_TEST_POSTGRES_URL not set; scripts/bench sets it)");
    }
}

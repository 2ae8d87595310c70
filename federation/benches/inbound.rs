//! Inbound throughput: PDUs of another server verified (format, signatures with keys from the
//! key ring, content hashes) and persisted through the append path (auth, state, group commit),
//! on SQLite. Prints figures; asserts nothing.
//!
//! ```text
//! cargo bench -p unitas-federation --bench inbound
//! ```
//!
//! Figures: verification alone on one core (one by one, and in batches of 50); verification then
//! append, one PDU after the other, each waiting for its commit; transactions of 50 from one
//! server: verification spread over every core, then the 50 appended in order sharing group
//! commits (what `/send` does); and the same from several servers at once, each with one
//! transaction in flight as the spec asks, each in a room of its own.

use std::sync::Arc;
use std::time::Instant;

use ruma::{CanonicalJsonObject, OwnedEventId, UserId};
use serde_json::json;
use unitas_federation::SigningKey;
use unitas_federation::client::{ClientOptions, FederationClient};
use unitas_federation::inbound::{TransactionBody, verify_batch, verify_pdu};
use unitas_federation::key_ring::KeyRing;
use unitas_federation::rooms::build::{Placement, build_pdu};
use unitas_federation::rooms::{EventTemplate, NewRoom, NoOutbound, RoomVersion, Rooms, Signer};
use unitas_storage::{RemoteServerKey, RemoteServerKeys, Store, StoreOptions};

/// The node's allocator (see `node/src/main.rs`), so the figures are the node's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 20_000;
const LOCAL: &str = "a.test";
const REMOTE: &str = "b.test";
/// Servers sending at once in the last figure, each in a room of its own.
const ORIGINS: usize = 4;

fn pdu_object(pdu: &unitas_federation::rooms::Pdu) -> CanonicalJsonObject {
    serde_json::from_str(pdu.federation_json()).expect("json")
}

/// A public room of ours that a user of `remote` joined, and `count` messages of that user,
/// each on the previous one, signed by `remote` (its key stored in the key cache).
async fn origin_room(
    store: &Store,
    rooms: &Rooms,
    key_ring: &KeyRing,
    local_key: &SigningKey,
    remote: &str,
    count: usize,
) -> (ruma::OwnedRoomId, Vec<CanonicalJsonObject>) {
    let remote_key = SigningKey::generate().expect("key");
    store
        .store_remote_server_key(&RemoteServerKey {
            server_name: remote.into(),
            key_id: remote_key.key_id(),
            public_key: remote_key.public_key_base64(),
            valid_until_ts: i64::MAX / 2,
            expired_ts: None,
            fetched_ts: 0,
        })
        .await
        .expect("remote key");
    let version = RoomVersion::parse("12").expect("v12");
    let alice = UserId::parse(format!("@alice:{LOCAL}")).expect("user");
    let bob = UserId::parse(format!("@bob:{remote}")).expect("user");
    let room_id = rooms
        .create_room(
            Signer {
                server_name: LOCAL,
                key: local_key,
            },
            &alice,
            NewRoom {
                version: version.clone(),
                join_rule: "public".into(),
                initial_state: vec![],
            },
        )
        .await
        .expect("room");
    let state = rooms
        .current_state(&room_id)
        .await
        .expect("state")
        .expect("room");
    let slot = |kind: &str, key: &str| state.get(&(kind.to_owned(), key.to_owned())).cloned();
    let place = |prev: Vec<OwnedEventId>, auth: Vec<OwnedEventId>, depth: u64| Placement {
        room_id: Some(&room_id),
        sender: &bob,
        prev_events: prev,
        auth_events: auth,
        depth,
        origin_server_ts: ruma::MilliSecondsSinceUnixEpoch::now(),
        origin: remote,
        key: &remote_key,
    };
    let extremities = rooms
        .forward_extremities(&room_id)
        .await
        .expect("extremities");
    let join_auth: Vec<OwnedEventId> = [
        slot("m.room.power_levels", ""),
        slot("m.room.join_rules", ""),
    ]
    .into_iter()
    .flatten()
    .collect();
    let join = build_pdu(
        &version,
        &EventTemplate::state("m.room.member", bob.as_str(), json!({"membership": "join"})),
        place(extremities, join_auth, 10),
    )
    .expect("join");
    let join_id = join.event_id.clone();
    let join = verify_pdu(key_ring, pdu_object(&join), &version, Some(&room_id))
        .await
        .expect("verify join");
    rooms.append_remote(join).await.expect("append join");
    let auth: Vec<OwnedEventId> = [slot("m.room.power_levels", ""), Some(join_id.clone())]
        .into_iter()
        .flatten()
        .collect();
    let mut prev = join_id;
    let mut objects = Vec::with_capacity(count);
    for i in 0..count {
        let pdu = build_pdu(
            &version,
            &EventTemplate::message(
                "m.room.message",
                json!({"msgtype": "m.text", "body": format!("message {i}")}),
            ),
            place(vec![prev.clone()], auth.clone(), 11 + i as u64),
        )
        .expect("message");
        prev = pdu.event_id.clone();
        objects.push(pdu_object(&pdu));
    }
    (room_id, objects)
}

/// `/send` bodies of 50 PDUs each from `origin`, as they come off the wire.
fn send_bodies(origin: &str, pdus: &[CanonicalJsonObject]) -> Vec<Vec<u8>> {
    pdus.chunks(50)
        .map(|batch| {
            serde_json::to_vec(
                &json!({"origin": origin, "origin_server_ts": 1, "pdus": batch, "edus": []}),
            )
            .expect("body")
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // RUST_LOG (e.g. sqlx=debug) shows what the run does.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/inbound.db", dir.path().display());
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let (rooms, writer) = Rooms::new(store.clone(), [LOCAL.to_owned()], Arc::new(NoOutbound))
        .await
        .expect("rooms");
    tokio::spawn(writer.run(std::future::pending()));
    let local_key = SigningKey::generate().expect("key");
    let client = Arc::new(FederationClient::new(ClientOptions::default()).expect("client"));
    let key_ring = KeyRing::new(store.clone(), client, vec![], vec![]);
    let version = RoomVersion::parse("12").expect("v12");
    // UNITAS_INBOUND_ORIGINS_ONLY=1: only the several-servers figure (for profiling it).
    let origins_only = std::env::var_os("UNITAS_INBOUND_ORIGINS_ONLY").is_some();
    let setup_events = if origins_only { 2 } else { EVENTS * 2 };
    let (room_id, objects) =
        origin_room(&store, &rooms, &key_ring, &local_key, REMOTE, setup_events).await;
    let (first, second) = objects.split_at(setup_events / 2);
    // Without the first half appended, the second half's first event has an unknown parent.
    let second = if std::env::var_os("UNITAS_INBOUND_SEND_ONLY").is_some() || origins_only {
        &objects[..setup_events / 2]
    } else {
        second
    };

    // UNITAS_INBOUND_SEND_ONLY=1: only the /send figure (for profiling it).
    let send_only = std::env::var_os("UNITAS_INBOUND_SEND_ONLY").is_some() || origins_only;
    let mut verify_rate = f64::NAN;
    let mut batch_rate = f64::NAN;
    let mut sequential_rate = f64::NAN;
    if !send_only {
        // 1. Verification alone, one core.
        let started = Instant::now();
        for object in first.iter().take(5_000) {
            verify_pdu(&key_ring, object.clone(), &version, Some(&room_id))
                .await
                .expect("verify");
        }
        verify_rate = 5_000.0 / started.elapsed().as_secs_f64();
        // 1b. The same events in batches of 50 (one ed25519 batch each), one core.
        let started = Instant::now();
        for chunk in first[..5_000].chunks(50) {
            let items = chunk
                .iter()
                .map(|o| (o.clone(), version.clone(), room_id.clone()))
                .collect();
            for outcome in verify_batch(&key_ring, items).await {
                outcome.expect("verify");
            }
        }
        batch_rate = 5_000.0 / started.elapsed().as_secs_f64();

        // 2. Verify then append, one after the other.
        let started = Instant::now();
        for object in first {
            let pdu = verify_pdu(&key_ring, object.clone(), &version, Some(&room_id))
                .await
                .expect("verify");
            rooms.append_remote(pdu).await.expect("append");
        }
        sequential_rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    }

    // 3. The /send path: transactions of 50 (verification on every core, gaps, one batch).
    let key_ring_for_setup = KeyRing::new(
        store.clone(),
        Arc::new(FederationClient::new(ClientOptions::default()).expect("client")),
        vec![],
        vec![],
    );
    let key_ring = Arc::new(key_ring);
    let client = Arc::new(FederationClient::new(ClientOptions::default()).expect("client"));
    let inbound = unitas_federation::inbound::Inbound::new(rooms.clone(), key_ring, client);
    let local = unitas_federation::inbound::LocalServer {
        name: LOCAL.into(),
        key: Arc::new(SigningKey::generate().expect("key")),
    };
    let origin = ruma::ServerName::parse(REMOTE).expect("server name");
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let bodies = send_bodies(REMOTE, second);
    let started = Instant::now();
    for (n, body) in bodies.iter().enumerate() {
        let body = TransactionBody::parse(body).expect("body");
        let answer = inbound
            .handle_transaction(&local, &origin, &format!("t{n}"), &body)
            .await
            .expect("transaction");
        assert!(answer.to_string().find("error").is_none(), "{answer}");
    }
    let parallel_rate = second.len() as f64 / started.elapsed().as_secs_f64();

    // 4. Several servers at once, each with one transaction in flight (the spec's rule), each
    //    in a room of its own: what a node in a network of peers takes in.
    let inbound = Arc::new(inbound);
    let per_origin = EVENTS / ORIGINS;
    let mut senders = Vec::new();
    for k in 0..ORIGINS {
        let remote = format!("c{k}.test");
        let (_, objects) = origin_room(
            &store,
            &rooms,
            &key_ring_for_setup,
            &local_key,
            &remote,
            per_origin,
        )
        .await;
        let bodies = send_bodies(&remote, &objects);
        senders.push((remote, bodies));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (remote, bodies) in senders {
        let inbound = inbound.clone();
        let local = local.clone();
        tasks.spawn(async move {
            let origin = ruma::ServerName::parse(&remote).expect("server name");
            for (n, body) in bodies.iter().enumerate() {
                let body = TransactionBody::parse(body).expect("body");
                let answer = inbound
                    .handle_transaction(&local, &origin, &format!("t{n}"), &body)
                    .await
                    .expect("transaction");
                assert!(answer.to_string().find("error").is_none(), "{answer}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("sender task");
    }
    let origins_rate = (per_origin * ORIGINS) as f64 / started.elapsed().as_secs_f64();

    println!("inbound PDUs of another server, SQLite, {EVENTS} messages each, {cores} cores");
    println!("  verify only (1 core)                 {verify_rate:>9.0} PDUs/s");
    println!("  verify in batches of 50 (1 core)     {batch_rate:>9.0} PDUs/s");
    println!("  verify + append, one by one          {sequential_rate:>9.0} PDUs/s");
    println!("  transactions of 50 (all cores)       {parallel_rate:>9.0} PDUs/s");
    println!("  {ORIGINS} servers at once, 50 per txn       {origins_rate:>9.0} PDUs/s");
}

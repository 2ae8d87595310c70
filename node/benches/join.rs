//! Joining a big room over federation: two nodes in this process on 127.0.0.1; the first holds a
//! public room whose state has N events (N - 4 member joins plus the room's own), a user of the
//! second joins it through the client API (make_join, send_join, every returned event's
//! signature verified, auth-checked and stored, the join appended). Prints the time; asserts
//! nothing.
//!
//! ```text
//! cargo bench -p unitas --bench join            # N = 30,000
//! UNITAS_JOIN_STATE=5000 cargo bench -p unitas --bench join
//! ```

use std::time::Instant;

use serde_json::{Value, json};
use unitas::{Config, Node};
use unitas_federation::rooms::{EventTemplate, Signer};

async fn start(dir: &std::path::Path) -> Node {
    let mut config = Config::default();
    let client = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let federation = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    config.server.data_dir = dir.to_owned();
    config.server.server_name = format!(
        "127.0.0.1:{}",
        federation.local_addr().expect("addr").port()
    );
    config.registration.enabled = true;
    config.rate_limits.enabled = false;
    config.federation.verify_tls = false;
    config.federation.ip_range_allowlist = vec!["127.0.0.0/8".parse().expect("net")];
    Node::start_on(config, client, federation)
        .await
        .expect("node")
}

async fn register(node: &Node, name: &str) -> (String, String) {
    let reply: Value = reqwest::Client::new()
        .post(format!("http://{}/_matrix/client/v3/register", node.client_addr))
        .json(&json!({"username": name, "password": "correct horse", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    (
        reply["user_id"].as_str().expect("user").to_owned(),
        reply["access_token"].as_str().expect("token").to_owned(),
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // RUST_LOG=unitas=debug,unitas_federation=debug shows where the time goes.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let state_events: usize = std::env::var("UNITAS_JOIN_STATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = start(dir_a.path()).await;
    let b = start(dir_b.path()).await;
    let (_, alice_token) = register(&a, "alice").await;
    let created: Value = reqwest::Client::new()
        .post(format!(
            "http://{}/_matrix/client/v3/createRoom",
            a.client_addr
        ))
        .bearer_auth(&alice_token)
        .json(&json!({"preset": "public_chat"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let room =
        ruma::OwnedRoomId::try_from(created["room_id"].as_str().expect("room")).expect("room id");

    // The big state: members of A joined straight through the append path, 64 at a time.
    let started = Instant::now();
    let territory = a.state.territories.all()[0].clone();
    let server = territory.server_name().to_owned();
    let members = state_events.saturating_sub(5);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let (rooms, room, territory, server) = (
            a.state.rooms.clone(),
            room.clone(),
            territory.clone(),
            server.clone(),
        );
        tasks.spawn(async move {
            for i in (t..members).step_by(64) {
                let user = ruma::OwnedUserId::try_from(format!("@m{i}:{server}")).expect("user");
                let join = EventTemplate::state(
                    "m.room.member",
                    user.as_str(),
                    json!({"membership": "join"}),
                );
                let signer = Signer {
                    server_name: territory.server_name(),
                    key: &territory.key,
                };
                rooms
                    .send_local(&room, &user, &join, signer)
                    .await
                    .expect("join");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let state = a
        .state
        .rooms
        .current_state(&room)
        .await
        .expect("state")
        .expect("room");
    let setup = started.elapsed();

    let (_, bob_token) = register(&b, "bob").await;
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/_matrix/client/v3/join/{}?via={}",
            b.client_addr,
            unitas_federation::inbound::percent(room.as_str()),
            unitas_federation::inbound::percent(&server)
        ))
        .bearer_auth(&bob_token)
        .json(&json!({}))
        .send()
        .await
        .expect("join");
    let status = response.status();
    let elapsed = started.elapsed();
    let body = response.text().await.unwrap_or_default();
    println!(
        "join over federation of a room with {} state events (setup {:.1} s): {} in {:.2} s{}",
        state.len(),
        setup.as_secs_f64(),
        status,
        elapsed.as_secs_f64(),
        if status.is_success() {
            String::new()
        } else {
            format!(": {body}")
        }
    );
    a.shutdown().await;
    b.shutdown().await;
}

//! Federation with a real Synapse from PyPI on 127.0.0.1: a room made on either side joined from
//! the other, messages both ways, both servers agreeing on members and on the messages in order.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use unitas::Node;
use unitas_conformance_tests::{python, script};

/// A Synapse child process, killed when dropped.
struct Synapse {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Synapse {
    fn name(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Synapse's warnings and errors, for failure messages.
    fn complaints(&self) -> String {
        let log = std::fs::read_to_string(self._dir.path().join("synapse.log")).unwrap_or_default();
        log.lines()
            .filter(|l| {
                l.contains(" - WARNING - ") || l.contains(" - ERROR - ") || l.contains("Error")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn client(&self) -> String {
        format!("https://127.0.0.1:{}/_matrix/client/v3", self.port)
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Starts Synapse and waits until its federation API answers (it takes a few seconds to set up
/// its database; the wait polls its version endpoint).
async fn start_synapse(python: std::path::PathBuf) -> Synapse {
    let dir = tempfile::tempdir().unwrap();
    // Synapse binds its own socket: take a free port from the OS and hand it over.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.path().join("synapse.log")).unwrap();
    let child = std::process::Command::new(python)
        .arg(script("synapse_peer.py"))
        .arg(dir.path())
        .arg(port.to_string())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let synapse = Synapse {
        child,
        port,
        _dir: dir,
    };
    let url = format!("https://127.0.0.1:{port}/_matrix/federation/v1/version");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(response) = http().get(&url).send().await
            && response.status().is_success()
        {
            return synapse;
        }
        assert!(
            Instant::now() < deadline,
            "Synapse did not start: see {:?}",
            synapse._dir.path().join("synapse.log")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start_unitas(dir: &std::path::Path) -> Node {
    let mut config = crate::foundation::config(dir);
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let federation = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.server.server_name = format!("127.0.0.1:{}", federation.local_addr().unwrap().port());
    config.registration.enabled = true;
    config.rate_limits.enabled = false;
    config.federation.verify_tls = false;
    config.federation.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    Node::start_on(config, client, federation).await.unwrap()
}

async fn request(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut builder = http().request(method, &url).json(&body);
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    let response = builder.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Registers `name` at a client API base URL (Synapse asks for the dummy stage in a session).
async fn register(base: &str, name: &str) -> (String, String) {
    let url = format!("{base}/register");
    let mut body = json!({"username": name, "password": "correct horse battery", "auth": {"type": "m.login.dummy"}});
    let (mut status, mut reply) =
        request(reqwest::Method::POST, url.clone(), None, body.clone()).await;
    if status == 401 {
        body["auth"]["session"] = reply["session"].clone();
        (status, reply) = request(reqwest::Method::POST, url, None, body).await;
    }
    assert_eq!(status, 200, "{reply}");
    (
        reply["user_id"].as_str().unwrap().to_owned(),
        reply["access_token"].as_str().unwrap().to_owned(),
    )
}

fn enc(s: &str) -> String {
    unitas_federation::inbound::percent(s)
}

/// The room's messages, oldest first, as (event ID, body).
async fn messages(base: &str, token: &str, room: &str) -> Vec<(String, String)> {
    let (status, page) = request(
        reqwest::Method::GET,
        format!("{base}/rooms/{}/messages?dir=b&limit=200", enc(room)),
        Some(token),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let mut out: Vec<(String, String)> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().to_owned(),
                e["content"]["body"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    out.reverse();
    out
}

/// Waits, through `/sync` long-polls, until `count` messages are readable in the room.
async fn await_messages(
    base: &str,
    token: &str,
    room: &str,
    count: usize,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut since: Option<String> = None;
    loop {
        let seen = messages(base, token, room).await;
        if seen.len() >= count {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages arrived: {seen:?}",
            seen.len()
        );
        let mut url = format!(
            "{base}/sync?timeout=5000&filter={}",
            enc(r#"{"room":{"timeline":{"limit":1}}}"#)
        );
        if let Some(since) = &since {
            url.push_str(&format!("&since={}", enc(since)));
        }
        let (status, body) = request(reqwest::Method::GET, url, Some(token), Value::Null).await;
        assert_eq!(status, 200, "{body}");
        since = body["next_batch"].as_str().map(str::to_owned);
    }
}

/// Waits, through `/sync` long-polls, until the room is in the user's `leave` section (left,
/// kicked or banned).
async fn await_left(base: &str, token: &str, room: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut since: Option<String> = None;
    loop {
        let mut url = format!("{base}/sync?timeout=5000");
        if let Some(since) = &since {
            url.push_str(&format!("&since={}", enc(since)));
        }
        let (status, body) = request(reqwest::Method::GET, url, Some(token), Value::Null).await;
        assert_eq!(status, 200, "{body}");
        if body["rooms"]["leave"].get(room).is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "{room} never showed up as left");
        since = body["next_batch"].as_str().map(str::to_owned);
    }
}

/// A user's membership in the room's current state on our node.
async fn our_membership(node: &Node, room: &str, user: &str) -> Option<String> {
    let room = ruma::OwnedRoomId::try_from(room).unwrap();
    let id = node
        .state
        .rooms
        .current_state_event_id(&room, "m.room.member", user)
        .await
        .unwrap()?;
    let pdu = node.state.rooms.get_pdu(&id).await.unwrap()?;
    let content: Value = serde_json::from_str(pdu.content.get()).unwrap();
    content["membership"].as_str().map(str::to_owned)
}

/// Waits, through `/sync` long-polls, until a state event of the room has `field` = `value`.
async fn await_state(base: &str, token: &str, room: &str, kind: &str, field: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut since: Option<String> = None;
    loop {
        let (status, content) = request(
            reqwest::Method::GET,
            format!("{base}/rooms/{}/state/{kind}/", enc(room)),
            Some(token),
            Value::Null,
        )
        .await;
        if status == 200 && content[field] == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} never became {value}: {content}"
        );
        let mut url = format!(
            "{base}/sync?timeout=5000&filter={}",
            enc(r#"{"room":{"timeline":{"limit":1}}}"#)
        );
        if let Some(since) = &since {
            url.push_str(&format!("&since={}", enc(since)));
        }
        let (status, body) = request(reqwest::Method::GET, url, Some(token), Value::Null).await;
        assert_eq!(status, 200, "{body}");
        since = body["next_batch"].as_str().map(str::to_owned);
    }
}

async fn joined(base: &str, token: &str, room: &str) -> Vec<String> {
    let (status, body) = request(
        reqwest::Method::GET,
        format!("{base}/rooms/{}/joined_members", enc(room)),
        Some(token),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut users: Vec<String> = body["joined"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    users.sort();
    users
}

async fn send(base: &str, token: &str, room: &str, txn: &str, text: &str) {
    let (status, body) = request(
        reqwest::Method::PUT,
        format!("{base}/rooms/{}/send/m.room.message/{txn}", enc(room)),
        Some(token),
        json!({"msgtype": "m.text", "body": text}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_shared_with_synapse_both_ways() {
    let Some(python) = python() else { return };
    let synapse = start_synapse(python).await;
    let dir = tempfile::tempdir().unwrap();
    let node = start_unitas(dir.path()).await;
    let ours = format!("http://{}/_matrix/client/v3", node.client_addr);
    let theirs = synapse.client();
    let our_name = node.state.territories.all()[0].server_name().to_owned();
    let (alice, alice_token) = register(&ours, "alice").await;
    let (sam, sam_token) = register(&theirs, "sam").await;
    let mut both = vec![alice.clone(), sam.clone()];
    both.sort();

    // 1. A room made here, joined by the Synapse user.
    let (status, created) = request(
        reqwest::Method::POST,
        format!("{ours}/createRoom"),
        Some(&alice_token),
        json!({"preset": "public_chat", "name": "Made on Unitas"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (status, reply) = request(
        reqwest::Method::POST,
        format!(
            "{theirs}/join/{}?server_name={}",
            enc(&room),
            enc(&our_name)
        ),
        Some(&sam_token),
        json!({}),
    )
    .await;
    assert_eq!(
        status,
        200,
        "Synapse could not join our room: {reply}\n{}",
        synapse.complaints()
    );
    assert_eq!(joined(&ours, &alice_token, &room).await, both);
    for i in 0..10 {
        send(
            &ours,
            &alice_token,
            &room,
            &format!("u{i}"),
            &format!("unitas {i}"),
        )
        .await;
    }
    node.state.sender.flush_once().await.unwrap();
    // Turn by turn: concurrent sends would fork the DAG, and servers order a fork's two sides
    // by their own arrival (equal depths), so only a conversation has one order everywhere.
    await_messages(&theirs, &sam_token, &room, 10).await;
    for i in 0..10 {
        send(
            &theirs,
            &sam_token,
            &room,
            &format!("s{i}"),
            &format!("synapse {i}"),
        )
        .await;
    }
    let on_us = await_messages(&ours, &alice_token, &room, 20).await;
    let on_them = await_messages(&theirs, &sam_token, &room, 20).await;
    assert_eq!(
        on_us,
        on_them,
        "the two servers disagree on the messages\n{}",
        synapse.complaints()
    );
    assert_eq!(joined(&theirs, &sam_token, &room).await, both);

    // A state change made here reaches Synapse.
    let (status, body) = request(
        reqwest::Method::PUT,
        format!("{ours}/rooms/{}/state/m.room.name/", enc(&room)),
        Some(&alice_token),
        json!({"name": "Renamed on Unitas"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    node.state.sender.flush_once().await.unwrap();
    await_state(
        &theirs,
        &sam_token,
        &room,
        "m.room.name",
        "name",
        "Renamed on Unitas",
    )
    .await;

    // Our room admin kicks the Synapse user: Synapse sees its user leave.
    let (status, body) = request(
        reqwest::Method::POST,
        format!("{ours}/rooms/{}/kick", enc(&room)),
        Some(&alice_token),
        json!({"user_id": sam, "reason": "test"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    node.state.sender.flush_once().await.unwrap();
    await_left(&theirs, &sam_token, &room).await;
    assert_eq!(
        our_membership(&node, &room, &sam).await.as_deref(),
        Some("leave")
    );

    // 2. A room made on Synapse, joined by our user.
    let (status, created) = request(
        reqwest::Method::POST,
        format!("{theirs}/createRoom"),
        Some(&sam_token),
        json!({"preset": "public_chat", "name": "Made on Synapse"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    // History from before our user joins: we fetch it from Synapse with /backfill when she
    // pages back.
    for i in 0..5 {
        send(
            &theirs,
            &sam_token,
            &room,
            &format!("e{i}"),
            &format!("early {i}"),
        )
        .await;
    }
    let (status, reply) = request(
        reqwest::Method::POST,
        format!("{ours}/join/{}?via={}", enc(&room), enc(&synapse.name())),
        Some(&alice_token),
        json!({}),
    )
    .await;
    assert_eq!(
        status,
        200,
        "we could not join Synapse's room: {reply}\n{}",
        synapse.complaints()
    );
    assert_eq!(joined(&ours, &alice_token, &room).await, both);
    let early: Vec<String> = messages(&ours, &alice_token, &room)
        .await
        .into_iter()
        .map(|(_, body)| body)
        .collect();
    assert_eq!(
        early,
        (0..5).map(|i| format!("early {i}")).collect::<Vec<_>>(),
        "history before the join, backfilled from Synapse\n{}",
        synapse.complaints()
    );
    for i in 0..10 {
        send(
            &theirs,
            &sam_token,
            &room,
            &format!("t{i}"),
            &format!("synapse {i}"),
        )
        .await;
    }
    await_messages(&ours, &alice_token, &room, 15).await;
    for i in 0..10 {
        send(
            &ours,
            &alice_token,
            &room,
            &format!("v{i}"),
            &format!("unitas {i}"),
        )
        .await;
    }
    node.state.sender.flush_once().await.unwrap();
    let on_us = await_messages(&ours, &alice_token, &room, 25).await;
    let on_them = await_messages(&theirs, &sam_token, &room, 25).await;
    assert_eq!(
        on_us,
        on_them,
        "the two servers disagree on the messages\n{}",
        synapse.complaints()
    );
    assert_eq!(joined(&theirs, &sam_token, &room).await, both);

    // A state change made on Synapse reaches us.
    let (status, body) = request(
        reqwest::Method::PUT,
        format!("{theirs}/rooms/{}/state/m.room.topic/", enc(&room)),
        Some(&sam_token),
        json!({"topic": "Set on Synapse"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    await_state(
        &ours,
        &alice_token,
        &room,
        "m.room.topic",
        "topic",
        "Set on Synapse",
    )
    .await;

    // Synapse's room admin bans our user: the ban reaches us.
    let (status, body) = request(
        reqwest::Method::POST,
        format!("{theirs}/rooms/{}/ban", enc(&room)),
        Some(&sam_token),
        json!({"user_id": alice, "reason": "test"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    await_left(&ours, &alice_token, &room).await;
    assert_eq!(
        our_membership(&node, &room, &alice).await.as_deref(),
        Some("ban")
    );
    assert_eq!(joined(&theirs, &sam_token, &room).await, vec![sam.clone()]);

    node.shutdown().await;
}

/// Waits, through `/sync` long-polls, until the room is in the user's `invite` section.
async fn await_invite(base: &str, token: &str, room: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut since: Option<String> = None;
    loop {
        let mut url = format!("{base}/sync?timeout=5000");
        if let Some(since) = &since {
            url.push_str(&format!("&since={}", enc(since)));
        }
        let (status, body) = request(reqwest::Method::GET, url, Some(token), Value::Null).await;
        assert_eq!(status, 200, "{body}");
        if body["rooms"]["invite"].get(room).is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "no invite to {room}");
        since = body["next_batch"].as_str().map(str::to_owned);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_cross_to_synapse_and_back() {
    let Some(python) = python() else { return };
    let synapse = start_synapse(python).await;
    let dir = tempfile::tempdir().unwrap();
    let node = start_unitas(dir.path()).await;
    let ours = format!("http://{}/_matrix/client/v3", node.client_addr);
    let theirs = synapse.client();
    let (alice, alice_token) = register(&ours, "alice").await;
    let (sam, sam_token) = register(&theirs, "sam").await;
    let mut both = vec![alice.clone(), sam.clone()];
    both.sort();

    // Our private room: Synapse countersigns our invite, its user accepts.
    let (status, created) = request(
        reqwest::Method::POST,
        format!("{ours}/createRoom"),
        Some(&alice_token),
        json!({"preset": "private_chat"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (status, body) = request(
        reqwest::Method::POST,
        format!("{ours}/rooms/{}/invite", enc(&room)),
        Some(&alice_token),
        json!({"user_id": sam}),
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.complaints());
    await_invite(&theirs, &sam_token, &room).await;
    let (status, body) = request(
        reqwest::Method::POST,
        format!("{theirs}/rooms/{}/join", enc(&room)),
        Some(&sam_token),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.complaints());
    assert_eq!(joined(&ours, &alice_token, &room).await, both);

    // Synapse's private room: we countersign its invite, our user accepts.
    let (status, created) = request(
        reqwest::Method::POST,
        format!("{theirs}/createRoom"),
        Some(&sam_token),
        json!({"preset": "private_chat"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (status, body) = request(
        reqwest::Method::POST,
        format!("{theirs}/rooms/{}/invite", enc(&room)),
        Some(&sam_token),
        json!({"user_id": alice}),
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.complaints());
    await_invite(&ours, &alice_token, &room).await;
    let (status, body) = request(
        reqwest::Method::POST,
        format!("{ours}/rooms/{}/join", enc(&room)),
        Some(&alice_token),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", synapse.complaints());
    assert_eq!(joined(&theirs, &sam_token, &room).await, both);

    // Media both ways: each user downloads the other server's upload through their own server
    // (authenticated media over federation, multipart answers).
    let ours_root = format!("http://{}", node.client_addr);
    let theirs_root = format!("https://{}", synapse.name());
    let our_file = b"a file uploaded to Unitas".to_vec();
    let their_file = b"a file uploaded to Synapse".to_vec();
    let our_uri = upload(&ours_root, &alice_token, "ours.txt", our_file.clone()).await;
    let their_uri = upload(&theirs_root, &sam_token, "theirs.txt", their_file.clone()).await;
    let (status, body) = download(&theirs_root, &sam_token, &our_uri).await;
    assert_eq!(
        (status, body == our_file),
        (200, true),
        "{}\n{}",
        String::from_utf8_lossy(&body),
        synapse.complaints()
    );
    let (status, body) = download(&ours_root, &alice_token, &their_uri).await;
    assert_eq!(
        (status, body == their_file),
        (200, true),
        "{}\n{}",
        String::from_utf8_lossy(&body),
        synapse.complaints()
    );

    // Encryption keys both ways. Sam's client learns of Alice's new keys from Synapse (our
    // m.device_list_update EDU, seen as device_lists.changed in his sync), reads them and claims
    // a one-time key through Synapse; Alice does the same with Sam's keys through us.
    let (_, sam_sync) = request(
        reqwest::Method::GET,
        format!("{theirs}/sync?timeout=0"),
        Some(&sam_token),
        Value::Null,
    )
    .await;
    let sam_since = sam_sync["next_batch"].as_str().unwrap().to_owned();
    let alice_device = upload_keys(&ours, &alice_token, &alice).await;
    let sam_device = upload_keys(&theirs, &sam_token, &sam).await;
    node.state.sender.flush_once().await.unwrap();
    await_device_change(&theirs, &sam_token, &sam_since, &alice).await;
    for (base, token, user, device) in [
        (&theirs, &sam_token, &alice, &alice_device),
        (&ours, &alice_token, &sam, &sam_device),
    ] {
        let (status, body) = request(
            reqwest::Method::POST,
            format!("{base}/keys/query"),
            Some(token),
            json!({"device_keys": {user.as_str(): []}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["device_keys"][user.as_str()][device.as_str()]["keys"]
                [format!("ed25519:{device}")],
            format!("ed-{device}"),
            "{body}\n{}",
            synapse.complaints()
        );
        let (status, body) = request(
            reqwest::Method::POST,
            format!("{base}/keys/claim"),
            Some(token),
            json!({"one_time_keys": {user.as_str(): {device.as_str(): "signed_curve25519"}}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["one_time_keys"][user.as_str()][device.as_str()]["signed_curve25519:AAAAAQ"]["key"],
            format!("otk-{device}"),
            "{body}\n{}",
            synapse.complaints()
        );
    }

    node.shutdown().await;
}

/// Uploads device keys and one one-time key for the token's device: the device ID.
async fn upload_keys(base: &str, token: &str, user: &str) -> String {
    let (_, whoami) = request(
        reqwest::Method::GET,
        format!("{base}/account/whoami"),
        Some(token),
        Value::Null,
    )
    .await;
    let device = whoami["device_id"].as_str().unwrap().to_owned();
    let (status, body) = request(
        reqwest::Method::POST,
        format!("{base}/keys/upload"),
        Some(token),
        json!({
            "device_keys": {
                "user_id": user, "device_id": device,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {format!("curve25519:{device}"): format!("cu-{device}"),
                         format!("ed25519:{device}"): format!("ed-{device}")},
                "signatures": {user: {format!("ed25519:{device}"): "sig"}},
            },
            "one_time_keys": {"signed_curve25519:AAAAAQ": {
                "key": format!("otk-{device}"),
                "signatures": {user: {format!("ed25519:{device}"): "sig"}},
            }},
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    device
}

/// Waits, through `/sync` long-polls from `since`, until `user` is in `device_lists.changed`.
async fn await_device_change(base: &str, token: &str, since: &str, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut since = since.to_owned();
    loop {
        let (status, body) = request(
            reqwest::Method::GET,
            format!("{base}/sync?timeout=5000&since={}", enc(&since)),
            Some(token),
            Value::Null,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let changed = body["device_lists"]["changed"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if changed.iter().any(|u| u == user) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no device list change for {user}"
        );
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
}

/// Uploads `bytes` as `name` (text/plain) to a server's media API: the `mxc://` URI.
async fn upload(root: &str, token: &str, name: &str, bytes: Vec<u8>) -> String {
    let response = http()
        .post(format!("{root}/_matrix/media/v3/upload?filename={name}"))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let reply: Value = response.json().await.unwrap();
    reply["content_uri"].as_str().unwrap().to_owned()
}

/// Downloads an `mxc://` URI through a server's authenticated media API: status and body.
async fn download(root: &str, token: &str, uri: &str) -> (u16, Vec<u8>) {
    let response = http()
        .get(format!(
            "{root}/_matrix/client/v1/media/download/{}",
            uri.trim_start_matches("mxc://")
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

//! Federation between in-process nodes on 127.0.0.1: keys fetched over HTTPS from the origin or
//! through a notary, signed requests verified, unsigned or misdirected ones refused.

use ruma::ServerName;
use serde_json::{Value, json};
use unitas::{Config, Node};
use unitas_federation::SigningKey;
use unitas_storage::{ClientExtras, RemoteServerKeys};

use crate::support::{http, test_config};

/// A node named `127.0.0.1:<its federation port>` that may call loopback peers with
/// self-signed certificates.
struct Peer {
    node: Node,
    config: Config,
    _dir: tempfile::TempDir,
}

impl Peer {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), None);
        let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let federation = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        config.server.listen = client.local_addr().unwrap();
        config.server.federation_listen = federation.local_addr().unwrap();
        config.server.server_name =
            format!("127.0.0.1:{}", federation.local_addr().unwrap().port());
        config.registration.enabled = true;
        config.rate_limits.enabled = false;
        config.federation.verify_tls = false;
        config.federation.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
        adjust(&mut config);
        let node = Node::start_on(config.clone(), client, federation)
            .await
            .unwrap();
        Peer {
            node,
            config,
            _dir: dir,
        }
    }

    /// Stops the node and starts it again on the same data and ports (its server name has the
    /// port in it).
    async fn restart(self) -> Peer {
        let Peer { node, config, _dir } = self;
        node.shutdown().await;
        Self::resume(config, _dir).await
    }

    /// Starts a stopped node again from its config and data.
    async fn resume(config: Config, dir: tempfile::TempDir) -> Peer {
        let client = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .unwrap();
        let federation = tokio::net::TcpListener::bind(config.server.federation_listen)
            .await
            .unwrap();
        let node = Node::start_on(config.clone(), client, federation)
            .await
            .unwrap();
        Peer {
            node,
            config,
            _dir: dir,
        }
    }

    fn name(&self) -> String {
        self.node.state.territories.all()[0]
            .server_name()
            .to_owned()
    }

    fn key(&self) -> &SigningKey {
        &self.node.state.territories.all()[0].key
    }

    async fn stop(self) {
        self.node.shutdown().await;
    }

    /// A signed request from this node to `to`.
    async fn ask(
        &self,
        to: &Peer,
        path: &str,
    ) -> Result<Value, unitas_federation::client::FederationError> {
        self.call(to, http::Method::GET, path, None).await
    }

    /// A signed request of this peer to `to`.
    async fn call(
        &self,
        to: &Peer,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, unitas_federation::client::FederationError> {
        let origin = ServerName::parse(self.name()).unwrap();
        let destination = ServerName::parse(to.name()).unwrap();
        self.node
            .state
            .federation
            .request(&origin, self.key(), &destination, method, path, body)
            .await
    }
}

/// Alice of `a` makes a public room that Bob of `b` joins over federation: Alice's token,
/// Bob's user ID and token, the room ID.
async fn shared_room(a: &Peer, b: &Peer) -> (String, String, String, String) {
    let (_, alice_token) = account(a, "alice").await;
    let (bob, bob_token) = account(b, "bob").await;
    let (_, created) = call(
        a,
        &alice_token,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "public_chat"}),
    )
    .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (status, reply) = call(
        b,
        &bob_token,
        reqwest::Method::POST,
        &format!("/join/{}?via={}", urlencode(&room), urlencode(&a.name())),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    (alice_token, bob, bob_token, room)
}

/// Registers `name` on `peer`: (user ID, access token).
async fn account(peer: &Peer, name: &str) -> (String, String) {
    let reply: Value = http()
        .post(format!("http://{}/_matrix/client/v3/register", peer.node.client_addr))
        .json(&json!({"username": name, "password": "correct horse", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        reply["user_id"].as_str().unwrap().to_owned(),
        reply["access_token"].as_str().unwrap().to_owned(),
    )
}

/// A client API call as `token`: (status, body).
async fn call(
    peer: &Peer,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let response = http()
        .request(
            method,
            format!("http://{}/_matrix/client/v3{path}", peer.node.client_addr),
        )
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The bodies of the room's messages as `token` sees them through `/messages`, oldest first,
/// with their event IDs.
async fn history(peer: &Peer, token: &str, room: &str) -> Vec<(String, String)> {
    let (status, page) = call(
        peer,
        token,
        reqwest::Method::GET,
        &format!("/rooms/{}/messages?dir=b&limit=100", urlencode(room)),
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
                e["content"]["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.reverse();
    out
}

fn urlencode(s: &str) -> String {
    unitas_federation::inbound::percent(s)
}

async fn joined(peer: &Peer, token: &str, room: &str) -> Vec<String> {
    let (status, body) = call(
        peer,
        token,
        reqwest::Method::GET,
        &format!("/rooms/{}/joined_members", urlencode(room)),
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

#[tokio::test]
async fn a_user_of_another_node_joins_and_both_chat() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let (alice, alice_token) = account(&a, "alice").await;
    let (bob, bob_token) = account(&b, "bob").await;
    let (status, created) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "public_chat", "name": "Across", "room_alias_name": "across",
            "visibility": "public"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();

    // B finds it in A's directory and by its alias (federation queries).
    let listed = b
        .ask(&a, "/_matrix/federation/v1/publicRooms")
        .await
        .unwrap();
    assert_eq!(listed["chunk"][0]["room_id"], room.as_str(), "{listed}");
    let alias = format!("#across:{}", a.name());
    let (status, found) = call(
        &b,
        &bob_token,
        reqwest::Method::GET,
        &format!("/directory/room/{}", urlencode(&alias)),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["room_id"], room.as_str());
    assert_eq!(found["servers"], json!([a.name()]));

    // Unknown on B: B joins by the alias through A (make_join, send_join, the state verified
    // and stored).
    let (status, reply) = call(
        &b,
        &bob_token,
        reqwest::Method::POST,
        &format!("/join/{}", urlencode(&alias)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    assert_eq!(joined(&a, &alice_token, &room).await, both);
    assert_eq!(joined(&b, &bob_token, &room).await, both);

    // Messages both ways, through each node's durable queue.
    for i in 0..5 {
        let (status, _) = call(
            &a,
            &alice_token,
            reqwest::Method::PUT,
            &format!("/rooms/{}/send/m.room.message/a{i}", urlencode(&room)),
            json!({"msgtype": "m.text", "body": format!("from A {i}")}),
        )
        .await;
        assert_eq!(status, 200);
    }
    a.node.state.sender.flush_once().await.unwrap();
    for i in 0..5 {
        let (status, _) = call(
            &b,
            &bob_token,
            reqwest::Method::PUT,
            &format!("/rooms/{}/send/m.room.message/b{i}", urlencode(&room)),
            json!({"msgtype": "m.text", "body": format!("from B {i}")}),
        )
        .await;
        assert_eq!(status, 200);
    }
    b.node.state.sender.flush_once().await.unwrap();

    let on_a = history(&a, &alice_token, &room).await;
    let on_b = history(&b, &bob_token, &room).await;
    assert_eq!(on_a.len(), 10, "{on_a:?}");
    assert_eq!(on_a, on_b);
    let bodies: Vec<&str> = on_a.iter().map(|(_, body)| body.as_str()).collect();
    assert_eq!(bodies[0], "from A 0");
    assert_eq!(bodies[9], "from B 4");

    // Typing and read receipts travel as EDUs.
    let (status, _) = call(
        &b,
        &bob_token,
        reqwest::Method::PUT,
        &format!("/rooms/{}/typing/{}", urlencode(&room), urlencode(&bob)),
        json!({"typing": true, "timeout": 30000}),
    )
    .await;
    assert_eq!(status, 200);
    b.node.state.sender.flush_once().await.unwrap();
    let last = on_a.last().unwrap().0.clone();
    let (status, _) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        &format!(
            "/rooms/{}/receipt/m.read/{}",
            urlencode(&room),
            urlencode(&last)
        ),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    a.node.state.sender.flush_once().await.unwrap();
    let ephemeral = |body: &Value| -> Vec<Value> {
        body["rooms"]["join"][room.as_str()]["ephemeral"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let (_, synced) = call(&a, &alice_token, reqwest::Method::GET, "/sync", Value::Null).await;
    let typing = ephemeral(&synced);
    assert!(
        typing.iter().any(|e| e["type"] == "m.typing"
            && e["content"]["user_ids"]
                .as_array()
                .unwrap()
                .contains(&json!(bob))),
        "{typing:?}"
    );
    let (_, synced) = call(&b, &bob_token, reqwest::Method::GET, "/sync", Value::Null).await;
    let receipts = ephemeral(&synced);
    assert!(
        receipts.iter().any(|e| e["type"] == "m.receipt"
            && e["content"][last.as_str()]["m.read"][alice.as_str()].is_object()),
        "{receipts:?}"
    );

    // Nothing is left queued on either side.
    use unitas_storage::FederationQueue;
    assert!(
        a.node
            .state
            .store
            .list_outbound_destinations()
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.node
            .state
            .store
            .list_outbound_destinations()
            .await
            .unwrap()
            .is_empty()
    );

    a.stop().await;
    b.stop().await;
}

async fn register(peer: &Peer, name: &str, displayname: &str) -> String {
    let client = http();
    let base = format!("http://{}/_matrix/client/v3", peer.node.client_addr);
    let reply: Value = client
        .post(format!("{base}/register"))
        .json(&json!({"username": name, "password": "correct horse", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = reply["user_id"].as_str().unwrap().to_owned();
    let token = reply["access_token"].as_str().unwrap();
    let status = client
        .put(format!("{base}/profile/{user}/displayname"))
        .bearer_auth(token)
        .json(&json!({"displayname": displayname}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
    user
}

#[tokio::test]
async fn signed_requests_are_verified_with_keys_fetched_from_the_origin() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let alice = register(&b, "alice", "Alice of B").await;
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        alice.replace(':', "%3A").replace('@', "%40")
    );

    // A asks B; B fetches A's key from A's key server (HTTPS) to check the signature.
    let profile = a.ask(&b, &path).await.unwrap();
    assert_eq!(profile["displayname"], "Alice of B");
    let cached = b
        .node
        .state
        .store
        .get_remote_server_keys(&a.name())
        .await
        .unwrap();
    assert_eq!(cached.len(), 1);
    assert_eq!(cached[0].key_id, a.key().key_id());
    assert_eq!(cached[0].public_key, a.key().public_key_base64());

    // Unsigned: 401 M_UNAUTHORIZED, the handler does not run.
    let url = format!("https://{}{path}", b.node.federation_addr);
    let response = http().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    // Signed for another destination, or with a key A does not publish: 401.
    let origin = ServerName::parse(a.name()).unwrap();
    let elsewhere = ServerName::parse("elsewhere.example").unwrap();
    let misdirected = unitas_federation::request_auth::sign_request(
        a.key(),
        &origin,
        &elsewhere,
        &http::Method::GET,
        &path,
        None,
    )
    .unwrap();
    let stranger = SigningKey::generate().unwrap();
    let forged = unitas_federation::request_auth::sign_request(
        &stranger,
        &origin,
        &ServerName::parse(b.name()).unwrap(),
        &http::Method::GET,
        &path,
        None,
    )
    .unwrap();
    for header in [misdirected, forged, "X-Matrix nonsense".to_owned()] {
        let response = http()
            .get(&url)
            .header("authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{header}");
    }

    // An unknown user is a 404, a user of another server a 400.
    let missing = a
        .ask(
            &b,
            &format!(
                "/_matrix/federation/v1/query/profile?user_id=%40nobody%3A{}",
                b.name()
            ),
        )
        .await;
    assert!(matches!(
        missing,
        Err(unitas_federation::client::FederationError::Status { status: 404, .. })
    ));
    let foreign = a
        .ask(
            &b,
            "/_matrix/federation/v1/query/profile?user_id=%40x%3Aother.example",
        )
        .await;
    assert!(matches!(
        foreign,
        Err(unitas_federation::client::FederationError::Status { status: 400, .. })
    ));

    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_notary_vouches_for_a_server_that_is_down() {
    let a = Peer::start(|_| {}).await;
    let notary = Peer::start(|_| {}).await;
    let a_name = a.name();
    let a_key = (a.key().key_id(), a.key().public_key_base64());

    // The notary answers for A (fetching A's keys itself) and countersigns.
    let url = format!(
        "https://{}/_matrix/key/v2/query",
        notary.node.federation_addr
    );
    let answer: Value = http()
        .post(&url)
        .json(&json!({"server_keys": {a_name.clone(): {}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let documents = answer["server_keys"].as_array().unwrap();
    assert_eq!(documents.len(), 1);
    assert_eq!(documents[0]["server_name"], a_name.as_str());
    assert!(documents[0]["signatures"][a_name.as_str()].is_object());
    assert!(documents[0]["signatures"][notary.name()].is_object());
    // Its own keys through the GET form, signed by itself.
    let own: Value = http()
        .get(format!(
            "https://{}/_matrix/key/v2/query/{}",
            notary.node.federation_addr,
            notary.name()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["server_keys"][0]["server_name"], notary.name());

    // A goes away; C, trusting the notary, still gets A's key.
    a.stop().await;
    let notary_name = notary.name();
    let c =
        Peer::start(move |config| config.federation.trusted_key_servers = vec![notary_name]).await;
    let now = i64::from(ruma::MilliSecondsSinceUnixEpoch::now().get());
    let key = c
        .node
        .state
        .key_ring
        .verify_key(&a_name, &a_key.0, now)
        .await
        .unwrap();
    assert_eq!(key, a_key.1);

    // Without a notary, a server that is down has no key.
    let d = Peer::start(|_| {}).await;
    assert!(
        d.node
            .state
            .key_ring
            .verify_key(&a_name, &a_key.0, now)
            .await
            .is_err()
    );

    c.stop().await;
    d.stop().await;
    notary.stop().await;
}

#[tokio::test]
async fn private_addresses_are_refused_by_default() {
    let target = Peer::start(|_| {}).await;
    // The default config denies loopback: the key fetch never connects.
    let guarded = Peer::start(|config| {
        config.federation.ip_range_allowlist = vec![];
    })
    .await;
    let now = i64::from(ruma::MilliSecondsSinceUnixEpoch::now().get());
    let err = guarded
        .node
        .state
        .key_ring
        .verify_key(&target.name(), &target.key().key_id(), now)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("denied"), "{err}");
    for (name, host) in [("localhost:1", "localhost")] {
        let err = guarded
            .node
            .state
            .federation
            .target(name)
            .await
            .map(|t| t.host);
        assert_eq!(err.ok().as_deref(), Some(host));
        let refused = guarded
            .node
            .state
            .federation
            .request_unsigned(name, http::Method::GET, "/_matrix/key/v2/server", None)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("denied"), "{refused}");
    }
    target.stop().await;
    guarded.stop().await;
}

/// A message from `sender` (of `signer`'s server) placed on A's current room state, built and
/// signed with `key` under `signer`'s name.
async fn crafted(
    a: &Peer,
    room: &str,
    sender: &str,
    origin: &str,
    key: &SigningKey,
    body: &str,
) -> unitas_federation::rooms::Pdu {
    let template = unitas_federation::rooms::EventTemplate::message(
        "m.room.message",
        json!({"msgtype": "m.text", "body": body}),
    );
    let auth = [("m.room.power_levels", ""), ("m.room.member", sender)];
    placed_on(a, room, &template, sender, (origin, key), &auth).await
}

/// `template` from `sender` placed on A's current room state with the auth events in the
/// `auth` slots, built and signed with `key` under `origin`'s name.
async fn placed_on(
    a: &Peer,
    room: &str,
    template: &unitas_federation::rooms::EventTemplate,
    sender: &str,
    (origin, key): (&str, &SigningKey),
    auth: &[(&str, &str)],
) -> unitas_federation::rooms::Pdu {
    use unitas_federation::rooms::build::{Placement, build_pdu};
    let room_id = ruma::OwnedRoomId::try_from(room).unwrap();
    let rooms = &a.node.state.rooms;
    let version = rooms.room_version(&room_id).await.unwrap().unwrap();
    let state = rooms.current_state(&room_id).await.unwrap().unwrap();
    let auth_events: Vec<_> = auth
        .iter()
        .filter_map(|(kind, key)| state.get(&((*kind).to_owned(), (*key).to_owned())).cloned())
        .collect();
    let prev = rooms.forward_extremities(&room_id).await.unwrap();
    let sender = ruma::OwnedUserId::try_from(sender).unwrap();
    build_pdu(
        &version,
        template,
        Placement {
            room_id: Some(&room_id),
            sender: &sender,
            prev_events: prev,
            auth_events,
            depth: 1_000,
            origin_server_ts: ruma::MilliSecondsSinceUnixEpoch::now(),
            origin,
            key,
        },
    )
    .unwrap()
}

/// `peer` sends `pdus` to `to` in one transaction; the per-PDU answer.
async fn transmit(peer: &Peer, to: &Peer, txn: &str, pdus: Vec<Value>) -> Value {
    let body = json!({"origin": peer.name(), "origin_server_ts": 1, "pdus": pdus, "edus": []});
    peer.call(
        to,
        http::Method::PUT,
        &format!("/_matrix/federation/v1/send/{txn}"),
        Some(&body),
    )
    .await
    .unwrap()
}

fn as_json(pdu: &unitas_federation::rooms::Pdu) -> Value {
    serde_json::from_str(pdu.federation_json()).unwrap()
}

#[tokio::test]
async fn hostile_events_are_rejected_and_leave_the_room_intact() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let c = Peer::start(|_| {}).await;
    let (alice_token, bob, _, room) = shared_room(&a, &b).await;
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();
    let before = a
        .node
        .state
        .rooms
        .forward_extremities(&room_id)
        .await
        .unwrap();
    let state_before = a.node.state.rooms.current_state(&room_id).await.unwrap();

    // A key with B's key ID but other key material: a forged signature.
    let mut seed = [7u8; 32];
    seed[0] = 1;
    let forger = SigningKey::from_seed(seed, b.key().version()).unwrap();
    let forged = crafted(&a, &room, &bob, &b.name(), &forger, "forged").await;
    // Signed properly, then changed: the signature no longer matches (sender is signed).
    let mut changed = as_json(&crafted(&a, &room, &bob, &b.name(), b.key(), "changed").await);
    changed["depth"] = json!(999);
    // A server that is not in the room speaking for its own user.
    let (carol, _) = account(&c, "carol").await;
    let outsider = crafted(&a, &room, &carol, &c.name(), c.key(), "let me in").await;
    // Over the size limit.
    let big = crafted(&a, &room, &bob, &b.name(), b.key(), "small").await;
    let mut big_json = as_json(&big);
    big_json["content"]["body"] = json!("x".repeat(70_000));
    // Bob's server speaking for Carol.
    let impostor = crafted(&a, &room, &carol, &b.name(), b.key(), "I am carol").await;

    let answer = transmit(
        &b,
        &a,
        "hostile1",
        vec![
            as_json(&forged),
            changed.clone(),
            big_json,
            as_json(&impostor),
        ],
    )
    .await;
    let answer_c = transmit(&c, &a, "hostile2", vec![as_json(&outsider)]).await;
    for (id, answer) in [(&forged.event_id, &answer), (&outsider.event_id, &answer_c)] {
        assert!(
            answer["pdus"][id.as_str()]["error"].is_string(),
            "{id}: {answer}"
        );
    }
    // Events whose ID could not even be computed leave no entry; none of them was stored.
    for id in [
        &forged.event_id,
        &outsider.event_id,
        &big.event_id,
        &impostor.event_id,
    ] {
        assert!(
            !a.node.state.rooms.has_event(id).await.unwrap(),
            "{id} was stored"
        );
    }
    assert_eq!(
        a.node
            .state
            .rooms
            .forward_extremities(&room_id)
            .await
            .unwrap(),
        before
    );
    assert_eq!(
        a.node.state.rooms.current_state(&room_id).await.unwrap(),
        state_before
    );

    // A content hash mismatch is not a rejection: the event is redacted, then processed.
    let honest = crafted(&a, &room, &bob, &b.name(), b.key(), "original").await;
    let mut edited = as_json(&honest);
    edited["content"]["body"] = json!("edited in transit");
    let answer = transmit(&b, &a, "hostile3", vec![edited]).await;
    assert_eq!(
        answer["pdus"][honest.event_id.as_str()],
        json!({}),
        "{answer}"
    );
    let stored = a
        .node
        .state
        .rooms
        .get_pdu(&honest.event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.content.get(), "{}");

    // The same transaction ID again: the same answer, nothing appended twice.
    let again = transmit(&b, &a, "hostile3", vec![]).await;
    assert_eq!(again, answer);

    // A server ACL that denies B's host: B's valid events are refused, and so are its reads.
    let (status, body) = call(
        &a,
        &alice_token,
        reqwest::Method::PUT,
        &format!("/rooms/{}/state/m.room.server_acl/", urlencode(&room)),
        json!({"allow": ["*"], "deny": ["127.0.0.1"], "allow_ip_literals": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let valid = crafted(&a, &room, &bob, &b.name(), b.key(), "after the ACL").await;
    let answer = transmit(&b, &a, "hostile4", vec![as_json(&valid)]).await;
    assert!(
        answer["pdus"]
            .get(valid.event_id.as_str())
            .is_none_or(|r| r["error"].is_string()),
        "{answer}"
    );
    assert!(!a.node.state.rooms.has_event(&valid.event_id).await.unwrap());
    let refused = b
        .ask(
            &a,
            &format!(
                "/_matrix/federation/v1/event/{}",
                urlencode(valid.prev_events[0].as_str())
            ),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(unitas_federation::client::FederationError::Status { status: 403, .. })
        ),
        "{refused:?}"
    );

    // A transaction whose `pdus` is not a list is refused whole (400 M_BAD_JSON).
    let malformed = c
        .call(
            &a,
            http::Method::PUT,
            "/_matrix/federation/v1/send/malformed",
            Some(&json!({"origin": c.name(), "origin_server_ts": 1, "pdus": "none", "edus": []})),
        )
        .await;
    assert!(
        matches!(
            &malformed,
            Err(unitas_federation::client::FederationError::Status { status: 400, errcode, .. })
                if errcode == "M_BAD_JSON"
        ),
        "{malformed:?}"
    );

    for peer in [a, b, c] {
        peer.stop().await;
    }
}

#[test]
fn join_templates_are_checked_before_we_sign() {
    use unitas_federation::inbound::check_join_template;
    let room = ruma::OwnedRoomId::try_from("!r:a.example").unwrap();
    let user = ruma::OwnedUserId::try_from("@u:b.example").unwrap();
    let good = json!({
        "type": "m.room.member", "state_key": "@u:b.example", "sender": "@u:b.example",
        "room_id": "!r:a.example", "content": {"membership": "join"},
        "prev_events": ["$p"], "auth_events": ["$a"], "depth": 5, "origin_server_ts": 1,
    });
    assert!(check_join_template(&good, &room, &user, "a.example").is_ok());
    // A restricted room's template may name a user of the server asked, who vouches.
    let mut vouched = good.clone();
    vouched["content"]["join_authorised_via_users_server"] = json!("@admin:a.example");
    let checked = check_join_template(&vouched, &room, &user, "a.example").unwrap();
    assert_eq!(checked.3.unwrap().as_str(), "@admin:a.example");
    assert!(check_join_template(&vouched, &room, &user, "c.example").is_err());
    vouched["content"]["join_authorised_via_users_server"] = json!("not a user");
    assert!(check_join_template(&vouched, &room, &user, "a.example").is_err());
    let variants: Vec<(&str, Value)> = vec![
        ("content", json!({"membership": "join", "displayname": "x"})),
        ("content", json!({"membership": "leave"})),
        ("state_key", json!("@other:b.example")),
        ("sender", json!("@other:b.example")),
        ("room_id", json!("!other:a.example")),
        ("type", json!("m.room.message")),
        ("prev_events", json!([])),
        ("auth_events", json!(["not an id"])),
        ("depth", json!(0)),
    ];
    for (field, value) in variants {
        let mut bad = good.clone();
        bad[field] = value.clone();
        assert!(
            check_join_template(&bad, &room, &user, "a.example").is_err(),
            "{field} = {value}"
        );
    }
}

async fn queued(peer: &Peer) -> usize {
    use unitas_storage::FederationQueue;
    let mut total = 0;
    for (origin, destination) in peer
        .node
        .state
        .store
        .list_outbound_destinations()
        .await
        .unwrap()
    {
        total += peer
            .node
            .state
            .store
            .peek_outbound(&origin, &destination, 10_000)
            .await
            .unwrap()
            .len();
    }
    total
}

/// Durably queued EDUs of all pairs.
async fn queued_edus(peer: &Peer) -> usize {
    use unitas_storage::FederationQueue;
    let store = &peer.node.state.store;
    let mut total = 0;
    for (origin, destination) in store.list_outbound_destinations().await.unwrap() {
        total += store
            .peek_outbound_edus(&origin, &destination, 10_000)
            .await
            .unwrap()
            .len();
    }
    total
}

#[tokio::test]
async fn messages_wait_for_a_peer_that_is_down_and_survive_our_restart() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let (alice_token, bob, bob_token, room) = shared_room(&a, &b).await;
    let bob_since = next_batch(&b, &bob_token).await;

    // B goes down; A's users keep talking: every message waits in A's queue.
    let Peer {
        node,
        config: b_config,
        _dir: b_dir,
    } = b;
    node.shutdown().await;
    for i in 0..30 {
        let (status, _) = call(
            &a,
            &alice_token,
            reqwest::Method::PUT,
            &format!("/rooms/{}/send/m.room.message/m{i}", urlencode(&room)),
            json!({"msgtype": "m.text", "body": format!("while down {i}")}),
        )
        .await;
        assert_eq!(status, 200);
    }
    // A to-device message (an encryption key, say) waits as well.
    let (status, _) = call(
        &a,
        &alice_token,
        reqwest::Method::PUT,
        "/sendToDevice/m.room_key_request/down1",
        json!({"messages": {bob.as_str(): {"*": {"text": "kept"}}}}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(a.node.state.sender.flush_once().await.is_err(), "B is down");
    assert_eq!(queued(&a).await, 30);
    assert_eq!(queued_edus(&a).await, 1);

    // A restarts (its queue is in its database), then B comes back: all 30 arrive, once, and
    // the to-device message too.
    let a = a.restart().await;
    assert_eq!(queued(&a).await, 30);
    assert_eq!(queued_edus(&a).await, 1);
    let b = Peer::resume(b_config, b_dir).await;
    a.node.state.sender.flush_once().await.unwrap();
    assert_eq!(queued(&a).await, 0);
    assert_eq!(queued_edus(&a).await, 0);
    let got = sync_until(&b, &bob_token, &bob_since, |s| {
        !s["to_device"]["events"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(got["to_device"]["events"][0]["content"]["text"], "kept");
    let on_a = history(&a, &alice_token, &room).await;
    let on_b = history(&b, &bob_token, &room).await;
    assert_eq!(on_b.len(), 30, "{on_b:?}");
    assert_eq!(on_a, on_b);
    let mut bodies: Vec<&str> = on_b.iter().map(|(_, b)| b.as_str()).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 30, "no duplicates");

    a.stop().await;
    b.stop().await;
}

/// Waits, through `/sync` long-polls, until `room` is in the user's `invite` section; the
/// stripped state shown.
async fn await_invite(peer: &Peer, token: &str, room: &str) -> Value {
    let mut since: Option<String> = None;
    for _ in 0..20 {
        let mut path = "/sync?timeout=5000".to_owned();
        if let Some(since) = &since {
            path.push_str(&format!("&since={}", urlencode(since)));
        }
        let (status, body) = call(peer, token, reqwest::Method::GET, &path, Value::Null).await;
        assert_eq!(status, 200, "{body}");
        if let Some(invite) = body["rooms"]["invite"].get(room) {
            return invite["invite_state"]["events"].clone();
        }
        since = body["next_batch"].as_str().map(str::to_owned);
    }
    panic!("no invite to {room}");
}

#[tokio::test]
async fn invites_across_nodes_are_accepted_or_declined() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    // Carol's server is in no room: declining goes through make_leave/send_leave.
    let c = Peer::start(|_| {}).await;
    let (alice, alice_token) = account(&a, "alice").await;
    let (bob, bob_token) = account(&b, "bob").await;
    let (carol, carol_token) = account(&c, "carol").await;
    let (status, created) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "private_chat", "name": "Invite only"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();

    // Alice invites Bob of B and Carol of C: their servers countersign, they see the invite with the room name.
    for user in [&bob, &carol] {
        let (status, body) = call(
            &a,
            &alice_token,
            reqwest::Method::POST,
            &format!("/rooms/{}/invite", urlencode(&room)),
            json!({"user_id": user}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let shown = await_invite(&b, &bob_token, &room).await;
    assert!(
        shown
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Invite only"),
        "{shown}"
    );
    assert!(
        shown
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == bob.as_str()
                && e["content"]["membership"] == "invite"),
        "{shown}"
    );

    // Bob accepts: a join through the inviting server, allowed by the invite.
    let (status, body) = call(
        &b,
        &bob_token,
        reqwest::Method::POST,
        &format!("/rooms/{}/join", urlencode(&room)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    assert_eq!(joined(&a, &alice_token, &room).await, both);

    // Carol declines: make_leave/send_leave through A; A records her leave.
    await_invite(&c, &carol_token, &room).await;
    let (status, body) = call(
        &c,
        &carol_token,
        reqwest::Method::POST,
        &format!("/rooms/{}/leave", urlencode(&room)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();
    let id = a
        .node
        .state
        .rooms
        .current_state_event_id(&room_id, "m.room.member", &carol)
        .await
        .unwrap()
        .unwrap();
    let pdu = a.node.state.rooms.get_pdu(&id).await.unwrap().unwrap();
    assert_eq!(pdu.sender.as_str(), carol.as_str());
    assert!(
        pdu.content.get().contains("\"leave\""),
        "{}",
        pdu.content.get()
    );
    // Nobody uninvited gets in: a join of someone else through B's make_join is refused by A.
    assert_eq!(joined(&a, &alice_token, &room).await, both);

    // C forgot the invite: Carol's next sync does not show it again.
    use unitas_storage::RemoteInvites;
    assert!(
        c.node
            .state
            .store
            .list_remote_invites(&carol)
            .await
            .unwrap()
            .is_empty()
    );

    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn a_user_of_another_node_knocks_and_is_let_in() {
    let a = Peer::start(|_| {}).await;
    let c = Peer::start(|_| {}).await;
    let (alice, alice_token) = account(&a, "alice").await;
    let (carol, carol_token) = account(&c, "carol").await;
    let (status, created) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "private_chat", "initial_state": [
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();

    // Joining straight away is refused; knocking (make_knock/send_knock through A) is not.
    let (status, _) = call(
        &c,
        &carol_token,
        reqwest::Method::POST,
        &format!("/join/{}?via={}", urlencode(&room), urlencode(&a.name())),
        json!({}),
    )
    .await;
    assert_ne!(status, 200);
    let (status, body) = call(
        &c,
        &carol_token,
        reqwest::Method::POST,
        &format!("/knock/{}?via={}", urlencode(&room), urlencode(&a.name())),
        json!({"reason": "let me in"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = a
        .node
        .state
        .rooms
        .current_state_event_id(&room_id, "m.room.member", &carol)
        .await
        .unwrap()
        .unwrap();
    let knock = a.node.state.rooms.get_pdu(&id).await.unwrap().unwrap();
    assert!(
        knock.content.get().contains("\"knock\""),
        "{}",
        knock.content.get()
    );
    // Carol's sync shows the knock, with what the room let her see.
    let (_, first) = call(&c, &carol_token, reqwest::Method::GET, "/sync", Value::Null).await;
    let shown = &first["rooms"]["knock"][&room]["knock_state"]["events"];
    let kinds: Vec<&str> = shown
        .as_array()
        .unwrap_or_else(|| panic!("{first}"))
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"m.room.join_rules"), "{shown}");
    assert!(
        shown
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == carol.as_str()
                && e["content"]["membership"] == "knock"),
        "{shown}"
    );
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // Alice lets Carol in: an invite (countersigned by C), then Carol's join.
    let (status, body) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        &format!("/rooms/{}/invite", urlencode(&room)),
        json!({"user_id": carol}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The invite answers the knock: it replaces it in Carol's sync.
    let answered = sync_until(&c, &carol_token, &since, |s| {
        s["rooms"]["invite"].get(&room).is_some()
    })
    .await;
    assert!(
        answered["rooms"]["knock"].get(&room).is_none(),
        "{answered}"
    );
    let (_, fresh) = call(&c, &carol_token, reqwest::Method::GET, "/sync", Value::Null).await;
    assert!(fresh["rooms"]["knock"].get(&room).is_none(), "{fresh}");
    let (status, body) = call(
        &c,
        &carol_token,
        reqwest::Method::POST,
        &format!("/rooms/{}/join", urlencode(&room)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut both = vec![alice, carol];
    both.sort();
    assert_eq!(joined(&a, &alice_token, &room).await, both);

    a.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn restricted_rooms_let_in_members_of_the_space_on_both_nodes() {
    let a = Peer::start(|_| {}).await;
    let c = Peer::start(|_| {}).await;
    let (alice, alice_token) = account(&a, "alice").await;
    let (dave, dave_token) = account(&a, "dave").await;
    let (carol, carol_token) = account(&c, "carol").await;
    let (erin, _) = account(&c, "erin").await;
    let (_, space) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "public_chat", "creation_content": {"type": "m.space"}}),
    )
    .await;
    let space = space["room_id"].as_str().unwrap().to_owned();
    let (status, created) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "private_chat", "initial_state": [{"type": "m.room.join_rules",
            "state_key": "", "content": {"join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": space}]}}]}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();
    let join = |peer: &'static str, token: String, target: String| {
        let (p, via) = if peer == "a" {
            (&a, None)
        } else {
            (&c, Some(a.name()))
        };
        async move {
            let path = match via {
                Some(via) => format!("/join/{}?via={}", urlencode(&target), urlencode(&via)),
                None => format!("/join/{}", urlencode(&target)),
            };
            call(p, &token, reqwest::Method::POST, &path, json!({})).await
        }
    };
    let member_event = |user: String| {
        let a = &a;
        let room_id = room_id.clone();
        async move {
            let id = a
                .node
                .state
                .rooms
                .current_state_event_id(&room_id, "m.room.member", &user)
                .await
                .unwrap()
                .unwrap();
            as_json(&a.node.state.rooms.get_pdu(&id).await.unwrap().unwrap())
        }
    };

    // Not in the space: refused, on this node and from the other.
    let (status, body) = join("a", dave_token.clone(), room.clone()).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
    let (status, _) = join("c", carol_token.clone(), room.clone()).await;
    assert_ne!(status, 200);

    // In the space: let in, vouched for by Alice (the one who may invite).
    let (status, body) = join("a", dave_token.clone(), space.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = join("a", dave_token.clone(), room.clone()).await;
    assert_eq!(status, 200, "{body}");
    let event = member_event(dave.clone()).await;
    assert_eq!(event["content"]["join_authorised_via_users_server"], alice);

    let (status, body) = join("c", carol_token.clone(), space.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = join("c", carol_token.clone(), room.clone()).await;
    assert_eq!(status, 200, "{body}");
    let event = member_event(carol.clone()).await;
    assert_eq!(event["content"]["join_authorised_via_users_server"], alice);
    assert!(event["signatures"].get(a.name()).is_some(), "{event}");
    assert!(event["signatures"].get(c.name()).is_some(), "{event}");
    // C keeps the join with A's signature (peers check it).
    let carol_join = a
        .node
        .state
        .rooms
        .current_state_event_id(&room_id, "m.room.member", &carol)
        .await
        .unwrap()
        .unwrap();
    let on_c = as_json(
        &c.node
            .state
            .rooms
            .get_pdu(&carol_join)
            .await
            .unwrap()
            .unwrap(),
    );
    assert!(on_c["signatures"].get(a.name()).is_some(), "{on_c}");

    // A forged vouch: C sends Erin's join naming Alice straight to send_join; A refuses it.
    let forged = placed_on(
        &a,
        &room,
        &unitas_federation::rooms::EventTemplate::state(
            "m.room.member",
            &erin,
            json!({"membership": "join", "join_authorised_via_users_server": alice}),
        ),
        &erin,
        (&c.name(), c.key()),
        &[
            ("m.room.create", ""),
            ("m.room.power_levels", ""),
            ("m.room.join_rules", ""),
            ("m.room.member", &alice),
        ],
    )
    .await;
    let refused = c
        .call(
            &a,
            http::Method::PUT,
            &format!(
                "/_matrix/federation/v2/send_join/{}/{}",
                urlencode(&room),
                urlencode(forged.event_id.as_str())
            ),
            Some(&as_json(&forged)),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let mut members = vec![alice, carol, dave];
    members.sort();
    assert_eq!(joined(&a, &alice_token, &room).await, members);

    a.stop().await;
    c.stop().await;
}

/// `unitas run` as an operator starts it, named `127.0.0.1:<federation port>`, calling loopback
/// peers with self-signed certificates; returns once it printed that it serves.
async fn spawn_binary(dir: &std::path::Path, client: u16, federation: u16) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_unitas"))
        .args([
            "run",
            "--data-dir",
            &dir.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{client}"),
            "--federation-listen",
            &format!("127.0.0.1:{federation}"),
            "--server-name",
            &format!("127.0.0.1:{federation}"),
        ])
        .env("UNITAS__REGISTRATION__ENABLED", "true")
        .env("UNITAS__RATE_LIMITS__ENABLED", "false")
        .env("UNITAS__FEDERATION__VERIFY_TLS", "false")
        .env("UNITAS__FEDERATION__IP_RANGE_ALLOWLIST", "127.0.0.0/8")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It prints its client URL once it serves: read its output up to that line.
    let mut child = child;
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let found = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("Matrix client URL:"));
        // Keep draining so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        found
    })
    .await
    .unwrap();
    assert!(ready, "unitas run exited before serving");
    child
}

/// A port the OS considers free now (the binary binds it itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_a_full_queue_delivers_everything_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (client_port, federation_port) = (free_port(), free_port());
    let mut a = spawn_binary(dir.path(), client_port, federation_port).await;
    let a_name = format!("127.0.0.1:{federation_port}");
    let a_client = format!("http://127.0.0.1:{client_port}/_matrix/client/v3");
    let b = Peer::start(|_| {}).await;
    let (bob, bob_token) = account(&b, "bob").await;
    let alice: Value = http()
        .post(format!("{a_client}/register"))
        .json(&json!({"username": "alice", "password": "correct horse", "auth": {"type": "m.login.dummy"}}))
        .send().await.unwrap().json().await.unwrap();
    let alice_token = alice["access_token"].as_str().unwrap().to_owned();
    let created: Value = http()
        .post(format!("{a_client}/createRoom"))
        .bearer_auth(&alice_token)
        .json(&json!({"preset": "public_chat"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (status, reply) = call(
        &b,
        &bob_token,
        reqwest::Method::POST,
        &format!("/join/{}?via={}", urlencode(&room), urlencode(&a_name)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");

    // B goes away; A queues 20 messages for it; A is killed with SIGKILL.
    let Peer {
        node,
        config: b_config,
        _dir: b_dir,
    } = b;
    node.shutdown().await;
    for i in 0..20 {
        let status = http()
            .put(format!(
                "{a_client}/rooms/{}/send/m.room.message/k{i}",
                urlencode(&room)
            ))
            .bearer_auth(&alice_token)
            .json(&json!({"msgtype": "m.text", "body": format!("queued {i}")}))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success());
    }
    a.kill().unwrap();
    a.wait().unwrap();

    // Both come back; A's catch-up delivers the queue without anyone asking.
    let b = Peer::resume(b_config, b_dir).await;
    let mut a = spawn_binary(dir.path(), client_port, federation_port).await;
    let mut since: Option<String> = None;
    let mut seen;
    loop {
        seen = history(&b, &bob_token, &room).await;
        if seen.len() >= 20 {
            break;
        }
        let mut path = "/sync?timeout=5000".to_owned();
        if let Some(since) = &since {
            path.push_str(&format!("&since={}", urlencode(since)));
        }
        let (status, body) = call(&b, &bob_token, reqwest::Method::GET, &path, Value::Null).await;
        assert_eq!(status, 200, "{body}");
        since = body["next_batch"].as_str().map(str::to_owned);
    }
    let mut bodies: Vec<&str> = seen.iter().map(|(_, body)| body.as_str()).collect();
    assert_eq!(bodies.len(), 20, "{bodies:?}");
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 20, "duplicates");
    let _ = bob;

    a.kill().unwrap();
    a.wait().unwrap();
    b.stop().await;
}

/// A `width` x `height` PNG.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([200, 30, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `GET` of a media path (`/_matrix/...`) on `peer`'s client listener: status, headers, body.
async fn media_get(
    peer: &Peer,
    token: Option<&str>,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = http().get(format!("http://{}{path}", peer.node.client_addr));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

async fn upload(peer: &Peer, token: &str, name: &str, kind: &str, bytes: Vec<u8>) -> String {
    let reply: Value = http()
        .post(format!(
            "http://{}/_matrix/media/v3/upload?filename={name}",
            peer.node.client_addr
        ))
        .bearer_auth(token)
        .header("content-type", kind)
        .body(bytes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["content_uri"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn media_of_another_node_is_fetched_over_federation_once() {
    let a = Peer::start(|_| {}).await;
    // B takes files up to 10 KiB.
    let b = Peer::start(|c| c.media.max_upload_bytes = 10 * 1024).await;
    let (_, alice_token) = account(&a, "alice").await;
    let (_, bob_token) = account(&b, "bob").await;
    let picture = png(64, 48);
    let picture_uri = upload(&a, &alice_token, "dot.png", "image/png", picture.clone()).await;
    let text_uri = upload(
        &a,
        &alice_token,
        "notes.txt",
        "text/plain",
        b"hello from A".to_vec(),
    )
    .await;
    let big_uri = upload(
        &a,
        &alice_token,
        "big.bin",
        "application/octet-stream",
        vec![7; 20 * 1024],
    )
    .await;
    let path = |uri: &str| uri.trim_start_matches("mxc://").to_owned();

    // Not fetched yet: the unauthenticated legacy path never makes B fetch.
    let (status, _, _) = media_get(
        &b,
        None,
        &format!("/_matrix/media/v3/download/{}", path(&picture_uri)),
    )
    .await;
    assert_eq!(status, 404);

    // Bob downloads Alice's picture through B: same bytes, type and name.
    let (status, headers, body) = media_get(
        &b,
        Some(&bob_token),
        &format!("/_matrix/client/v1/media/download/{}", path(&picture_uri)),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, picture);
    assert_eq!(headers["content-type"], "image/png");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("inline") && disposition.contains("dot.png"),
        "{disposition}"
    );

    // A text file is an attachment; a name in the path overrides the stored one.
    let (status, headers, body) = media_get(
        &b,
        Some(&bob_token),
        &format!(
            "/_matrix/client/v1/media/download/{}/renamed.txt",
            path(&text_uri)
        ),
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, b"hello from A".as_slice()));
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment") && disposition.contains("renamed.txt"),
        "{disposition}"
    );

    // A thumbnail of the remote picture, scaled on B.
    let (status, headers, body) = media_get(
        &b,
        Some(&bob_token),
        &format!(
            "/_matrix/client/v1/media/thumbnail/{}?width=16&height=16&method=scale",
            path(&picture_uri)
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/png");
    let thumb = image::load_from_memory(&body).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (16, 12));

    // Over B's limit: 502 M_TOO_LARGE, and nothing kept.
    for _ in 0..2 {
        let (status, _, body) = media_get(
            &b,
            Some(&bob_token),
            &format!("/_matrix/client/v1/media/download/{}", path(&big_uri)),
        )
        .await;
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, error["errcode"].as_str()),
            (502, Some("M_TOO_LARGE")),
            "{error}"
        );
    }
    let origin = ServerName::parse(a.name()).unwrap();
    let big_id = big_uri.rsplit('/').next().unwrap();
    assert!(
        b.node
            .state
            .store
            .get_remote_media(origin.as_str(), big_id)
            .await
            .unwrap()
            .is_none()
    );

    // Unknown media on A: 404 on B too.
    let (status, _, body) = media_get(
        &b,
        Some(&bob_token),
        &format!("/_matrix/client/v1/media/download/{}/nosuchmedia", a.name()),
    )
    .await;
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, error["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );

    // A peer must sign: an unsigned federation download is refused.
    let picture_id = picture_uri.rsplit('/').next().unwrap();
    let unsigned = http()
        .get(format!(
            "https://{}/_matrix/federation/v1/media/download/{picture_id}",
            a.name()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);

    // A is gone: B still has the picture, for both its paths.
    a.stop().await;
    let (status, _, body) = media_get(
        &b,
        Some(&bob_token),
        &format!("/_matrix/client/v1/media/download/{}", path(&picture_uri)),
    )
    .await;
    assert_eq!((status, body == picture), (200, true));
    let (status, _, body) = media_get(
        &b,
        None,
        &format!("/_matrix/media/v3/download/{}", path(&picture_uri)),
    )
    .await;
    assert_eq!((status, body == picture), (200, true));
    b.stop().await;
}

#[tokio::test]
async fn encryption_keys_are_queried_and_claimed_across_nodes() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let (alice, alice_token) = account(&a, "alice").await;
    let (_, bob_token) = account(&b, "bob").await;
    let (_, whoami) = call(
        &a,
        &alice_token,
        reqwest::Method::GET,
        "/account/whoami",
        Value::Null,
    )
    .await;
    let device = whoami["device_id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &a,
        &alice_token,
        reqwest::Method::PUT,
        &format!("/devices/{device}"),
        json!({"display_name": "Alice's laptop"}),
    )
    .await;
    assert_eq!(status, 200);

    // Keys naming another device are refused and change nothing.
    let device_keys = |device_id: &str| {
        json!({
            "user_id": alice, "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {format!("curve25519:{device_id}"): "curve", format!("ed25519:{device_id}"): "edkey"},
            "signatures": {alice.clone(): {format!("ed25519:{device_id}"): "sig"}},
        })
    };
    let (status, body) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/keys/upload",
        json!({"device_keys": device_keys("NOTMINE")}),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );

    // Before any upload, sync shows no keys (the node keeps that answer until keys change).
    let (status, sync) = call(&a, &alice_token, reqwest::Method::GET, "/sync", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));

    let otk = |n: &str| json!({"key": format!("otk-{n}"), "signatures": {alice.clone(): {format!("ed25519:{device}"): "sig"}}});
    let (status, body) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/keys/upload",
        json!({
            "device_keys": device_keys(&device),
            "one_time_keys": {"signed_curve25519:AAAAAQ": otk("1"), "signed_curve25519:AAAAAg": otk("2")},
            "fallback_keys": {"signed_curve25519:AAAAAw": {"key": "fallback", "fallback": true}},
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2);
    let (status, sync) = call(&a, &alice_token, reqwest::Method::GET, "/sync", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 2);
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    // Bob, on B, reads Alice's device keys through his server.
    let (status, body) = call(
        &b,
        &bob_token,
        reqwest::Method::POST,
        "/keys/query",
        json!({"device_keys": {alice.clone(): []}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failures"], json!({}));
    let keys = &body["device_keys"][&alice][&device];
    assert_eq!(keys["keys"][format!("ed25519:{device}")], "edkey", "{body}");
    assert_eq!(keys["unsigned"]["device_display_name"], "Alice's laptop");

    // Claims: both one-time keys once each, then the fallback key.
    let mut claimed = Vec::new();
    for _ in 0..3 {
        let (status, body) = call(
            &b,
            &bob_token,
            reqwest::Method::POST,
            "/keys/claim",
            json!({"one_time_keys": {alice.clone(): {device.clone(): "signed_curve25519"}}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let keys = body["one_time_keys"][&alice][&device]
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(keys.len(), 1, "{body}");
        claimed.extend(
            keys.into_iter()
                .map(|(id, key)| (id, key["key"].as_str().unwrap().to_owned())),
        );
    }
    let expected: Vec<(String, String)> = [
        ("signed_curve25519:AAAAAQ", "otk-1"),
        ("signed_curve25519:AAAAAg", "otk-2"),
        ("signed_curve25519:AAAAAw", "fallback"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(claimed, expected);

    // Alice's sync shows the keys gone and the fallback key used.
    let (status, sync) = call(&a, &alice_token, reqwest::Method::GET, "/sync", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(sync["device_one_time_keys_count"], json!({}));
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));

    // The federation device list: the device, its keys and name, a version.
    let devices = b
        .ask(
            &a,
            &format!("/_matrix/federation/v1/user/devices/{}", urlencode(&alice)),
        )
        .await
        .unwrap();
    assert_eq!(devices["user_id"], alice.as_str());
    assert_eq!(devices["devices"][0]["device_id"], device.as_str());
    assert_eq!(
        devices["devices"][0]["device_display_name"],
        "Alice's laptop"
    );
    assert!(devices["stream_id"].as_i64().unwrap() >= 1);
    // A user of another server is not answered for.
    let other = b
        .ask(
            &a,
            "/_matrix/federation/v1/user/devices/@mallory:elsewhere.example",
        )
        .await;
    assert!(other.is_err());

    // A server that cannot be reached is a failure, not an error.
    let (status, body) = call(
        &b,
        &bob_token,
        reqwest::Method::POST,
        "/keys/query",
        json!({"device_keys": {"@carol:127.0.0.1:1": []}, "timeout": 2000}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["failures"]["127.0.0.1:1"].is_object(), "{body}");

    a.stop().await;
    b.stop().await;
}

/// Long-polls `/sync` from `since` until `found` holds for a response: that response.
async fn sync_until(
    peer: &Peer,
    token: &str,
    since: &str,
    found: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut since = since.to_owned();
    loop {
        let (status, body) = call(
            peer,
            token,
            reqwest::Method::GET,
            &format!("/sync?timeout=10000&since={}", urlencode(&since)),
            Value::Null,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if found(&body) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "never came: {body}");
        since = body["next_batch"].as_str().unwrap().to_owned();
    }
}

async fn next_batch(peer: &Peer, token: &str) -> String {
    let (_, body) = call(
        peer,
        token,
        reqwest::Method::GET,
        "/sync?timeout=0",
        Value::Null,
    )
    .await;
    body["next_batch"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn device_changes_and_to_device_messages_reach_the_other_node() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let (alice_token, bob, bob_token, _room) = shared_room(&a, &b).await;
    let me = whoami(&a, &alice_token).await;
    let alice = me["user_id"].as_str().unwrap().to_owned();
    let alice_device = me["device_id"].as_str().unwrap().to_owned();
    let me = whoami(&b, &bob_token).await;
    let bob_device = me["device_id"].as_str().unwrap().to_owned();
    let since = next_batch(&b, &bob_token).await;

    // Alice's new keys: Bob's sync lists her in device_lists.changed.
    let (status, body) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/keys/upload",
        json!({"device_keys": {
            "user_id": alice, "device_id": alice_device, "algorithms": ["m.megolm.v1.aes-sha2"],
            "keys": {format!("ed25519:{alice_device}"): "ed"}, "signatures": {}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    a.node.state.sender.flush_once().await.unwrap();
    let seen = sync_until(&b, &bob_token, &since, |s| {
        s["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == alice.as_str()))
    })
    .await;
    let since = seen["next_batch"].as_str().unwrap().to_owned();

    // Alice sends Bob's device a message (twice with the same transaction ID) and all his
    // devices another one.
    for (txn, device, text) in [
        ("t1", bob_device.as_str(), "one"),
        ("t1", bob_device.as_str(), "one"),
        ("t2", "*", "all"),
    ] {
        let (status, body) = call(
            &a,
            &alice_token,
            reqwest::Method::PUT,
            &format!("/sendToDevice/m.room_key_request/{txn}"),
            json!({"messages": {bob.as_str(): {device: {"text": text}}}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    a.node.state.sender.flush_once().await.unwrap();
    let texts = |s: &Value| -> Vec<String> {
        s["to_device"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["sender"], alice.as_str());
                assert_eq!(e["type"], "m.room_key_request");
                e["content"]["text"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    // The messages may come in more than one transaction, so in more than one sync: collect.
    let mut received = Vec::new();
    let mut from = since.clone();
    let got = loop {
        let got = sync_until(&b, &bob_token, &from, |s| !texts(s).is_empty()).await;
        received.extend(texts(&got));
        if received.len() >= 2 {
            break got;
        }
        from = got["next_batch"].as_str().unwrap().to_owned();
    };
    assert_eq!(received, ["one", "all"]);
    // Not acknowledged yet: the last since gives them again; the next token drops them.
    let (_, again) = call(
        &b,
        &bob_token,
        reqwest::Method::GET,
        &format!("/sync?timeout=0&since={}", urlencode(&from)),
        Value::Null,
    )
    .await;
    assert_eq!(texts(&again), texts(&got));
    let next = got["next_batch"].as_str().unwrap();
    let (_, after) = call(
        &b,
        &bob_token,
        reqwest::Method::GET,
        &format!("/sync?timeout=0&since={}", urlencode(next)),
        Value::Null,
    )
    .await;
    assert!(texts(&after).is_empty(), "{after}");

    // Local delivery: Bob to a second user on B.
    let (carol, carol_token) = account(&b, "carol").await;
    let since = next_batch(&b, &carol_token).await;
    let (status, _) = call(
        &b,
        &bob_token,
        reqwest::Method::PUT,
        "/sendToDevice/m.dummy/t3",
        json!({"messages": {carol.as_str(): {"*": {"text": "local"}}}}),
    )
    .await;
    assert_eq!(status, 200);
    let got = sync_until(&b, &carol_token, &since, |s| {
        !s["to_device"]["events"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(got["to_device"]["events"][0]["content"]["text"], "local");

    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_gap_larger_than_get_missing_events_is_filled_from_the_state() {
    use unitas_storage::FederationQueue;
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let (alice_token, bob, bob_token, room) = shared_room(&a, &b).await;
    let (carol, carol_token) = account(&a, "carol").await;

    // B is down while A's room moves on: 30 messages, a new topic, a new member. Then A's
    // queue for B is lost, so B never gets those events pushed.
    let Peer {
        node,
        config: b_config,
        _dir: b_dir,
    } = b;
    node.shutdown().await;
    let path = |i: usize| format!("/rooms/{}/send/m.room.message/gap{i}", urlencode(&room));
    let text = |i: usize| json!({"msgtype": "m.text", "body": format!("during the gap {i}")});
    for i in 0..10 {
        let (status, _) = call(&a, &alice_token, reqwest::Method::PUT, &path(i), text(i)).await;
        assert_eq!(status, 200);
    }
    let (status, _) = call(
        &a,
        &alice_token,
        reqwest::Method::PUT,
        &format!("/rooms/{}/state/m.room.topic/", urlencode(&room)),
        json!({"topic": "changed while B was away"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &a,
        &carol_token,
        reqwest::Method::POST,
        &format!("/join/{}", urlencode(&room)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    for i in 10..30 {
        let (status, _) = call(&a, &alice_token, reqwest::Method::PUT, &path(i), text(i)).await;
        assert_eq!(status, 200);
    }
    for (origin, destination) in a
        .node
        .state
        .store
        .list_outbound_destinations()
        .await
        .unwrap()
    {
        a.node
            .state
            .store
            .delete_sent(&origin, &destination, Some(i64::MAX), None)
            .await
            .unwrap();
    }

    // B is back; A's next message names 30+ unknown ancestors (get_missing_events returns 20).
    let b = Peer::resume(b_config, b_dir).await;
    let (status, _) = call(
        &a,
        &alice_token,
        reqwest::Method::PUT,
        &format!("/rooms/{}/send/m.room.message/after", urlencode(&room)),
        json!({"msgtype": "m.text", "body": "after the gap"}),
    )
    .await;
    assert_eq!(status, 200);
    a.node.state.sender.flush_once().await.unwrap();

    // B has the new message, the state from before the gap's end: topic and members.
    let on_b = history(&b, &bob_token, &room).await;
    assert_eq!(
        on_b.last().map(|(_, body)| body.as_str()),
        Some("after the gap"),
        "{on_b:?}"
    );
    let (status, topic) = call(
        &b,
        &bob_token,
        reqwest::Method::GET,
        &format!("/rooms/{}/state/m.room.topic/", urlencode(&room)),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{topic}");
    assert_eq!(topic["topic"], "changed while B was away");
    let mut members = vec![bob.clone(), carol.clone()];
    let me = whoami(&a, &alice_token).await;
    members.push(me["user_id"].as_str().unwrap().to_owned());
    members.sort();
    assert_eq!(joined(&b, &bob_token, &room).await, members);

    // And B's next message lands on A after A's latest.
    let (status, _) = call(
        &b,
        &bob_token,
        reqwest::Method::PUT,
        &format!("/rooms/{}/send/m.room.message/back", urlencode(&room)),
        json!({"msgtype": "m.text", "body": "B is back"}),
    )
    .await;
    assert_eq!(status, 200);
    b.node.state.sender.flush_once().await.unwrap();
    let on_a = history(&a, &alice_token, &room).await;
    assert_eq!(
        on_a.last().map(|(_, body)| body.as_str()),
        Some("B is back")
    );
    a.stop().await;
    b.stop().await;
}

/// Whether a sync's `device_lists.<field>` names `user`.
fn lists(sync: &Value, field: &str, user: &str) -> bool {
    sync["device_lists"][field]
        .as_array()
        .is_some_and(|users| users.iter().any(|u| u == user))
}

/// Whether a sync's timeline of `room` has `user`'s membership event `membership`.
fn membership_in_timeline(sync: &Value, room: &str, user: &str, membership: &str) -> bool {
    ["join", "leave"].iter().any(|section| {
        sync["rooms"][section][room]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == user
                        && e["content"]["membership"] == membership
                })
            })
    })
}

#[tokio::test]
async fn device_lists_follow_who_shares_a_room() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let (alice_token, carol, carol_token, first) = shared_room(&a, &b).await;
    let (_, created) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "public_chat"}),
    )
    .await;
    let second = created["room_id"].as_str().unwrap().to_owned();
    let (dave, dave_token) = account(&a, "dave").await;
    let (status, _) = call(
        &a,
        &dave_token,
        reqwest::Method::POST,
        &format!("/join/{}", urlencode(&first)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let since = next_batch(&a, &alice_token).await;

    // Carol (of the other node) joins the second room: Alice's clients learn her devices.
    let (status, body) = call(
        &b,
        &carol_token,
        reqwest::Method::POST,
        &format!("/join/{}?via={}", urlencode(&second), urlencode(&a.name())),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = sync_until(&a, &alice_token, &since, |s| lists(s, "changed", &carol)).await;
    let since = seen["next_batch"].as_str().unwrap().to_owned();

    // She leaves the first room: she still shares the second, so she is not `left`.
    let (status, _) = call(
        &b,
        &carol_token,
        reqwest::Method::POST,
        &format!("/rooms/{}/leave", urlencode(&first)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    b.node.state.sender.flush_once().await.unwrap();
    let seen = sync_until(&a, &alice_token, &since, |s| {
        assert!(!lists(s, "left", &carol), "still shares a room: {s}");
        membership_in_timeline(s, &first, &carol, "leave")
    })
    .await;
    let since = seen["next_batch"].as_str().unwrap().to_owned();

    // She leaves the second too: now she is `left`.
    let (status, _) = call(
        &b,
        &carol_token,
        reqwest::Method::POST,
        &format!("/rooms/{}/leave", urlencode(&second)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    b.node.state.sender.flush_once().await.unwrap();
    let seen = sync_until(&a, &alice_token, &since, |s| lists(s, "left", &carol)).await;
    let since = seen["next_batch"].as_str().unwrap().to_owned();

    // Alice leaves the first room herself: Dave, whom she shared only that room with, is `left`.
    let (status, _) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        &format!("/rooms/{}/leave", urlencode(&first)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let seen = sync_until(&a, &alice_token, &since, |s| lists(s, "left", &dave)).await;
    assert!(!lists(&seen, "changed", &dave), "{seen}");

    a.stop().await;
    b.stop().await;
}

/// The `m.presence` event of `user` in a sync, if any.
fn presence_of(sync: &Value, user: &str) -> Option<Value> {
    sync["presence"]["events"]
        .as_array()?
        .iter()
        .rev()
        .find(|e| e["sender"] == user)
        .map(|e| e["content"].clone())
}

#[tokio::test]
async fn presence_crosses_to_the_other_node_unless_turned_off() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let (alice_token, bob, bob_token, _room) = shared_room(&a, &b).await;
    let me = whoami(&a, &alice_token).await;
    let alice = me["user_id"].as_str().unwrap().to_owned();
    let since = next_batch(&b, &bob_token).await;

    // Alice says she is away: Bob's sync on the other node shows it.
    let (status, _) = call(
        &a,
        &alice_token,
        reqwest::Method::PUT,
        &format!("/presence/{}/status", urlencode(&alice)),
        json!({"presence": "unavailable", "status_msg": "at lunch"}),
    )
    .await;
    assert_eq!(status, 200);
    a.node.state.sender.flush_once().await.unwrap();
    let seen = sync_until(&b, &bob_token, &since, |s| {
        presence_of(s, &alice).is_some_and(|p| p["presence"] == "unavailable")
    })
    .await;
    let content = presence_of(&seen, &alice).unwrap();
    assert_eq!(content["status_msg"], "at lunch");
    let (status, got) = call(
        &b,
        &bob_token,
        reqwest::Method::GET,
        &format!("/presence/{}/status", urlencode(&alice)),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got["presence"], "unavailable");
    // Someone who shares no room with Alice may not see it.
    let (_, dave_token) = account(&b, "dave").await;
    let (status, body) = call(
        &b,
        &dave_token,
        reqwest::Method::GET,
        &format!("/presence/{}/status", urlencode(&alice)),
        Value::Null,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Bob is online because his client syncs: Alice sees it.
    b.node.state.sender.flush_once().await.unwrap();
    let (_, first) = call(&a, &alice_token, reqwest::Method::GET, "/sync", Value::Null).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    if presence_of(&first, &bob).is_none_or(|p| p["presence"] != "online") {
        sync_until(&a, &alice_token, &since, |s| {
            presence_of(s, &bob).is_some_and(|p| p["presence"] == "online")
        })
        .await;
    }
    // Someone else may not set Bob's presence.
    let (status, _) = call(
        &a,
        &alice_token,
        reqwest::Method::PUT,
        &format!("/presence/{}/status", urlencode(&bob)),
        json!({"presence": "offline"}),
    )
    .await;
    assert_eq!(status, 403);
    a.stop().await;
    b.stop().await;

    // A node with presence off keeps nothing from its peers and shows nothing.
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|c| c.presence.enabled = false).await;
    let (alice_token, _, bob_token, room) = shared_room(&a, &b).await;
    let (status, _) = call(
        &a,
        &alice_token,
        reqwest::Method::PUT,
        &format!(
            "/presence/{}/status",
            urlencode(whoami(&a, &alice_token).await["user_id"].as_str().unwrap())
        ),
        json!({"presence": "online", "status_msg": "here"}),
    )
    .await;
    assert_eq!(status, 200);
    // A message after the presence update: once it is on B, the EDU before it was handled.
    let (status, _) = call(
        &a,
        &alice_token,
        reqwest::Method::PUT,
        &format!("/rooms/{}/send/m.room.message/p1", urlencode(&room)),
        json!({"msgtype": "m.text", "body": "after presence"}),
    )
    .await;
    assert_eq!(status, 200);
    a.node.state.sender.flush_once().await.unwrap();
    assert_eq!(history(&b, &bob_token, &room).await.len(), 1);
    let (_, synced) = call(&b, &bob_token, reqwest::Method::GET, "/sync", Value::Null).await;
    assert_eq!(synced["presence"]["events"], json!([]), "{synced}");
    a.stop().await;
    b.stop().await;
}

/// `/account/whoami` as `token`: `user_id` and `device_id`.
async fn whoami(peer: &Peer, token: &str) -> Value {
    let (status, me) = call(
        peer,
        token,
        reqwest::Method::GET,
        "/account/whoami",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{me}");
    me
}

/// The room's events as `token` pages back through `/messages` `page` at a time from the end:
/// `(type, body or state key)`, oldest first.
async fn page_back(peer: &Peer, token: &str, room: &str, page: usize) -> Vec<(String, String)> {
    let mut from: Option<String> = None;
    let mut out = Vec::new();
    for _ in 0..100 {
        let mut path = format!("/rooms/{}/messages?dir=b&limit={page}", urlencode(room));
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", urlencode(from)));
        }
        let (status, body) = call(peer, token, reqwest::Method::GET, &path, Value::Null).await;
        assert_eq!(status, 200, "{body}");
        for event in body["chunk"].as_array().unwrap() {
            let what = event["content"]["body"]
                .as_str()
                .or(event["state_key"].as_str())
                .unwrap_or_default();
            out.push((event["type"].as_str().unwrap().to_owned(), what.to_owned()));
        }
        match body["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => {
                out.reverse();
                return out;
            }
        }
    }
    panic!("paging never ended");
}

#[tokio::test]
async fn history_from_before_a_join_is_backfilled_from_the_other_node() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let (_, alice_token) = account(&a, "alice").await;
    let (_, created) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "public_chat", "name": "old times"}),
    )
    .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    for i in 0..30 {
        let (status, _) = call(
            &a,
            &alice_token,
            reqwest::Method::PUT,
            &format!("/rooms/{}/send/m.room.message/h{i}", urlencode(&room)),
            json!({"msgtype": "m.text", "body": format!("before {i}")}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (bob, bob_token) = account(&b, "bob").await;
    let (status, reply) = call(
        &b,
        &bob_token,
        reqwest::Method::POST,
        &format!("/join/{}?via={}", urlencode(&room), urlencode(&a.name())),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");

    // Bob pages back 7 at a time: the history before his join comes from A, in A's order,
    // down to the room's creation, each event once.
    let on_b = page_back(&b, &bob_token, &room, 7).await;
    let on_a = page_back(&a, &alice_token, &room, 100).await;
    assert_eq!(on_b.first().unwrap().0, "m.room.create", "{on_b:?}");
    assert_eq!(
        on_b.last().unwrap(),
        &("m.room.member".to_owned(), bob.clone())
    );
    let messages = |events: &[(String, String)]| -> Vec<String> {
        events
            .iter()
            .filter(|(kind, _)| kind == "m.room.message")
            .map(|(_, body)| body.clone())
            .collect()
    };
    let expected: Vec<String> = (0..30).map(|i| format!("before {i}")).collect();
    assert_eq!(messages(&on_b), expected);
    assert_eq!(on_b, on_a, "both servers show the same history");
    // Paging again needs no peer: the history is stored.
    a.stop().await;
    assert_eq!(page_back(&b, &bob_token, &room, 100).await, on_b);
    b.stop().await;
}

#[tokio::test]
async fn registered_territories_are_reached_without_dns() {
    use unitas_territory::TerritoryCode;
    use unitas_territory::record::{AuthorityKey, NodeRecord, Signatures, TerritoryRecord};

    // A's territory has a name no resolver knows; the registry says where its node is.
    let a = Peer::start(|c| c.server.server_name = "a.unitas.test".into()).await;
    let authority = SigningKey::generate().unwrap();
    let node_key = SigningKey::generate().unwrap();
    let now = u64::try_from(unitas::node::now_ms()).unwrap();
    let records = tempfile::tempdir().unwrap();
    let territory = TerritoryRecord {
        code: TerritoryCode::parse("DK").unwrap(),
        name: "Denmark".into(),
        server_name: "a.unitas.test".into(),
        node_id: node_key.public_key_base64(),
        region: TerritoryCode::parse("eu").unwrap(),
        version: 1,
        not_before: now - 60_000,
        not_after: now + 3_600_000,
        signatures: Signatures::new(),
    }
    .sign(&authority)
    .unwrap();
    let node = NodeRecord {
        node_id: String::new(),
        client_url: format!("http://{}", a.node.client_addr),
        client_urls: Default::default(),
        federation_url: format!("https://{}", a.node.federation_addr),
        dht_addrs: vec![],
        region: TerritoryCode::parse("eu").unwrap(),
        territories: vec![TerritoryCode::parse("DK").unwrap()],
        updated_at: now,
        signatures: Signatures::new(),
    }
    .sign(&node_key)
    .unwrap();
    for (file, json) in [
        ("dk.json", serde_json::to_string(&territory).unwrap()),
        ("node.json", serde_json::to_string(&node).unwrap()),
    ] {
        std::fs::write(records.path().join(file), json).unwrap();
    }
    let records_dir = records.path().to_owned();
    let authority_key = AuthorityKey::of(&authority).to_string();
    let b = Peer::start(move |c| {
        c.registry.authorities = vec![authority_key];
        c.registry.records_dir = Some(records_dir);
    })
    .await;
    let c = Peer::start(|_| {}).await;

    let (_, alice_token) = account(&a, "alice").await;
    let (_, created) = call(
        &a,
        &alice_token,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "public_chat"}),
    )
    .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let join_path = format!("/join/{}?via=a.unitas.test", urlencode(&room));

    // Without the registry, the name leads nowhere.
    let (_, carol_token) = account(&c, "carol").await;
    let (status, _) = call(
        &c,
        &carol_token,
        reqwest::Method::POST,
        &join_path,
        json!({}),
    )
    .await;
    assert_ne!(status, 200);

    // With it, B's user joins and both sides talk.
    let (bob, bob_token) = account(&b, "bob").await;
    let (status, reply) = call(&b, &bob_token, reqwest::Method::POST, &join_path, json!({})).await;
    assert_eq!(status, 200, "{reply}");
    let (status, _) = call(
        &b,
        &bob_token,
        reqwest::Method::PUT,
        &format!("/rooms/{}/send/m.room.message/r1", urlencode(&room)),
        json!({"msgtype": "m.text", "body": "routed by the registry"}),
    )
    .await;
    assert_eq!(status, 200);
    b.node.state.sender.flush_once().await.unwrap();
    let on_a = history(&a, &alice_token, &room).await;
    assert_eq!(
        on_a.last().map(|(_, body)| body.as_str()),
        Some("routed by the registry")
    );
    assert!(joined(&a, &alice_token, &room).await.contains(&bob));

    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// A space on one node with a child room that lives on another: the hierarchy asks the other
/// node (federation `/hierarchy`), which shows its public room and keeps a private one to itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_lists_a_child_room_of_another_node() {
    let a = Peer::start(|_| {}).await;
    let b = Peer::start(|_| {}).await;
    let (_, alice) = account(&a, "alice").await;
    let (_, bob) = account(&b, "bob").await;
    let (_, public) = call(
        &a,
        &alice,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "public_chat", "name": "Public on A"}),
    )
    .await;
    let public = public["room_id"].as_str().unwrap().to_owned();
    let (_, private) = call(
        &a,
        &alice,
        reqwest::Method::POST,
        "/createRoom",
        json!({"preset": "private_chat", "name": "Private on A"}),
    )
    .await;
    let private = private["room_id"].as_str().unwrap().to_owned();
    let (_, space) = call(&b, &bob, reqwest::Method::POST, "/createRoom",
        json!({"preset": "public_chat", "name": "Space on B", "creation_content": {"type": "m.space"}})).await;
    let space = space["room_id"].as_str().unwrap().to_owned();
    for child in [&public, &private] {
        let (status, _) = call(
            &b,
            &bob,
            reqwest::Method::PUT,
            &format!(
                "/rooms/{}/state/m.space.child/{}",
                urlencode(&space),
                urlencode(child)
            ),
            json!({"via": [a.name()]}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let answer: Value = http()
        .get(format!(
            "http://{}/_matrix/client/v1/rooms/{}/hierarchy",
            b.node.client_addr,
            urlencode(&space)
        ))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = answer["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(names, ["Space on B", "Public on A"], "{answer}");
    // What A tells B directly about its private room: nothing.
    let asked = b
        .ask(
            &a,
            &format!("/_matrix/federation/v1/hierarchy/{}", urlencode(&private)),
        )
        .await;
    assert!(asked.is_err(), "{asked:?}");
    a.stop().await;
    b.stop().await;
}

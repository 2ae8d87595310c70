//! The HTTP surface of in-process nodes, over real sockets (federation over TLS).

use serde_json::json;
use unitas::config::TerritoryConfig;
use unitas::{Config, Node};
use unitas_territory::TerritoryCode;

use crate::support::{
    TestNode, get_json, get_json_as, http, join_room, node_with_two_users, node_with_two_users_on,
    post_json, test_config, verify_server_keys,
};

#[tokio::test]
async fn versions_and_health() {
    let t = TestNode::start().await;
    let (status, body) = get_json(&t.client("/_matrix/client/versions"), None).await;
    assert_eq!(status, 200);
    assert!(
        body["versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "v1.12")
    );
    assert_eq!(
        body["unstable_features"],
        json!({"org.matrix.simplified_msc3575": true})
    );

    for path in ["/health", "/live"] {
        assert_eq!(get_json(&t.client(path), None).await.0, 200, "{path}");
        assert_eq!(
            get_json(&t.federation(path), None).await.0,
            200,
            "{path} on federation"
        );
    }
    let (status, body) = get_json(&t.client("/ready"), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    t.node.shutdown().await;
}

#[tokio::test]
async fn ready_reports_an_unreachable_database() {
    let t = TestNode::start().await;
    t.node.state.store.close().await;
    let (status, body) = get_json(&t.client("/ready"), None).await;
    assert_eq!(
        (status, body["database"].as_str()),
        (503, Some("unreachable"))
    );
    // Liveness does not depend on the database.
    assert_eq!(get_json(&t.client("/live"), None).await.0, 200);
    t.node.shutdown().await;
}

#[tokio::test]
async fn unknown_endpoints_and_methods_are_matrix_errors() {
    let t = TestNode::start().await;
    let (status, body) = get_json(&t.client("/_matrix/client/v3/nonexistent"), None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_UNRECOGNIZED"))
    );
    let (status, body) = get_json(&t.federation("/_matrix/federation/v1/nonexistent"), None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_UNRECOGNIZED"))
    );

    let response = http()
        .delete(t.client("/_matrix/client/versions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    t.node.shutdown().await;
}

#[tokio::test]
async fn cors_on_every_path() {
    let t = TestNode::start().await;
    let preflight = http()
        .request(
            reqwest::Method::OPTIONS,
            t.client("/_matrix/client/v3/login"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 200);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in ["x-requested-with", "content-type", "authorization"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    // Plain responses, errors included, carry the origin header too.
    let response = http()
        .get(t.client("/_matrix/client/v3/nonexistent"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    t.node.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused() {
    let t = TestNode::start_with(|c| c.server.max_request_body_bytes = 4096).await;
    let response = http()
        .post(t.client("/_matrix/client/versions"))
        .body(vec![b'x'; 10_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_TOO_LARGE");
    t.node.shutdown().await;
}

#[tokio::test]
async fn key_server_document_is_signed_and_valid() {
    let t = TestNode::start().await;
    let before = unitas::node::now_ms();
    let (status, doc) = get_json(&t.federation("/_matrix/key/v2/server"), None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["server_name"], "localhost:8448");
    let key = &t.node.state.territories.all()[0].key;
    assert_eq!(
        doc["verify_keys"][key.key_id()]["key"],
        key.public_key_base64()
    );
    let valid_until = doc["valid_until_ts"].as_i64().unwrap();
    assert!(
        valid_until >= before + 86_400_000 - 1_000,
        "valid for a day: {valid_until}"
    );
    assert_eq!(doc["old_verify_keys"], json!({}));
    verify_server_keys(&doc);

    // The deprecated form with a key ID answers the same document.
    let (status, by_id) = get_json(
        &t.federation(&format!("/_matrix/key/v2/server/{}", key.key_id())),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(by_id["verify_keys"], doc["verify_keys"]);

    let (status, version) = get_json(&t.federation("/_matrix/federation/v1/version"), None).await;
    assert_eq!(
        (status, version["server"]["name"].as_str()),
        (200, Some("Unitas"))
    );
    t.node.shutdown().await;
}

#[tokio::test]
async fn a_rotated_key_is_published_as_old() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(test_config(dir.path(), None)).await.unwrap();
    let first = node.state.territories.all()[0].key.key_id();
    node.shutdown().await;

    // The operator replaces the key file with a new key.
    let key_file = dir.path().join("keys/local.signing.key");
    std::fs::remove_file(&key_file).unwrap();
    let node = Node::start(test_config(dir.path(), None)).await.unwrap();
    let second = node.state.territories.all()[0].key.key_id();
    assert_ne!(first, second);
    let url = format!("https://{}/_matrix/key/v2/server", node.federation_addr);
    let (_, doc) = get_json(&url, None).await;
    assert!(doc["verify_keys"].get(&second).is_some());
    assert!(doc["verify_keys"].get(&first).is_none());
    assert!(
        doc["old_verify_keys"][&first]["expired_ts"]
            .as_i64()
            .unwrap()
            > 0
    );
    assert!(doc["old_verify_keys"][&first]["key"].is_string());
    verify_server_keys(&doc);
    node.shutdown().await;
}

fn two_territories(config: &mut Config) {
    let territory = |code: &str, server_name: &str| TerritoryConfig {
        code: TerritoryCode::parse(code).unwrap(),
        server_name: server_name.into(),
        name: None,
        signing_key_file: None,
        client_base_url: Some(format!("https://matrix.{server_name}")),
        federation_host: None,
    };
    config.territories = vec![territory("DK", "dk.test"), territory("NO", "no.test:8448")];
}

#[tokio::test]
async fn requests_are_routed_to_territories_by_host() {
    let t = TestNode::start_with(two_territories).await;
    let keys = "/_matrix/key/v2/server";

    let (_, dk) = get_json(&t.federation(keys), Some("dk.test")).await;
    let (_, no) = get_json(&t.federation(keys), Some("no.test:8448")).await;
    assert_eq!(dk["server_name"], "dk.test");
    assert_eq!(no["server_name"], "no.test:8448");
    verify_server_keys(&dk);
    verify_server_keys(&no);
    let dk_keys: Vec<_> = dk["verify_keys"].as_object().unwrap().values().collect();
    let no_keys: Vec<_> = no["verify_keys"].as_object().unwrap().values().collect();
    assert_ne!(dk_keys, no_keys, "each territory signs with its own key");

    // The port may be left out when it identifies the territory anyway.
    let (_, no_bare) = get_json(&t.federation(keys), Some("no.test")).await;
    assert_eq!(no_bare["server_name"], "no.test:8448");

    // Federation addressed to a name this node does not host finds no territory.
    let (status, body) = get_json(&t.federation(keys), Some("se.test")).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );

    // Well-known answers per territory, on both listeners.
    let (_, server) = get_json(&t.client("/.well-known/matrix/server"), Some("no.test")).await;
    assert_eq!(server, json!({"m.server": "no.test:8448"}));
    let (_, client) = get_json(&t.federation("/.well-known/matrix/client"), Some("dk.test")).await;
    assert_eq!(
        client,
        json!({"m.homeserver": {"base_url": "https://matrix.dk.test"}})
    );
    // The client host of a territory routes to it as well.
    let (_, client) = get_json(
        &t.client("/.well-known/matrix/client"),
        Some("matrix.no.test"),
    )
    .await;
    assert_eq!(
        client["m.homeserver"]["base_url"],
        "https://matrix.no.test:8448"
    );
    // The client API falls back to the default territory for unknown hosts (IP addresses).
    let (status, client) = get_json(
        &t.client("/.well-known/matrix/client"),
        Some("192.0.2.7:8008"),
    )
    .await;
    assert_eq!(
        (status, client["m.homeserver"]["base_url"].as_str()),
        (200, Some("https://matrix.dk.test"))
    );

    // Rows are kept per territory.
    use unitas_storage::{SigningKeys, Territories};
    let stored = t.node.state.store.list_territories().await.unwrap();
    assert_eq!(
        stored.iter().map(|r| r.code.as_str()).collect::<Vec<_>>(),
        ["DK", "NO"]
    );
    assert_eq!(
        t.node
            .state
            .store
            .list_signing_keys("NO")
            .await
            .unwrap()
            .len(),
        1
    );
    t.node.shutdown().await;
}

#[tokio::test]
async fn a_territory_cannot_change_its_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(test_config(dir.path(), None)).await.unwrap();
    node.shutdown().await;
    let mut config = test_config(dir.path(), None);
    config.server.server_name = "renamed.test".into();
    let err = Node::start(config).await.unwrap_err().to_string();
    assert!(
        err.contains("localhost:8448") && err.contains("renamed.test"),
        "{err}"
    );
}

#[tokio::test]
async fn a_node_on_postgres() {
    let Some(url) = unitas_storage::testing::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(test_config(dir.path(), Some(url)))
        .await
        .unwrap();
    let (status, body) = get_json(&format!("http://{}/ready", node.client_addr), None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let (status, doc) = get_json(
        &format!("https://{}/_matrix/key/v2/server", node.federation_addr),
        None,
    )
    .await;
    assert_eq!(status, 200);
    verify_server_keys(&doc);
    assert!(
        !dir.path().join("unitas.db").exists(),
        "no SQLite file on a PostgreSQL node"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_listeners() {
    let t = TestNode::start().await;
    let client_addr = t.node.client_addr;
    assert_eq!(get_json(&t.client("/health"), None).await.0, 200);
    t.node.shutdown().await;
    assert!(tokio::net::TcpStream::connect(client_addr).await.is_err());
}

#[tokio::test]
async fn rooms_are_served_by_the_node_and_survive_a_restart() {
    use unitas_federation::rooms::{EventTemplate, NewRoom, RoomVersion, Signer};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(test_config(dir.path(), None)).await.unwrap();
    let territory = node.state.territories.all()[0].clone();
    let signer = Signer {
        server_name: territory.server_name(),
        key: &territory.key,
    };
    let alice = ruma::UserId::parse("@alice:localhost:8448").unwrap();
    let version = RoomVersion::parse(&node.state.config.rooms.default_version).unwrap();
    let room = NewRoom {
        version,
        join_rule: "invite".into(),
        initial_state: vec![],
    };
    let room_id = node
        .state
        .rooms
        .create_room(signer, &alice, room)
        .await
        .unwrap();
    let message = EventTemplate::message("m.room.message", json!({"body": "kept"}));
    let sent = node
        .state
        .rooms
        .send_local(&room_id, &alice, &message, signer)
        .await
        .unwrap();
    node.shutdown().await;

    let node = Node::start(test_config(dir.path(), None)).await.unwrap();
    assert_eq!(
        node.state
            .rooms
            .forward_extremities(&room_id)
            .await
            .unwrap(),
        vec![sent.event_id.clone()]
    );
    let state = node
        .state
        .rooms
        .current_state(&room_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.len(), 5);
    node.shutdown().await;
}

#[tokio::test]
async fn clients_over_the_rate_limit_are_told_when_to_retry() {
    let t = TestNode::start_with(|c| {
        c.rate_limits.per_second = 0.5;
        c.rate_limits.burst = 2;
    })
    .await;
    let url = t.client("/_matrix/client/v3/register/available?username=someone");
    assert_eq!(get_json(&url, None).await.0, 200);
    assert_eq!(get_json(&url, None).await.0, 200);
    let (status, body) = get_json(&url, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (429, Some("M_LIMIT_EXCEEDED"))
    );
    let retry = body["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 2_000, "{retry}");
    // Endpoints the spec does not rate-limit stay open.
    assert_eq!(
        get_json(&t.client("/_matrix/client/versions"), None)
            .await
            .0,
        200
    );
    t.node.shutdown().await;
}

#[tokio::test]
async fn each_territory_serves_its_own_users() {
    let t = TestNode::start_with(|c| {
        two_territories(c);
        c.registration.enabled = true;
    })
    .await;
    let register = t.client("/_matrix/client/v3/register");
    let body = json!({"username": "ana", "password": "pw", "auth": {"type": "m.login.dummy"}});
    let (status, dk) = post_json(&register, "matrix.dk.test", None, body.clone()).await;
    assert_eq!(status, 200, "{dk}");
    assert_eq!(dk["user_id"], "@ana:dk.test");
    // The same name in the other territory is another account.
    let (status, no) = post_json(&register, "no.test", None, body).await;
    assert_eq!(status, 200, "{no}");
    assert_eq!(no["user_id"], "@ana:no.test:8448");

    // A user logs in at their own territory only.
    let login = t.client("/_matrix/client/v3/login");
    let password = |user: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "pw"});
    assert_eq!(
        post_json(&login, "dk.test", None, password("@ana:dk.test"))
            .await
            .0,
        200
    );
    assert_eq!(
        post_json(&login, "no.test", None, password("@ana:dk.test"))
            .await
            .0,
        403
    );

    // Both territories share a room on this node; each signs its own events.
    let dk_token = dk["access_token"].as_str().unwrap();
    let no_token = no["access_token"].as_str().unwrap();
    let (_, room) = post_json(
        &t.client("/_matrix/client/v3/createRoom"),
        "dk.test",
        Some(dk_token),
        json!({"preset": "public_chat"}),
    )
    .await;
    let room_id = room["room_id"].as_str().unwrap();
    let (status, joined) = post_json(
        &t.client(&format!("/_matrix/client/v3/join/{room_id}")),
        "no.test",
        Some(no_token),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{joined}");
    let state = t
        .node
        .state
        .rooms
        .current_state(&ruma::RoomId::parse(room_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let member = &state[&("m.room.member".to_owned(), "@ana:no.test:8448".to_owned())];
    let pdu = t.node.state.rooms.get_pdu(member).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_str(&pdu.json).unwrap();
    assert!(json["signatures"].get("no.test:8448").is_some(), "{json}");
    t.node.shutdown().await;
}

#[tokio::test]
async fn the_registry_routes_clients_from_checked_records_only() {
    use unitas_federation::SigningKey;
    use unitas_territory::record::{AuthorityKey, NodeRecord, Signatures, TerritoryRecord};

    let authority = SigningKey::generate().unwrap();
    let forger = SigningKey::generate().unwrap();
    let dk_node = SigningKey::generate().unwrap();
    let records = tempfile::tempdir().unwrap();
    let now = u64::try_from(unitas::node::now_ms()).unwrap();
    let record = |code: &str, server: &str, node: &SigningKey, version: u64| TerritoryRecord {
        code: TerritoryCode::parse(code).unwrap(),
        name: code.into(),
        server_name: server.into(),
        node_id: node.public_key_base64(),
        region: TerritoryCode::parse("eu").unwrap(),
        version,
        not_before: now - 60_000,
        not_after: now + 86_400_000,
        signatures: Signatures::new(),
    };
    // Files are read in name order: the newer DK record first, then an old one replayed.
    write_json(
        records.path(),
        "a-dk-v2.json",
        &record("DK", "dk.example", &dk_node, 2)
            .sign(&authority)
            .unwrap(),
    );
    write_json(
        records.path(),
        "b-dk-v1.json",
        &record("DK", "old.example", &dk_node, 1)
            .sign(&authority)
            .unwrap(),
    );
    write_json(
        records.path(),
        "c-se-forged.json",
        &record("SE", "se.example", &forger, 1)
            .sign(&forger)
            .unwrap(),
    );
    write_json(
        records.path(),
        "d-dk-node.json",
        &NodeRecord {
            node_id: String::new(),
            client_url: "https://dk.example".into(),
            client_urls: Default::default(),
            federation_url: "https://dk.example:8448".into(),
            dht_addrs: vec![],
            region: TerritoryCode::parse("eu").unwrap(),
            territories: vec![TerritoryCode::parse("DK").unwrap()],
            updated_at: now,
            signatures: Signatures::new(),
        }
        .sign(&dk_node)
        .unwrap(),
    );
    std::fs::write(records.path().join("e-garbage.json"), "{not json").unwrap();

    let records_dir = records.path().to_owned();
    let authority_key = AuthorityKey::of(&authority).to_string();
    let node = TestNode::start_with(move |c| {
        c.registry.authorities = vec![authority_key];
        c.registry.records_dir = Some(records_dir);
    })
    .await;

    let (status, list) = get_json(&node.client("/_unitas/client/v1/territories"), None).await;
    assert_eq!(status, 200);
    let codes: Vec<&str> = list["territories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["DK"], "the forged SE record is refused: {list}");
    let (status, dk) = get_json(&node.client("/_unitas/client/v1/territories/DK"), None).await;
    assert_eq!(status, 200);
    assert_eq!(dk["version"], 2, "the replayed version 1 lost: {dk}");
    assert_eq!(dk["server_name"], "dk.example");
    assert_eq!(dk["client_url"], "https://dk.example");
    assert_eq!(dk["hosted_here"], false);

    let (status, route) = get_json(
        &node.client("/_unitas/client/v1/route?user_id=%40alice%3Adk.example"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(route["code"], "DK");
    assert_eq!(route["client_url"], "https://dk.example");
    for (path, expected, errcode) in [
        ("/_unitas/client/v1/route?territory=SE", 404, "M_NOT_FOUND"),
        ("/_unitas/client/v1/territories/SE", 404, "M_NOT_FOUND"),
        ("/_unitas/client/v1/route", 400, "M_INVALID_PARAM"),
        (
            "/_unitas/client/v1/route?user_id=alice",
            400,
            "M_INVALID_PARAM",
        ),
    ] {
        let (status, body) = get_json(&node.client(path), None).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert_eq!(body["errcode"], errcode, "{path}");
    }

    // A DK user logging in here is sent to DK's node; a user of an unknown server is refused.
    for (user, errcode) in [
        ("@alice:dk.example", "ORG.UNITAS.WRONG_TERRITORY"),
        ("@alice:nowhere.example", "M_FORBIDDEN"),
    ] {
        let response = http()
            .post(node.client("/_matrix/client/v3/login"))
            .json(&json!({"type": "m.login.password", "password": "x",
                "identifier": {"type": "m.id.user", "user": user}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["errcode"], errcode, "{body}");
        if errcode.starts_with("ORG.") {
            assert_eq!(body["territory"], "DK");
            assert_eq!(body["home_server_name"], "dk.example");
            assert_eq!(body["home_client_url"], "https://dk.example");
        }
    }

    // Registering here as a DK user ID: told where DK's node is, before any auth step.
    let response = http()
        .post(node.client("/_matrix/client/v3/register"))
        .json(&json!({"username": "@bob:dk.example", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "ORG.UNITAS.WRONG_TERRITORY", "{body}");
    assert_eq!(body["home_client_url"], "https://dk.example");

    // A malformed authority key stops the node at start, with the key named.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), None);
    config.registry.authorities = vec!["ed25519:x=notakey".into()];
    let Err(err) = Node::start(config).await else {
        panic!("a malformed authority key must stop the node")
    };
    assert!(err.to_string().contains("registry.authorities"), "{err}");
    node.node.shutdown().await;
}

/// Writes `value` as JSON to `dir/name`.
fn write_json(dir: &std::path::Path, name: &str, value: &impl serde::Serialize) {
    std::fs::write(dir.join(name), serde_json::to_string(value).unwrap()).unwrap();
}

/// An ed25519 key pair whose key ID is `ed25519:<version>`; `None`: the public key itself (as
/// cross-signing keys are named). Returns the pair and its unpadded base64 public key.
fn cross_key(version: Option<&str>) -> (ruma::signatures::Ed25519KeyPair, String) {
    use ruma::signatures::Ed25519KeyPair;
    let der = Ed25519KeyPair::generate();
    let probe = Ed25519KeyPair::from_der(&der, "probe".into()).unwrap();
    let public =
        ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(probe.public_key().to_vec())
            .encode();
    let version = version.map_or_else(|| public.clone(), str::to_owned);
    (Ed25519KeyPair::from_der(&der, version).unwrap(), public)
}

fn signed(
    value: serde_json::Value,
    by: &str,
    key: &ruma::signatures::Ed25519KeyPair,
) -> serde_json::Value {
    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(value).unwrap();
    ruma::signatures::sign_json(by, key, &mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

/// Cross-signing: the first upload needs no password, replacing the master key does; others
/// see the master and self-signing keys (the user-signing key only its owner); signatures of
/// the user's device and of another user's master key are added when they verify, refused when
/// they do not or when the signed object was changed.
#[tokio::test]
async fn cross_signing_keys_and_signatures() {
    let t = TestNode::start_with(|c| {
        c.registration.enabled = true;
        c.rate_limits.enabled = false;
    })
    .await;
    let host = "localhost:8448";
    let url = |path: &str| t.client(&format!("/_matrix/client/v3{path}"));
    let mut accounts = Vec::new();
    for name in ["alice", "bob"] {
        let (status, body) = post_json(
            &url("/register"),
            host,
            None,
            json!({"username": name, "password": "correct horse", "auth": {"type": "m.login.dummy"}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        accounts.push((
            body["user_id"].as_str().unwrap().to_owned(),
            body["access_token"].as_str().unwrap().to_owned(),
            body["device_id"].as_str().unwrap().to_owned(),
        ));
    }
    let (alice, alice_token, alice_device) = accounts[0].clone();
    let (bob, bob_token, _) = accounts[1].clone();
    // They share a room, so Bob learns of Alice's key changes (`/keys/changes`).
    let (_, room) = post_json(
        &url("/createRoom"),
        host,
        Some(&bob_token),
        json!({"preset": "public_chat"}),
    )
    .await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    join_room(&t, host, &alice_token, &room_id).await;
    let next_batch = |token: String| {
        let url = url("/sync?timeout=0");
        async move {
            let body: serde_json::Value = http()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["next_batch"].as_str().unwrap().to_owned()
        }
    };
    let before = next_batch(bob_token.clone()).await;

    // Alice's device keys, signed by the device.
    let (device_key, device_public) = cross_key(Some(&alice_device));
    let device_keys = signed(
        json!({
            "user_id": alice, "device_id": alice_device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("ed25519:{alice_device}"): device_public,
                format!("curve25519:{alice_device}"): "curve25519+public+key",
            },
        }),
        &alice,
        &device_key,
    );
    let (status, _) = post_json(
        &url("/keys/upload"),
        host,
        Some(&alice_token),
        json!({"device_keys": device_keys}),
    )
    .await;
    assert_eq!(status, 200);

    let cross = |usage: &str, user: &str, public: &str| json!({"user_id": user, "usage": [usage], "keys": {format!("ed25519:{public}"): public}});
    let (master, master_public) = cross_key(None);
    let (self_signing, self_public) = cross_key(None);
    let (user_signing, user_public) = cross_key(None);
    let master_json = cross("master", &alice, &master_public);
    let self_json = signed(cross("self_signing", &alice, &self_public), &alice, &master);
    let user_json = signed(cross("user_signing", &alice, &user_public), &alice, &master);
    // Only a master key may come first; a key naming someone else is refused.
    let (status, body) = post_json(
        &url("/keys/device_signing/upload"),
        host,
        Some(&alice_token),
        json!({"self_signing_key": self_json}),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );
    let (status, _) = post_json(
        &url("/keys/device_signing/upload"),
        host,
        Some(&alice_token),
        json!({"master_key": cross("master", &bob, &master_public)}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = post_json(
        &url("/keys/device_signing/upload"),
        host,
        Some(&alice_token),
        json!({"master_key": master_json, "self_signing_key": self_json, "user_signing_key": user_json}),
    )
    .await;
    assert_eq!(status, 200, "first upload needs no password: {body}");
    // The same keys again: still no password; another master key: the password.
    let (status, _) = post_json(
        &url("/keys/device_signing/upload"),
        host,
        Some(&alice_token),
        json!({"master_key": master_json}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, other_public) = cross_key(None);
    let replacement = json!({"master_key": cross("master", &alice, &other_public)});
    let (status, body) = post_json(
        &url("/keys/device_signing/upload"),
        host,
        Some(&alice_token),
        replacement.clone(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["flows"].is_array());
    let mut with_auth = replacement;
    with_auth["auth"] = json!({"type": "m.login.password", "password": "correct horse",
        "identifier": {"type": "m.id.user", "user": "alice"}, "session": body["session"]});
    let (status, _) = post_json(
        &url("/keys/device_signing/upload"),
        host,
        Some(&alice_token),
        with_auth,
    )
    .await;
    assert_eq!(status, 200);
    // Back to the first master key (with the password) for the signatures below.
    let (status, _) = post_json(
        &url("/keys/device_signing/upload"),
        host,
        Some(&alice_token),
        json!({"master_key": master_json, "auth": {"type": "m.login.password", "password": "correct horse",
            "identifier": {"type": "m.id.user", "user": "alice"}}}),
    )
    .await;
    assert_eq!(status, 200);

    // A self-signing key the master key did not sign is refused (even with the password).
    let (status, body) = post_json(
        &url("/keys/device_signing/upload"),
        host,
        Some(&alice_token),
        json!({"self_signing_key": cross("self_signing", &alice, &other_public),
            "auth": {"type": "m.login.password", "password": "correct horse",
                "identifier": {"type": "m.id.user", "user": "alice"}}}),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    // Bob sees Alice's master and self-signing keys, not her user-signing key; she sees all.
    let query = json!({"device_keys": {alice.clone(): []}});
    let (_, seen) = post_json(&url("/keys/query"), host, Some(&bob_token), query.clone()).await;
    assert_eq!(
        seen["master_keys"][&alice]["keys"][format!("ed25519:{master_public}")],
        master_public
    );
    assert_eq!(
        seen["self_signing_keys"][&alice]["usage"],
        json!(["self_signing"])
    );
    assert!(seen["user_signing_keys"].get(&alice).is_none(), "{seen}");
    let (_, own) = post_json(&url("/keys/query"), host, Some(&alice_token), query.clone()).await;
    assert_eq!(
        own["user_signing_keys"][&alice]["usage"],
        json!(["user_signing"])
    );

    // Alice's self-signing key signs her device; a forged signature and a changed object fail.
    let device_signed = signed(device_keys.clone(), &alice, &self_signing);
    let mut forged = device_signed.clone();
    forged["signatures"][&alice][format!("ed25519:{self_public}")] = json!("AAAA");
    let mut changed = device_signed.clone();
    changed["keys"][format!("curve25519:{alice_device}")] = json!("another+key");
    for (body, failed) in [
        (forged, "M_INVALID_SIGNATURE"),
        (changed, "M_INVALID_SIGNATURE"),
    ] {
        let (status, answer) = post_json(
            &url("/keys/signatures/upload"),
            host,
            Some(&alice_token),
            json!({alice.clone(): {alice_device.clone(): body}}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            answer["failures"][&alice][&alice_device]["errcode"], failed,
            "{answer}"
        );
    }
    let (status, answer) = post_json(
        &url("/keys/signatures/upload"),
        host,
        Some(&alice_token),
        json!({alice.clone(): {alice_device.clone(): device_signed}}),
    )
    .await;
    assert_eq!(
        (status, answer["failures"].clone()),
        (200, json!({})),
        "{answer}"
    );
    let (_, seen) = post_json(&url("/keys/query"), host, Some(&bob_token), query).await;
    let signatures = &seen["device_keys"][&alice][&alice_device]["signatures"][&alice];
    assert!(
        signatures.get(format!("ed25519:{self_public}")).is_some(),
        "{seen}"
    );
    assert!(
        signatures.get(format!("ed25519:{alice_device}")).is_some(),
        "{seen}"
    );

    // Bob's master key signed by Alice's user-signing key.
    let (_, bob_master_public) = cross_key(None);
    let bob_master = cross("master", &bob, &bob_master_public);
    let (status, _) = post_json(
        &url("/keys/device_signing/upload"),
        host,
        Some(&bob_token),
        json!({"master_key": bob_master}),
    )
    .await;
    assert_eq!(status, 200);
    // Only her user-signing key may vouch for another user: her device key may not.
    let by_device = signed(bob_master.clone(), &alice, &device_key);
    let (_, answer) = post_json(
        &url("/keys/signatures/upload"),
        host,
        Some(&alice_token),
        json!({bob.clone(): {bob_master_public.clone(): by_device}}),
    )
    .await;
    assert_eq!(
        answer["failures"][&bob][&bob_master_public]["errcode"], "M_INVALID_SIGNATURE",
        "{answer}"
    );
    let vouched = signed(bob_master, &alice, &user_signing);
    let (status, answer) = post_json(
        &url("/keys/signatures/upload"),
        host,
        Some(&alice_token),
        json!({bob.clone(): {bob_master_public.clone(): vouched}}),
    )
    .await;
    assert_eq!(
        (status, answer["failures"].clone()),
        (200, json!({})),
        "{answer}"
    );
    let (_, seen) = post_json(
        &url("/keys/query"),
        host,
        Some(&alice_token),
        json!({"device_keys": {bob.clone(): []}}),
    )
    .await;
    assert!(
        seen["master_keys"][&bob]["signatures"][&alice][format!("ed25519:{user_public}")]
            .is_string(),
        "{seen}"
    );
    let after = next_batch(bob_token.clone()).await;
    let changes: serde_json::Value = http()
        .get(url(&format!("/keys/changes?from={before}&to={after}")))
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        changes["changed"]
            .as_array()
            .unwrap()
            .contains(&json!(alice)),
        "{changes}"
    );
    assert_eq!(changes["left"], json!([]));
    // Nothing to sign: an unknown key ID.
    let (_, answer) = post_json(
        &url("/keys/signatures/upload"),
        host,
        Some(&alice_token),
        json!({bob.clone(): {"NOPE": {"a": 1}}}),
    )
    .await;
    assert_eq!(answer["failures"][&bob]["NOPE"]["errcode"], "M_NOT_FOUND");
    t.node.shutdown().await;
}

/// Calls and reports: TURN credentials only when a TURN server is configured (coturn's REST
/// convention), MatrixRTC transports in the well-known document and at their endpoint, reports
/// stored for admins.
#[tokio::test]
async fn turn_credentials_rtc_transports_and_reports() {
    use unitas_storage::Reports;
    for configured in [false, true] {
        let t = TestNode::start_with(|c| {
            c.registration.enabled = true;
            c.rate_limits.enabled = false;
            if configured {
                c.voip.turn_uris = vec!["turns:turn.example.org:5349".into()];
                c.voip.turn_shared_secret = Some(unitas::config::Secret::new("s3cret".into()));
                c.voip.turn_user_lifetime_secs = 600;
                c.voip.rtc_foci = vec![unitas::config::RtcFocus {
                    kind: "livekit".into(),
                    livekit_service_url: "https://livekit-jwt.example.org".into(),
                }];
            }
        })
        .await;
        let host = "localhost:8448";
        let (_, registered) = post_json(
            &t.client("/_matrix/client/v3/register"),
            host,
            None,
            json!({"username": "caller", "password": "pw", "auth": {"type": "m.login.dummy"}}),
        )
        .await;
        let token = registered["access_token"].as_str().unwrap().to_owned();
        let user = registered["user_id"].as_str().unwrap().to_owned();
        let get = |path: &str| http().get(t.client(path)).bearer_auth(&token).send();
        let turn = get("/_matrix/client/v3/voip/turnServer").await.unwrap();
        let well_known: serde_json::Value = get("/.well-known/matrix/client")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let transports: serde_json::Value =
            get("/_matrix/client/unstable/org.matrix.msc4143/rtc/transports")
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        if configured {
            assert_eq!(turn.status(), 200);
            let turn: serde_json::Value = turn.json().await.unwrap();
            assert_eq!(turn["uris"], json!(["turns:turn.example.org:5349"]));
            assert_eq!(turn["ttl"], 600);
            let username = turn["username"].as_str().unwrap();
            let (expiry, named) = username.split_once(':').unwrap();
            assert_eq!(named, user);
            let now = u64::try_from(unitas::node::now_ms() / 1000).unwrap();
            assert!((now + 590..=now + 610).contains(&expiry.parse::<u64>().unwrap()));
            // coturn recomputes base64(HMAC-SHA1(secret, username)) and compares.
            use base64::Engine;
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
            mac.update(username.as_bytes());
            assert_eq!(
                turn["password"].as_str().unwrap(),
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            );
            let foci = json!([{"type": "livekit", "livekit_service_url": "https://livekit-jwt.example.org"}]);
            assert_eq!(well_known["org.matrix.msc4143.rtc_foci"], foci);
            assert_eq!(transports["rtc_transports"], foci);
        } else {
            assert_eq!(turn.status(), 404);
            assert!(well_known.get("org.matrix.msc4143.rtc_foci").is_none());
            assert_eq!(transports["rtc_transports"], json!([]));
        }
        // Reports land in the store for admins; a user of ours that does not exist is a 404.
        let (status, _) = post_json(
            &t.client(&format!(
                "/_matrix/client/v3/users/{}/report",
                unitas_federation::inbound::percent(&user)
            )),
            host,
            Some(&token),
            json!({"reason": "testing"}),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = post_json(
            &t.client("/_matrix/client/v3/users/%40ghost%3Alocalhost%3A8448/report"),
            host,
            Some(&token),
            json!({"reason": "nobody"}),
        )
        .await;
        assert_eq!(status, 404);
        let reports = t.node.state.store.list_reports(10).await.unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(
            (reports[0].kind.as_str(), reports[0].user_id.as_deref()),
            ("user", Some(user.as_str()))
        );
        t.node.shutdown().await;
    }
}

/// `/search` on both backends: every word must match, case does not matter, only rooms the
/// user is joined to, best first or newest first, pages through `next_batch`, redacted events
/// drop out, search syntax in the term is taken literally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_messages_in_joined_rooms_on_both_backends() {
    let mut databases = vec![None];
    if let Some(url) = unitas_storage::testing::postgres_database().await {
        databases.push(Some(url));
    }
    for database in databases {
        let backend = if database.is_some() {
            "postgres"
        } else {
            "sqlite"
        };
        let (t, alice, bob) = node_with_two_users_on(move |c| c.storage.database = database).await;
        let (alice, bob) = (&alice, &bob);
        let host = "localhost:8448";
        let url = |path: &str| t.client(&format!("/_matrix/client/v3{path}"));
        let room = |token: &str, topic: &str| {
            let (url, token, topic) = (url("/createRoom"), token.to_owned(), topic.to_owned());
            async move {
                let (_, body) = post_json(&url, host, Some(&token), json!({"topic": topic})).await;
                body["room_id"].as_str().unwrap().to_owned()
            }
        };
        let ours = room(alice, "foxes and dogs").await;
        let theirs = room(bob, "private").await;
        let send = |token: &str, room: &str, txn: &str, body: &str| {
            let url = url(&format!(
                "/rooms/{}/send/m.room.message/{txn}",
                unitas_federation::inbound::percent(room)
            ));
            let (token, body) = (token.to_owned(), body.to_owned());
            async move {
                let response: serde_json::Value = http()
                    .put(url)
                    .bearer_auth(token)
                    .json(&json!({"msgtype": "m.text", "body": body}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                response["event_id"].as_str().unwrap().to_owned()
            }
        };
        send(alice, &ours, "1", "The quick brown Fox").await;
        send(alice, &ours, "2", "a lazy dog sleeps").await;
        let third = send(alice, &ours, "3", "quick thinking, quick fox").await;
        send(bob, &theirs, "4", "a quick fox in a room alice is not in").await;
        let search = |body: serde_json::Value, next: Option<String>| {
            let url = match next {
                Some(n) => url(&format!("/search?next_batch={n}")),
                None => url("/search"),
            };
            let token = alice.clone();
            async move {
                let (status, answer) = post_json(&url, host, Some(&token), body).await;
                assert_eq!(status, 200, "{answer}");
                answer["search_categories"]["room_events"].clone()
            }
        };
        let criteria = |term: &str, extra: serde_json::Value| {
            let mut c = json!({"search_term": term});
            if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(extra.clone());
            }
            json!({"search_categories": {"room_events": c}})
        };
        let bodies = |found: &serde_json::Value| -> Vec<String> {
            found["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r["result"]["content"]["body"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect()
        };
        let found = search(criteria("QUICK fox", json!({})), None).await;
        assert_eq!(found["count"], 2, "{backend}: {found}");
        let mut got = bodies(&found);
        got.sort();
        assert_eq!(
            got,
            ["The quick brown Fox", "quick thinking, quick fox"],
            "{backend}"
        );
        // Newest first, one a page.
        let first = search(
            criteria(
                "quick",
                json!({"order_by": "recent", "filter": {"limit": 1}}),
            ),
            None,
        )
        .await;
        assert_eq!(bodies(&first), ["quick thinking, quick fox"], "{backend}");
        let next = first["next_batch"].as_str().unwrap().to_owned();
        let second = search(
            criteria(
                "quick",
                json!({"order_by": "recent", "filter": {"limit": 1}}),
            ),
            Some(next),
        )
        .await;
        assert_eq!(bodies(&second), ["The quick brown Fox"], "{backend}");
        assert!(second.get("next_batch").is_none(), "{backend}: {second}");
        // Topics by key; search syntax is only words.
        let topics = search(criteria("dogs", json!({"keys": ["content.topic"]})), None).await;
        assert_eq!(topics["count"], 1, "{backend}: {topics}");
        let literal = search(criteria("quick OR \"lazy\" NEAR(", json!({})), None).await;
        assert_eq!(literal["count"], 0, "{backend}: {literal}");
        // A redacted message drops out.
        let (status, _) = {
            let response = http()
                .put(url(&format!(
                    "/rooms/{}/redact/{}/r1",
                    unitas_federation::inbound::percent(&ours),
                    unitas_federation::inbound::percent(&third)
                )))
                .bearer_auth(alice)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), ())
        };
        assert_eq!(status, 200);
        let found = search(criteria("quick", json!({})), None).await;
        assert_eq!(bodies(&found), ["The quick brown Fox"], "{backend}");
        t.node.shutdown().await;
    }
}

/// Relations and threads: `/relations` by type and event type with pages, `/threads` with the
/// thread summary, and relations bundled into `/messages`.
#[tokio::test]
async fn relations_threads_and_bundled_aggregations() {
    let (t, alice, bob) = node_with_two_users().await;
    let host = "localhost:8448";
    let v3 = |path: &str| t.client(&format!("/_matrix/client/v3{path}"));
    let v1 = |path: &str| t.client(&format!("/_matrix/client/v1{path}"));
    let (_, created) = post_json(&v3("/createRoom"), host, Some(&alice), json!({})).await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let enc = unitas_federation::inbound::percent;
    let send = |kind: &str, txn: &str, content: serde_json::Value| {
        let url = v3(&format!("/rooms/{}/send/{kind}/{txn}", enc(&room)));
        let token = alice.clone();
        async move {
            let answer: serde_json::Value = http()
                .put(url)
                .bearer_auth(token)
                .json(&content)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer["event_id"].as_str().unwrap().to_owned()
        }
    };
    let root = send(
        "m.room.message",
        "root",
        json!({"msgtype": "m.text", "body": "root"}),
    )
    .await;
    for (i, body) in ["reply 1", "reply 2"].iter().enumerate() {
        send(
            "m.room.message",
            &format!("t{i}"),
            json!({"msgtype": "m.text", "body": body,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                "m.in_reply_to": {"event_id": root}}}),
        )
        .await;
    }
    let edit = send(
        "m.room.message",
        "edit",
        json!({"msgtype": "m.text", "body": "* root!",
        "m.new_content": {"msgtype": "m.text", "body": "root!"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    send(
        "m.reaction",
        "react",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}}),
    )
    .await;
    let reference = send(
        "m.room.message",
        "ref",
        json!({"msgtype": "m.text", "body": "see above",
        "m.relates_to": {"rel_type": "m.reference", "event_id": root}}),
    )
    .await;

    let get = |url: String, token: String| async move {
        let response = http().get(url).bearer_auth(token).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let base = format!("/rooms/{}/relations/{}", enc(&room), enc(&root));
    let (status, all) = get(v1(&base), alice.clone()).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(ids(&all).len(), 5);
    assert_eq!(ids(&all)[0], reference, "newest first");
    let (_, first) = get(v1(&format!("{base}?limit=2&dir=f")), alice.clone()).await;
    let next = first["next_batch"].as_str().unwrap().to_owned();
    let (_, second) = get(
        v1(&format!("{base}?limit=2&dir=f&from={next}")),
        alice.clone(),
    )
    .await;
    assert_eq!(ids(&second)[0], edit, "{second}");
    let (_, threads_only) = get(v1(&format!("{base}/m.thread")), alice.clone()).await;
    assert_eq!(ids(&threads_only).len(), 2);
    let (_, reactions) = get(
        v1(&format!("{base}/m.annotation/m.reaction")),
        alice.clone(),
    )
    .await;
    assert_eq!(ids(&reactions).len(), 1);
    let (status, _) = get(v1(&base), bob.clone()).await;
    assert_eq!(status, 404, "not in the room");

    let (_, threads) = get(v1(&format!("/rooms/{}/threads", enc(&room))), alice.clone()).await;
    assert_eq!(ids(&threads), std::slice::from_ref(&root));
    let summary = &threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 2, "{threads}");
    assert_eq!(summary["current_user_participated"], true);
    assert_eq!(summary["latest_event"]["content"]["body"], "reply 2");

    let (_, messages) = get(
        v3(&format!("/rooms/{}/messages?dir=b&limit=20", enc(&room))),
        alice.clone(),
    )
    .await;
    let root_event = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .unwrap();
    let relations = &root_event["unsigned"]["m.relations"];
    assert_eq!(relations["m.thread"]["count"], 2, "{root_event}");
    assert_eq!(relations["m.replace"]["event_id"], edit.as_str());
    assert_eq!(
        relations["m.reference"]["chunk"][0]["event_id"],
        reference.as_str()
    );
    // The same in sync's timeline.
    let filter = enc(r#"{"room":{"timeline":{"limit":20}}}"#);
    let (_, synced) = get(v3(&format!("/sync?filter={filter}")), alice.clone()).await;
    let timeline = synced["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap();
    let root_event = timeline
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .unwrap();
    assert_eq!(
        root_event["unsigned"]["m.relations"]["m.thread"]["count"], 2,
        "{root_event}"
    );
    assert_eq!(
        root_event["unsigned"]["m.relations"]["m.replace"]["event_id"],
        edit.as_str()
    );
    t.node.shutdown().await;
}

/// `/hierarchy`: a space's children breadth first, what the user may see, `suggested_only`,
/// `max_depth` and pages.
#[tokio::test]
async fn space_hierarchy_shows_visible_children() {
    let (t, alice, bob) = node_with_two_users().await;
    let host = "localhost:8448";
    let v3 = |path: &str| t.client(&format!("/_matrix/client/v3{path}"));
    let create = |body: serde_json::Value| {
        let (url, token) = (v3("/createRoom"), alice.clone());
        async move {
            let (_, created) = post_json(&url, host, Some(&token), body).await;
            created["room_id"].as_str().unwrap().to_owned()
        }
    };
    let space = create(
        json!({"preset": "public_chat", "name": "Space", "creation_content": {"type": "m.space"}}),
    )
    .await;
    let general = create(json!({"preset": "public_chat", "name": "General"})).await;
    let secret = create(json!({"preset": "private_chat", "name": "Secret"})).await;
    let deep = create(json!({"preset": "public_chat", "name": "Deep"})).await;
    let enc = unitas_federation::inbound::percent;
    let link = |parent: &str, child: &str, suggested: bool| {
        let url = v3(&format!(
            "/rooms/{}/state/m.space.child/{}",
            enc(parent),
            enc(child)
        ));
        let token = alice.clone();
        async move {
            let response = http()
                .put(url)
                .bearer_auth(token)
                .json(&json!({"via": ["localhost:8448"], "suggested": suggested}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    link(&space, &general, true).await;
    link(&space, &secret, false).await;
    link(&general, &deep, false).await;
    let names = |token: &str, query: &str| {
        let url = t.client(&format!(
            "/_matrix/client/v1/rooms/{}/hierarchy{query}",
            enc(&space)
        ));
        let token = token.to_owned();
        async move {
            let answer: serde_json::Value = http()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let names: Vec<String> = answer["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap_or("?").to_owned())
                .collect();
            (names, answer)
        }
    };
    let (all, answer) = names(&alice, "").await;
    assert_eq!(all, ["Space", "General", "Secret", "Deep"], "{answer}");
    assert_eq!(answer["rooms"][0]["room_type"], "m.space");
    assert_eq!(
        answer["rooms"][0]["children_state"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        names(&bob, "").await.0,
        ["Space", "General", "Deep"],
        "bob sees no private room"
    );
    assert_eq!(
        names(&alice, "?suggested_only=true").await.0,
        ["Space", "General"]
    );
    assert_eq!(
        names(&alice, "?max_depth=1").await.0,
        ["Space", "General", "Secret"]
    );
    let (first, page) = names(&alice, "?limit=2").await;
    assert_eq!(first, ["Space", "General"]);
    let next = page["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(
        names(&alice, &format!("?limit=2&from={next}")).await.0,
        ["Secret", "Deep"]
    );
    t.node.shutdown().await;
}

/// `unitas bench` against a node: every message it times is in the room afterwards, in the
/// order a single sender sent it, and the report counts what it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_driver_sends_what_it_reports() {
    let (t, alice, _) = node_with_two_users().await;
    let report = unitas::bench::run(unitas::bench::BenchOptions {
        url: t.client(""),
        users: 3,
        messages: 40,
        senders: 4,
        sequential: 5,
        wakeups: 3,
        pid: Some(std::process::id()),
    })
    .await
    .expect("the load run succeeds");
    assert_eq!(report.sequential.len(), 5);
    assert_eq!(report.concurrent.len(), 40);
    assert_eq!(report.wakeups.len(), 3);
    assert!(report.throughput > 0.0);
    assert!(report.rss_kib.is_some_and(|kib| kib > 0));

    join_room(&t, "localhost:8448", &alice, &report.room_id).await;
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=200",
        unitas_federation::inbound::percent(&report.room_id)
    );
    let (status, body) = get_json_as(&t.client(&path), &alice).await;
    assert_eq!(status, 200, "{body}");
    let bodies: Vec<&str> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    let of = |kind: &str| -> Vec<&str> {
        bodies
            .iter()
            .copied()
            .filter(|b| b.starts_with(kind))
            .collect()
    };
    let sequential: Vec<String> = (0..5).map(|i| format!("sequential {i}")).collect();
    assert_eq!(of("sequential "), sequential);
    assert_eq!(of("concurrent ").len(), 40);
    assert_eq!(of("wake "), ["wake 0", "wake 1", "wake 2"]);
}

//! Test nodes on port 0 and an HTTP client for them.

use std::path::Path;

use ruma::CanonicalJsonObject;
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, PublicKeySet, verify_json};
use serde_json::{Value, json};
use unitas::{Config, Node};

/// A config for a test node: ports 0, data under `dir`, SQLite unless `database` is given.
pub fn test_config(dir: &Path, database: Option<String>) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.federation_listen = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = dir.to_owned();
    config.server.shutdown_grace_secs = 5;
    config.storage.database = database;
    config
}

/// A running in-process node and its data directory.
pub struct TestNode {
    pub node: Node,
    /// Kept so the data directory lives as long as the node.
    pub _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), None);
        adjust(&mut config);
        let node = Node::start(config).await.expect("test node starts");
        TestNode { node, _dir: dir }
    }

    pub fn client(&self, path: &str) -> String {
        format!("http://{}{path}", self.node.client_addr)
    }

    pub fn federation(&self, path: &str) -> String {
        format!("https://{}{path}", self.node.federation_addr)
    }
}

/// An HTTP client that accepts the nodes' self-signed certificates.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .build()
        .unwrap()
}

/// GET `url` (optionally with a Host header) -> (status, JSON body).
pub async fn get_json(url: &str, host: Option<&str>) -> (u16, Value) {
    let mut request = http().get(url);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Checks a key server document's signature with its own current key, as a peer would.
pub fn verify_server_keys(doc: &Value) {
    let server_name = doc["server_name"].as_str().unwrap();
    let mut set = PublicKeySet::new();
    for (key_id, key) in doc["verify_keys"].as_object().unwrap() {
        let bytes = unitas_federation::keys::decode_base64(key["key"].as_str().unwrap()).unwrap();
        set.insert(key_id.clone(), Base64::new(bytes));
    }
    let mut map = PublicKeyMap::new();
    map.insert(server_name.to_owned(), set);
    let object: CanonicalJsonObject = serde_json::from_value(doc.clone()).unwrap();
    verify_json(&map, &object).expect("key server document verifies");
}

/// POST `body` as JSON to `url` with a Host header (and a token) -> (status, JSON).
pub async fn post_json(
    url: &str,
    host: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut request = http().post(url).header("host", host).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// A node with open registration and no rate limits, and alice and bob on it: the node and
/// their access tokens.
pub async fn node_with_two_users() -> (TestNode, String, String) {
    node_with_two_users_on(|_| {}).await
}

/// [`node_with_two_users`] with more settings (another database).
pub async fn node_with_two_users_on(
    adjust: impl FnOnce(&mut Config),
) -> (TestNode, String, String) {
    let t = TestNode::start_with(|c| {
        c.registration.enabled = true;
        c.rate_limits.enabled = false;
        adjust(c);
    })
    .await;
    let mut tokens = Vec::new();
    for name in ["alice", "bob"] {
        let (status, body) = post_json(
            &t.client("/_matrix/client/v3/register"),
            "localhost:8448",
            None,
            json!({"username": name, "password": "pw", "auth": {"type": "m.login.dummy"}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
    }
    let bob = tokens.pop().unwrap();
    let alice = tokens.pop().unwrap();
    (t, alice, bob)
}

/// GET `url` as the holder of `token` -> (status, JSON body).
pub async fn get_json_as(url: &str, token: &str) -> (u16, Value) {
    let response = http().get(url).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The holder of `token` joins `room` on `t` (Host `host`); the join must succeed.
pub async fn join_room(t: &TestNode, host: &str, token: &str, room: &str) {
    let path = format!(
        "/_matrix/client/v3/join/{}",
        unitas_federation::inbound::percent(room)
    );
    let (status, body) = post_json(&t.client(&path), host, Some(token), json!({})).await;
    assert_eq!(status, 200, "joining {room}: {body}");
}

/// Whether a `/sync` answer's unread counts include every event it shows: its token
/// (`s<stream>_<aux>_<counted>`) says how far the push rules had seen the stream.
pub fn sync_settled(sync: &Value) -> bool {
    let token = sync["next_batch"].as_str().unwrap_or_default();
    let mut parts = token.trim_start_matches('s').split('_');
    let stream: i64 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(i64::MAX);
    let counted: i64 = parts
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(i64::MIN);
    counted >= stream
}

/// An initial `/sync` of the holder of `token` once the push rules have seen every event it
/// shows (counts read after it include everything sent before it).
pub async fn settled_sync(t: &TestNode, host: &str, token: &str) -> Value {
    let settled = async {
        loop {
            let response = http()
                .get(t.client("/_matrix/client/v3/sync"))
                .header("host", host)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let body: Value = response.json().await.unwrap();
            if sync_settled(&body) {
                return body;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), settled)
        .await
        .expect("the push rules catch up with the stream")
}

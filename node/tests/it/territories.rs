//! The four-region network: four nodes on 127.0.0.1 (eu, am, ap, af, each with its launch
//! territories) join one DHT, learn the authority's records published with `unitas registry
//! publish`, route users home, replicate a global room, and refuse forged records.

use std::time::Duration;

use serde_json::{Value, json};
use unitas::{Config, Node};
use unitas_federation::SigningKey;
use unitas_territory::TerritoryCode;
use unitas_territory::catalog::LAUNCH_REGIONS;
use unitas_territory::record::{AuthorityKey, Signatures, TerritoryRecord};
use unitas_territory::registry::territory_key;

use crate::support::{http, test_config};

/// One region's node.
struct RegionNode {
    region: &'static str,
    node: Node,
    node_key: SigningKey,
    dir: tempfile::TempDir,
}

fn server_name(code: &str) -> String {
    format!("{}.unitas.test", code.to_ascii_lowercase())
}

impl RegionNode {
    async fn start(region: &'static str, authority: &AuthorityKey, bootstrap: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config: Config = test_config(dir.path(), None);
        config.registration.enabled = true;
        config.rate_limits.enabled = false;
        config.federation.verify_tls = false;
        config.federation.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
        config.registry.authorities = vec![authority.to_string()];
        config.dht.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        config.dht.bootstrap = bootstrap.to_vec();
        let countries = LAUNCH_REGIONS
            .iter()
            .find(|r| r.code == region)
            .unwrap()
            .countries;
        config.territories = countries
            .iter()
            .map(|code| {
                toml::from_str(&format!(
                    "code = \"{code}\"\nserver_name = \"{}\"",
                    server_name(code)
                ))
                .unwrap()
            })
            .collect();
        // The node key exists before the start, so the authority can name the node.
        let node_key = SigningKey::generate().unwrap();
        node_key
            .write_new(&unitas::registry::node_key_file(&config))
            .unwrap();
        let node = Node::start(config).await.unwrap();
        RegionNode {
            region,
            node,
            node_key,
            dir,
        }
    }

    /// The node's effective config as a file, for the admin commands.
    fn config_file(&self) -> std::path::PathBuf {
        let file = self.dir.path().join("effective.toml");
        std::fs::write(&file, toml::to_string(&*self.node.state.config).unwrap()).unwrap();
        file
    }

    fn countries(&self) -> &'static [&'static str] {
        LAUNCH_REGIONS
            .iter()
            .find(|r| r.code == self.region)
            .unwrap()
            .countries
    }

    fn dht(&self) -> &unitas_territory::dht::DhtClient {
        self.node.state.dht.as_ref().unwrap()
    }

    fn client_url(&self) -> String {
        format!("http://{}", self.node.client_addr)
    }

    /// A client API request for territory `host` (the Host header picks the territory).
    async fn call(
        &self,
        host: &str,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = http()
            .request(method, format!("{}{path}", self.client_url()))
            .header("Host", host);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends a text message to `room` as the user of `token` in territory `code`.
    async fn send_text(&self, code: &str, token: &str, room: &str, txn: &str, body: &str) {
        let (status, reply) = self
            .call(
                &server_name(code),
                Some(token),
                reqwest::Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                    unitas_federation::inbound::percent(room)
                ),
                Some(json!({"msgtype": "m.text", "body": body})),
            )
            .await;
        assert_eq!(status, 200, "{code}: {reply}");
    }

    /// Registers `name` in territory `code`: (user ID, token).
    async fn register(&self, code: &str, name: &str) -> (String, String) {
        let (status, reply) = self
            .call(
                &server_name(code),
                None,
                reqwest::Method::POST,
                "/_matrix/client/v3/register",
                Some(json!({"username": name, "password": "correct horse",
                    "auth": {"type": "m.login.dummy"}})),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
        (
            reply["user_id"].as_str().unwrap().to_owned(),
            reply["access_token"].as_str().unwrap().to_owned(),
        )
    }
}

fn territory_record(
    code: &str,
    node_key: &SigningKey,
    version: u64,
    signer: &SigningKey,
) -> TerritoryRecord {
    let now = u64::try_from(unitas::node::now_ms()).unwrap();
    let region = unitas_territory::catalog::region_of(code).unwrap().code;
    TerritoryRecord {
        code: TerritoryCode::parse(code).unwrap(),
        name: unitas_territory::catalog::name_of(code).unwrap().into(),
        server_name: server_name(code),
        node_id: node_key.public_key_base64(),
        region: TerritoryCode::parse(region).unwrap(),
        version,
        not_before: now - 60_000,
        not_after: now + 86_400_000,
        signatures: Signatures::new(),
    }
    .sign(signer)
    .unwrap()
}

/// Waits until `check` passes, within a bound: the DHT spreads records on its own schedule.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The (code, version, node client URL) of every territory a node routes.
async fn routes(node: &RegionNode) -> Vec<(String, u64, Option<String>)> {
    let (status, list) = node
        .call(
            "localhost",
            None,
            reqwest::Method::GET,
            "/_unitas/client/v1/territories",
            None,
        )
        .await;
    assert_eq!(status, 200);
    list["territories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["code"].as_str().unwrap().to_owned(),
                t["version"].as_u64().unwrap(),
                t["client_url"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Runs `unitas <args>` as a node admin would; its standard output.
async fn admin(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking({
        let args = args.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_unitas"))
                .args(&args)
                .env_remove("UNITAS_CONFIG")
                .current_dir(std::env::temp_dir())
                .output()
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "unitas {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The bodies of the last 100 messages of `room` as a user sees them.
async fn bodies(node: &RegionNode, host: &str, token: &str, room: &str) -> Vec<String> {
    let (status, page) = node
        .call(
            host,
            Some(token),
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                unitas_federation::inbound::percent(room)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let mut bodies: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect();
    bodies.reverse();
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_regions_route_users_home_share_a_global_room_and_refuse_forged_records() {
    let authority = SigningKey::generate().unwrap();
    let authority_key = AuthorityKey::of(&authority);
    let eu = RegionNode::start("eu", &authority_key, &[]).await;
    let eu_addr = eu.dht().listen_addrs().await.unwrap()[0].to_string();
    let bootstrap = [eu_addr.clone()];
    let am = RegionNode::start("am", &authority_key, &bootstrap).await;
    let ap = RegionNode::start("ap", &authority_key, &bootstrap).await;
    let af = RegionNode::start("af", &authority_key, &bootstrap).await;
    let nodes = [&eu, &am, &ap, &af];

    // The authority signs a record per launch territory; an operator publishes them with the
    // CLI through the eu node.
    let records = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for node in nodes {
        for code in node.countries() {
            let record = territory_record(code, &node.node_key, 1, &authority);
            let file = records.path().join(format!("{code}.json"));
            std::fs::write(&file, serde_json::to_string(&record).unwrap()).unwrap();
            files.push(file);
        }
    }
    let config_file = records.path().join("publisher.toml");
    std::fs::write(
        &config_file,
        format!("[registry]\nauthorities = [\"{authority_key}\"]\n"),
    )
    .unwrap();
    let published = tokio::task::spawn_blocking({
        let peer = eu_addr.clone();
        move || {
            unitas::registry_cli::run(unitas::registry_cli::RegistryCommand::Publish {
                files,
                peers: vec![peer],
                config: Some(config_file),
            })
        }
    })
    .await
    .unwrap();
    assert_eq!(published, Ok(()));

    // Every node learns all 19 territories and every node's record (its client URL).
    for node in nodes {
        eventually("every node routes all launch territories", || async {
            let routes = routes(node).await;
            routes.len() == 19 && routes.iter().all(|(_, v, url)| *v == 1 && url.is_some())
        })
        .await;
    }
    let (_, dk) = am
        .call(
            "localhost",
            None,
            reqwest::Method::GET,
            "/_unitas/client/v1/territories/DK",
            None,
        )
        .await;
    assert_eq!(dk["client_url"], eu.client_url(), "{dk}");
    assert_eq!(dk["record"]["version"], 1);

    // The node admin's view of a running node: every node with its last-seen time, every
    // territory with its version; one record as JSON.
    let status = admin(&["registry", "status", "--url", &am.client_url()]).await;
    assert!(status.contains("nodes (4)"), "{status}");
    assert!(status.contains("territories (19)"), "{status}");
    for node in nodes {
        let line = status
            .lines()
            .find(|l| l.contains(&node.node_key.public_key_base64()) && l.contains("last seen"))
            .unwrap_or_else(|| panic!("{} missing: {status}", node.region));
        assert!(line.contains(&node.client_url()), "{line}");
    }
    let shown = admin(&["registry", "show", "DK", "--url", &am.client_url()]).await;
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["node_id"], eu.node_key.public_key_base64());
    assert!(
        shown["signatures"]["unitas-registry"].is_object(),
        "{shown}"
    );

    // A DK user registering on the am node is sent to the eu node.
    let (status, refused) = am
        .call(
            "localhost",
            None,
            reqwest::Method::POST,
            "/_matrix/client/v3/register",
            Some(json!({"username": "@bob:dk.unitas.test", "password": "correct horse"})),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["errcode"], "ORG.UNITAS.WRONG_TERRITORY");
    assert_eq!(refused["home_client_url"], eu.client_url());
    assert_eq!(refused["territory"], "DK");

    // A global room: made in DK, joined from NO (same node), US, AU and ZA; everyone writes.
    let (_, dk_token) = eu.register("DK", "alice").await;
    let (status, created) = eu
        .call(
            "dk.unitas.test",
            Some(&dk_token),
            reqwest::Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({"preset": "public_chat", "name": "Global"})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    let mut members = vec![(&eu, "DK", dk_token)];
    for (node, code) in [(&eu, "NO"), (&am, "US"), (&ap, "AU"), (&af, "ZA")] {
        let (_, token) = node.register(code, "member").await;
        let (status, joined) = node
            .call(
                &server_name(code),
                Some(&token),
                reqwest::Method::POST,
                &format!(
                    "/_matrix/client/v3/join/{}?server_name=dk.unitas.test",
                    unitas_federation::inbound::percent(&room)
                ),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "{code}: {joined}");
        members.push((node, code, token));
    }
    let mut sent = Vec::new();
    for round in 0..3 {
        for (node, code, token) in &members {
            let body = format!("{code} says {round}");
            node.send_text(code, token, &room, &format!("{code}{round}"), &body)
                .await;
            node.node.state.sender.flush_once().await.unwrap();
            sent.push(body);
        }
    }
    for (node, code, token) in &members {
        let seen = bodies(node, &server_name(code), token, &room).await;
        assert_eq!(seen, sent, "{code} on {}", node.region);
    }
    // Two messages at once from two nodes: the room forks (two forward extremities), as it does
    // whenever members of several nodes talk at the same time.
    for (index, txn) in [(2, "fork-us"), (0, "fork-dk")] {
        let (node, code, token) = &members[index];
        node.send_text(code, token, &room, txn, txn).await;
    }
    eu.node.state.sender.flush_once().await.unwrap();
    am.node.state.sender.flush_once().await.unwrap();
    sent.extend(["fork-us".to_owned(), "fork-dk".to_owned()]);
    let sorted = |mut list: Vec<String>| {
        list.sort();
        list
    };
    for (node, code, token) in &members {
        let seen = bodies(node, &server_name(code), token, &room).await;
        assert_eq!(
            sorted(seen),
            sorted(sent.clone()),
            "{code} on {}",
            node.region
        );
    }

    // A rogue DHT peer puts a forged DK record (a key no node trusts) and a replayed older
    // version of NO's record: every node refuses both and keeps routing DK and NO as before.
    let forger = SigningKey::generate().unwrap();
    let mut before = Vec::new();
    for node in nodes {
        before.push(node.dht().refused().await.unwrap());
    }
    let newer_no = territory_record("NO", &eu.node_key, 2, &authority);
    eu.dht()
        .publish(territory_key("NO"), serde_json::to_vec(&newer_no).unwrap())
        .await
        .unwrap();
    for node in nodes {
        eventually("every node takes NO version 2", || async {
            routes(node)
                .await
                .iter()
                .any(|(code, v, _)| code == "NO" && *v == 2)
        })
        .await;
    }
    let rogue_registry = std::sync::Arc::new(std::sync::RwLock::new(
        unitas_territory::registry::Registry::new(vec![authority_key.clone()]),
    ));
    let (rogue, rogue_loop) = unitas_territory::dht::start(
        SigningKey::generate().unwrap().secret_seed(),
        unitas_territory::dht::DhtConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![eu_addr.parse().unwrap()],
            ..Default::default()
        },
        rogue_registry,
    )
    .unwrap();
    let (stop_rogue, rogue_stopped) = tokio::sync::oneshot::channel::<()>();
    let rogue_task = tokio::spawn(rogue_loop.run(async move {
        let _ = rogue_stopped.await;
    }));
    rogue.wait_for_peers(4).await.unwrap();
    let forged = territory_record("DK", &SigningKey::generate().unwrap(), 9, &forger);
    let replayed = territory_record("NO", &eu.node_key, 1, &authority);
    for (key, record) in [("DK", &forged), ("NO", &replayed)] {
        rogue
            .put_unchecked(territory_key(key), serde_json::to_vec(record).unwrap())
            .await
            .unwrap();
    }
    for (node, before) in nodes.iter().zip(before) {
        eventually(
            "every node refuses the forged and the replayed record",
            || async { node.dht().refused().await.unwrap() >= before + 2 },
        )
        .await;
        let routes = routes(node).await;
        assert!(
            routes.contains(&("DK".into(), 1, Some(eu.client_url()))),
            "{} {routes:?}",
            node.region
        );
        assert!(routes.contains(&("NO".into(), 2, Some(eu.client_url()))));
    }
    let _ = stop_rogue.send(());
    rogue_task.await.unwrap();

    // DK moves from eu to a new node of its own, with the CLI: export on eu (DK turns
    // read-only there), import on the new node, the authority signs version 2 naming it.
    let export = tempfile::tempdir().unwrap();
    let out = export.path().join("dk");
    let exported = tokio::task::spawn_blocking({
        let (out, config) = (out.clone(), eu.config_file());
        move || unitas::migration::export("DK", &out, None, false, Some(&config))
    })
    .await
    .unwrap();
    assert_eq!(exported, Ok(()));
    let (status, refused) = eu
        .call(
            "dk.unitas.test",
            Some(&members[0].2),
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/late",
                unitas_federation::inbound::percent(&room)
            ),
            Some(json!({"msgtype": "m.text", "body": "too late"})),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["errcode"], "ORG.UNITAS.TERRITORY_READ_ONLY");

    let dk_dir = tempfile::tempdir().unwrap();
    let dk_key = SigningKey::generate().unwrap();
    let dk_config_file = dk_dir.path().join("unitas.toml");
    {
        let mut config = test_config(dk_dir.path(), None);
        config.registration.enabled = true;
        config.rate_limits.enabled = false;
        config.federation.verify_tls = false;
        config.federation.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
        config.registry.authorities = vec![authority_key.to_string()];
        config.registry.region = Some("eu".into());
        config.dht.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        config.dht.bootstrap = bootstrap.to_vec();
        std::fs::write(&dk_config_file, toml::to_string(&config).unwrap()).unwrap();
        dk_key
            .write_new(&unitas::registry::node_key_file(&config))
            .unwrap();
    }
    let imported = tokio::task::spawn_blocking({
        let (out, config) = (out.clone(), dk_config_file.clone());
        move || unitas::migration::import(&out, Some(&config))
    })
    .await
    .unwrap();
    assert_eq!(imported, Ok(()));
    let dk_config = unitas::Config::load(
        Some(&dk_config_file),
        std::iter::empty(),
        &Default::default(),
    )
    .unwrap()
    .config;
    let dk = RegionNode {
        region: "dk",
        node: Node::start(dk_config).await.unwrap(),
        node_key: dk_key,
        dir: dk_dir,
    };
    let moved = territory_record("DK", &dk.node_key, 2, &authority);
    eu.dht()
        .publish(territory_key("DK"), serde_json::to_vec(&moved).unwrap())
        .await
        .unwrap();
    let everyone = [&eu, &am, &ap, &af, &dk];
    for node in everyone {
        eventually("every node routes DK to the new node", || async {
            routes(node)
                .await
                .contains(&("DK".into(), 2, Some(dk.client_url())))
        })
        .await;
    }
    // The old node sends DK's users to the new one.
    eventually("the old node sees DK moved", || async {
        let (status, body) = eu
            .call(
                "dk.unitas.test",
                Some(&members[0].2),
                reqwest::Method::GET,
                "/_matrix/client/v3/account/whoami",
                None,
            )
            .await;
        status == 403 && body["home_client_url"] == dk.client_url().as_str()
    })
    .await;

    // Alice logs in on the new node with the same ID: still in the room, with its history.
    let (status, login) = dk
        .call(
            "dk.unitas.test",
            None,
            reqwest::Method::POST,
            "/_matrix/client/v3/login",
            Some(
                json!({"type": "m.login.password", "password": "correct horse",
                "identifier": {"type": "m.id.user", "user": "alice"}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["user_id"], "@alice:dk.unitas.test");
    let alice_token = login["access_token"].as_str().unwrap().to_owned();
    let (_, joined_rooms) = dk
        .call(
            "dk.unitas.test",
            Some(&alice_token),
            reqwest::Method::GET,
            "/_matrix/client/v3/joined_rooms",
            None,
        )
        .await;
    assert_eq!(
        joined_rooms["joined_rooms"],
        json!([room]),
        "{joined_rooms}"
    );
    assert_eq!(
        sorted(bodies(&dk, "dk.unitas.test", &alice_token, &room).await),
        sorted(sent.clone())
    );

    // The other nodes keep federating with DK at its new node, both ways.
    members[0] = (&dk, "DK", alice_token);
    for (sender, code) in [(2, "US"), (0, "DK"), (1, "NO")] {
        let (node, _, token) = &members[sender];
        let body = format!("{code} after the move");
        node.send_text(code, token, &room, &format!("moved{code}"), &body)
            .await;
        node.node.state.sender.flush_once().await.unwrap();
        sent.push(body);
    }
    for (node, code, token) in &members {
        let seen = bodies(node, &server_name(code), token, &room).await;
        assert_eq!(
            sorted(seen),
            sorted(sent.clone()),
            "{code} on {}",
            node.region
        );
    }

    // Rolled back: the authority names eu again (version 3). eu serves DK again by itself, and
    // the dk node sends DK's users back there.
    let back = territory_record("DK", &eu.node_key, 3, &authority);
    dk.dht()
        .publish(territory_key("DK"), serde_json::to_vec(&back).unwrap())
        .await
        .unwrap();
    let dk_state = |node: &'static str| {
        let node = if node == "eu" { &eu } else { &dk };
        async move {
            let (_, dk) = node
                .call(
                    "localhost",
                    None,
                    reqwest::Method::GET,
                    "/_unitas/client/v1/territories/DK",
                    None,
                )
                .await;
            (
                dk["version"].as_u64(),
                dk["state"].as_str().map(str::to_owned),
            )
        }
    };
    eventually("eu serves DK again, the dk node sees it moved", || async {
        dk_state("eu").await == (Some(3), Some("serving".into()))
            && dk_state("dk").await == (Some(3), Some("moved".into()))
    })
    .await;
    let (status, refused) = dk
        .call(
            "dk.unitas.test",
            Some(&members[0].2),
            reqwest::Method::GET,
            "/_matrix/client/v3/account/whoami",
            None,
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(refused["home_client_url"], eu.client_url());
    let (status, login) = eu
        .call(
            "dk.unitas.test",
            None,
            reqwest::Method::POST,
            "/_matrix/client/v3/login",
            Some(
                json!({"type": "m.login.password", "password": "correct horse",
                "identifier": {"type": "m.id.user", "user": "alice"}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{login}");

    for node in [eu, am, ap, af, dk] {
        node.node.shutdown().await;
    }
}

/// A move seen from the old node: a standby snapshot leaves the territory serving; an export
/// turns it read-only; a newer record naming another node sends its users there and makes its
/// server name remote to the rooms; a newer record naming this node again rolls it all back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_territory_is_read_only_then_moved_then_rolled_back() {
    use unitas_storage::TerritoryTransfer;

    let authority = SigningKey::generate().unwrap();
    let authority_key = AuthorityKey::of(&authority);
    let eu = RegionNode::start("eu", &authority_key, &[]).await;
    let other_node = SigningKey::generate().unwrap();
    let offer = |record: TerritoryRecord| {
        let now = u64::try_from(unitas::node::now_ms()).unwrap();
        eu.node
            .state
            .registry
            .write()
            .unwrap()
            .offer_territory(record, now)
            .unwrap();
    };
    offer(territory_record("DK", &eu.node_key, 1, &authority));
    let node_id = Some(eu.node_key.public_key_base64());
    let (_, token) = eu.register("DK", "alice").await;
    let set_name = |name: &'static str| {
        let token = token.clone();
        let eu = &eu;
        async move {
            eu.call(
                "dk.unitas.test",
                Some(&token),
                reqwest::Method::PUT,
                "/_matrix/client/v3/profile/%40alice%3Adk.unitas.test/displayname",
                Some(json!({ "displayname": name })),
            )
            .await
        }
    };
    let whoami = || {
        let token = token.clone();
        let eu = &eu;
        async move {
            eu.call(
                "dk.unitas.test",
                Some(&token),
                reqwest::Method::GET,
                "/_matrix/client/v3/account/whoami",
                None,
            )
            .await
        }
    };
    let export = tempfile::tempdir().unwrap();
    let config = eu.config_file();

    // A standby snapshot: DK keeps serving.
    let snapshot = tokio::task::spawn_blocking({
        let (out, config) = (export.path().join("standby"), config.clone());
        move || unitas::migration::export("DK", &out, None, true, Some(&config))
    })
    .await
    .unwrap();
    assert_eq!(snapshot, Ok(()));
    assert_eq!(set_name("Alice").await.0, 200);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(export.path().join("standby/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["tables"]["accounts"]["count"], 1, "{manifest}");
    assert_eq!(manifest["record_version"], 1);

    // The export waits for a write in progress, then reads are still served, writes refused.
    let in_progress = unitas::state::WriteGuard::new(
        eu.node
            .state
            .territories
            .by_server_name("dk.unitas.test")
            .unwrap()
            .clone(),
    );
    let exporting = tokio::task::spawn_blocking({
        let (out, config) = (export.path().join("move"), config.clone());
        move || unitas::migration::export("DK", &out, None, false, Some(&config))
    });
    eventually("the node drains DK's writes", || async {
        let (_, dk) = eu
            .call(
                "localhost",
                None,
                reqwest::Method::GET,
                "/_unitas/client/v1/territories/DK",
                None,
            )
            .await;
        dk["state"] == "draining"
    })
    .await;
    assert!(!exporting.is_finished(), "the export waits for the write");
    drop(in_progress);
    assert_eq!(exporting.await.unwrap(), Ok(()));
    assert_eq!(whoami().await.0, 200);
    let (status, refused) = set_name("Alicia").await;
    assert_eq!(status, 403);
    assert_eq!(refused["errcode"], "ORG.UNITAS.TERRITORY_READ_ONLY");
    // A second export of a read-only territory into the same directory is refused.
    let again = tokio::task::spawn_blocking({
        let (out, config) = (export.path().join("move"), config.clone());
        move || unitas::migration::export("DK", &out, None, false, Some(&config))
    })
    .await
    .unwrap();
    assert!(again.unwrap_err().contains("not empty"));

    // Version 2 names another node: DK's users are sent on, its server name is remote now.
    offer(territory_record("DK", &other_node, 2, &authority));
    unitas::moves::refresh(&eu.node.state, node_id.as_deref())
        .await
        .unwrap();
    let (status, moved) = whoami().await;
    assert_eq!(status, 403, "{moved}");
    assert_eq!(moved["errcode"], "ORG.UNITAS.WRONG_TERRITORY");
    assert_eq!(moved["territory"], "DK");
    assert!(!eu.node.state.rooms.is_local_server("dk.unitas.test"));
    assert!(eu.node.state.rooms.is_local_server("no.unitas.test"));

    // Version 3 names this node again: a rollback, served and writable as before.
    offer(territory_record("DK", &eu.node_key, 3, &authority));
    unitas::moves::refresh(&eu.node.state, node_id.as_deref())
        .await
        .unwrap();
    unitas::moves::refresh(&eu.node.state, node_id.as_deref())
        .await
        .unwrap();
    assert_eq!(whoami().await.0, 200);
    assert_eq!(set_name("Alicia").await.0, 200);
    assert!(eu.node.state.rooms.is_local_server("dk.unitas.test"));
    assert!(
        eu.node
            .state
            .store
            .list_read_only_territories()
            .await
            .unwrap()
            .is_empty()
    );
    eu.node.shutdown().await;
}

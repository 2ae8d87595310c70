//! Real Matrix clients against a node: matrix-nio (and, to come, matrix-js-sdk).

use unitas::Node;
use unitas_conformance_tests::{python, script};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_registers_chats_and_reads_history() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::foundation::config(dir.path());
    config.registration.enabled = true;
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.client_addr);
    let (ok, stdout, stderr) = crate::run_to_end(
        python,
        vec![script("nio_chat.py").display().to_string(), base],
    )
    .await;
    assert!(ok, "matrix-nio failed:\n{stderr}\n{stdout}");
    let facts: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(facts["messages"], 101);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_api_responses_match_the_spec() {
    let (Some(python), Some(spec)) = (python(), unitas_conformance_tests::spec_dir()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::foundation::config(dir.path());
    config.registration.enabled = true;
    config.registration.shared_secret = Some(unitas::config::Secret::new("s3cret".into()));
    std::fs::write(dir.path().join("tokens"), "letmein\n").unwrap();
    config.registration.tokens_file = Some(dir.path().join("tokens"));
    config.voip.turn_uris = vec!["turn:turn.example.org:3478?transport=udp".into()];
    config.voip.turn_shared_secret = Some(unitas::config::Secret::new("turn-secret".into()));
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.client_addr);
    let (ok, stdout, stderr) = crate::run_to_end(
        python,
        vec![
            script("client_api_schemas.py").display().to_string(),
            spec.display().to_string(),
            base,
        ],
    )
    .await;
    assert!(ok, "spec mismatches:\n{stderr}\n{stdout}");
    assert!(
        stdout.lines().filter(|l| l.starts_with("valid:")).count() >= 80,
        "{stdout}"
    );
    node.shutdown().await;
}

/// Runs a matrix-js-sdk script against a fresh node (open registration, no rate limits) and
/// returns the facts it printed last (the SDK logs to stdout before them); `None` when
/// Node.js is not there (outside CI, said loudly by `node_js`).
async fn js_facts(script: &str) -> Option<serde_json::Value> {
    let node_js = unitas_conformance_tests::node_js()?;
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::foundation::config(dir.path());
    config.registration.enabled = true;
    config.rate_limits.enabled = false;
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.client_addr);
    let path = unitas_conformance_tests::js_script(script);
    let (ok, stdout, stderr) =
        crate::run_to_end(node_js, vec![path.display().to_string(), base]).await;
    assert!(ok, "matrix-js-sdk {script} failed:\n{stderr}\n{stdout}");
    let facts = serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).unwrap();
    node.shutdown().await;
    Some(facts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_registers_chats_syncs_and_reads_history() {
    let Some(facts) = js_facts("chat.mjs").await else {
        return;
    };
    assert_eq!(facts["messages"], 101);
    assert_eq!(facts["typing"], true);
    assert_eq!(facts["receipts"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_sees_push_counts_a_thread_an_edit_and_a_reaction() {
    let Some(facts) = js_facts("push_threads.mjs").await else {
        return;
    };
    assert_eq!(facts["notifications"], 3, "{facts}");
    assert_eq!(facts["highlights"], 1, "{facts}");
    assert_eq!(facts["cleared"], true, "{facts}");
    assert_eq!(facts["thread_replies"], 2, "{facts}");
    assert_eq!(facts["edited_body"], "edited body", "{facts}");
    assert_eq!(facts["reaction_key"], "👍", "{facts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_sliding_sync_lists_rooms_and_follows_them() {
    let Some(facts) = js_facts("sliding_sync.mjs").await else {
        return;
    };
    assert_eq!(facts["client"], "matrix-js-sdk 43", "{facts}");
    assert_eq!(facts["count"], 4, "{facts}");
    assert_eq!(facts["notification_count"], 1, "{facts}");
    assert_eq!(facts["typing"], true, "{facts}");
    assert_eq!(facts["receipts"], true, "{facts}");
    assert_eq!(facts["account_data"], true, "{facts}");
    assert_eq!(facts["to_device"], 1, "{facts}");
    assert_eq!(facts["subscription_timeline"], 5, "{facts}");
    assert_eq!(facts["late_message_delivered"], true, "{facts}");
    assert_eq!(facts["unknown_pos"], "M_UNKNOWN_POS", "{facts}");
}

/// A node named `127.0.0.1:<federation port>` that federates with loopback peers.
async fn federating_node(dir: &std::path::Path) -> Node {
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let federation = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = crate::foundation::config(dir);
    config.server.listen = client.local_addr().unwrap();
    config.server.federation_listen = federation.local_addr().unwrap();
    config.server.server_name = format!("127.0.0.1:{}", federation.local_addr().unwrap().port());
    config.registration.enabled = true;
    config.rate_limits.enabled = false;
    config.federation.verify_tls = false;
    config.federation.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    Node::start_on(config, client, federation).await.unwrap()
}

/// The types of a room's events as a node stores them.
async fn stored_types(node: &Node, room_id: &str) -> Vec<String> {
    use unitas_storage::TerritoryTransfer;
    node.state
        .store
        .room_events(room_id)
        .await
        .unwrap()
        .iter()
        .map(|e| {
            let event: serde_json::Value = serde_json::from_str(&e.json).unwrap();
            event["type"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// Two matrix-nio clients with encryption (vodozemac) exchange keys and read each other's
/// messages in an encrypted room, on one node and across two federated nodes; the nodes'
/// databases hold only `m.room.encrypted` for those messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_encrypts_on_one_node_and_across_two() {
    let Some(python) = python() else { return };
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let one = federating_node(dirs[0].path()).await;
    let a = federating_node(dirs[1].path()).await;
    let b = federating_node(dirs[2].path()).await;
    let url = |node: &Node| format!("http://{}", node.client_addr);
    for (alice_node, bob_node, store) in [
        (&one, &one, dirs[3].path().join("one")),
        (&a, &b, dirs[3].path().join("two")),
    ] {
        std::fs::create_dir_all(&store).unwrap();
        let (ok, stdout, stderr) = crate::run_to_end(
            python.clone(),
            vec![
                script("nio_e2ee.py").display().to_string(),
                url(alice_node),
                url(bob_node),
                store.display().to_string(),
            ],
        )
        .await;
        assert!(ok, "matrix-nio with encryption failed:\n{stderr}\n{stdout}");
        let facts: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(
            facts["bodies"],
            serde_json::json!(["a secret from alice", "a secret from bob"])
        );
        let room = facts["room_id"].as_str().unwrap();
        for node in [alice_node, bob_node] {
            let types = stored_types(node, room).await;
            assert!(
                types.iter().filter(|t| *t == "m.room.encrypted").count() >= 2,
                "{types:?}"
            );
            assert!(!types.iter().any(|t| t == "m.room.message"), "{types:?}");
        }
    }
    for node in [one, a, b] {
        node.shutdown().await;
    }
}

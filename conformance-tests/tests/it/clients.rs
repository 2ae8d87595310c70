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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_registers_chats_syncs_and_reads_history() {
    let Some(node_js) = unitas_conformance_tests::node_js() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::foundation::config(dir.path());
    config.registration.enabled = true;
    let node = Node::start(config).await.unwrap();
    let base = format!("http://{}", node.client_addr);
    let script = unitas_conformance_tests::js_script("chat.mjs");
    let (ok, stdout, stderr) =
        crate::run_to_end(node_js, vec![script.display().to_string(), base]).await;
    assert!(ok, "matrix-js-sdk failed:\n{stderr}\n{stdout}");
    // The SDK logs to stdout; the facts are the last line.
    let facts: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).unwrap();
    assert_eq!(facts["messages"], 101);
    assert_eq!(facts["typing"], true);
    assert_eq!(facts["receipts"], true);
    node.shutdown().await;
}

//! The foundation's surface: the key server (checked with `signedjson`, as Synapse checks it)
//! and the unauthenticated endpoints (checked against the spec's OpenAPI schemas).

use serde_json::json;
use unitas::config::TerritoryConfig;
use unitas::{Config, Node};
use unitas_conformance_tests::{python, script, spec_dir};

/// A node config for these tests: ports 0, data under `dir`.
pub fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.federation_listen = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = dir.to_owned();
    config
}

/// Runs a python script to the end with the test virtualenv's python.
async fn run_python(args: Vec<String>) -> (bool, String, String) {
    crate::run_to_end(python().expect("checked by the caller"), args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signedjson_verifies_every_territory_key_server() {
    if python().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    for (code, name) in [("DK", "dk.test"), ("NO", "no.test:8448")] {
        config.territories.push(TerritoryConfig {
            code: unitas_territory::TerritoryCode::parse(code).unwrap(),
            server_name: name.into(),
            name: None,
            signing_key_file: None,
            client_base_url: None,
            federation_host: None,
        });
    }
    let node = Node::start(config).await.unwrap();
    let base = format!("https://{}", node.federation_addr);
    for host in ["dk.test", "no.test:8448"] {
        let args = vec![
            script("check_key_server.py").display().to_string(),
            base.clone(),
            host.into(),
        ];
        let (ok, stdout, stderr) = run_python(args).await;
        assert!(ok, "signedjson rejected {host}: {stdout}{stderr}");
        let facts: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(facts["server_name"], host);
        let key = &node
            .state
            .territories
            .all()
            .iter()
            .find(|t| t.server_name() == host)
            .unwrap()
            .key;
        assert_eq!(facts["verified"], json!([key.key_id()]));
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_match_the_spec_openapi_schemas() {
    let (Some(_), Some(spec)) = (python(), spec_dir()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // An old key too, so old_verify_keys is not empty.
    let first = Node::start(config(dir.path())).await.unwrap();
    first.shutdown().await;
    std::fs::remove_file(dir.path().join("keys/local.signing.key")).unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();

    let client = format!("http://{}", node.client_addr);
    let federation = format!("https://{}", node.federation_addr);
    let case = |api: &str, path: &str, url: String| json!({"api": api, "path": path, "method": "get", "status": 200, "url": url});
    let cases = json!([
        case(
            "client-server",
            "/_matrix/client/versions",
            format!("{client}/_matrix/client/versions")
        ),
        case(
            "server-server",
            "/_matrix/key/v2/server",
            format!("{federation}/_matrix/key/v2/server")
        ),
        case(
            "server-server",
            "/_matrix/federation/v1/version",
            format!("{federation}/_matrix/federation/v1/version")
        ),
        case(
            "server-server",
            "/.well-known/matrix/server",
            format!("{federation}/.well-known/matrix/server")
        ),
    ]);
    let args = vec![
        script("validate_responses.py").display().to_string(),
        spec.display().to_string(),
        cases.to_string(),
    ];
    let (ok, stdout, stderr) = run_python(args).await;
    assert!(ok, "spec schema mismatches:\n{stderr}\n{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("valid:")).count(),
        4,
        "{stdout}"
    );
    node.shutdown().await;
}

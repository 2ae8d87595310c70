//! The `unitas` binary as an operator runs it: start, stop, init, config check, and the clear
//! failures at start.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{get_json, verify_server_keys};

const BIN: &str = env!("CARGO_BIN_EXE_unitas");
/// `run` on ports the OS picks: tests never use fixed ports.
const RUN: &[&str] = &[
    "run",
    "--listen",
    "127.0.0.1:0",
    "--federation-listen",
    "127.0.0.1:0",
];

/// [`RUN`] followed by `extra`.
fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    RUN.iter().copied().chain(extra.iter().copied()).collect()
}
/// How long a node may take to print its URL (a cold debug binary under load included).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `unitas ARGS` in `dir`, without any UNITAS_ variables from the test environment.
fn unitas(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("UNITAS") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

fn run_to_end(dir: &Path, args: &[&str]) -> Output {
    unitas(dir, args)
        .stdin(Stdio::null())
        .output()
        .expect("run unitas")
}

/// A running `unitas run`, with the URLs it printed.
struct Running {
    child: Child,
    client_url: String,
    federation_url: String,
}

fn start(dir: &Path, args: &[&str]) -> Running {
    start_with_env(dir, args, &[])
}

fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = unitas(dir, args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unitas run");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut client_url = None;
    let mut federation_url = None;
    while client_url.is_none() || federation_url.is_none() {
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => {
                if let Some(url) = line.split("Matrix client URL:").nth(1) {
                    client_url = Some(url.trim().to_owned());
                }
                if let Some(url) = line.split("Federation (HTTPS):").nth(1) {
                    federation_url = Some(url.trim().to_owned());
                }
            }
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_string(&mut err);
                }
                panic!("unitas run did not print its URLs; stderr:\n{err}");
            }
        }
    }
    Running {
        child,
        client_url: client_url.unwrap(),
        federation_url: federation_url.unwrap(),
    }
}

impl Running {
    /// SIGTERM, then the exit status and stderr.
    fn stop(self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let output = self.child.wait_with_output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn assert_fails_cleanly(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("unitas: error:"))
            .count(),
        1,
        "{stderr}"
    );
}

// Multi-threaded: the blocking wait in `stop` must not starve the client's connection tasks,
// which close their HTTP/2 connections when the node says GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_defaults_serves_a_working_node_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Only the ports differ from a bare `unitas run`: tests never use fixed ports.
    let node = start(dir.path(), RUN);
    assert!(
        node.client_url.starts_with("http://127.0.0.1:"),
        "{}",
        node.client_url
    );

    let (status, versions) = get_json(
        &format!("{}/_matrix/client/versions", node.client_url),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(!versions["versions"].as_array().unwrap().is_empty());
    let (status, ready) = get_json(&format!("{}/ready", node.client_url), None).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    let (status, keys) = get_json(
        &format!("{}/_matrix/key/v2/server", node.federation_url),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(keys["server_name"], "localhost:8448");
    verify_server_keys(&keys);

    // First start made the data directory: database, a private signing key, a TLS certificate.
    let data = dir.path().join("data");
    assert!(data.join("unitas.db").exists());
    assert!(data.join("tls/federation.crt").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("keys/local.signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let (code, stderr) = node.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
}

// Multi-threaded: the blocking wait in `stop` must not starve the client's connection tasks,
// which close their HTTP/2 connections when the node says GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_postgres() {
    let Some(url) = unitas_storage::testing::postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let args = run_args(&["--database", &url]);
    let node = start(dir.path(), &args);
    let (status, ready) = get_json(&format!("{}/ready", node.client_url), None).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    let (_, keys) = get_json(
        &format!("{}/_matrix/key/v2/server", node.federation_url),
        None,
    )
    .await;
    verify_server_keys(&keys);
    assert!(!dir.path().join("data/unitas.db").exists());
    let (code, stderr) = node.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn an_unreadable_config_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_to_end(dir.path(), &["run", "--config", "missing.toml"]);
    assert_fails_cleanly(&output, "cannot read config file missing.toml");
    // A directory is not a readable file either.
    std::fs::create_dir(dir.path().join("adir")).unwrap();
    let output = run_to_end(dir.path(), &["run", "--config", "adir"]);
    assert_fails_cleanly(&output, "cannot read config file adir");
    std::fs::write(dir.path().join("broken.toml"), "[server\n").unwrap();
    let output = run_to_end(dir.path(), &["run", "--config", "broken.toml"]);
    assert_fails_cleanly(&output, "broken.toml");
    assert!(!dir.path().join("data").exists(), "nothing written");
}

#[test]
fn an_unknown_database_scheme_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_to_end(dir.path(), &["run", "--database", "mysql://localhost/x"]);
    assert_fails_cleanly(&output, "unknown database scheme `mysql`");
    assert!(!dir.path().join("data").exists(), "nothing written");
}

#[test]
fn an_unreachable_postgres_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there.
    let args = run_args(&["--database", "postgres://unitas:pw@127.0.0.1:1/unitas"]);
    // sqlx retries refused connections until the connect timeout: keep it short here.
    let output = unitas(dir.path(), &args)
        .env("UNITAS__STORAGE__CONNECT_TIMEOUT_SECS", "1")
        .output()
        .unwrap();
    assert_fails_cleanly(
        &output,
        "cannot connect to the PostgreSQL database at postgres://unitas:***@127.0.0.1:1/unitas",
    );
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains(":pw@"),
        "password not shown"
    );
    assert!(!dir.path().join("data").exists(), "nothing written");
}

#[test]
fn a_port_in_use_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run_to_end(
        dir.path(),
        &[
            "run",
            "--listen",
            &addr,
            "--federation-listen",
            "127.0.0.1:0",
        ],
    );
    assert_fails_cleanly(
        &output,
        &format!("cannot listen on {addr} for the client API"),
    );
    let output = run_to_end(
        dir.path(),
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--federation-listen",
            &addr,
        ],
    );
    assert_fails_cleanly(
        &output,
        &format!("cannot listen on {addr} for the federation API"),
    );
    assert!(!dir.path().join("data").exists(), "nothing written");
}

// Multi-threaded: the blocking wait in `stop` must not starve the client's connection tasks,
// which close their HTTP/2 connections when the node says GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_config_that_check_and_run_accept() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_to_end(
        dir.path(),
        &["init", "--server-name", "dk.test", "--code", "DK"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("unitas.toml")).unwrap();
    assert!(
        text.contains("server_name = \"dk.test\"") && text.contains("# Default"),
        "{text}"
    );
    let key_text = std::fs::read_to_string(dir.path().join("data/keys/DK.signing.key")).unwrap();
    assert!(key_text.starts_with("ed25519 a_"));

    // A second init does not clobber the file.
    let again = run_to_end(dir.path(), &["init"]);
    assert_eq!(again.status.code(), Some(1));

    let check = run_to_end(dir.path(), &["config", "check"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.contains("unitas.toml: valid") && stdout.contains("code = \"DK\""),
        "{stdout}"
    );

    // `run` picks up ./unitas.toml and serves the territory with the key init made.
    let node = start(dir.path(), RUN);
    let (_, keys) = get_json(
        &format!("{}/_matrix/key/v2/server", node.federation_url),
        None,
    )
    .await;
    assert_eq!(keys["server_name"], "dk.test");
    let key_version = key_text.split_whitespace().nth(1).unwrap();
    assert!(
        keys["verify_keys"]
            .get(format!("ed25519:{key_version}"))
            .is_some(),
        "{keys}"
    );
    verify_server_keys(&keys);
    let (code, stderr) = node.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn config_check_names_the_bad_key_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[rooms]\ndefault_version = \"9\"\n",
    )
    .unwrap();
    let output = run_to_end(dir.path(), &["config", "check", "bad.toml"]);
    assert_fails_cleanly(&output, "rooms.default_version");

    std::fs::write(
        dir.path().join("ok.toml"),
        "[registration]\nshared_secret = \"topsecret\"\n[server]\nmystery = 1\n",
    )
    .unwrap();
    let output = unitas(dir.path(), &["config", "check", "ok.toml"])
        .env("UNITAS__FEDERATION__VERIFY_TLS", "false")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        !stdout.contains("topsecret") && stdout.contains("<redacted>"),
        "{stdout}"
    );
    assert!(stdout.contains("unknown key `server.mystery`"), "{stdout}");
    assert!(
        stdout.contains("verify_tls = false"),
        "environment applied: {stdout}"
    );
}

#[test]
fn version_and_help_on_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_to_end(dir.path(), &["--version"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("unitas {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["init", "--help"],
        &["config", "--help"],
        &["config", "check", "--help"],
    ] {
        let output = run_to_end(dir.path(), args);
        assert!(output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_a_span_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let args = run_args(&["--log-format", "json"]);
    let node = start_with_env(
        dir.path(),
        &args,
        &[("UNITAS__LOG__LEVEL", "info,unitas=debug,tower_http=debug")],
    );
    let (status, _) = get_json(
        &format!("{}/ready?access_token=secret-token", node.client_url),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (code, stderr) = node.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let request = lines
        .iter()
        .find(|l| l["span"]["name"] == "http.request" && l["span"]["path"] == "/ready")
        .unwrap_or_else(|| panic!("no http.request span for /ready in:\n{stderr}"));
    assert_eq!(request["span"]["method"], "GET");
    assert_eq!(request["span"]["territory"], "local");
    assert!(
        !stderr.contains("secret-token"),
        "query strings are never logged"
    );
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn the_registry_authority_signs_records_that_nodes_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let authority = stdout_of(&run_to_end(
        path,
        &["registry", "keygen", "--out", "authority.key"],
    ));
    let authority = authority.trim();
    assert!(authority.starts_with("ed25519:"), "{authority}");
    // A key is never overwritten.
    let again = run_to_end(path, &["registry", "keygen", "--out", "authority.key"]);
    assert!(!again.status.success());
    let other = stdout_of(&run_to_end(
        path,
        &["registry", "keygen", "--out", "other.key"],
    ));
    let node_id = other.trim().split_once('=').unwrap().1.to_owned();

    // UK is the United Kingdom (GB), in the eu launch region, named from the shipped data.
    let record = stdout_of(&run_to_end(
        path,
        &[
            "registry",
            "sign",
            "--key",
            "authority.key",
            "--code",
            "UK",
            "--server-name",
            "gb.unitas.example",
            "--node-id",
            &node_id,
            "--record-version",
            "3",
        ],
    ));
    let parsed: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(parsed["code"], "GB");
    assert_eq!(parsed["region"], "eu");
    assert_eq!(parsed["name"], "United Kingdom");
    std::fs::write(path.join("gb.json"), &record).unwrap();
    let checked = stdout_of(&run_to_end(
        path,
        &["registry", "verify", "gb.json", "--authority", authority],
    ));
    assert!(checked.starts_with("valid: GB"), "{checked}");

    // Checked against another authority, or changed after signing: refused.
    let stranger = run_to_end(
        path,
        &["registry", "verify", "gb.json", "--authority", other.trim()],
    );
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("registry authority"));
    let moved = record.replace("gb.unitas.example", "evil.example");
    std::fs::write(path.join("moved.json"), moved).unwrap();
    let tampered = run_to_end(
        path,
        &["registry", "verify", "moved.json", "--authority", authority],
    );
    assert!(!tampered.status.success());
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("bad signature"));

    // A node configured with the authority and a records directory holding both files: its
    // registry has the signed record, not the tampered one.
    std::fs::create_dir(path.join("records")).unwrap();
    std::fs::copy(path.join("gb.json"), path.join("records/gb.json")).unwrap();
    std::fs::copy(path.join("moved.json"), path.join("records/moved.json")).unwrap();
    std::fs::write(
        path.join("unitas.toml"),
        format!("[registry]\nauthorities = [\"{authority}\"]\nrecords_dir = \"records\"\n"),
    )
    .unwrap();
    let status = stdout_of(&run_to_end(path, &["registry", "status", "--offline"]));
    assert!(status.starts_with("GB "), "{status}");
    assert!(
        status.contains("gb.unitas.example") && !status.contains("evil"),
        "{status}"
    );
    let shown = stdout_of(&run_to_end(path, &["registry", "show", "UK", "--offline"]));
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["server_name"], "gb.unitas.example");
    assert_eq!(shown["version"], 3);
    let missing = run_to_end(path, &["registry", "show", "DK", "--offline"]);
    assert!(!missing.status.success());

    // The node's own record, signed with its node key; GB's next version points at it, and the
    // node's registry then knows where GB's users go.
    let node = stdout_of(&run_to_end(
        path,
        &[
            "registry",
            "node-record",
            "--federation-url",
            "https://gb-node.example:8448",
            "--client-url",
            "https://gb-node.example",
            "--region",
            "eu",
        ],
    ));
    let parsed: serde_json::Value = serde_json::from_str(&node).unwrap();
    let node_id = parsed["node_id"].as_str().unwrap().to_owned();
    assert!(parsed["signatures"][node_id.as_str()].is_object(), "{node}");
    std::fs::write(path.join("records/node.json"), &node).unwrap();
    let next = stdout_of(&run_to_end(
        path,
        &[
            "registry",
            "sign",
            "--key",
            "authority.key",
            "--code",
            "GB",
            "--server-name",
            "gb.unitas.example",
            "--node-id",
            &node_id,
            "--record-version",
            "4",
        ],
    ));
    std::fs::write(path.join("records/gb-v4.json"), next).unwrap();
    let status = stdout_of(&run_to_end(path, &["registry", "status", "--offline"]));
    assert!(status.contains("v4"), "{status}");
    assert!(
        status.contains("client https://gb-node.example"),
        "{status}"
    );
}

#[test]
fn a_territory_is_added_with_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    stdout_of(&run_to_end(
        path,
        &[
            "init",
            "--data-dir",
            "data",
            "--code",
            "eu",
            "--server-name",
            "eu.example",
        ],
    ));
    let added = stdout_of(&run_to_end(
        path,
        &["territory", "add", "UK", "--server-name", "gb.example"],
    ));
    assert!(added.contains("Added territory GB (gb.example)"), "{added}");
    assert!(path.join("data/keys/GB.signing.key").exists());
    let checked = stdout_of(&run_to_end(path, &["config", "check"]));
    assert!(
        checked.contains("gb.example") && checked.contains("eu.example"),
        "{checked}"
    );
    assert!(checked.contains("United Kingdom"), "{checked}");
    // Neither the code nor the server name can be added twice; the file stays as it was.
    let before = std::fs::read_to_string(path.join("unitas.toml")).unwrap();
    for args in [
        ["territory", "add", "GB", "--server-name", "other.example"],
        ["territory", "add", "DK", "--server-name", "gb.example"],
    ] {
        let refused = run_to_end(path, &args);
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("already configured"));
    }
    assert_eq!(
        std::fs::read_to_string(path.join("unitas.toml")).unwrap(),
        before
    );
}

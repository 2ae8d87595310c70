//! Black-box conformance tests: a Unitas node checked by implementations nobody here wrote
//! (Python `signedjson`/`canonicaljson`, `jsonschema` over the Matrix spec's own OpenAPI data;
//! later Synapse, matrix-nio and matrix-js-sdk). The tests live in `tests/it/`; this library
//! finds the tools they need.
//!
//! Environment (set by `scripts/test`):
//! - `UNITAS_TEST_PYTHON`: the virtualenv's python with `requirements.txt` installed;
//! - `UNITAS_MATRIX_SPEC_DIR`: the folder with `client-server.json` and `server-server.json`;
//! - `UNITAS_TEST_NODE`: `node`, with `js/node_modules` installed (`npm ci`).
//!
//! Under CI (`CI` set) a missing tool fails the test; elsewhere the test says SKIPPED loudly.

use std::path::PathBuf;

fn missing(what: &str, var: &str) -> Option<PathBuf> {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing under CI: {var} is not set or wrong (run scripts/test)");
    }
    eprintln!("SKIPPED: {what} is missing ({var} not set); run the suite through scripts/test");
    None
}

/// The virtualenv's python interpreter.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("UNITAS_TEST_PYTHON").map(PathBuf::from) {
        Some(path) if path.exists() => Some(path),
        _ => missing("the test virtualenv's python", "UNITAS_TEST_PYTHON"),
    }
}

/// This crate's folder in the checkout the tests run from: cargo and nextest say it at run
/// time. The compile-time path is only the fallback: a build cache shared by checkouts in
/// different places can hand a test a library built in another checkout (cargo does not
/// rebuild a path package that merely moved), whose baked-in path may not exist here.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The Matrix spec's OpenAPI folder (`../shared/spec/matrix` by default).
pub fn spec_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("UNITAS_MATRIX_SPEC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../../shared/spec/matrix"));
    if dir.join("client-server.json").is_file() && dir.join("server-server.json").is_file() {
        Some(dir)
    } else {
        missing("the Matrix spec's OpenAPI data", "UNITAS_MATRIX_SPEC_DIR")
    }
}

/// The `node` binary, once `scripts/test` installed the JavaScript clients.
pub fn node_js() -> Option<PathBuf> {
    match std::env::var_os("UNITAS_TEST_NODE").map(PathBuf::from) {
        Some(path) if path.exists() => Some(path),
        _ => missing("node with matrix-js-sdk installed", "UNITAS_TEST_NODE"),
    }
}

/// A script in `conformance-tests/js/`.
pub fn js_script(name: &str) -> PathBuf {
    manifest_dir().join("js").join(name)
}

/// A script in `conformance-tests/python/`.
pub fn script(name: &str) -> PathBuf {
    manifest_dir().join("python").join(name)
}

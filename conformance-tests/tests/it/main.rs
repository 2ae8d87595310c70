//! Conformance of a running node, judged by independent implementations.

// Test helpers panic on setup failures: that is how a test reports them.
#![allow(clippy::unwrap_used)]

mod clients;
mod events;
mod foundation;
mod synapse;

/// Runs `program args` to the end on a blocking thread (the node under test keeps serving
/// meanwhile): success, stdout, stderr.
pub async fn run_to_end(program: std::path::PathBuf, args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(&program)
            .args(&args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

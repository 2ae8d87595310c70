//! Conformance of a running node, judged by independent implementations.

// Test helpers panic on setup failures: that is how a test reports them.
#![allow(clippy::unwrap_used)]

mod clients;
mod events;
mod foundation;

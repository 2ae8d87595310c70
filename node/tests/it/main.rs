//! The node's integration tests: in-process nodes on port 0 (`http`, `federation`, the four-region
//! network in `territories`), and the `unitas` binary as
//! an operator runs it (`cli`).

// Test helpers panic on setup failures: that is how a test reports them.
#![allow(clippy::unwrap_used)]

mod cli;
mod federation;
mod http;
mod push;
mod sliding;
mod support;
mod territories;

//! The Unitas node: the `unitas` binary's library half.
//!
//! Map:
//! - [`cli`]: the clap command tree (`run`, `init`, `config check`) and `main`.
//! - [`config`]: [`config::Config`] — defaults < TOML < `UNITAS__SECTION__KEY` < flags; the
//!   commented example is generated from its doc comments.
//! - [`node`]: [`node::Node::start`] — bind, open storage, keys, TLS, serve; graceful shutdown.
//! - [`state`]: [`state::AppState`] and the hosted territories (routing by host name).
//! - [`api`]: the axum routers (client API, federation API), `ApiError`, extractors.
//! - [`serve`]: the accept loop shared by both listeners (plain or TLS) with graceful drain.
//! - [`tls`]: the federation listener's rustls config (configured or self-signed certificate).
//! - [`telemetry`]: tracing subscriber (human or JSON).
//!
//! Invariants: no globals — two nodes can run in one process (tests do); nothing depends on this
//! crate; every ruma<->axum adapter lives in `api/`.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod e2ee;
pub mod ephemeral;
pub mod media;
pub mod migration;
pub mod moves;
pub mod node;
pub mod presence;
pub mod push;
pub mod ratelimit;
pub mod registry;
pub mod registry_cli;
pub mod serve;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod users;

pub use config::Config;
pub use node::{Node, StartError};

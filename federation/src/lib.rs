//! Unitas federation: everything a node needs to be a Matrix server among servers.
//!
//! Map (grows with the federation and rooms issues):
//! - [`keys`]: a territory's ed25519 signing key — generated on first start, stored in Synapse's
//!   key-file format (`ed25519 <version> <base64 seed>`, mode 0600), and signing of JSON.
//! - [`server_keys`]: the signed `/_matrix/key/v2/server` document of a territory.
//! - [`request_auth`]: X-Matrix request signing and verification.
//! - [`discovery`]: server name -> host, port, Host header (well-known, SRV, 8448); IP filter.
//! - [`client`]: the outgoing federation HTTP client (discovery, TLS, signing).
//! - [`key_ring`]: other servers' verify keys, from them or from notaries, cached.
//! - [`acl`]: server ACLs (`m.room.server_acl`).
//! - [`inbound`]: the one verification path for received events; `/send` transactions.
//! - [`sender`]: the durable outbound queue, one transaction in flight per destination.
//!
//! No axum here: the HTTP edge lives in the `unitas` crate and calls into this one.
//!
//! Invariants:
//! - A key ID (`ed25519:<version>`) names one key for ever; a new key gets a new version.
//! - Private key material never leaves [`keys::SigningKey`] except through
//!   [`keys::SigningKey::to_key_file`] (for the key file and territory export).

pub mod acl;
pub mod canonical;
pub mod client;
pub mod discovery;
pub mod inbound;
pub mod key_ring;
pub mod keys;
pub mod request_auth;
pub mod rooms;
pub mod sender;
pub mod server_keys;
pub mod signature_batch;

pub use keys::{KeyError, SigningKey};

//! Unitas storage: one [`Store`] over SQLite (embedded default) or PostgreSQL (for scale).
//!
//! Map:
//! - [`Store`] (`store.rs`): `Store::connect(url, options)`, migrations, readiness, SQLite WAL
//!   checkpoints. The backend is chosen by the URL scheme at run time.
//! - `migrate.rs`: the schema, one migration list per backend (DDL differs, queries do not).
//! - `repos/`: one repository trait per aggregate ([`Territories`], [`Accounts`], [`Devices`],
//!   [`AccessTokens`], [`SigningKeys`], [`RemoteServerKeys`]), implemented by [`Store`].
//! - [`testing`] (feature `testing`): throwaway databases on both backends for test suites.
//!
//! Invariants callers keep and this crate relies on:
//! - Queries are written once, in SQL both backends accept (`$1` placeholders, `ON CONFLICT`,
//!   `RETURNING`); only the DDL differs per backend. A query that cannot be shared is written
//!   twice, side by side, inside the same method.
//! - Every row that belongs to a territory carries its `territory` code.
//! - Timestamps are integer milliseconds since the Unix epoch.
//! - Secrets (access tokens) are stored only as digests computed by the caller.

mod error;
mod memo;
mod migrate;
mod repos;
mod sqlite_writer;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::StorageError;
pub use repos::{
    AccessToken, AccessTokens, Account, Accounts, Device, DeviceInbox, DeviceKeys, Devices,
    KeyCounts, KeyUpload, NewAccessToken, NewAccount, NewDevice, RemoteServerKey, RemoteServerKeys,
    SigningKeyRecord, SigningKeys, Territories, TerritoryRow, ToDeviceMessage,
};
pub use repos::{BackupKey, BackupScope, BackupVersion, KeyBackups, Report, Reports};
pub use repos::{
    ClientData, ClientExtras, MediaRow, NewReceipt, ProfileField, ProfileRow, ReceiptRow,
    RemoteMediaRow,
};
pub use repos::{Column, ExportedEvent, Owner, SERVER_KEYS, TABLES, TableSpec, TerritoryTransfer};
pub use repos::{
    EventBatch, EventRow, FederationQueue, NewEvent, NewStateGroup, OutboundRow, RemoteInvite,
    RemoteInvites, RoomEvents, RoomRow, SEARCH_BATCH, TransactionRow,
};
pub use repos::{EventSearch, RelationQuery, Relations, SearchPage, SearchQuery, ThreadRow};
pub use repos::{PushAction, PushStore, PushWrite, Pusher, QueuedPush, UnreadCounts};
pub use store::{
    BackendKind, CHECKPOINT_EVERY, CheckpointStats, RESTART_FRAMES, SqliteSynchronous, Store,
    StoreOptions, redact_url,
};

/// Result of every storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

//! Repository traits, one per aggregate, all implemented on [`crate::Store`].
//!
//! Methods are verb-first (`create_`, `get_`, `list_`, `set_`, `delete_`). `get_` returns
//! `Ok(None)` when the row is absent; `set_` returns [`crate::StorageError::NotFound`].

mod accounts;
mod backup;
mod client;
mod client_more;
mod devices;
mod e2ee;
mod keys;
mod outbound;
mod push;
mod relations;
mod reports;
pub(crate) mod rooms;
mod search;
mod territories;
mod transfer;

pub use accounts::{Account, Accounts, NewAccount};
pub use backup::{BackupKey, BackupScope, BackupVersion, KeyBackups};
pub use client::{ClientData, ProfileField, ProfileRow};
pub use client_more::{ClientExtras, MediaRow, NewReceipt, ReceiptRow, RemoteMediaRow};
pub use devices::{AccessToken, AccessTokens, Device, Devices, NewAccessToken, NewDevice};
pub use e2ee::{DeviceInbox, DeviceKeys, KeyCounts, KeyUpload, ToDeviceMessage};
pub use keys::{RemoteServerKey, RemoteServerKeys, SigningKeyRecord, SigningKeys};
pub use outbound::{FederationQueue, RemoteInvite, RemoteInvites};
pub use push::{PushAction, PushStore, Pusher, QueuedPush, UnreadCounts};
pub use relations::{RelationQuery, Relations, ThreadRow};
pub use reports::{Report, Reports};
pub use rooms::{
    EventBatch, EventRow, NewEvent, NewStateGroup, OutboundRow, PushWrite, RoomEvents, RoomRow,
    SEARCH_BATCH, TransactionRow,
};
pub use search::{EventSearch, SearchPage, SearchQuery};
pub use territories::{Territories, TerritoryRow};
pub use transfer::{
    Column, ExportedEvent, Owner, SERVER_KEYS, TABLES, TableSpec, TerritoryTransfer,
};

//! Rooms: the event graph. PDUs are built, hashed and signed ([`build`]), parsed and checked
//! ([`pdu`]), authorised and resolved through ruma-state-res ([`auth`]), redacted per room
//! version ([`redact`]), and appended through the one write path ([`append`]).
//!
//! Room versions 10, 11 and 12 are supported ([`version`]); new rooms default to 12.

pub mod append;
pub mod auth;
pub mod build;
pub mod pdu;
pub mod redact;
pub mod version;

pub use append::{
    AppendError, Appended, NewRoom, NoOutbound, OutboundSink, RoomOptions, RoomWriter, Rooms,
    Signer,
};
pub use build::EventTemplate;
pub use pdu::{EventError, Pdu};
pub use version::RoomVersion;

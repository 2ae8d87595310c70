//! Client-server API handlers, one module per area of the spec.

pub mod account;
pub mod backup;
pub mod directory;
pub mod ephemeral;
pub mod keys;
pub mod media;
pub mod push;
pub mod relations;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod security;
pub mod sliding;
pub mod spaces;
pub mod sync;
pub mod voip;

//! Unitas territories: codes, the territories that ship as data, the signed registry records,
//! and the Kademlia DHT that carries them.
//!
//! Map:
//! - [`TerritoryCode`]: a validated territory code.
//! - [`catalog`]: every ISO 3166-1 country and the four launch regions.
//! - [`record`]: territory records (signed by the registry authority) and node records (signed
//!   by the node), their checks and which one wins.
//! - [`registry`]: what a node knows of the registry (the newest valid records) and routes.
//! - [`dht`]: the libp2p-kad DHT that carries the records between nodes, checking each.

pub mod catalog;
pub mod dht;
pub mod record;
pub mod registry;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A territory code: an ISO 3166-1 alpha-2 country code in capitals (`DK`, `NO`), or a region
/// (or other non-country) code in small letters, digits and `-`, 2 to 16 long (`eu`, `local`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TerritoryCode(String);

/// Why a string is not a [`TerritoryCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid territory code {0:?}: use an ISO 3166-1 alpha-2 code in capitals (DK) or a region \
     code of 2-16 small letters, digits and '-' starting with a letter (eu, local)"
)]
pub struct InvalidTerritoryCode(pub String);

impl TerritoryCode {
    /// Validates a code.
    pub fn parse(code: &str) -> Result<TerritoryCode, InvalidTerritoryCode> {
        let country = code.len() == 2 && code.chars().all(|c| c.is_ascii_uppercase());
        let region = (2..=16).contains(&code.len())
            && code.starts_with(|c: char| c.is_ascii_lowercase())
            && code
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if country || region {
            Ok(TerritoryCode(code.to_owned()))
        } else {
            Err(InvalidTerritoryCode(code.to_owned()))
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for ISO 3166-1 alpha-2 country codes.
    pub fn is_country(&self) -> bool {
        self.0.len() == 2 && self.0.chars().all(|c| c.is_ascii_uppercase())
    }
}

impl fmt::Display for TerritoryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TerritoryCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TerritoryCode::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::TerritoryCode;

    #[test]
    fn countries_and_regions() {
        for good in ["DK", "NO", "eu", "am", "local", "nordics-2"] {
            assert!(TerritoryCode::parse(good).is_ok(), "{good}");
        }
        assert!(TerritoryCode::parse("DK").unwrap().is_country());
        assert!(!TerritoryCode::parse("eu").unwrap().is_country());
        for bad in [
            "",
            "D",
            "Dk",
            "DNK",
            "e",
            "1eu",
            "eu_x",
            "a-very-long-region-code",
            "dk.example",
        ] {
            assert!(TerritoryCode::parse(bad).is_err(), "{bad}");
        }
    }
}

//! A configuration secret: never shown by `Debug`, `Display` or serialization.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret value. Printing or serializing it yields `<redacted>`; [`Secret::expose`] is the
/// only way to read it.
#[derive(Clone, PartialEq, Eq, JsonSchema)]
pub struct Secret(String);

/// What every rendering of a secret shows.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Environment variables that look like numbers arrive as numbers.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            String(String),
            Integer(i64),
            Float(f64),
            Bool(bool),
        }
        Ok(Secret(match Raw::deserialize(deserializer)? {
            Raw::String(s) => s,
            Raw::Integer(n) => n.to_string(),
            Raw::Float(n) => n.to_string(),
            Raw::Bool(b) => b.to_string(),
        }))
    }
}

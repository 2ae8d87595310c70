//! Events read straight into ruma's canonical JSON types.
//!
//! ruma's `CanonicalJsonValue` deserialises through `serde_json::Value` (a tree is built, then
//! converted into a second one), and reading an object from a borrowed `Value` copies each
//! field's subtree first. Every inbound event is read this way, so this visitor builds the
//! canonical tree directly, from text or from a borrowed `Value`, with ruma's rules: integers
//! within `±(2^53 - 1)`, no floats; a repeated key keeps its last value (as `serde_json::Value`
//! does). ruma has no public visitor for this.

use std::fmt;

use ruma::{CanonicalJsonObject, CanonicalJsonValue, Int};
use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// One canonical value, read by [`ValueVisitor`].
struct Canonical(CanonicalJsonValue);

impl<'de> de::Deserialize<'de> for Canonical {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor).map(Canonical)
    }
}

struct ValueVisitor;

fn integer<E: de::Error>(n: Option<i64>) -> Result<CanonicalJsonValue, E> {
    n.and_then(|n| Int::try_from(n).ok())
        .map(CanonicalJsonValue::Integer)
        .ok_or_else(|| E::custom("integer out of the canonical range"))
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = CanonicalJsonValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("canonical JSON")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        integer(Some(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        integer(i64::try_from(v).ok())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(E::custom("a float is not canonical JSON"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Canonical(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(CanonicalJsonValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        ObjectVisitor.visit_map(map).map(CanonicalJsonValue::Object)
    }
}

/// A whole object (what an event is).
struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = CanonicalJsonObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a canonical JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = CanonicalJsonObject::new();
        while let Some(key) = map.next_key::<String>()? {
            let Canonical(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(object)
    }
}

struct ObjectSeed;

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = CanonicalJsonObject;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// An object from JSON text.
pub fn object_from_str(text: &str) -> Result<CanonicalJsonObject, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let object = ObjectSeed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(object)
}

/// An object from a borrowed JSON value (nothing of it copied but what the result holds).
pub fn object_from_value(value: &Value) -> Result<CanonicalJsonObject, serde_json::Error> {
    ObjectSeed.deserialize(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What ruma's own conversion gives, or that it refuses.
    fn ruma(value: &Value) -> Option<CanonicalJsonObject> {
        match CanonicalJsonValue::try_from(value.clone()) {
            Ok(CanonicalJsonValue::Object(object)) => Some(object),
            _ => None,
        }
    }

    #[test]
    fn reads_what_ruma_reads_and_refuses_what_it_refuses() {
        let cases = [
            json!({"a": 1, "b": [true, null, "x", {"c": -9007199254740991_i64}], "d": {}}),
            json!({"n": 9007199254740991_i64, "e": [], "s": "\u{1F600}\"\\"}),
            json!({"too big": 9007199254740992_i64}),
            json!({"too small": -9007199254740992_i64}),
            json!({"u64": u64::MAX}),
            json!({"float": 1.5}),
            json!({"deep": {"float": [0.0]}}),
        ];
        for case in cases {
            let expected = ruma(&case);
            assert_eq!(object_from_value(&case).ok(), expected, "{case}");
            assert_eq!(object_from_str(&case.to_string()).ok(), expected, "{case}");
        }
        // Not an object, trailing text, a float written with an exponent.
        assert!(object_from_str("[1]").is_err());
        assert!(object_from_str("{} {}").is_err());
        assert!(object_from_str(r#"{"a": 1e3}"#).is_err());
        // A repeated key keeps its last value, as serde_json's Value does.
        assert_eq!(
            object_from_str(r#"{"a": 1, "a": 2}"#).ok(),
            ruma(&json!({"a": 2}))
        );
    }
}

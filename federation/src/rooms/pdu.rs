//! A parsed, format-checked PDU and the checks that make one (spec: server-server API, "Checks
//! performed on receipt of a PDU", step 1, and "Size limits").
//!
//! [`Pdu::from_object`] takes the canonical JSON of an event as it travels between servers and:
//! 1. checks the size of the whole event (at most 65,536 bytes of canonical JSON, signatures
//!    included) and of its identifiers (255 bytes), the lengths of `prev_events` (20) and
//!    `auth_events` (10), and `depth` (0 to 2^53-1; canonical JSON cannot carry more);
//! 2. computes the event ID from the reference hash (room versions 4+ have no `event_id` field);
//! 3. checks the room ID: for a version 12 `m.room.create` it is derived from the event ID and the
//!    event must carry none; for every other event it must be present, well-formed and equal to
//!    the room the caller expects;
//! 4. parses the fields the auth rules need, strictly (malformed IDs are errors).

use std::sync::Arc;

use ruma::events::TimelineEventType;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::value::RawValue as RawJsonValue;

use super::version::RoomVersion;

/// Largest PDU, in bytes of canonical JSON including signatures (spec: "Size limits").
pub const MAX_PDU_BYTES: usize = 65_536;
/// Largest `sender`, `room_id`, `type`, `state_key` and event ID, in bytes.
pub const MAX_ID_BYTES: usize = 255;
/// Most `prev_events` a PDU may name.
pub const MAX_PREV_EVENTS: usize = 20;
/// Most `auth_events` a PDU may name.
pub const MAX_AUTH_EVENTS: usize = 10;

/// Why an event is not accepted. The message is meant for logs and peers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// The event is not well-formed for its room version.
    #[error("malformed event: {0}")]
    Format(String),
    /// The event is over a size limit.
    #[error("event too large: {0}")]
    TooLarge(String),
    /// The room ID is missing, malformed or not the room the event was sent for.
    #[error("wrong room: {0}")]
    WrongRoom(String),
    /// The room version is unknown or unsupported.
    #[error("unsupported room version {0:?}")]
    UnsupportedRoomVersion(String),
    /// The authorization rules reject the event.
    #[error("not authorised: {0}")]
    Unauthorized(String),
    /// Hashes or signatures do not check out.
    #[error("bad signature or hash: {0}")]
    Signature(String),
    /// The event needs events this server does not have.
    #[error("missing events: {0}")]
    Missing(String),
}

/// A PDU that passed the format checks, with its canonical JSON kept as sent.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// Event ID (reference hash).
    pub event_id: OwnedEventId,
    /// Room ID.
    pub room_id: OwnedRoomId,
    /// Sender.
    pub sender: OwnedUserId,
    /// Sender's timestamp.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Event type.
    pub kind: TimelineEventType,
    /// Content, as sent.
    pub content: Box<RawJsonValue>,
    /// State key, for state events.
    pub state_key: Option<String>,
    /// Parents in the room DAG.
    pub prev_events: Vec<OwnedEventId>,
    /// The events that authorise this one.
    pub auth_events: Vec<OwnedEventId>,
    /// For redactions: the redacted event (top-level before v11, in `content` since).
    pub redacts: Option<OwnedEventId>,
    /// Depth in the DAG.
    pub depth: u64,
    /// The full event as canonical JSON (no `event_id` field; room versions 4+).
    pub json: Arc<str>,
    /// False for a version 12 `m.room.create` event, whose room ID is derived, not carried.
    pub carries_room_id: bool,
}

/// The bytes an event's signatures cover: its redacted canonical JSON without `signatures` and
/// `unsigned`, serialised straight from the event (no redacted copy is built). Their SHA-256
/// is the reference hash ([`reference_hash_of_signed`]).
pub(crate) fn signed_bytes(
    object: &CanonicalJsonObject,
    rules: &ruma::room_version_rules::RedactionRules,
) -> Result<String, String> {
    ruma::canonical_json::RedactingSerializer::new()
        .rules(rules)
        .custom_redacted_root_fields(&["signatures", "unsigned"])
        .serialize(object)
        .map_err(|e| e.to_string())
}

/// The reference hash (room versions 3+: URL-safe base64 of the SHA-256) of an event from the
/// bytes its signatures cover (the redacted event without `signatures` and `unsigned`), which
/// signing and verifying serialise anyway; `None` for older versions, whose event IDs are not
/// hashes ([`Pdu::from_object_with_hash`] then works them out).
pub(crate) fn reference_hash_of_signed(version: &RoomVersion, signed: &str) -> Option<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    (!matches!(
        version.rules().event_id_format,
        ruma::room_version_rules::EventIdFormatVersion::V1
            | ruma::room_version_rules::EventIdFormatVersion::V2
    ))
    .then(|| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(signed.as_bytes()))
    })
}

impl Pdu {
    /// Checks and parses an event's canonical JSON (see the module doc for the steps).
    /// `expected_room` is the room the event arrived for, when known.
    pub fn from_object(
        object: CanonicalJsonObject,
        version: &RoomVersion,
        expected_room: Option<&RoomId>,
    ) -> Result<Pdu, EventError> {
        Self::from_object_with_hash(object, version, expected_room, None)
    }

    /// [`Pdu::from_object`] with the reference hash already computed (it is the SHA-256 of the
    /// bytes every signature covers, so the verification path computes them once for both).
    pub fn from_object_with_hash(
        mut object: CanonicalJsonObject,
        version: &RoomVersion,
        expected_room: Option<&RoomId>,
        reference_hash: Option<String>,
    ) -> Result<Pdu, EventError> {
        let format = |msg: String| EventError::Format(msg);
        // Events travel without `event_id` (room versions 3+); a peer that adds one gets it ignored.
        object.remove("event_id");
        object.remove("unsigned");

        // 1. Sizes.
        let json = serde_json::to_string(&object).map_err(|e| format(e.to_string()))?;
        if json.len() > MAX_PDU_BYTES {
            return Err(EventError::TooLarge(format!(
                "{} bytes of canonical JSON (at most {MAX_PDU_BYTES})",
                json.len()
            )));
        }
        let kind = required_str(&object, "type")?;
        let sender = required_str(&object, "sender")?;
        let state_key = optional_str(&object, "state_key")?;
        let prev_events = event_id_list(&object, "prev_events", MAX_PREV_EVENTS)?;
        let auth_events = event_id_list(&object, "auth_events", MAX_AUTH_EVENTS)?;
        let depth = match object.get("depth") {
            Some(CanonicalJsonValue::Integer(depth)) => u64::try_from(i64::from(*depth))
                .map_err(|_| format("`depth` must not be negative".into()))?,
            Some(_) => return Err(format("`depth` must be an integer".into())),
            None => return Err(format("`depth` is missing".into())),
        };
        let origin_server_ts = match object.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => {
                let ts = UInt::try_from(i64::from(*ts))
                    .map_err(|_| format("`origin_server_ts` must not be negative".into()))?;
                MilliSecondsSinceUnixEpoch(ts)
            }
            _ => return Err(format("`origin_server_ts` must be an integer".into())),
        };
        let content = match object.get("content") {
            Some(value @ CanonicalJsonValue::Object(_)) => {
                serde_json::value::to_raw_value(value).map_err(|e| format(e.to_string()))?
            }
            _ => return Err(format("`content` must be an object".into())),
        };
        if !matches!(object.get("hashes"), Some(CanonicalJsonValue::Object(_))) {
            return Err(format("`hashes` must be an object".into()));
        }
        if !matches!(
            object.get("signatures"),
            Some(CanonicalJsonValue::Object(_))
        ) {
            return Err(format("`signatures` must be an object".into()));
        }

        // 2. Event ID.
        let hash = match reference_hash {
            Some(hash) => hash,
            None => ruma::signatures::reference_hash(&object, version.rules())
                .map_err(|e| format(format!("cannot compute the reference hash: {e}")))?,
        };
        let event_id = EventId::parse(format!("${hash}")).map_err(|e| format(e.to_string()))?;

        // 3. Room ID.
        let is_create = kind == "m.room.create";
        let carries_room_id = !(is_create && version.room_id_from_create_event());
        let room_id = if !carries_room_id {
            if object.contains_key("room_id") {
                return Err(EventError::WrongRoom(
                    "an m.room.create event of room version 12 must not carry a room_id".into(),
                ));
            }
            RoomId::parse(format!("!{hash}")).map_err(|e| format(e.to_string()))?
        } else {
            let text = required_str(&object, "room_id")
                .map_err(|_| EventError::WrongRoom("`room_id` is missing".into()))?;
            RoomId::parse(text)
                .map_err(|e| EventError::WrongRoom(format!("malformed room_id {text:?}: {e}")))?
        };
        if let Some(expected) = expected_room
            && room_id != expected
        {
            return Err(EventError::WrongRoom(format!(
                "the event is signed for {room_id}, not {expected}"
            )));
        }

        // 4. Fields.
        let sender = UserId::parse(sender)
            .map_err(|e| format(format!("malformed sender {sender:?}: {e}")))?;
        let kind = TimelineEventType::from(kind);
        let redacts = redacts_of(&object, version)?;
        if is_create && !(prev_events.is_empty() && auth_events.is_empty()) {
            return Err(format(
                "m.room.create must have no prev_events or auth_events".into(),
            ));
        }
        if !is_create && prev_events.is_empty() {
            return Err(format("only m.room.create may have no prev_events".into()));
        }

        Ok(Pdu {
            event_id,
            room_id,
            sender,
            origin_server_ts,
            kind,
            content,
            state_key: state_key.map(str::to_owned),
            prev_events,
            auth_events,
            redacts,
            depth,
            json: Arc::from(json),
            carries_room_id,
        })
    }

    /// Parses JSON text (as received) into a checked PDU. Integers beyond +-(2^53-1), floats and
    /// duplicate keys fail here: they are not canonical JSON.
    pub fn from_json(
        text: &str,
        version: &RoomVersion,
        expected_room: Option<&RoomId>,
    ) -> Result<Pdu, EventError> {
        if text.len() > MAX_PDU_BYTES * 2 {
            return Err(EventError::TooLarge(format!(
                "{} bytes of JSON",
                text.len()
            )));
        }
        let object: CanonicalJsonObject = serde_json::from_str(text)
            .map_err(|e| EventError::Format(format!("not canonical JSON: {e}")))?;
        Self::from_object(object, version, expected_room)
    }

    /// The event as a canonical JSON object.
    pub fn to_object(&self) -> Result<CanonicalJsonObject, EventError> {
        serde_json::from_str(&self.json).map_err(|e| EventError::Format(e.to_string()))
    }

    /// The event for federation (`/send`, `/event`): the stored JSON, which has no `event_id`.
    pub fn federation_json(&self) -> &str {
        &self.json
    }

    /// True for state events.
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The `(type, state_key)` this state event sets.
    pub fn state_slot(&self) -> Option<(String, String)> {
        self.state_key
            .as_ref()
            .map(|key| (self.kind.to_string(), key.clone()))
    }
}

fn required_str<'a>(object: &'a CanonicalJsonObject, field: &str) -> Result<&'a str, EventError> {
    match optional_str(object, field)? {
        Some(value) => Ok(value),
        None => Err(EventError::Format(format!("`{field}` is missing"))),
    }
}

fn optional_str<'a>(
    object: &'a CanonicalJsonObject,
    field: &str,
) -> Result<Option<&'a str>, EventError> {
    match object.get(field) {
        None => Ok(None),
        Some(CanonicalJsonValue::String(value)) if value.len() <= MAX_ID_BYTES => Ok(Some(value)),
        Some(CanonicalJsonValue::String(value)) => Err(EventError::TooLarge(format!(
            "`{field}` is {} bytes (at most {MAX_ID_BYTES})",
            value.len()
        ))),
        Some(_) => Err(EventError::Format(format!("`{field}` must be a string"))),
    }
}

fn event_id_list(
    object: &CanonicalJsonObject,
    field: &str,
    max: usize,
) -> Result<Vec<OwnedEventId>, EventError> {
    let Some(CanonicalJsonValue::Array(items)) = object.get(field) else {
        return Err(EventError::Format(format!("`{field}` must be an array")));
    };
    if items.len() > max {
        return Err(EventError::TooLarge(format!(
            "`{field}` has {} entries (at most {max})",
            items.len()
        )));
    }
    items
        .iter()
        .map(|item| match item {
            CanonicalJsonValue::String(id) if id.len() <= MAX_ID_BYTES => EventId::parse(id)
                .map_err(|e| {
                    EventError::Format(format!("malformed event ID {id:?} in `{field}`: {e}"))
                }),
            _ => Err(EventError::Format(format!(
                "`{field}` must hold event ID strings"
            ))),
        })
        .collect()
}

fn redacts_of(
    object: &CanonicalJsonObject,
    version: &RoomVersion,
) -> Result<Option<OwnedEventId>, EventError> {
    if object.get("type") != Some(&CanonicalJsonValue::String("m.room.redaction".into())) {
        return Ok(None);
    }
    // Since v11 the target is in content; before, at the top level.
    let in_content = version.rules().redaction.content_field_redacts;
    let value = if in_content {
        match object.get("content") {
            Some(CanonicalJsonValue::Object(content)) => content.get("redacts"),
            _ => None,
        }
    } else {
        object.get("redacts")
    };
    match value {
        Some(CanonicalJsonValue::String(id)) => EventId::parse(id)
            .map(Some)
            .map_err(|e| EventError::Format(format!("malformed `redacts` {id:?}: {e}"))),
        Some(_) => Err(EventError::Format("`redacts` must be an event ID".into())),
        None => Ok(None),
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.carries_room_id.then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawJsonValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        false
    }
}

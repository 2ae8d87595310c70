//! Building our own PDUs (spec: server-server API, "PDUs"; room versions 10-12):
//!
//! 1. the caller supplies what the event says (type, state key, content) and where it goes in the
//!    graph: `prev_events` (the room's forward extremities), `auth_events` (chosen from the state
//!    with [`super::auth::auth_event_ids`]) and `depth` (one more than the deepest parent);
//! 2. the JSON is assembled; a redaction's target goes to `content.redacts` from v11 on and to
//!    the top level before (kept in both places there, as Synapse does, for old clients);
//! 3. the content hash is added and the redacted form signed with the territory's key;
//! 4. the event ID is the reference hash; for a version 12 `m.room.create` event the room ID is
//!    derived from it too, and the event carries no `room_id`.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId,
    UserId,
};
use serde_json::Value;

use super::pdu::{EventError, Pdu};
use super::version::RoomVersion;
use crate::keys::SigningKey;

/// What a new event says.
#[derive(Debug, Clone)]
pub struct EventTemplate {
    /// Event type.
    pub kind: String,
    /// State key, for state events.
    pub state_key: Option<String>,
    /// Content (a JSON object).
    pub content: Value,
    /// For redactions: the event to redact.
    pub redacts: Option<OwnedEventId>,
}

impl EventTemplate {
    /// A state event.
    pub fn state(kind: &str, state_key: &str, content: Value) -> EventTemplate {
        EventTemplate {
            kind: kind.into(),
            state_key: Some(state_key.into()),
            content,
            redacts: None,
        }
    }

    /// A message-like (non-state) event.
    pub fn message(kind: &str, content: Value) -> EventTemplate {
        EventTemplate {
            kind: kind.into(),
            state_key: None,
            content,
            redacts: None,
        }
    }
}

/// Where a new event goes in the graph, and who signs it.
#[derive(Debug)]
pub struct Placement<'a> {
    /// The room; `None` only for a version 12 `m.room.create` event.
    pub room_id: Option<&'a RoomId>,
    /// Sender (a user of `origin`).
    pub sender: &'a UserId,
    /// Parents.
    pub prev_events: Vec<OwnedEventId>,
    /// Auth events.
    pub auth_events: Vec<OwnedEventId>,
    /// Depth.
    pub depth: u64,
    /// Timestamp.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// The signing server (the territory's server name).
    pub origin: &'a str,
    /// The territory's key.
    pub key: &'a SigningKey,
}

/// Builds, hashes and signs a PDU, and checks it like any received event.
pub fn build_pdu(
    version: &RoomVersion,
    template: &EventTemplate,
    at: Placement<'_>,
) -> Result<Pdu, EventError> {
    let mut object = unsigned_event(version, template, &at)?;
    let signed = at
        .key
        .hash_and_sign_event_once(at.origin, &mut object, &version.rules().redaction)
        .map_err(|e| EventError::Signature(e.to_string()))?;
    let reference = super::pdu::reference_hash_of_signed(version, &signed);
    Pdu::from_object_with_hash(object, version, at.room_id, reference)
}

/// `pdu` with `server`'s signature added (the event ID does not change: signatures are not
/// part of the reference hash).
pub fn cosign(
    pdu: &Pdu,
    version: &RoomVersion,
    server: &str,
    key: &SigningKey,
) -> Result<Pdu, EventError> {
    let mut object = pdu.to_object()?;
    key.cosign_event(server, &mut object, &version.rules().redaction)
        .map_err(|e| EventError::Signature(e.to_string()))?;
    Pdu::from_object(object, version, Some(&pdu.room_id))
}

/// The event before hashing and signing (a membership template handed to another server).
pub fn unsigned_event(
    version: &RoomVersion,
    template: &EventTemplate,
    at: &Placement<'_>,
) -> Result<CanonicalJsonObject, EventError> {
    let format = |msg: String| EventError::Format(msg);
    let to_canonical = |value: Value| -> Result<CanonicalJsonValue, EventError> {
        CanonicalJsonValue::try_from(value).map_err(|e| format(format!("not canonical JSON: {e}")))
    };
    let ids = |list: &[OwnedEventId]| {
        CanonicalJsonValue::Array(
            list.iter()
                .map(|id| CanonicalJsonValue::String(id.to_string()))
                .collect(),
        )
    };
    let mut content = match template.content.clone() {
        Value::Object(map) => map,
        _ => return Err(format("content must be a JSON object".into())),
    };
    let mut object = CanonicalJsonObject::new();
    if let Some(redacts) = &template.redacts {
        if version.rules().redaction.content_field_redacts {
            content.insert("redacts".into(), Value::String(redacts.to_string()));
        } else {
            object.insert(
                "redacts".into(),
                CanonicalJsonValue::String(redacts.to_string()),
            );
        }
    }
    let is_v12_create = template.kind == "m.room.create" && version.room_id_from_create_event();
    match (at.room_id, is_v12_create) {
        (Some(room_id), false) => {
            object.insert(
                "room_id".into(),
                CanonicalJsonValue::String(room_id.to_string()),
            );
        }
        (None, true) => {}
        (Some(_), true) => {
            return Err(EventError::WrongRoom(
                "a v12 create event names no room".into(),
            ));
        }
        (None, false) => return Err(EventError::WrongRoom("the event needs a room".into())),
    }
    object.insert(
        "type".into(),
        CanonicalJsonValue::String(template.kind.clone()),
    );
    if let Some(state_key) = &template.state_key {
        object.insert(
            "state_key".into(),
            CanonicalJsonValue::String(state_key.clone()),
        );
    }
    object.insert(
        "sender".into(),
        CanonicalJsonValue::String(at.sender.to_string()),
    );
    object.insert("content".into(), to_canonical(Value::Object(content))?);
    object.insert("prev_events".into(), ids(&at.prev_events));
    object.insert("auth_events".into(), ids(&at.auth_events));
    let depth = i64::try_from(at.depth).map_err(|_| format("depth out of range".into()))?;
    object.insert("depth".into(), to_canonical(Value::from(depth))?);
    object.insert(
        "origin_server_ts".into(),
        to_canonical(Value::from(u64::from(at.origin_server_ts.0)))?,
    );
    Ok(object)
}

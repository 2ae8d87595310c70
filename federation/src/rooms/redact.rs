//! The redaction algorithm per room version (spec: client-server API, "Redactions"; the rules
//! that differ between versions 10, 11 and 12 come from ruma's `RedactionRules`).

use ruma::CanonicalJsonObject;

use super::pdu::{EventError, Pdu};
use super::version::RoomVersion;

/// The redacted form of an event: only the keys the room version keeps, with `signatures` and
/// `hashes` intact (so the redacted event still verifies).
pub fn redact_object(
    object: CanonicalJsonObject,
    version: &RoomVersion,
) -> Result<CanonicalJsonObject, EventError> {
    ruma::canonical_json::redact(object, &version.rules().redaction, None)
        .map_err(|e| EventError::Format(format!("cannot redact: {e}")))
}

/// The redacted form of a PDU, checked like any event (its event ID does not change).
pub fn redact_pdu(pdu: &Pdu, version: &RoomVersion) -> Result<Pdu, EventError> {
    let redacted = redact_object(pdu.to_object()?, version)?;
    Pdu::from_object(redacted, version, Some(&pdu.room_id))
}

"""Check events a Unitas node built against independent implementations.

Usage: check_events.py EVENTS_JSON

EVENTS_JSON holds {"server_name", "verify_key" (unpadded base64), "key_id", "events": [{"room_version",
"event_id", "room_id", "json" (the PDU as Unitas stores and sends it), "redacted" (Unitas' redacted
form)}]}. For each event, with PyPI `canonicaljson`, `signedjson` and Synapse's own room versions
and redaction code:

1. the bytes Unitas stores are exactly `canonicaljson.encode_canonical_json` of the event;
2. the content hash (sha256 of the event without unsigned/signatures/hashes) matches `hashes`;
3. the event ID is `$` + the reference hash (sha256 of Synapse's pruned event without
   signatures/unsigned, URL-safe unpadded base64); in room version 12 the create event's room ID
   is `!` + the same hash;
4. the signature verifies with the server's key on Synapse's pruned event;
5. Unitas' redacted form equals Synapse's `redact_event_dict` for that room version.

Prints one line per event; exits 1 listing every mismatch.
"""

import hashlib
import json
import sys

import canonicaljson
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64, encode_base64
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.synapse_rust.events import redact_event_dict as prune_event_dict


def main():
    data = json.load(open(sys.argv[1]))
    verify_key = decode_verify_key_bytes(data["key_id"], decode_base64(data["verify_key"]))
    failures = []
    for item in data["events"]:
        version = KNOWN_ROOM_VERSIONS[item["room_version"]]
        text = item["json"]
        event = json.loads(text)
        label = f'v{item["room_version"]} {event["type"]} {item["event_id"]}'
        problems = []

        if canonicaljson.encode_canonical_json(event).decode() != text:
            problems.append("stored bytes are not canonical JSON")

        unhashed = {k: v for k, v in event.items() if k not in ("unsigned", "signatures", "hashes")}
        content_hash = encode_base64(hashlib.sha256(canonicaljson.encode_canonical_json(unhashed)).digest())
        if content_hash != event["hashes"]["sha256"]:
            problems.append(f"content hash {event['hashes']['sha256']} != {content_hash}")

        pruned = prune_event_dict(version, event)
        unsigned = {k: v for k, v in pruned.items() if k not in ("signatures", "unsigned")}
        reference = encode_base64(hashlib.sha256(canonicaljson.encode_canonical_json(unsigned)).digest(), urlsafe=True)
        if "$" + reference != item["event_id"]:
            problems.append(f"event ID {item['event_id']} != ${reference}")
        if event["type"] == "m.room.create" and item["room_version"] == "12" and item["room_id"] != "!" + reference:
            problems.append(f"room ID {item['room_id']} != !{reference}")

        try:
            verify_signed_json(pruned, data["server_name"], verify_key)
        except SignatureVerifyException as e:
            problems.append(f"signature: {e}")

        ours = json.loads(item["redacted"])
        theirs = {k: v for k, v in pruned.items() if k != "unsigned"}
        ours.pop("unsigned", None)
        if ours != theirs:
            problems.append(f"redaction differs: ours {json.dumps(ours, sort_keys=True)} synapse {json.dumps(theirs, sort_keys=True)}")

        if problems:
            failures.append(label + ": " + "; ".join(problems))
        else:
            print("ok:", label)
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

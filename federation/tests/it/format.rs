//! Format checks and signing, without storage: the spec's vectors, size limits, hostile input,
//! redaction per room version.

use base64::Engine as _;
use ruma::{CanonicalJsonObject, MilliSecondsSinceUnixEpoch, RoomId, UserId};
use serde_json::json;
use unitas_federation::SigningKey;
use unitas_federation::rooms::build::{Placement, build_pdu};
use unitas_federation::rooms::pdu::MAX_PDU_BYTES;
use unitas_federation::rooms::redact::redact_pdu;
use unitas_federation::rooms::{EventError, EventTemplate, Pdu, RoomVersion};

fn spec_key() -> SigningKey {
    SigningKey::from_key_file(
        "ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1",
        std::path::Path::new("spec"),
    )
    .unwrap()
}

/// The spec's event signing example (appendices, "Signing details": an event signed with the
/// example key by `domain`): content hash and signature are fixed by the spec.
#[test]
fn spec_vector_event_hash_and_signature() {
    let mut event: CanonicalJsonObject = serde_json::from_value(json!({
        "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain",
        "origin_server_ts": 1000000, "signatures": {}, "hashes": {}, "type": "X", "content": {},
        "prev_events": [], "auth_events": [], "depth": 3, "unsigned": {"age_ts": 1000000}
    }))
    .unwrap();
    let rules = ruma::room_version_rules::RoomVersionRules::V1;
    spec_key()
        .hash_and_sign_event("domain", &mut event, &rules.redaction)
        .unwrap();
    let event = serde_json::to_value(&event).unwrap();
    assert_eq!(
        event["hashes"]["sha256"],
        "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    );
    assert_eq!(
        event["signatures"]["domain"]["ed25519:1"],
        "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
    );
}

fn message_with_body(version: &RoomVersion, body: String) -> Result<Pdu, EventError> {
    let key = spec_key();
    let room = RoomId::parse("!room:a.test").unwrap();
    let sender = UserId::parse("@alice:a.test").unwrap();
    build_pdu(
        version,
        &EventTemplate::message("m.room.message", json!({"body": body})),
        Placement {
            room_id: Some(&room),
            sender: &sender,
            prev_events: vec![
                ruma::EventId::parse("$prevprevprevprevprevprevprevprevprevprevpre").unwrap(),
            ],
            auth_events: vec![],
            depth: 7,
            origin_server_ts: MilliSecondsSinceUnixEpoch(1_700_000_000_000u64.try_into().unwrap()),
            origin: "a.test",
            key: &key,
        },
    )
}

#[test]
fn exactly_65536_bytes_is_allowed_and_one_more_is_not() {
    let version = RoomVersion::parse("12").unwrap();
    let probe = message_with_body(&version, String::new()).unwrap();
    let fill = MAX_PDU_BYTES - probe.json.len();
    // Signatures and hashes are fixed-length, so the size moves one-for-one with the body.
    let exact = message_with_body(&version, "x".repeat(fill)).unwrap();
    assert_eq!(exact.json.len(), MAX_PDU_BYTES);
    let err = message_with_body(&version, "x".repeat(fill + 1)).unwrap_err();
    assert!(matches!(err, EventError::TooLarge(_)), "{err:?}");
}

#[test]
fn hostile_json_is_refused_with_a_reason() {
    let version = RoomVersion::parse("11").unwrap();
    let good = message_with_body(&version, "hi".into()).unwrap();
    let good_json: serde_json::Value = serde_json::from_str(&good.json).unwrap();
    let room = RoomId::parse("!room:a.test").unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut event = good_json.clone();
        event[field] = value;
        event.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        // Canonical JSON has no integers beyond +-(2^53-1).
        (
            with("depth", json!(9007199254740992u64)),
            "not canonical JSON",
        ),
        (
            good.json
                .replace("\"depth\":7", "\"depth\":-9007199254740992"),
            "not canonical JSON",
        ),
        (with("depth", json!(-1)), "negative"),
        (with("depth", json!("7")), "integer"),
        (with("sender", json!("alice")), "sender"),
        (with("room_id", json!("room-without-sigil")), "room_id"),
        (with("prev_events", json!(["not-an-event-id"])), "event ID"),
        (
            with(
                "prev_events",
                json!((0..21).map(|i| format!("$e{i}")).collect::<Vec<_>>()),
            ),
            "at most 20",
        ),
        (
            with(
                "auth_events",
                json!((0..11).map(|i| format!("$e{i}")).collect::<Vec<_>>()),
            ),
            "at most 10",
        ),
        (with("type", json!("t".repeat(256))), "at most 255"),
        (with("content", json!("text")), "object"),
        (with("origin_server_ts", json!(1.5)), "not canonical JSON"),
        ("[]".into(), "not canonical JSON"),
    ];
    for (text, reason) in cases {
        let err = Pdu::from_json(&text, &version, Some(&room)).unwrap_err();
        assert!(err.to_string().contains(reason), "{reason:?} not in {err}");
    }
    // Signed for another room.
    let other = RoomId::parse("!other:a.test").unwrap();
    let err = Pdu::from_json(&good.json, &version, Some(&other)).unwrap_err();
    assert!(matches!(err, EventError::WrongRoom(_)), "{err:?}");
    // The same event parses back to the same ID.
    assert_eq!(
        Pdu::from_json(&good.json, &version, Some(&room))
            .unwrap()
            .event_id,
        good.event_id
    );
}

#[test]
fn only_versions_10_to_12_are_spoken() {
    for id in ["10", "11", "12"] {
        assert!(RoomVersion::parse(id).is_some(), "{id}");
    }
    for id in ["1", "6", "9", "13", "org.example.custom", ""] {
        assert!(RoomVersion::parse(id).is_none(), "{id}");
    }
}

#[test]
fn event_ids_are_url_safe_reference_hashes() {
    let version = RoomVersion::parse("10").unwrap();
    let pdu = message_with_body(&version, "id".into()).unwrap();
    let hash = &pdu.event_id.as_str()[1..];
    assert_eq!(hash.len(), 43);
    assert!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(hash)
            .is_ok()
    );
    assert!(
        !pdu.json.contains("event_id"),
        "room versions 3+ carry no event_id"
    );
}

/// Redaction keeps what each room version keeps, and the event ID does not change.
#[test]
fn redaction_per_version() {
    let key = spec_key();
    let sender = UserId::parse("@alice:a.test").unwrap();
    let room = RoomId::parse("!room:a.test").unwrap();
    let build = |version: &RoomVersion, template: EventTemplate| {
        build_pdu(
            version,
            &template,
            Placement {
                room_id: Some(&room),
                sender: &sender,
                prev_events: vec![
                    ruma::EventId::parse("$prevprevprevprevprevprevprevprevprevprevpre").unwrap(),
                ],
                auth_events: vec![],
                depth: 2,
                origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
                origin: "a.test",
                key: &key,
            },
        )
        .unwrap()
    };
    for id in ["10", "11", "12"] {
        let version = RoomVersion::parse(id).unwrap();
        let message = build(
            &version,
            EventTemplate::message("m.room.message", json!({"body": "secret"})),
        );
        let redacted = redact_pdu(&message, &version).unwrap();
        assert_eq!(
            redacted.event_id, message.event_id,
            "v{id}: the ID survives redaction"
        );
        assert_eq!(redacted.content.get(), "{}");

        let levels = build(
            &version,
            EventTemplate::state(
                "m.room.power_levels",
                "",
                json!({"ban": 50, "invite": 0, "users": {}, "extra": 1}),
            ),
        );
        let content: serde_json::Value =
            serde_json::from_str(redact_pdu(&levels, &version).unwrap().content.get()).unwrap();
        assert_eq!(content.get("extra"), None);
        assert_eq!(content["ban"], 50);
        // `invite` survives only from v11 on.
        assert_eq!(content.get("invite").is_some(), id != "10", "v{id}");

        let redaction = EventTemplate {
            kind: "m.room.redaction".into(),
            state_key: None,
            content: json!({"reason": "spam"}),
            redacts: Some(message.event_id.clone()),
        };
        let redaction = build(&version, redaction);
        assert_eq!(redaction.redacts.as_ref(), Some(&message.event_id));
        let content: serde_json::Value =
            serde_json::from_str(redact_pdu(&redaction, &version).unwrap().content.get()).unwrap();
        // v11+ keep content.redacts; v10 keeps nothing of the content.
        assert_eq!(
            content.get("redacts").is_some(),
            id != "10",
            "v{id}: {content}"
        );
        assert_eq!(content.get("reason"), None);
    }
}

/// The spec's canonical JSON examples (appendices, "Canonical JSON"): our stored bytes are these.
#[test]
fn spec_vectors_canonical_json() {
    let cases = [
        (r#"{}"#, r#"{}"#),
        (r#"{"one": 1, "two": "Two"}"#, r#"{"one":1,"two":"Two"}"#),
        (r#"{"b": "2", "a": "1"}"#, r#"{"a":"1","b":"2"}"#),
        (r#"{"b":"2","a":"1"}"#, r#"{"a":"1","b":"2"}"#),
        (
            r#"{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {"display_name": "John Doe", "three_pids": [{"medium": "email", "address": "john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}"#,
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
        ),
        (r#"{"a": "日本語"}"#, r#"{"a":"日本語"}"#),
        (r#"{"本": 2, "日": 1}"#, r#"{"日":1,"本":2}"#),
        (r#"{"a": "\u65E5"}"#, r#"{"a":"日"}"#),
        (r#"{"a": null}"#, r#"{"a":null}"#),
    ];
    for (input, expected) in cases {
        let value: CanonicalJsonObject = match serde_json::from_str::<serde_json::Value>(input)
            .ok()
            .and_then(|v| ruma::CanonicalJsonValue::try_from(v).ok())
        {
            Some(ruma::CanonicalJsonValue::Object(object)) => object,
            _ => panic!("not canonical JSON: {input}"),
        };
        assert_eq!(serde_json::to_string(&value).unwrap(), expected, "{input}");
    }
}

/// Our verification, one by one and batched (one redacted serialisation for the event ID and
/// the signatures, ed25519 batches), reaches ruma's verdicts (`verify_event`,
/// `reference_hash`): same event IDs, same redaction on a content hash mismatch, same refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_verification_agrees_with_one_by_one() {
    use unitas_federation::client::{ClientOptions, FederationClient};
    use unitas_federation::inbound::{verify_batch, verify_pdu};
    use unitas_federation::key_ring::KeyRing;
    use unitas_storage::{RemoteServerKey, RemoteServerKeys, Store, StoreOptions};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/keys.db", dir.path().display());
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let key = SigningKey::generate().unwrap();
    store
        .store_remote_server_key(&RemoteServerKey {
            server_name: "b.test".into(),
            key_id: key.key_id(),
            public_key: key.public_key_base64(),
            valid_until_ts: i64::MAX / 2,
            expired_ts: None,
            fetched_ts: 0,
        })
        .await
        .unwrap();
    let client = std::sync::Arc::new(FederationClient::new(ClientOptions::default()).unwrap());
    let key_ring = KeyRing::new(store, client, vec![], vec![]);
    let sender = UserId::parse("@bob:b.test").unwrap();
    let room = RoomId::parse("!room:b.test").unwrap();
    let parent =
        ruma::OwnedEventId::try_from("$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
    for id in ["10", "11", "12"] {
        let version = RoomVersion::parse(id).unwrap();
        let mut objects: Vec<CanonicalJsonObject> = (0..6)
            .map(|i| {
                let pdu = build_pdu(
                    &version,
                    &EventTemplate::message(
                        "m.room.message",
                        json!({"msgtype": "m.text", "body": format!("message {i}")}),
                    ),
                    Placement {
                        room_id: Some(&room),
                        sender: &sender,
                        prev_events: vec![parent.clone()],
                        auth_events: vec![parent.clone()],
                        depth: 5 + i,
                        origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
                        origin: "b.test",
                        key: &key,
                    },
                )
                .unwrap();
                serde_json::from_str(pdu.federation_json()).unwrap()
            })
            .collect();
        // 1: content changed after signing (hash mismatch: redacted, still accepted);
        // 2: a signature that does not verify; 3: a malformed signature.
        objects[1].insert(
            "content".into(),
            serde_json::from_value(json!({"msgtype": "m.text", "body": "forged"})).unwrap(),
        );
        let tamper = |object: &mut CanonicalJsonObject, with: &dyn Fn(&str) -> String| {
            let mut signatures: serde_json::Value =
                serde_json::to_value(object.get("signatures").unwrap()).unwrap();
            let slot = &mut signatures["b.test"][key.key_id()];
            *slot = with(slot.as_str().unwrap()).into();
            object.insert(
                "signatures".into(),
                serde_json::from_value(signatures).unwrap(),
            );
        };
        tamper(&mut objects[2], &|s| {
            let mut bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(s)
                .unwrap();
            bytes[10] ^= 1;
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
        });
        tamper(&mut objects[3], &|_| "not base64!".into());

        // The reference: ruma's own verification and reference hash, one event at a time.
        let mut keys = ruma::signatures::PublicKeySet::new();
        keys.insert(
            key.key_id(),
            ruma::serde::Base64::parse(key.public_key_base64()).unwrap(),
        );
        let mut key_map = ruma::signatures::PublicKeyMap::new();
        key_map.insert("b.test".into(), keys);
        let reference: Vec<Result<(ruma::OwnedEventId, bool), ()>> = objects
            .iter()
            .map(|object| {
                let verified = ruma::signatures::verify_event(&key_map, object, version.rules())
                    .map_err(|_| ())?;
                let hash = ruma::signatures::reference_hash(object, version.rules()).unwrap();
                let id = ruma::OwnedEventId::try_from(format!("${hash}")).unwrap();
                Ok((id, verified == ruma::signatures::Verified::All))
            })
            .collect();
        let mut one_by_one = Vec::new();
        for object in &objects {
            one_by_one.push(verify_pdu(&key_ring, object.clone(), &version, Some(&room)).await);
        }
        for (ours, theirs) in one_by_one.iter().zip(&reference) {
            match (ours, theirs) {
                (Ok(pdu), Ok((event_id, intact))) => {
                    assert_eq!(&pdu.event_id, event_id, "v{id}");
                    assert_eq!(
                        pdu.content.get() != "{}",
                        *intact,
                        "v{id}: redacted iff hash mismatch"
                    );
                }
                (Err(_), Err(())) => {}
                (ours, theirs) => panic!("v{id}: ours {ours:?}, ruma {theirs:?}"),
            }
        }
        let items = objects
            .iter()
            .map(|o| (o.clone(), version.clone(), room.clone()))
            .collect();
        let batched = verify_batch(&key_ring, items).await;
        let verdict = |r: &Result<Pdu, EventError>| match r {
            Ok(pdu) => Ok((pdu.event_id.clone(), pdu.content.get().to_owned())),
            Err(_) => Err(()),
        };
        let expected: Vec<_> = one_by_one.iter().map(verdict).collect();
        let got: Vec<_> = batched.iter().map(verdict).collect();
        assert_eq!(got, expected, "v{id}");
        assert!(
            expected[0].is_ok() && expected[2].is_err() && expected[3].is_err(),
            "v{id}"
        );
        assert_eq!(expected[1].as_ref().unwrap().1, "{}", "v{id}: redacted");
        // All good: the batch itself passes.
        let good: Vec<_> = [0, 4, 5]
            .iter()
            .map(|&i| (objects[i].clone(), version.clone(), room.clone()))
            .collect();
        assert!(
            verify_batch(&key_ring, good)
                .await
                .iter()
                .all(Result::is_ok)
        );
    }
}

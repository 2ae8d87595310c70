//! Events built by the append path, checked by Synapse's redaction and room-version code and by
//! `canonicaljson`/`signedjson`: canonical bytes, content hashes, event IDs (reference hashes),
//! version 12 room IDs, signatures, and the redaction algorithm of versions 10, 11 and 12.

use std::sync::Arc;

use serde_json::json;
use unitas_conformance_tests::{python, script};
use unitas_federation::SigningKey;
use unitas_federation::rooms::redact::redact_object;
use unitas_federation::rooms::{EventTemplate, NewRoom, NoOutbound, RoomVersion, Rooms, Signer};
use unitas_storage::RoomEvents;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_and_signedjson_agree_with_our_events() {
    let Some(python) = python() else { return };
    let db = unitas_storage::testing::sqlite().await;
    let (rooms, writer) = Rooms::new(
        db.store.clone(),
        ["a.test".to_owned()],
        Arc::new(NoOutbound),
    )
    .await
    .unwrap();
    tokio::spawn(writer.run(std::future::pending()));
    let key = SigningKey::generate().unwrap();
    let signer = Signer {
        server_name: "a.test",
        key: &key,
    };
    let alice = ruma::UserId::parse("@alice:a.test").unwrap();
    let bob = ruma::UserId::parse("@bob:a.test").unwrap();

    let mut events = Vec::new();
    for id in ["10", "11", "12"] {
        let version = RoomVersion::parse(id).unwrap();
        let initial = vec![
            EventTemplate::state("m.room.name", "", json!({"name": "Unitas ✓ — ünïcode"})),
            EventTemplate::state("m.room.topic", "", json!({"topic": "canonical \"json\"\n"})),
        ];
        let room = NewRoom {
            version: version.clone(),
            join_rule: "public".into(),
            initial_state: initial,
        };
        let room_id = rooms.create_room(signer, &alice, room).await.unwrap();
        rooms
            .send_local(
                &room_id,
                &bob,
                &EventTemplate::state(
                    "m.room.member",
                    bob.as_str(),
                    json!({"membership": "join", "displayname": "Bob"}),
                ),
                signer,
            )
            .await
            .unwrap();
        let message = rooms
            .send_local(&room_id, &bob, &EventTemplate::message("m.room.message", json!({"msgtype": "m.text", "body": "numbers 9007199254740991 -9007199254740991", "n": 9007199254740991i64})), signer)
            .await
            .unwrap();
        let redaction = EventTemplate {
            kind: "m.room.redaction".into(),
            state_key: None,
            content: json!({"reason": "test"}),
            redacts: Some(message.event_id.clone()),
        };
        rooms
            .send_local(&room_id, &alice, &redaction, signer)
            .await
            .unwrap();
        let mut levels = json!({"users": {bob.as_str(): 50}, "users_default": 0, "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0, "events": {"m.room.name": 100}});
        if id != "12" {
            levels["users"][alice.as_str()] = json!(100);
        }
        rooms
            .send_local(
                &room_id,
                &alice,
                &EventTemplate::state("m.room.power_levels", "", levels),
                signer,
            )
            .await
            .unwrap();
        rooms
            .send_local(
                &room_id,
                &alice,
                &EventTemplate::state(
                    "m.room.join_rules",
                    "",
                    json!({"join_rule": "invite", "extra": true}),
                ),
                signer,
            )
            .await
            .unwrap();

        for row in db
            .store
            .get_room_events_after(room_id.as_str(), 0, 100)
            .await
            .unwrap()
        {
            let object = serde_json::from_str(&row.json).unwrap();
            let redacted = redact_object(object, &version).unwrap();
            events.push(json!({
                "room_version": id,
                "event_id": row.event_id,
                "room_id": room_id.as_str(),
                "json": row.json,
                "redacted": serde_json::to_string(&redacted).unwrap(),
            }));
        }
    }
    assert!(events.len() >= 30);
    let file = tempfile::NamedTempFile::new().unwrap();
    let data = json!({"server_name": "a.test", "key_id": key.key_id(), "verify_key": key.public_key_base64(), "events": events});
    std::fs::write(file.path(), data.to_string()).unwrap();
    let path = file.path().to_owned();
    let (ok, stdout, stderr) = crate::run_to_end(
        python,
        vec![
            script("check_events.py").display().to_string(),
            path.display().to_string(),
        ],
    )
    .await;
    assert!(ok, "independent checks failed:\n{stderr}\n{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok:")).count(),
        events.len(),
        "{stdout}"
    );
}

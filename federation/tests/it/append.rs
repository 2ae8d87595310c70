//! The append path: what it stores, what it refuses, and what it costs.

use serde_json::json;
use unitas_federation::rooms::{AppendError, Appended, EventError, EventTemplate};
use unitas_storage::{PushStore, RoomEvents, Store};

use crate::support::{World, member};

pub async fn rooms_of_every_version(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    for version in ["10", "11", "12"] {
        let room = w.public_room(version).await;
        if version == "12" {
            // Version 12: the room ID is the create event's reference hash, with no server name.
            let state = w.rooms.current_state(&room).await.unwrap().unwrap();
            let create = &state[&("m.room.create".to_owned(), String::new())];
            assert_eq!(room.as_str(), format!("!{}", &create.as_str()[1..]));
        } else {
            assert!(room.as_str().ends_with(":a.test"), "{room}");
        }
        let mut last = None;
        for i in 0..5 {
            last = Some(w.message(&room, &alice, &format!("hello {i}")).await);
        }
        let last = last.unwrap();
        assert_eq!(
            w.rooms.forward_extremities(&room).await.unwrap(),
            [last.event_id.clone()]
        );
        let timeline = w
            .store
            .get_room_events_after(room.as_str(), 0, 100)
            .await
            .unwrap();
        let kinds: Vec<&str> = timeline.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "m.room.create",
                "m.room.member",
                "m.room.power_levels",
                "m.room.join_rules",
                "m.room.history_visibility",
                "m.room.message",
                "m.room.message",
                "m.room.message",
                "m.room.message",
                "m.room.message"
            ],
            "room version {version}"
        );
        assert!(
            timeline
                .windows(2)
                .all(|w| w[0].stream_ordering < w[1].stream_ordering)
        );
        assert!(timeline.windows(2).all(|w| w[0].depth < w[1].depth));
        let state = w.rooms.current_state(&room).await.unwrap().unwrap();
        assert_eq!(state.len(), 5);
        // Creators of version 12 rooms are not listed in power levels; earlier versions list them.
        let levels = w
            .state_content(&room, "m.room.power_levels", "")
            .await
            .unwrap();
        assert_eq!(
            levels["users"].get(alice.as_str()).is_some(),
            version != "12",
            "version {version}"
        );
    }
}

pub async fn a_message_writes_no_state_rows(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    let room = w.public_room("12").await;
    for i in 0..300 {
        let user = w.a.user(&format!("u{i}"));
        w.send(&room, &user, member(&user, "join")).await;
    }
    let before = w.counts().await;
    w.message(&room, &alice, "one message in a 301-member room")
        .await;
    let after = w.counts().await;
    // events +1, edges +1 (one parent), state groups and deltas unchanged.
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2],
            after[3] - before[3]
        ],
        [1, 1, 0, 0]
    );
    // A state event costs one group and one delta row, whatever the room's size.
    let before = after;
    w.send(
        &room,
        &alice,
        EventTemplate::state("m.room.topic", "", json!({"topic": "t"})),
    )
    .await;
    let after = w.counts().await;
    assert_eq!([after[2] - before[2], after[3] - before[3]], [1, 1]);
}

pub async fn appending_twice_is_a_no_op(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    let room = w.public_room("12").await;
    let pdu = w.message(&room, &alice, "once").await;
    let counts = w.counts().await;
    let again = w.rooms.append_remote((*pdu).clone()).await.unwrap();
    assert_eq!(again, Appended::Duplicate);
    assert_eq!(w.counts().await, counts);
    assert_eq!(
        w.rooms.forward_extremities(&room).await.unwrap(),
        [pdu.event_id.clone()]
    );
}

pub async fn a_sender_without_permission_is_rejected(store: Store) {
    let w = World::new(store).await;
    let room = w.public_room("12").await;
    let last = w.message(&room, &w.a.user("alice"), "hi").await;
    let state = w.rooms.current_state(&room).await.unwrap();
    let counts = w.counts().await;

    // A user who never joined.
    let mallory = w.b.user("mallory");
    let pdu = w
        .build_on(
            &room,
            &last.event_id,
            &w.b,
            &mallory,
            EventTemplate::message("m.room.message", json!({"body": "x"})),
        )
        .await;
    let err = w.rooms.append_remote(pdu).await.unwrap_err();
    assert!(
        matches!(err, AppendError::Event(EventError::Unauthorized(_))),
        "{err:?}"
    );

    // A joined user without the power to change state.
    let bob = w.a.user("bob");
    w.send(&room, &bob, member(&bob, "join")).await;
    let err = w
        .rooms
        .send_local(
            &room,
            &bob,
            &EventTemplate::state("m.room.name", "", json!({"name": "mine"})),
            w.a.signer(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Event(EventError::Unauthorized(_))),
        "{err:?}"
    );

    let counts_after = w.counts().await;
    assert_eq!(counts_after[0], counts[0] + 1, "only bob's join was stored");
    let mut expected = state.unwrap();
    expected.insert(
        ("m.room.member".into(), bob.to_string()),
        w.rooms.forward_extremities(&room).await.unwrap()[0].clone(),
    );
    assert_eq!(
        w.rooms.current_state(&room).await.unwrap().unwrap(),
        expected
    );
}

pub async fn soft_failed_events_are_stored_not_shown(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    let bob = w.b.user("bob");
    let room = w.public_room("12").await;
    // Bob (a remote user) joins.
    let start = w.rooms.forward_extremities(&room).await.unwrap()[0].clone();
    let join = w
        .build_on(&room, &start, &w.b, &bob, member(&bob, "join"))
        .await;
    let join_id = join.event_id.clone();
    assert!(matches!(
        w.rooms.append_remote(join).await.unwrap(),
        Appended::Timeline(_)
    ));
    // Alice bans him; b.test is no longer in the room.
    let ban = w.send(&room, &alice, member(&bob, "ban")).await;
    // Bob's server had not seen the ban: his message builds on his join.
    let late = w
        .build_on(
            &room,
            &join_id,
            &w.b,
            &bob,
            EventTemplate::message("m.room.message", json!({"body": "late"})),
        )
        .await;
    let late_id = late.event_id.clone();
    assert_eq!(
        w.rooms.append_remote(late).await.unwrap(),
        Appended::SoftFailed
    );
    let row = w.store.get_event(late_id.as_str()).await.unwrap().unwrap();
    assert!(row.soft_failed);
    assert_eq!(row.stream_ordering, None);
    let timeline = w
        .store
        .get_room_events_after(room.as_str(), 0, 100)
        .await
        .unwrap();
    assert!(
        !timeline.iter().any(|e| e.event_id == late_id.as_str()),
        "not shown"
    );
    assert_eq!(
        w.rooms.forward_extremities(&room).await.unwrap(),
        [ban.event_id.clone()],
        "not an extremity"
    );
    assert_eq!(w.membership(&room, &bob).await.as_deref(), Some("ban"));
}

pub async fn outliers_stay_out_of_the_timeline(store: Store) {
    let w = World::new(store).await;
    let room = w.public_room("11").await;
    let version = w.version(&room).await;
    let start = w.rooms.forward_extremities(&room).await.unwrap()[0].clone();
    let carol = w.b.user("carol");
    let join = w
        .build_on(&room, &start, &w.b, &carol, member(&carol, "join"))
        .await;
    let id = join.event_id.clone();
    assert_eq!(
        w.rooms.append_outlier(join, &version).await.unwrap(),
        Appended::Outlier
    );
    let row = w.store.get_event(id.as_str()).await.unwrap().unwrap();
    assert!(row.outlier);
    assert!(
        !w.store
            .get_room_events_after(room.as_str(), 0, 100)
            .await
            .unwrap()
            .iter()
            .any(|e| e.event_id == id.as_str())
    );
    assert_eq!(w.rooms.forward_extremities(&room).await.unwrap(), [start]);
    assert_eq!(
        w.membership(&room, &carol).await,
        None,
        "an outlier does not change the state"
    );
    assert!(
        w.rooms.state_after(&id).await.unwrap().is_none(),
        "an outlier has no state"
    );
}

pub async fn state_is_answerable_at_any_event(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    let room = w.public_room("10").await;
    let first = w.message(&room, &alice, "before the topic").await;
    let topic = w
        .send(
            &room,
            &alice,
            EventTemplate::state("m.room.topic", "", json!({"topic": "t1"})),
        )
        .await;
    let second = w.message(&room, &alice, "after the topic").await;
    let slot = ("m.room.topic".to_owned(), String::new());
    assert!(
        !w.rooms
            .state_after(&first.event_id)
            .await
            .unwrap()
            .unwrap()
            .contains_key(&slot)
    );
    assert!(
        !w.rooms
            .state_before(&topic.event_id)
            .await
            .unwrap()
            .unwrap()
            .contains_key(&slot)
    );
    assert_eq!(
        w.rooms.state_after(&topic.event_id).await.unwrap().unwrap()[&slot],
        topic.event_id
    );
    assert_eq!(
        w.rooms
            .state_before(&second.event_id)
            .await
            .unwrap()
            .unwrap()[&slot],
        topic.event_id
    );
}

pub async fn state_survives_a_restart(store: Store) {
    let mut w = World::new(store).await;
    let alice = w.a.user("alice");
    let room = w.public_room("12").await;
    w.send(
        &room,
        &alice,
        EventTemplate::state("m.room.topic", "", json!({"topic": "kept"})),
    )
    .await;
    let last = w.message(&room, &alice, "last").await;
    let state = w.rooms.current_state(&room).await.unwrap();
    w.restart().await;
    assert_eq!(w.rooms.current_state(&room).await.unwrap(), state);
    assert_eq!(
        w.rooms.forward_extremities(&room).await.unwrap(),
        [last.event_id.clone()]
    );
    let next = w.message(&room, &alice, "after restart").await;
    assert_eq!(next.prev_events, [last.event_id.clone()]);
    assert_eq!(next.depth, last.depth + 1);
    let timeline = w
        .store
        .get_room_events_after(room.as_str(), 0, 100)
        .await
        .unwrap();
    assert!(
        timeline
            .windows(2)
            .all(|w| w[0].stream_ordering < w[1].stream_ordering),
        "positions continue"
    );
}

pub async fn bad_events_change_nothing(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    let room = w.public_room("12").await;
    let other = w.public_room("12").await;
    let last = w.message(&room, &alice, "hi").await;
    let state = w.rooms.current_state(&room).await.unwrap();
    let counts = w.counts().await;
    let good = w
        .build_on(
            &room,
            &last.event_id,
            &w.a,
            &alice,
            EventTemplate::message("m.room.message", json!({"body": "x"})),
        )
        .await;

    // An event for another room (the room ID is signed: changing it changes the event).
    let mut object = good.to_object().unwrap();
    object.insert(
        "room_id".into(),
        ruma::CanonicalJsonValue::String(other.to_string()),
    );
    let moved =
        unitas_federation::rooms::Pdu::from_object(object, &w.version(&room).await, None).unwrap();
    let err = w.rooms.append_remote(moved).await.unwrap_err();
    assert!(matches!(err, AppendError::Event(_)), "{err:?}");

    // Unknown parents.
    let mut object = good.to_object().unwrap();
    object.insert(
        "prev_events".into(),
        ruma::CanonicalJsonValue::Array(vec![ruma::CanonicalJsonValue::String(
            "$unknownunknownunknownunknownunknownunknown".into(),
        )]),
    );
    let orphan =
        unitas_federation::rooms::Pdu::from_object(object, &w.version(&room).await, Some(&room))
            .unwrap();
    let err = w.rooms.append_remote(orphan).await.unwrap_err();
    assert!(
        matches!(err, AppendError::Event(EventError::Missing(_))),
        "{err:?}"
    );

    assert_eq!(w.counts().await, counts);
    assert_eq!(w.rooms.current_state(&room).await.unwrap(), state);
    assert_eq!(
        w.rooms.forward_extremities(&room).await.unwrap(),
        [last.event_id.clone()]
    );
}

pub async fn waiters_wake_and_other_servers_get_the_event(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    let room = w.public_room("12").await;
    let mut position = w.rooms.subscribe();
    let before = *position.borrow_and_update();

    // Only local members: nothing leaves the server.
    let local = w.message(&room, &alice, "local only").await;
    assert!(
        position.has_changed().unwrap(),
        "the commit woke the waiter"
    );
    let at = *position.borrow_and_update();
    assert!(at > before);
    let row = w
        .store
        .get_event(local.event_id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.stream_ordering,
        Some(at),
        "the waiter sees the durable position of the event"
    );
    assert!(w.outbound.0.lock().unwrap().is_empty());

    // A remote member joins: later events go to b.test, never to ourselves.
    let bob = w.b.user("bob");
    let last = w.rooms.forward_extremities(&room).await.unwrap()[0].clone();
    let join = w
        .build_on(&room, &last, &w.b, &bob, member(&bob, "join"))
        .await;
    w.rooms.append_remote(join).await.unwrap();
    let message = w.message(&room, &alice, "to everyone").await;
    let sent = w.outbound.0.lock().unwrap().clone();
    assert!(
        sent.contains(&(message.event_id.clone(), vec!["b.test".to_owned()])),
        "{sent:?}"
    );
    // After bob leaves, nothing more goes to b.test.
    w.send(&room, &alice, member(&bob, "ban")).await;
    let after = w.message(&room, &alice, "alone again").await;
    assert!(
        !w.outbound
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(id, _)| id == &after.event_id)
    );
}

pub async fn only_concerned_users_are_woken(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    let bob = w.a.user("bob");
    let carol = w.a.user("carol");
    let room = w.public_room("12").await;
    let other = w.public_room("12").await;
    let mut bobs = w.rooms.subscribe_user(&bob);
    let mut carols = w.rooms.subscribe_user(&carol);

    // An invite wakes the invitee.
    w.send(&room, &alice, member(&bob, "invite")).await;
    assert!(bobs.has_changed().unwrap());
    bobs.borrow_and_update();
    w.send(&room, &bob, member(&bob, "join")).await;
    bobs.borrow_and_update();

    // A message in bob's room wakes bob, not carol; one in another room wakes neither.
    w.message(&other, &alice, "elsewhere").await;
    assert!(!bobs.has_changed().unwrap());
    w.message(&room, &alice, "for bob").await;
    assert!(bobs.has_changed().unwrap());
    assert!(!carols.has_changed().unwrap());
    bobs.borrow_and_update();

    // Leaving wakes the leaver once more; after that the room is silent for them.
    w.send(&room, &bob, member(&bob, "leave")).await;
    assert!(bobs.has_changed().unwrap());
    bobs.borrow_and_update();
    w.message(&room, &alice, "after bob left").await;
    assert!(!bobs.has_changed().unwrap());
    let _ = carols.borrow_and_update();
}

/// Version 12 room IDs are hashes of the create event: two identical rooms made by one user in
/// the same millisecond must still be two rooms.
pub async fn rooms_made_at_once_are_different_rooms(store: Store) {
    let world = World::new(store).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(world.public_room("12").await);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

/// Push verdicts written alone wait for the next append and share its commit (one commit per
/// message, not two).
pub async fn push_verdicts_ride_with_the_next_append(store: Store) {
    // Held for an hour: the write can only complete with an append's commit.
    let w = World::with_push_defer(store, Some(std::time::Duration::from_secs(3600))).await;
    let alice = w.a.user("alice");
    let room = w.public_room("12").await;
    let first = w.message(&room, &alice, "one").await;
    let position = w
        .store
        .get_event(first.event_id.as_str())
        .await
        .unwrap()
        .unwrap()
        .stream_ordering
        .unwrap();
    let push = w.rooms.write_push(unitas_storage::PushWrite {
        position: Some(position),
        ..Default::default()
    });
    tokio::pin!(push);
    // The first poll queues the write; it cannot be done yet.
    tokio::select! {
        biased;
        _ = &mut push => panic!("push verdicts written before any append"),
        () = std::future::ready(()) => {}
    }
    assert_eq!(w.store.get_push_position().await.unwrap(), None);
    w.message(&room, &alice, "two").await;
    tokio::time::timeout(std::time::Duration::from_secs(60), push)
        .await
        .expect("the verdicts were written with the append")
        .unwrap();
    assert_eq!(w.store.get_push_position().await.unwrap(), Some(position));
}

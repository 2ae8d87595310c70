//! State resolution fixtures, run through the real append path. Each builds a fork: one branch
//! is appended normally, the other arrives later built on the fork point (as from a server that
//! had not seen the first branch), both are accepted, and the room's current state is the
//! resolution of the two. Each case runs in room version 11 (state resolution v2) and 12 (v2.1).

use serde_json::json;
use unitas_federation::rooms::{Appended, EventTemplate};
use unitas_storage::Store;

use crate::support::{World, member};

/// Concurrent ban and join: alice bans carol while carol joins. Power events (the ban) are
/// ordered first; carol's join is then checked against a state where she is banned and loses.
pub async fn concurrent_ban_and_join(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    let carol = w.b.user("carol");
    for version in ["11", "12"] {
        let room = w.public_room(version).await;
        let fork = w.rooms.forward_extremities(&room).await.unwrap()[0].clone();
        // Branch 1 (arrives first): carol joins.
        let join = w
            .build_on(&room, &fork, &w.b, &carol, member(&carol, "join"))
            .await;
        assert!(matches!(
            w.rooms.append_remote(join).await.unwrap(),
            Appended::Timeline(_)
        ));
        assert_eq!(w.membership(&room, &carol).await.as_deref(), Some("join"));
        // Branch 2 (arrives second, built on the fork point): alice bans carol.
        let ban = w
            .build_on(&room, &fork, &w.a, &alice, member(&carol, "ban"))
            .await;
        assert!(matches!(
            w.rooms.append_remote(ban).await.unwrap(),
            Appended::Timeline(_)
        ));
        assert_eq!(
            w.rooms.forward_extremities(&room).await.unwrap().len(),
            2,
            "v{version}: two branches"
        );
        assert_eq!(
            w.membership(&room, &carol).await.as_deref(),
            Some("ban"),
            "v{version}: the ban wins"
        );
        // The next event merges the branches.
        let merge = w.message(&room, &alice, "merged").await;
        assert_eq!(merge.prev_events.len(), 2);
        assert_eq!(
            w.rooms.forward_extremities(&room).await.unwrap(),
            [merge.event_id.clone()]
        );
        assert_eq!(w.membership(&room, &carol).await.as_deref(), Some("ban"));
    }
}

/// Power-level race: alice takes bob's power away while bob, still powerful on his branch,
/// changes the topic. The power levels are resolved first; bob's topic then fails against them.
pub async fn power_level_race(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    let bob = w.b.user("bob");
    for version in ["11", "12"] {
        let room = w.public_room(version).await;
        let start = w.rooms.forward_extremities(&room).await.unwrap()[0].clone();
        let join = w
            .build_on(&room, &start, &w.b, &bob, member(&bob, "join"))
            .await;
        w.rooms.append_remote(join).await.unwrap();
        let mut levels = w
            .state_content(&room, "m.room.power_levels", "")
            .await
            .unwrap();
        levels["users"][bob.as_str()] = json!(50);
        w.send(
            &room,
            &alice,
            EventTemplate::state("m.room.power_levels", "", levels.clone()),
        )
        .await;
        w.send(
            &room,
            &alice,
            EventTemplate::state("m.room.topic", "", json!({"topic": "original"})),
        )
        .await;
        let fork = w.rooms.forward_extremities(&room).await.unwrap()[0].clone();

        // Branch 1: bob sets the topic (he has 50 = state_default here).
        let topic = w
            .build_on(
                &room,
                &fork,
                &w.b,
                &bob,
                EventTemplate::state("m.room.topic", "", json!({"topic": "bob's"})),
            )
            .await;
        assert!(matches!(
            w.rooms.append_remote(topic).await.unwrap(),
            Appended::Timeline(_)
        ));
        assert_eq!(
            w.state_content(&room, "m.room.topic", "").await.unwrap()["topic"],
            "bob's"
        );
        // Branch 2: alice demotes bob, built on the fork point.
        levels["users"][bob.as_str()] = json!(0);
        let demote = w
            .build_on(
                &room,
                &fork,
                &w.a,
                &alice,
                EventTemplate::state("m.room.power_levels", "", levels.clone()),
            )
            .await;
        assert!(matches!(
            w.rooms.append_remote(demote).await.unwrap(),
            Appended::Timeline(_)
        ));
        assert_eq!(
            w.state_content(&room, "m.room.topic", "").await.unwrap()["topic"],
            "original",
            "v{version}: bob's topic fails against the resolved power levels"
        );
        assert_eq!(
            w.state_content(&room, "m.room.power_levels", "")
                .await
                .unwrap()["users"][bob.as_str()],
            0
        );
    }
}

/// Join-rule change: alice makes the room invite-only while dave joins through the old public
/// rule. The join rules are a power event, resolved first; dave's join then fails.
pub async fn join_rule_change_against_a_join(store: Store) {
    let w = World::new(store).await;
    let alice = w.a.user("alice");
    let dave = w.b.user("dave");
    for version in ["11", "12"] {
        let room = w.public_room(version).await;
        let fork = w.rooms.forward_extremities(&room).await.unwrap()[0].clone();
        let join = w
            .build_on(&room, &fork, &w.b, &dave, member(&dave, "join"))
            .await;
        assert!(matches!(
            w.rooms.append_remote(join).await.unwrap(),
            Appended::Timeline(_)
        ));
        let invite_only = w
            .build_on(
                &room,
                &fork,
                &w.a,
                &alice,
                EventTemplate::state("m.room.join_rules", "", json!({"join_rule": "invite"})),
            )
            .await;
        assert!(matches!(
            w.rooms.append_remote(invite_only).await.unwrap(),
            Appended::Timeline(_)
        ));
        assert_eq!(
            w.state_content(&room, "m.room.join_rules", "")
                .await
                .unwrap()["join_rule"],
            "invite"
        );
        assert_eq!(
            w.membership(&room, &dave).await,
            None,
            "v{version}: dave's join is resolved away"
        );
    }
}

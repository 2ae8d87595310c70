//! Syncing: simplified sliding sync (MSC4186: lists by recency, windows, deltas that lose
//! nothing) and what a left room shows in /sync.

use serde_json::{Value, json};

use crate::support::{TestNode, http, join_room, node_with_two_users, post_json, settled_sync};

const HOST: &str = "localhost:8448";
const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn sliding(t: &TestNode, token: &str, pos: Option<&str>, body: Value) -> (u16, Value) {
    let url = match pos {
        Some(pos) => t.client(&format!("{PATH}?pos={pos}&timeout=10000")),
        None => t.client(PATH),
    };
    post_json(&url, HOST, Some(token), body).await
}

async fn send(t: &TestNode, token: &str, room: &str, txn: &str, body: &str) -> String {
    let url = t.client(&format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
        unitas_federation::inbound::percent(room)
    ));
    let reply: Value = http()
        .put(url)
        .bearer_auth(token)
        .json(&json!({"msgtype": "m.text", "body": body}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The push rules see it before the test looks (its counts come with the message).
    settled_sync(t, HOST, token).await;
    reply["event_id"].as_str().unwrap().to_owned()
}

fn bodies(room: &Value) -> Vec<&str> {
    room["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect()
}

#[tokio::test]
async fn sliding_sync_windows_deltas_and_positions() {
    let (t, alice, bob) = node_with_two_users().await;
    let v3 = |path: &str| t.client(&format!("/_matrix/client/v3{path}"));
    let mut rooms = Vec::new();
    for name in ["A", "B", "C"] {
        let (_, created) = post_json(
            &v3("/createRoom"),
            HOST,
            Some(&alice),
            json!({"name": name, "invite": ["@bob:localhost:8448"]}),
        )
        .await;
        let room = created["room_id"].as_str().unwrap().to_owned();
        join_room(&t, HOST, &bob, &room).await;
        rooms.push(room);
    }
    let (a, b, c) = (&rooms[0], &rooms[1], &rooms[2]);
    let request = json!({
        "conn_id": "room-list",
        "lists": {"all": {"ranges": [[0, 1]], "timeline_limit": 3,
            "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]]}},
        "extensions": {"e2ee": {"enabled": true}, "account_data": {"enabled": true}},
    });

    // The two newest rooms (bob joined C last): C and B, new to the client.
    let (status, first) = sliding(&t, &bob, None, request.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["lists"]["all"]["count"], 3);
    let shown: Vec<&String> = first["rooms"].as_object().unwrap().keys().collect();
    assert_eq!(shown.len(), 2, "{first}");
    assert!(first["rooms"].get(c).is_some() && first["rooms"].get(b).is_some());
    assert_eq!(first["rooms"][c]["initial"], true);
    assert_eq!(first["rooms"][c]["name"], "C");
    assert!(first["extensions"]["e2ee"]["device_one_time_keys_count"].is_object());
    assert!(
        first["extensions"]["account_data"]["global"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.push_rules")
    );
    let pos = first["pos"].as_str().unwrap().to_owned();

    // A message in B: only B comes, as a delta, with a notification.
    send(&t, &alice, b, "b1", "to B").await;
    let (_, second) = sliding(&t, &bob, Some(&pos), request.clone()).await;
    let changed: Vec<&String> = second["rooms"].as_object().unwrap().keys().collect();
    assert_eq!(changed, vec![b], "{second}");
    let room_b = &second["rooms"][b];
    assert!(room_b.get("initial").is_none(), "{room_b}");
    assert_eq!(bodies(room_b), ["to B"]);
    assert_eq!(room_b["num_live"], 1);
    assert_eq!(room_b["notification_count"], 1);
    let pos2 = second["pos"].as_str().unwrap().to_owned();

    // Retrying the previous position answers the same (the response may have been lost).
    let (_, again) = sliding(&t, &bob, Some(&pos), request.clone()).await;
    assert_eq!(bodies(&again["rooms"][b]), ["to B"]);

    // A message in A brings A into the window (new to the client) and pushes C out.
    send(&t, &alice, a, "a1", "to A").await;
    let (_, third) = sliding(&t, &bob, Some(&pos2), request.clone()).await;
    assert_eq!(third["rooms"][a]["initial"], true, "{third}");
    assert_eq!(bodies(&third["rooms"][a]), ["to A"]);
    assert!(third["rooms"].get(c).is_none());
    let pos3 = third["pos"].as_str().unwrap().to_owned();

    // Four messages in C while it is out of view; then C is newest again and comes back as a
    // delta: the newest three, limited, with prev_batch to page back to the first.
    for i in 0..4 {
        send(&t, &alice, c, &format!("c{i}"), &format!("to C {i}")).await;
    }
    let (_, fourth) = sliding(&t, &bob, Some(&pos3), request.clone()).await;
    let room_c = &fourth["rooms"][c];
    assert!(room_c.get("initial").is_none(), "{fourth}");
    assert_eq!(bodies(room_c), ["to C 1", "to C 2", "to C 3"]);
    assert_eq!(room_c["limited"], true);
    let prev_batch = room_c["prev_batch"].as_str().unwrap();
    let (status, page) = crate::support::get_json_as(
        &v3(&format!(
            "/rooms/{}/messages?dir=b&limit=1&from={prev_batch}",
            unitas_federation::inbound::percent(c)
        )),
        &bob,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["chunk"][0]["content"]["body"], "to C 0");

    // A position this server never gave: start over.
    let (status, body) = sliding(&t, &bob, Some("999999"), request.clone()).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_UNKNOWN_POS"))
    );
    t.node.shutdown().await;
}

#[tokio::test]
async fn an_invitee_who_declines_sees_no_history() {
    let (t, alice, bob) = node_with_two_users().await;
    let v3 = |path: &str| t.client(&format!("/_matrix/client/v3{path}"));
    let (_, created) = post_json(
        &v3("/createRoom"),
        HOST,
        Some(&alice),
        json!({"invite": ["@bob:localhost:8448"]}),
    )
    .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    let enc = unitas_federation::inbound::percent;
    let (status, first) = crate::support::get_json_as(&v3("/sync"), &bob).await;
    assert_eq!(status, 200);
    assert!(first["rooms"]["invite"].get(&room).is_some(), "{first}");
    let since = first["next_batch"].as_str().unwrap().to_owned();
    send(&t, &alice, &room, "m1", "not for bob").await;
    let (status, _) = post_json(
        &v3(&format!("/rooms/{}/leave", enc(&room))),
        HOST,
        Some(&bob),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, after) = crate::support::get_json_as(&v3(&format!("/sync?since={since}")), &bob).await;
    let timeline = after["rooms"]["leave"][&room]["timeline"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{after}"))
        .clone();
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    assert_eq!(timeline[0]["content"]["membership"], "leave");
    t.node.shutdown().await;
}

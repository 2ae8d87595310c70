//! Push: rule evaluation into unread counts, `/notifications`, and pushers delivering to a push
//! gateway (a TLS server on 127.0.0.1 standing in for Sygnal) through the durable queue.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::{
    TestNode, http, join_room, node_with_two_users_on, post_json, settled_sync, sync_settled,
};

const HOST: &str = "localhost:8448";

/// A push gateway: answers with the queued statuses in order (then 200), reports each body.
struct Gateway {
    url: String,
    bodies: mpsc::UnboundedReceiver<Value>,
    answers: Arc<Mutex<Vec<(u16, Value)>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

type GatewayState = (mpsc::UnboundedSender<Value>, Arc<Mutex<Vec<(u16, Value)>>>);

async fn notify(
    State((bodies, answers)): State<GatewayState>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    // The answer is chosen before the body is reported: a test queueing the next answer after
    // seeing this body does not change this one.
    let next = {
        let mut answers = answers.lock().unwrap();
        if answers.is_empty() {
            None
        } else {
            Some(answers.remove(0))
        }
    };
    let _ = bodies.send(body);
    let (status, answer) = next.unwrap_or((200, json!({"rejected": []})));
    (StatusCode::from_u16(status).unwrap(), Json(answer))
}

async fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    unitas::tls::ensure_self_signed(dir.path(), &[]).unwrap();
    let (cert, key) = unitas::tls::self_signed_paths(dir.path());
    let tls = unitas::tls::server_config(&cert, &key).unwrap();
    let (tx, bodies) = mpsc::unbounded_channel();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let router = axum::Router::new()
        .route("/_matrix/push/v1/notify", axum::routing::post(notify))
        .with_state((tx, answers.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(unitas::serve::serve(
        listener,
        Some(tls),
        router,
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    Gateway {
        url: format!("https://{addr}/_matrix/push/v1/notify"),
        bodies,
        answers,
        _stop: stop,
        _dir: dir,
    }
}

impl Gateway {
    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(20), self.bodies.recv())
            .await
            .expect("the gateway is called")
            .expect("gateway running")
    }
}

async fn put_json(url: &str, token: &str, body: Value) -> (u16, Value) {
    let response = http()
        .put(url)
        .header("host", HOST)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str, token: &str) -> (u16, Value) {
    let response = http()
        .get(url)
        .header("host", HOST)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The room's `unread_notifications` in an initial sync of `token`, once the push rules have
/// seen every event the sync shows (its token's last part, the position the counts hold for,
/// has reached its first, the stream's).
async fn counts(t: &TestNode, token: &str, room: &str) -> (i64, i64) {
    let body = settled_sync(t, HOST, token).await;
    let unread = &body["rooms"]["join"][room]["unread_notifications"];
    (
        unread["notification_count"].as_i64().unwrap(),
        unread["highlight_count"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn push_rules_count_notify_and_reach_the_gateway() {
    let mut gw = gateway().await;
    let (t, alice, bob) = node_with_two_users_on(|c| {
        c.push.verify_tls = false;
        c.push.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
        c.push.retry_initial_ms = 20;
    })
    .await;
    let v3 = |path: &str| t.client(&format!("/_matrix/client/v3{path}"));
    let enc = unitas_federation::inbound::percent;

    // Bad pushers are refused and change nothing.
    for (url, kind) in [
        ("http://127.0.0.1:1/_matrix/push/v1/notify", "http"),
        ("https://127.0.0.1:1/elsewhere", "http"),
        ("https://10.1.2.3/_matrix/push/v1/notify", "http"),
        ("https://127.0.0.1:1/_matrix/push/v1/notify", "email"),
    ] {
        let (status, body) = post_json(
            &v3("/pushers/set"),
            HOST,
            Some(&bob),
            json!({"kind": kind, "app_id": "m.email", "pushkey": "bob@example.org",
                "app_display_name": "A", "device_display_name": "D", "lang": "en",
                "data": {"url": url}}),
        )
        .await;
        assert_eq!(status, 400, "{url} {kind}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM");
    }
    assert_eq!(get(&v3("/pushers"), &bob).await.1, json!({"pushers": []}));

    let (status, body) = post_json(
        &v3("/pushers/set"),
        HOST,
        Some(&bob),
        json!({"kind": "http", "app_id": "org.example.app", "pushkey": "bobs-phone",
            "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
            "data": {"url": gw.url, "custom": 7}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, pushers) = get(&v3("/pushers"), &bob).await;
    assert_eq!(pushers["pushers"][0]["pushkey"], "bobs-phone");
    assert_eq!(pushers["pushers"][0]["data"]["custom"], 7);

    let (_, created) = post_json(
        &v3("/createRoom"),
        HOST,
        Some(&alice),
        json!({"name": "Garden", "invite": ["@bob:localhost:8448"]}),
    )
    .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    join_room(&t, HOST, &bob, &room).await;
    // The invite notified bob (the default rule for invites to him): the gateway saw it.
    let invite = gw.next().await;
    assert_eq!(invite["notification"]["type"], "m.room.member");
    assert_eq!(invite["notification"]["user_is_target"], true);

    // The first delivery of the message fails: the queue retries it.
    gw.answers.lock().unwrap().push((503, json!({})));
    let send = |txn: &str, content: Value| {
        let url = v3(&format!("/rooms/{}/send/m.room.message/{txn}", enc(&room)));
        let token = alice.clone();
        async move {
            let (status, body) = put_json(&url, &token, content).await;
            assert_eq!(status, 200, "{body}");
            body["event_id"].as_str().unwrap().to_owned()
        }
    };
    let plain = send("1", json!({"msgtype": "m.text", "body": "hello"})).await;
    assert_eq!(counts(&t, &bob, &room).await, (1, 0));
    let first = gw.next().await;
    let again = gw.next().await;
    assert_eq!(
        first, again,
        "the failed notification is sent again, unchanged"
    );
    let n = &again["notification"];
    assert_eq!(n["event_id"], plain);
    assert_eq!(n["room_name"], "Garden");
    assert_eq!(n["sender"], "@alice:localhost:8448");
    assert_eq!(n["content"]["body"], "hello");
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["devices"][0]["pushkey"], "bobs-phone");
    assert_eq!(n["devices"][0]["data"], json!({"custom": 7}));
    assert!(n["devices"][0]["tweaks"].get("highlight").is_none());

    // A mention highlights (the spec's default .m.rule.is_user_mention).
    let mention = send(
        "2",
        json!({"msgtype": "m.text", "body": "bob: look",
            "m.mentions": {"user_ids": ["@bob:localhost:8448"]}}),
    )
    .await;
    assert_eq!(counts(&t, &bob, &room).await, (2, 1));
    let n = gw.next().await;
    assert_eq!(n["notification"]["event_id"], mention);
    assert_eq!(n["notification"]["prio"], "high");
    assert_eq!(n["notification"]["devices"][0]["tweaks"]["highlight"], true);

    // A rule bob adds to mute alice: her messages no longer count.
    let (status, body) = put_json(
        &v3("/pushrules/global/sender/@alice:localhost:8448"),
        &bob,
        json!({"actions": []}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    send("3", json!({"msgtype": "m.text", "body": "muted"})).await;
    assert_eq!(counts(&t, &bob, &room).await, (2, 1));
    // Alice's own messages never count for her.
    assert_eq!(counts(&t, &alice, &room).await, (0, 0));

    // /notifications: newest first, paginated, highlights only on request.
    let (status, page) = get(&v3("/notifications?limit=1"), &bob).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["notifications"][0]["event"]["event_id"], mention);
    assert_eq!(page["notifications"][0]["read"], false);
    let token = page["next_token"].as_str().unwrap();
    let (_, older) = get(&v3(&format!("/notifications?from={token}")), &bob).await;
    let ids: Vec<&str> = older["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.first(), Some(&plain.as_str()));
    let (_, highlights) = get(&v3("/notifications?only=highlight"), &bob).await;
    assert_eq!(highlights["notifications"].as_array().unwrap().len(), 1);
    let (status, bad) = get(&v3("/notifications?from=nope"), &bob).await;
    assert_eq!(
        (status, bad["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );

    // A read receipt clears the counts and marks the notifications read.
    let (status, _) = post_json(
        &v3(&format!(
            "/rooms/{}/receipt/m.read/{}",
            enc(&room),
            enc(&mention)
        )),
        HOST,
        Some(&bob),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(counts(&t, &bob, &room).await, (0, 0));
    let (_, page) = get(&v3("/notifications"), &bob).await;
    assert_eq!(page["notifications"][0]["read"], true);

    // The gateway rejects the pushkey: the pusher goes.
    let (status, _) = put_json(
        &v3("/pushrules/global/sender/@alice:localhost:8448"),
        &bob,
        json!({"actions": ["notify"]}),
    )
    .await;
    assert_eq!(status, 200);
    gw.answers
        .lock()
        .unwrap()
        .push((200, json!({"rejected": ["bobs-phone"]})));
    send("4", json!({"msgtype": "m.text", "body": "last"})).await;
    let n = gw.next().await;
    assert_eq!(n["notification"]["content"]["body"], "last");
    let pushers = async {
        loop {
            let (_, p) = get(&v3("/pushers"), &bob).await;
            if p["pushers"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), pushers)
        .await
        .expect("a rejected pusher is removed");

    // A reply in a thread: one count for clients that mix threads in; apart for those that
    // ask (`unread_thread_notifications`).
    let reply = send(
        "5",
        json!({"msgtype": "m.text", "body": "in thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": plain}}),
    )
    .await;
    assert_eq!(counts(&t, &bob, &room).await, (2, 0));
    let filter =
        enc(&json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string());
    let synced = loop {
        let (_, synced) = get(&v3(&format!("/sync?filter={filter}")), &bob).await;
        if sync_settled(&synced) {
            break synced;
        }
        tokio::task::yield_now().await;
    };
    let joined = &synced["rooms"]["join"][&room];
    assert_eq!(
        joined["unread_notifications"]["notification_count"], 1,
        "{joined}"
    );
    assert_eq!(
        joined["unread_thread_notifications"][&plain]["notification_count"], 1,
        "{joined}"
    );
    // Read in the thread (on some device): the thread no longer counts, anywhere.
    let (status, _) = post_json(
        &v3(&format!(
            "/rooms/{}/receipt/m.read/{}",
            enc(&room),
            enc(&reply)
        )),
        HOST,
        Some(&bob),
        json!({"thread_id": plain}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(counts(&t, &bob, &room).await, (1, 0));
    t.node.shutdown().await;
}

/// A sync answers as soon as a message is committed, whether or not the push rules have seen
/// it yet; when they have, the waiting sync is woken again and carries the room's new counts.
/// No long-poll here may run into its timeout: each returns because something changed.
/// A public room of `token`'s user.
async fn public_room(t: &TestNode, token: &str) -> String {
    let (status, created) = post_json(
        &t.client("/_matrix/client/v3/createRoom"),
        HOST,
        Some(token),
        json!({"preset": "public_chat"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    created["room_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn counts_that_come_after_the_message_wake_the_sync() {
    let (t, alice, bob) = node_with_two_users_on(|_| {}).await;
    let v3 = |path: &str| t.client(&format!("/_matrix/client/v3{path}"));
    let room = public_room(&t, &alice).await;
    join_room(&t, HOST, &bob, &room).await;
    let initial = settled_sync(&t, HOST, &bob).await;
    let mut since = initial["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(
        initial["rooms"]["join"][&room]["unread_notifications"]["notification_count"],
        0
    );

    let url = v3(&format!(
        "/rooms/{}/send/m.room.message/wake",
        unitas_federation::inbound::percent(&room)
    ));
    let (status, _) = put_json(&url, &alice, json!({"msgtype": "m.text", "body": "hi"})).await;
    assert_eq!(status, 200);

    let started = std::time::Instant::now();
    let mut saw_message = false;
    let mut responses = 0;
    loop {
        let (status, body) = get(&v3(&format!("/sync?since={since}&timeout=30000")), &bob).await;
        assert_eq!(status, 200, "{body}");
        responses += 1;
        since = body["next_batch"].as_str().unwrap().to_owned();
        let joined = &body["rooms"]["join"][&room];
        saw_message |= joined["timeline"]["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["content"]["body"] == "hi"));
        // (A response may carry a count the worker committed after the sync read how far it
        // had got: the count is right, the token says less; the next sync sends it again.)
        if joined["unread_notifications"]["notification_count"] == 1
            && saw_message
            && sync_settled(&body)
        {
            break;
        }
        assert!(
            responses < 5,
            "no count after {responses} responses: {body}"
        );
    }
    // Well below the long-poll's 30 s: every response was a wake-up, not a timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // Settled: the next sync has nothing to say until something happens.
    let (status, body) = get(&v3(&format!("/sync?since={since}&timeout=0")), &bob).await;
    assert_eq!(status, 200);
    assert!(body["rooms"]["join"].get(&room).is_none(), "{body}");
}

#[tokio::test]
async fn membership_changes_reach_the_rules_of_a_room_already_read() {
    let (t, alice, bob) = node_with_two_users_on(|_| {}).await;
    let v3 = |path: &str| t.client(&format!("/_matrix/client/v3{path}"));
    let room = public_room(&t, &alice).await;
    let send = |txn: &str, body: &str| {
        let url = v3(&format!(
            "/rooms/{}/send/m.room.message/{txn}",
            unitas_federation::inbound::percent(&room)
        ));
        let (token, content) = (alice.clone(), json!({"msgtype": "m.text", "body": body}));
        async move {
            let (status, body) = put_json(&url, &token, content).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    // The push worker reads the room's members once, for this message.
    send("1", "before bob").await;
    assert_eq!(counts(&t, &alice, &room).await, (0, 0));
    // Bob's join updates what it read: his first message counts for him.
    join_room(&t, HOST, &bob, &room).await;
    send("2", "hello").await;
    assert_eq!(counts(&t, &bob, &room).await, (1, 0));
    // A new display name is a membership event too: with a rule of his that highlights his
    // name (the spec's defaults no longer do), a message naming him highlights.
    let (status, body) = put_json(
        &v3("/pushrules/global/override/my.name"),
        &bob,
        json!({"conditions": [{"kind": "contains_display_name"}],
            "actions": ["notify", {"set_tweak": "highlight"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put_json(
        &v3("/profile/@bob:localhost:8448/displayname"),
        &bob,
        json!({"displayname": "Robert"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // (The room's members see the new name: it is in his membership event.)
    let (status, member) = get(
        &v3(&format!(
            "/rooms/{}/state/m.room.member/@bob:localhost:8448",
            unitas_federation::inbound::percent(&room)
        )),
        &alice,
    )
    .await;
    assert_eq!(
        (
            status,
            member["displayname"].as_str(),
            member["membership"].as_str()
        ),
        (200, Some("Robert"), Some("join")),
        "{member}"
    );
    send("3", "hey Robert, look").await;
    // (Without a read receipt, counts start after his latest membership event, as Synapse's
    // do: the name change's.)
    assert_eq!(counts(&t, &bob, &room).await, (1, 1));
}

use unitas_storage::Store;

pub async fn migrations_make_the_store_ready(store: Store) {
    assert!(store.is_ready().await.unwrap());
}

pub async fn migrating_twice_is_a_no_op(store: Store) {
    store.migrate().await.unwrap();
    assert!(store.is_ready().await.unwrap());
}

pub async fn push_actions_pushers_and_queue(store: Store) {
    use unitas_storage::RoomEvents;
    use unitas_storage::{ClientExtras, EventBatch, PushAction, PushStore, Pusher, QueuedPush};
    assert_eq!(store.get_push_position().await.unwrap(), None);
    // The events the verdicts are about (a verdict names its event by stream position).
    let events = (1..=4)
        .map(|n| crate::rooms::event(&format!("${n}"), n))
        .collect();
    store
        .persist_events(&EventBatch {
            events,
            ..Default::default()
        })
        .await
        .unwrap();
    // The events' verdicts (everyone notified), and one member's own: a highlight.
    let action = |event: &str, pos: i64, user: &str, highlight: bool| PushAction {
        user_id: user.into(),
        sender: if user.is_empty() {
            "@s:a.test".into()
        } else {
            String::new()
        },
        room_id: "!r:a.test".into(),
        event_id: event.into(),
        stream_ordering: pos,
        notify: true,
        highlight,
        thread_id: String::new(),
        actions: "[\"notify\"]".into(),
        ts: pos,
    };
    let queued = QueuedPush {
        id: 0,
        user_id: "@u:a.test".into(),
        app_id: "app".into(),
        pushkey: "key".into(),
        url: "https://gw.test/_matrix/push/v1/notify".into(),
        body: "{}".into(),
        attempts: 0,
        next_attempt_ts: 10,
        created_ts: 10,
    };
    let mut threaded = action("$4", 4, "", false);
    threaded.thread_id = "$root".into();
    let actions = [
        action("$1", 1, "", false),
        action("$2", 2, "", false),
        action("$2", 2, "@u:a.test", true),
        action("$3", 3, "", false),
        threaded,
    ];
    store
        .save_push_batch(&actions, std::slice::from_ref(&queued), 3)
        .await
        .unwrap();
    // Saving the same batch again changes nothing but the queue.
    store.save_push_batch(&actions[..1], &[], 3).await.unwrap();
    assert_eq!(store.get_push_position().await.unwrap(), Some(3));
    // (The main timeline's counts alone, or with every thread's added.)
    let counts = |user: &'static str, after: i64, main_only: bool| {
        let store = store.clone();
        async move {
            let (main, threads) = store.count_unread(user, "!r:a.test", after).await.unwrap();
            if main_only {
                return main;
            }
            threads
                .iter()
                .fold(main, |(n, h), (_, tn, th)| (n + tn, h + th))
        }
    };
    assert_eq!(counts("@u:a.test", 0, false).await, (4, 1));
    assert_eq!(counts("@v:a.test", 0, false).await, (4, 0));
    assert_eq!(
        counts("@s:a.test", 0, false).await,
        (0, 0),
        "not for one's own events"
    );
    assert_eq!(counts("@u:a.test", 2, false).await, (2, 0));
    // The thread's event counts in the room, and on its own when threads are apart.
    assert_eq!(counts("@u:a.test", 2, true).await, (1, 0));
    assert_eq!(
        store
            .count_unread("@u:a.test", "!r:a.test", 0)
            .await
            .unwrap()
            .1,
        vec![("$root".to_owned(), 1, 0)]
    );
    assert_eq!(
        store
            .get_read_receipt("!r:a.test", "@u:a.test")
            .await
            .unwrap(),
        None
    );
    // SQLite counts highlights from the index that holds only highlights (its condition is
    // repeated word for word in the query, or SQLite would walk every verdict since the receipt).
    let plan = store.count_unread_plan().await.unwrap();
    if store.kind() == unitas_storage::BackendKind::Sqlite {
        assert!(
            plan.iter()
                .any(|step| step.contains("INDEX event_push_highlights (room_id=? AND highlight=?")),
            "{plan:?}"
        );
    }
    // With a read receipt, counts start after its event, wherever the membership is.
    let receipt = |user: &'static str, thread: &'static str, event: &'static str| {
        let store = store.clone();
        async move {
            store
                .set_receipt(&unitas_storage::NewReceipt {
                    room_id: "!r:a.test",
                    user_id: user,
                    receipt_type: "m.read",
                    thread_id: thread,
                    event_id: event,
                    ts: 1,
                    aux: 1,
                })
                .await
                .unwrap()
        }
    };
    receipt("@u:a.test", "", "$3").await;
    assert_eq!(counts("@u:a.test", 0, false).await, (1, 0));
    assert_eq!(counts("@u:a.test", 0, true).await, (0, 0));
    // A thread's receipt reads the thread, and leaves the main timeline's alone.
    receipt("@u:a.test", "$root", "$4").await;
    assert_eq!(counts("@u:a.test", 0, false).await, (0, 0));
    // The main receipt moved back to $1: $2 (his highlight) and $3 count again.
    receipt("@u:a.test", "", "$1").await;
    assert_eq!(counts("@u:a.test", 0, true).await, (2, 1));
    // A receipt for an event this server does not have: everything counts.
    receipt("@v:a.test", "", "$unknown").await;
    assert_eq!(counts("@v:a.test", 3, false).await, (4, 0));
    let list = |before: i64, limit: i64, only_highlight: bool| {
        let store = store.clone();
        async move {
            store
                .list_notifications("@u:a.test", "!r:a.test", (0, before), limit, only_highlight)
                .await
                .unwrap()
                .into_iter()
                .map(|a| a.event_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(i64::MAX, 2, false).await, ["$4", "$3"]);
    assert_eq!(list(2, 10, false).await, ["$1"]);
    assert_eq!(list(i64::MAX, 10, true).await, ["$2"]);

    // Pushers: without `append`, another user's pusher with the same key goes.
    let pusher = |user: &str| Pusher {
        user_id: user.into(),
        app_id: "app".into(),
        pushkey: "key".into(),
        kind: "http".into(),
        app_display_name: "App".into(),
        device_display_name: "Phone".into(),
        profile_tag: None,
        lang: "en".into(),
        data: "{}".into(),
        device_id: Some("D".into()),
        created_ts: 1,
    };
    store.set_pusher(&pusher("@v:a.test"), true).await.unwrap();
    store.set_pusher(&pusher("@u:a.test"), true).await.unwrap();
    assert_eq!(store.list_pushers("@v:a.test").await.unwrap().len(), 1);
    store.set_pusher(&pusher("@u:a.test"), false).await.unwrap();
    assert!(store.list_pushers("@v:a.test").await.unwrap().is_empty());
    assert_eq!(store.list_pushers("@u:a.test").await.unwrap().len(), 1);

    // The queue: due rows, retries move them later, deleting the pusher empties its queue.
    assert_eq!(store.list_due_pushes(9, 10).await.unwrap().len(), 0);
    let due = store.list_due_pushes(10, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    store.retry_queued_push(due[0].id, 50).await.unwrap();
    assert_eq!(store.next_push_due().await.unwrap(), Some(50));
    assert_eq!(store.list_due_pushes(49, 10).await.unwrap().len(), 0);
    assert_eq!(store.list_due_pushes(50, 10).await.unwrap()[0].attempts, 1);
    assert!(
        store
            .delete_pusher("@u:a.test", "app", "key")
            .await
            .unwrap()
    );
    assert_eq!(store.next_push_due().await.unwrap(), None);
    assert!(
        !store
            .delete_pusher("@u:a.test", "app", "key")
            .await
            .unwrap()
    );
}

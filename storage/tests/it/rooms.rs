//! The event batch write: all of a batch or nothing, and the connection usable afterwards.

use unitas_storage::{
    EventBatch, EventRow, EventSearch, FederationQueue, NewEvent, NewStateGroup, RoomEvents,
    RoomRow, SearchQuery, Store,
};

pub fn event(id: &str, stream: i64) -> NewEvent {
    NewEvent {
        row: EventRow {
            event_id: id.to_owned(),
            room_id: "!r:example.org".to_owned(),
            stream_ordering: Some(stream),
            event_type: "m.room.message".to_owned(),
            state_key: None,
            sender: "@a:example.org".to_owned(),
            depth: stream,
            origin_server_ts: 1,
            json: "{}".to_owned(),
            state_group_before: Some(1),
            state_group_after: Some(1),
            outlier: false,
            soft_failed: false,
            redacted_by: None,
        },
        prev_events: vec![],
    }
}

fn room(extremity: &str) -> RoomRow {
    RoomRow {
        room_id: "!r:example.org".to_owned(),
        room_version: "12".to_owned(),
        created_ts: 1,
        forward_extremities: format!("[\"{extremity}\"]"),
        current_state_group: Some(1),
    }
}

fn group(id: i64) -> NewStateGroup {
    NewStateGroup {
        id,
        room_id: "!r:example.org".to_owned(),
        prev_group: None,
        delta: vec![],
    }
}

/// A batch that fails half-way (a state group ID already taken, after the room row and before
/// the events) leaves nothing of itself behind, and the next batch, on the same pooled
/// connection, commits normally: no transaction is left open.
pub async fn failed_batch_writes_nothing(store: Store) {
    let first = EventBatch {
        rooms: vec![room("$a")],
        state_groups: vec![group(1)],
        events: vec![event("$a", 1)],
        ..Default::default()
    };
    store.persist_events(&first).await.unwrap();

    let clash = EventBatch {
        rooms: vec![room("$b")],
        state_groups: vec![group(1)],
        events: vec![event("$b", 2)],
        transactions: vec![(
            "@a:example.org".into(),
            "D".into(),
            "t1".into(),
            "$b".into(),
            1,
        )],
        outbound: vec![("example.org".into(), "peer.example".into(), "$b".into(), 1)],
        push: Default::default(),
    };
    assert!(store.persist_events(&clash).await.is_err());
    assert!(store.get_event("$b").await.unwrap().is_none());
    let stored = store.get_room("!r:example.org").await.unwrap().unwrap();
    assert_eq!(stored.forward_extremities, "[\"$a\"]");
    assert!(store.list_outbound_destinations().await.unwrap().is_empty());

    for (i, id) in ["$c", "$d", "$e"].into_iter().enumerate() {
        let next = EventBatch {
            rooms: vec![room(id)],
            state_groups: vec![group(10 + i as i64)],
            events: vec![event(id, 3 + i as i64)],
            ..Default::default()
        };
        store.persist_events(&next).await.unwrap();
        assert!(store.get_event(id).await.unwrap().is_some());
    }
    let stored = store.get_room("!r:example.org").await.unwrap().unwrap();
    assert_eq!(stored.forward_extremities, "[\"$e\"]");
    assert_eq!(store.count_rows("events").await.unwrap(), 4);
}

/// An event written a second time (another batch, another position) leaves one row, one edge
/// and one search hit (edges are keyed by room and depth, SQLite's search rows by position);
/// its redaction takes the hit away, also while the row waits for SQLite's index, and a full
/// batch of rows is indexed by its own commit; the index stays consistent throughout.
pub async fn an_event_written_twice_is_found_once(store: Store) {
    let searchable = |stream: i64| {
        let mut e = event("$s", stream);
        e.row.depth = 7;
        e.row.json = r#"{"content":{"body":"hello there","msgtype":"m.text"}}"#.to_owned();
        e.prev_events = vec!["$p".to_owned()];
        e
    };
    let rooms = ["!r:example.org".to_owned()];
    let search = || {
        store.search_events(SearchQuery {
            term: "hello",
            rooms: &rooms,
            keys: &["content.body"],
            recent: false,
            limit: 10,
            offset: 0,
        })
    };
    for stream in [1, 2] {
        let batch = EventBatch {
            rooms: vec![room("$s")],
            state_groups: if stream == 1 { vec![group(1)] } else { vec![] },
            events: vec![searchable(stream)],
            ..Default::default()
        };
        store.persist_events(&batch).await.unwrap();
    }
    assert_eq!(store.count_rows("events").await.unwrap(), 1);
    assert_eq!(store.count_rows("event_edges").await.unwrap(), 1);
    let found = search().await.unwrap();
    let ids: Vec<&str> = found.hits.iter().map(|h| h.0.as_str()).collect();
    assert_eq!(ids, ["$s"]);
    assert_eq!(found.count, 1);

    // One more searchable event `id` at `stream`, written alone.
    let write_alone = |id: &'static str, stream: i64| {
        let mut e = searchable(stream);
        e.row.event_id = id.to_owned();
        let batch = EventBatch {
            rooms: vec![room(id)],
            events: vec![e],
            ..Default::default()
        };
        let store = store.clone();
        async move { store.persist_events(&batch).await.unwrap() }
    };

    // Redacted while it waits for the index (SQLite indexes in batches, and before a search).
    write_alone("$t", 3).await;
    store.set_redacted_by("$t", "$redaction").await.unwrap();
    let found = search().await.unwrap();
    assert_eq!(found.hits.len(), 1);
    assert_eq!(found.hits[0].0, "$s");

    store.set_redacted_by("$s", "$redaction").await.unwrap();
    let found = search().await.unwrap();
    assert!(found.hits.is_empty());
    assert_eq!(found.count, 0);

    // A batch of a full index batch's rows goes into the index with its own commit.
    let mut batch = EventBatch {
        rooms: vec![room("$u0")],
        ..Default::default()
    };
    for n in 0..unitas_storage::SEARCH_BATCH as i64 {
        let mut e = searchable(10 + n);
        e.row.event_id = format!("$u{n}");
        batch.events.push(e);
    }
    store.persist_events(&batch).await.unwrap();
    assert_eq!(store.search_index_check().await.unwrap(), 0);
    let found = search().await.unwrap();
    assert_eq!(found.count, unitas_storage::SEARCH_BATCH as i64);
    assert_eq!(store.search_index_check().await.unwrap(), 0);

    // History (a backfilled event) lands before what the index already holds: it goes in at
    // once, and a redaction takes it out again.
    write_alone("$old", 5).await;
    assert_eq!(store.search_index_check().await.unwrap(), 0);
    assert_eq!(
        search().await.unwrap().count,
        unitas_storage::SEARCH_BATCH as i64 + 1
    );
    store.set_redacted_by("$old", "$redaction").await.unwrap();
    assert_eq!(store.search_index_check().await.unwrap(), 0);
    assert_eq!(
        search().await.unwrap().count,
        unitas_storage::SEARCH_BATCH as i64
    );
}

/// Outbound rows are written with their events, listed per pair, read oldest first with the
/// event JSON, and deleted up to an acknowledged id.
pub async fn outbound_queue_follows_its_events(store: Store) {
    let mut batch = EventBatch {
        rooms: vec![room("$q2")],
        state_groups: vec![group(1)],
        ..Default::default()
    };
    for (i, id) in ["$q1", "$q2"].into_iter().enumerate() {
        let mut e = event(id, 1 + i as i64);
        e.row.json = format!("{{\"n\":{i}}}");
        batch.events.push(e);
        for peer in ["b.example", "c.example"] {
            batch
                .outbound
                .push(("a.example".into(), peer.into(), id.into(), 1));
        }
    }
    store.persist_events(&batch).await.unwrap();
    assert_eq!(
        store.list_outbound_destinations().await.unwrap(),
        vec![
            ("a.example".to_owned(), "b.example".to_owned()),
            ("a.example".to_owned(), "c.example".to_owned())
        ]
    );
    let queued = store
        .peek_outbound("a.example", "b.example", 10)
        .await
        .unwrap();
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[0].1, "{\"n\":0}");
    assert_eq!(queued[1].1, "{\"n\":1}");
    assert_eq!(
        store
            .peek_outbound("a.example", "b.example", 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .delete_sent("a.example", "b.example", Some(queued[0].0), None)
            .await
            .unwrap(),
        (1, 0)
    );
    let left = store
        .peek_outbound("a.example", "b.example", 10)
        .await
        .unwrap();
    assert_eq!(left, vec![queued[1].clone()]);
    // The other destination is untouched.
    assert_eq!(
        store
            .peek_outbound("a.example", "c.example", 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

/// Durable EDUs are queued per destination, listed with the pairs that have events, read oldest
/// first and deleted up to an acknowledged id without touching other destinations.
pub async fn outbound_edus_wait_per_destination(store: Store) {
    let peers = vec!["b.example".to_owned(), "c.example".to_owned()];
    for n in 0..3 {
        store
            .queue_outbound_edu("a.example", &peers, &format!("{{\"n\":{n}}}"), 1)
            .await
            .unwrap();
    }
    store
        .queue_outbound_edu("a.example", &[], "{}", 1)
        .await
        .unwrap();
    assert_eq!(
        store.list_outbound_destinations().await.unwrap(),
        vec![
            ("a.example".to_owned(), "b.example".to_owned()),
            ("a.example".to_owned(), "c.example".to_owned())
        ]
    );
    let queued = store
        .peek_outbound_edus("a.example", "b.example", 2)
        .await
        .unwrap();
    let bodies: Vec<&str> = queued.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(bodies, ["{\"n\":0}", "{\"n\":1}"]);
    assert_eq!(
        store
            .delete_sent("a.example", "b.example", None, Some(queued[1].0))
            .await
            .unwrap(),
        (0, 2)
    );
    let left = store
        .peek_outbound_edus("a.example", "b.example", 10)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1, "{\"n\":2}");
    // What one delivered transaction carried goes at once; other destinations keep theirs.
    assert_eq!(
        store
            .delete_sent("a.example", "b.example", None, Some(left[0].0))
            .await
            .unwrap(),
        (0, 1)
    );
    assert!(
        store
            .peek_outbound_edus("a.example", "b.example", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .peek_outbound_edus("a.example", "c.example", 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

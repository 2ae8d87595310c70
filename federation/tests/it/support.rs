//! A rooms service over a test store, and events built on any point of the graph.

use std::sync::{Arc, Mutex};

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde_json::json;
use unitas_federation::SigningKey;
use unitas_federation::rooms::auth::auth_event_ids;
use unitas_federation::rooms::build::{Placement, build_pdu};
use unitas_federation::rooms::{
    EventTemplate, NewRoom, OutboundSink, Pdu, RoomVersion, Rooms, Signer,
};
use unitas_storage::{RoomEvents, Store};

/// Records what the append path hands to federation.
#[derive(Default)]
pub struct Recorded(pub Mutex<Vec<(OwnedEventId, Vec<String>)>>);

impl OutboundSink for Recorded {
    fn enqueue(&self, pdu: &Arc<Pdu>, destinations: &[String]) {
        let mut destinations = destinations.to_vec();
        destinations.sort();
        self.0
            .lock()
            .unwrap()
            .push((pdu.event_id.clone(), destinations));
    }
}

/// A server of the test network: its name and key.
pub struct Server {
    pub name: String,
    pub key: SigningKey,
}

impl Server {
    pub fn new(name: &str) -> Server {
        Server {
            name: name.into(),
            key: SigningKey::generate().unwrap(),
        }
    }

    pub fn signer(&self) -> Signer<'_> {
        Signer {
            server_name: &self.name,
            key: &self.key,
        }
    }

    pub fn user(&self, local: &str) -> OwnedUserId {
        UserId::parse(format!("@{local}:{}", self.name)).unwrap()
    }
}

pub struct World {
    pub rooms: Rooms,
    pub store: Store,
    pub outbound: Arc<Recorded>,
    pub a: Server,
    pub b: Server,
}

impl World {
    /// A rooms service hosting `a.test`; `b.test` plays a remote server.
    pub async fn new(store: Store) -> World {
        World::with_push_defer(store, None).await
    }

    /// The same, with push verdicts written alone held for `defer` (the default when `None`).
    pub async fn with_push_defer(store: Store, defer: Option<std::time::Duration>) -> World {
        let outbound = Arc::new(Recorded::default());
        let (rooms, mut writer) =
            Rooms::new(store.clone(), ["a.test".to_owned()], outbound.clone())
                .await
                .unwrap();
        if let Some(defer) = defer {
            writer = writer.with_push_defer(defer);
        }
        tokio::spawn(writer.run(std::future::pending()));
        World {
            rooms,
            store,
            outbound,
            a: Server::new("a.test"),
            b: Server::new("b.test"),
        }
    }

    /// Reopens the service over the same database (a restart).
    pub async fn restart(&mut self) {
        let (rooms, writer) = Rooms::new(
            self.store.clone(),
            ["a.test".to_owned()],
            self.outbound.clone(),
        )
        .await
        .unwrap();
        tokio::spawn(writer.run(std::future::pending()));
        self.rooms = rooms;
    }

    /// A public room of `version` created by @alice:a.test.
    pub async fn public_room(&self, version: &str) -> OwnedRoomId {
        let room = NewRoom {
            version: RoomVersion::parse(version).unwrap(),
            join_rule: "public".into(),
            initial_state: vec![],
        };
        self.rooms
            .create_room(self.a.signer(), &self.a.user("alice"), room)
            .await
            .unwrap()
    }

    pub async fn send(&self, room: &RoomId, sender: &UserId, template: EventTemplate) -> Arc<Pdu> {
        self.rooms
            .send_local(room, sender, &template, self.a.signer())
            .await
            .unwrap()
    }

    pub async fn message(&self, room: &RoomId, sender: &UserId, body: &str) -> Arc<Pdu> {
        self.send(
            room,
            sender,
            EventTemplate::message("m.room.message", json!({"msgtype": "m.text", "body": body})),
        )
        .await
    }

    pub async fn version(&self, room: &RoomId) -> RoomVersion {
        let row = self.store.get_room(room.as_str()).await.unwrap().unwrap();
        RoomVersion::parse(&row.room_version).unwrap()
    }

    /// An event by `sender` (signed by `server`) whose only parent is `prev`, authorised by the
    /// state after `prev`: how a server that had not yet seen later events would build it.
    pub async fn build_on(
        &self,
        room: &RoomId,
        prev: &EventId,
        server: &Server,
        sender: &UserId,
        template: EventTemplate,
    ) -> Pdu {
        let version = self.version(room).await;
        let state = self.rooms.state_after(prev).await.unwrap().unwrap();
        let parent = self.rooms.get_pdu(prev).await.unwrap().unwrap();
        let content = serde_json::value::to_raw_value(&template.content).unwrap();
        let auth = auth_event_ids(
            &version,
            &template.kind,
            sender,
            template.state_key.as_deref(),
            &content,
            &state,
        )
        .unwrap();
        build_pdu(
            &version,
            &template,
            Placement {
                room_id: Some(room),
                sender,
                prev_events: vec![prev.to_owned()],
                auth_events: auth,
                depth: parent.depth + 1,
                origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
                origin: &server.name,
                key: &server.key,
            },
        )
        .unwrap()
    }

    /// The membership of `user` in the current state (`None` when absent).
    pub async fn membership(&self, room: &RoomId, user: &UserId) -> Option<String> {
        let state = self.rooms.current_state(room).await.unwrap().unwrap();
        let id = state.get(&("m.room.member".to_owned(), user.to_string()))?;
        let pdu = self.rooms.get_pdu(id).await.unwrap().unwrap();
        let content: serde_json::Value = serde_json::from_str(pdu.content.get()).unwrap();
        content["membership"].as_str().map(str::to_owned)
    }

    /// The content of a state slot in the current state.
    pub async fn state_content(
        &self,
        room: &RoomId,
        kind: &str,
        key: &str,
    ) -> Option<serde_json::Value> {
        let state = self.rooms.current_state(room).await.unwrap().unwrap();
        let id = state.get(&(kind.to_owned(), key.to_owned()))?;
        let pdu = self.rooms.get_pdu(id).await.unwrap().unwrap();
        Some(serde_json::from_str(pdu.content.get()).unwrap())
    }

    /// Row counts of the room tables, to see what a write cost.
    pub async fn counts(&self) -> [i64; 4] {
        let mut out = [0; 4];
        for (i, table) in [
            "events",
            "event_edges",
            "state_groups",
            "state_group_deltas",
        ]
        .iter()
        .enumerate()
        {
            out[i] = self.store.count_rows(table).await.unwrap();
        }
        out
    }
}

/// A membership event for `user`.
pub fn member(user: &UserId, membership: &str) -> EventTemplate {
    EventTemplate::state(
        "m.room.member",
        user.as_str(),
        json!({"membership": membership}),
    )
}

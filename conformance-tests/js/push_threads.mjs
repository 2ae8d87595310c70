// Two matrix-js-sdk clients on a Unitas node: push counts, threads, edits and reactions
// (client-server API, part 2).
//
// Usage: node push_threads.mjs BASE_URL
//
// alice and bob register (m.login.dummy, names suffixed so the script can run again against the
// same node), alice creates a room and invites bob, bob joins, both start syncing (threadSupport).
//
// - Push counts: alice sends two messages and one that mentions bob through m.mentions; bob's
//   room.getUnreadNotificationCount(Total / Highlight) becomes 3 / 1, and a raw /sync says the
//   same in unread_notifications. bob sends a read receipt for the mention; the next sync brings
//   both counts back to 0 (the SDK takes the total only from the server in an unencrypted room),
//   and a raw /sync agrees.
// - Threads: alice sends a root and two m.thread replies; bob's SDK builds the thread
//   (room.getThread(root) with length 2 holding both replies); /relations (m.thread) returns the
//   two replies; the root fetched through /event carries the bundled m.thread aggregation (count
//   2, latest_event the second reply); /threads lists the root.
// - Edits: alice edits a message (m.replace); bob's SDK shows the new body on the original event
//   (replacingEvent()); /relations (m.replace) returns the edit and the original fetched through
//   /event bundles it.
// - Reactions: bob reacts 👍 (m.annotation) to that message; alice's SDK aggregates it
//   (room.relations ... getSortedAnnotationsByKey()) and /relations (m.annotation, m.reaction)
//   returns it.
//
// Waits are event-driven (SDK events and each processed sync) with a bounded timeout. Prints a
// JSON line of facts (the last line of stdout); exits 1 on the first failure.

import * as sdk from "matrix-js-sdk";

const base = process.argv[2];
const check = (ok, message) => {
  if (!ok) {
    console.error(message);
    process.exit(1);
  }
};

// Keep the SDK's own logging quiet. matrix-js-sdk 36 does not export its logger (so
// sdk.logger?.setLevel is a no-op) and its loglevel loggers look the console methods up at each
// call, so its trace/debug/info/warn output is dropped here; facts go through console.log and
// failures (ours and the SDK's errors) through console.error.
for (const method of ["trace", "debug", "info", "warn"]) console[method] = () => {};

const suffix = Math.random().toString(36).slice(2, 8);

async function register(name) {
  const anonymous = sdk.createClient({ baseUrl: base });
  const response = await anonymous.registerRequest({
    username: `${name}-${suffix}`,
    password: `${name}-password`,
    auth: { type: "m.login.dummy" },
  });
  check(response.access_token && response.user_id, `register ${name}: ${JSON.stringify(response)}`);
  return sdk.createClient({
    baseUrl: base,
    accessToken: response.access_token,
    userId: response.user_id,
    deviceId: response.device_id,
  });
}

async function synced(client, options = {}) {
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("initial sync timed out")), 30000);
    client.once(sdk.ClientEvent.Sync, (state) => {
      clearTimeout(timer);
      state === "PREPARED" ? resolve() : reject(new Error(`sync state ${state}`));
    });
    client.startClient({ initialSyncLimit: 200, ...options });
  });
}

// Resolves with condition()'s value once it is truthy, re-testing it whenever one of the given
// [emitter, event] pairs fires (and after each sync the client processes); fails the script
// after 20 s, describing the state with describe().
function waitFor(client, condition, what, describe = () => "", sources = []) {
  return new Promise((resolve) => {
    const all = [[client, sdk.ClientEvent.Sync], ...sources];
    let finished = false;
    const finish = () => {
      finished = true;
      clearTimeout(timer);
      for (const [emitter, name] of all) emitter.off(name, test);
    };
    function test() {
      if (finished) return;
      let value;
      try {
        value = condition();
      } catch {
        value = undefined;
      }
      if (value) {
        finish();
        resolve(value);
      }
    }
    const timer = setTimeout(() => {
      finish();
      check(false, `timed out after 20 s waiting for ${what} ${describe()}`);
    }, 20000);
    for (const [emitter, name] of all) emitter.on(name, test);
    test();
  });
}

// The server's own view of a room's counts: a raw, non-incremental /sync.
async function serverCounts(client, roomId) {
  const response = await client.http.authedRequest(sdk.Method.Get, "/sync", {
    timeout: "0",
    filter: JSON.stringify({ room: { rooms: [roomId], timeline: { limit: 1 } } }),
  });
  return response.rooms?.join?.[roomId]?.unread_notifications;
}

const text = (body, extra = {}) => ({ msgtype: "m.text", body, ...extra });

const alice = await register("alice");
const bob = await register("bob");
const aliceId = alice.getUserId();
const bobId = bob.getUserId();
const { room_id: roomId } = await alice.createRoom({ name: "js push and threads", invite: [bobId] });
check(roomId, "createRoom returned no room_id");
await bob.joinRoom(roomId);

await synced(alice, { threadSupport: true });
await synced(bob, { threadSupport: true });
const aliceRoom = alice.getRoom(roomId);
const bobRoom = bob.getRoom(roomId);
check(aliceRoom && bobRoom, "the room is missing from a client after the initial sync");

// ---- Push counts ----
const { Total, Highlight } = sdk.NotificationCountType;
const counts = () => ({ total: bobRoom.getUnreadNotificationCount(Total), highlight: bobRoom.getUnreadNotificationCount(Highlight) });
const countSources = [[bobRoom, sdk.RoomEvent.UnreadNotifications]];
const baseline = await serverCounts(bob, roomId);
check(baseline, `raw /sync for bob has no unread_notifications for the room`);
check(
  baseline.notification_count === 0 && baseline.highlight_count === 0,
  `bob's counts before any message: ${JSON.stringify(baseline)}`,
);

await alice.sendEvent(roomId, "m.room.message", text("first plain message"));
await alice.sendEvent(roomId, "m.room.message", text("second plain message"));
const { event_id: mentionId } = await alice.sendEvent(
  roomId,
  "m.room.message",
  text("a message for you", { "m.mentions": { user_ids: [bobId] } }),
);
check(mentionId, "the mention returned no event_id");
await waitFor(
  bob,
  () => counts().total === 3 && counts().highlight === 1,
  "bob's counts 3 / 1 (two messages and a mention)",
  () => `(bob's SDK: ${JSON.stringify(counts())})`,
  countSources,
);
const before = await serverCounts(bob, roomId);
check(
  before?.notification_count === 3 && before?.highlight_count === 1,
  `raw /sync unread_notifications after the mention: ${JSON.stringify(before)}`,
);
const notifications = counts().total;
const highlights = counts().highlight;

const mentionEvent = await waitFor(bob, () => bobRoom.findEventById(mentionId), "the mention in bob's timeline", () => "", [
  [bobRoom, sdk.RoomEvent.Timeline],
]);
let syncsSinceReceipt = 0;
const countSyncs = () => syncsSinceReceipt++;
bob.on(sdk.ClientEvent.Sync, countSyncs);
await bob.sendReadReceipt(mentionEvent);
await waitFor(
  bob,
  () => syncsSinceReceipt > 0 && counts().total === 0 && counts().highlight === 0,
  "bob's counts to clear after his read receipt",
  () =>
    `(bob's SDK: ${JSON.stringify(counts())} after ${syncsSinceReceipt} syncs; ` +
    `the receipt's thread_id: ${bob.supportsThreads() ? '"main"' : "none"})`,
  countSources,
);
bob.off(sdk.ClientEvent.Sync, countSyncs);
const after = await serverCounts(bob, roomId);
check(
  after?.notification_count === 0 && after?.highlight_count === 0,
  `raw /sync unread_notifications after the receipt: ${JSON.stringify(after)}`,
);

// ---- Threads ----
const { event_id: rootId } = await alice.sendEvent(roomId, "m.room.message", text("thread root"));
check(rootId, "the thread root returned no event_id");
const threadReply = (body) =>
  text(body, {
    "m.relates_to": { rel_type: "m.thread", event_id: rootId, is_falling_back: true, "m.in_reply_to": { event_id: rootId } },
  });
const { event_id: reply1 } = await alice.sendEvent(roomId, "m.room.message", threadReply("first reply"));
const { event_id: reply2 } = await alice.sendEvent(roomId, "m.room.message", threadReply("second reply"));
check(reply1 && reply2, "a thread reply returned no event_id");

const thread = await waitFor(
  bob,
  () => {
    const t = bobRoom.getThread(rootId);
    return t && t.length === 2 && t.has(reply1) && t.has(reply2) ? t : null;
  },
  "bob's SDK to build the thread with two replies",
  () => {
    const t = bobRoom.getThread(rootId);
    return t ? `(length ${t.length}, events ${t.events.map((e) => e.getId())})` : "(no thread)";
  },
  [
    [bobRoom, sdk.ThreadEvent.New],
    [bobRoom, sdk.ThreadEvent.Update],
    [bobRoom, sdk.ThreadEvent.NewReply],
    [bobRoom, sdk.RoomEvent.Timeline],
  ],
);
check(thread.rootEvent?.getId() === rootId, `thread root in bob's SDK: ${thread.rootEvent?.getId()}`);
check(thread.replyToEvent?.getId() === reply2, `thread's last reply in bob's SDK: ${thread.replyToEvent?.getId()}`);

const threadRelations = await bob.relations(roomId, rootId, sdk.THREAD_RELATION_TYPE.name);
const threadIds = threadRelations.events.map((e) => e.getId());
check(
  threadIds.length === 2 && threadIds.includes(reply1) && threadIds.includes(reply2),
  `/relations m.thread for the root: ${JSON.stringify(threadIds)}`,
);
const root = await bob.fetchRoomEvent(roomId, rootId);
const threadSummary = root.unsigned?.["m.relations"]?.["m.thread"];
check(
  threadSummary?.count === 2 && threadSummary?.latest_event?.event_id === reply2 && threadSummary?.current_user_participated === false,
  `the root's bundled m.thread for bob: ${JSON.stringify(root.unsigned)}`,
);
const threadList = await bob.createThreadListMessagesRequest(roomId, null, 10, sdk.Direction.Backward, sdk.ThreadFilterType.All);
check(
  threadList.chunk?.some((e) => e.event_id === rootId),
  `/threads for bob: ${JSON.stringify(threadList.chunk?.map((e) => e.event_id))}`,
);

// ---- Edits ----
const { event_id: originalId } = await alice.sendEvent(roomId, "m.room.message", text("original body"));
check(originalId, "the original message returned no event_id");
const { event_id: editId } = await alice.sendEvent(roomId, "m.room.message", {
  msgtype: "m.text",
  body: "* edited body",
  "m.new_content": { msgtype: "m.text", body: "edited body" },
  "m.relates_to": { rel_type: "m.replace", event_id: originalId },
});
check(editId, "the edit returned no event_id");
const edited = await waitFor(
  bob,
  () => {
    const original = bobRoom.findEventById(originalId);
    return original?.replacingEvent()?.getId() === editId && original.getContent().body === "edited body" ? original : null;
  },
  "bob's SDK to apply the edit",
  () => {
    const original = bobRoom.findEventById(originalId);
    return `(original ${original ? JSON.stringify(original.getContent()) : "not in the timeline"}, replacing ${original?.replacingEvent()?.getId()})`;
  },
  [
    [bob, sdk.MatrixEventEvent.Replaced],
    [bobRoom, sdk.RoomEvent.Timeline],
  ],
);
const editedBody = edited.getContent().body;
const editRelations = await bob.relations(roomId, originalId, sdk.RelationType.Replace);
check(
  editRelations.events.length === 1 && editRelations.events[0].getId() === editId,
  `/relations m.replace for the original: ${JSON.stringify(editRelations.events.map((e) => e.getId()))}`,
);
check(
  editRelations.events[0].getContent()["m.new_content"]?.body === "edited body",
  `the edit returned by /relations: ${JSON.stringify(editRelations.events[0].getContent())}`,
);
const original = await bob.fetchRoomEvent(roomId, originalId);
const replaceSummary = original.unsigned?.["m.relations"]?.["m.replace"];
check(replaceSummary?.event_id === editId, `the original's bundled m.replace: ${JSON.stringify(original.unsigned)}`);

// ---- Reactions ----
const { event_id: reactionId } = await bob.sendEvent(roomId, "m.reaction", {
  "m.relates_to": { rel_type: "m.annotation", event_id: originalId, key: "👍" },
});
check(reactionId, "the reaction returned no event_id");
const annotations = () =>
  aliceRoom.relations.getChildEventsForEvent(originalId, sdk.RelationType.Annotation, sdk.EventType.Reaction)?.getSortedAnnotationsByKey() ?? [];
const [reactionKey] = await waitFor(
  alice,
  () => {
    const entry = annotations().find(([key, events]) => key === "👍" && [...events].some((e) => e.getId() === reactionId));
    return entry && [entry[0]];
  },
  "alice's SDK to aggregate bob's reaction",
  () => `(annotations ${JSON.stringify(annotations().map(([key, events]) => [key, events.size]))})`,
  [[aliceRoom, sdk.RoomEvent.Timeline]],
);
const reactionRelations = await alice.relations(roomId, originalId, sdk.RelationType.Annotation, sdk.EventType.Reaction);
const reactions = reactionRelations.events.map((e) => ({ id: e.getId(), sender: e.getSender(), key: e.getRelation()?.key }));
check(
  reactions.length === 1 && reactions[0].id === reactionId && reactions[0].sender === bobId && reactions[0].key === "👍",
  `/relations m.annotation m.reaction for alice: ${JSON.stringify(reactions)}`,
);

alice.stopClient();
bob.stopClient();
console.log(
  JSON.stringify({
    roomId,
    alice: aliceId,
    bob: bobId,
    notifications,
    highlights,
    cleared: true,
    thread_replies: thread.length,
    thread_bundled_count: threadSummary.count,
    edited_body: editedBody,
    reaction_key: reactionKey,
  }),
);
process.exit(0);

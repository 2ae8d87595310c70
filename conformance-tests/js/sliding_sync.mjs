// Simplified sliding sync (MSC4186) on a Unitas node, through matrix-js-sdk 43's SlidingSync (the
// client Element Web uses: client.startClient({ slidingSync })) and through raw requests shaped
// like Element X's (matrix-rust-sdk's room list connection).
//
// Usage: node sliding_sync.mjs BASE_URL
//
// alice and bob register (m.login.dummy, names suffixed so the script can run again against the
// same node); alice creates rooms "A", "B" and "C" and invites bob, who joins them, then invites
// him to a fourth room, "Invite". bob starts matrix-js-sdk with a SlidingSync of one list
// (all_rooms, range [0, 9], timeline_limit 1, Element Web's required_state) and the SDK's
// extensions (to_device, account_data, typing, receipts) plus e2ee.
//
// - First response: the list's count is 4; the four rooms come with `initial`, A-C with their
//   names, the newest event and, in required_state (the room's current state, as the SDK takes
//   room state from it alone), m.room.create and bob's own membership ($ME, though his join is
//   also the timeline's event); "Invite" with invite_state (its name and bob's invite);
//   bump_stamp orders them Invite, C, B, A. The SDK names the rooms, knows bob's membership and
//   the invite.
// - A message by alice in A: the next response has room A alone, not initial, with the message,
//   num_live >= 1 and the highest bump_stamp; notification_count 1 comes with it or, when the
//   server's push rules had not seen the message yet, in a later response with A's counts alone;
//   the SDK's timeline and count agree and A sorts first.
// - Extensions: alice's typing and read receipt in A reach bob's SDK (RoomMember.typing, the
//   receipt from the server rather than the one the SDK infers) and the raw typing / receipts
//   extensions.
// - A state change: alice makes A public; the m.room.join_rules event comes in A's timeline and
//   required_state, and the SDK's join rule becomes "public".
// - More extensions: account data bob sets comes back in account_data.global (setAccountData
//   waits for that echo); a to-device message alice sends to bob's device arrives once, through
//   the to_device extension, and is not sent again once the SDK passes next_batch back as
//   `since`.
// - Room subscription: subscribing to B with timeline_limit 5 returns B's five newest events
//   (the same as /messages), which the SDK merges into its timeline.
// - Window: with the range narrowed to [0, 0], a message in B followed by one in C; after the
//   range widens again the SDK's B timeline has B's message (nothing lost).
// - A raw connection (conn_id "room-list", Element X's list and all five extensions): [0, 0]
//   returns just the newest room; widening to [0, 9] sends the other three; back at [0, 0], a
//   message in B then one in C: the next response has C alone, the one after widening has B
//   with its message (not initial: the connection keeps B's place while it is out of view). A
//   long-poll returns when a message arrives, and after its timeout when nothing does (after
//   at most one answer with the message's unread counts, which may come later); an unknown
//   pos is 400 M_UNKNOWN_POS.
// - Discovery: /versions advertises org.matrix.simplified_msc3575 (what Element X's
//   matrix-rust-sdk and Element Web look for before using sliding sync).
//
// Waits are event-driven (SDK events, each sliding sync request and response) and bounded
// (20 s). Prints a JSON line of facts (the last line of stdout); exits 1 on the first failure.

import * as sdk from "matrix-js-sdk-43";
import { ExtensionState, SlidingSync } from "matrix-js-sdk-43/lib/sliding-sync.js";

const base = process.argv[2];
const check = (ok, message) => {
  if (!ok) {
    console.error(message);
    process.exit(1);
  }
};

// matrix-js-sdk 43 declares Node >= 22. Its SlidingSync needs nothing newer than Node 20, but
// the SDK's event scheduler (sendEvent) and setAccountData call Promise.withResolvers (ES2024,
// Node 22): on Node 20 they throw "TypeError: Promise.withResolvers is not a function". Where it
// is missing it is defined here as the spec defines it (a no-op on Node 22).
const polyfilled = typeof Promise.withResolvers !== "function";
if (polyfilled) {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

// Keep the SDK's own logging quiet; facts go through console.log and failures through
// console.error.
sdk.logger?.setLevel?.("error");
for (const method of ["trace", "debug", "info", "warn"]) console[method] = () => {};

const suffix = Math.random().toString(36).slice(2, 8);
const SYNC_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
const WAIT_MS = 20000;

async function register(name) {
  const anonymous = sdk.createClient({ baseUrl: base });
  const response = await anonymous.registerRequest({
    username: `${name}-${suffix}`,
    password: `${name}-password`,
    auth: { type: "m.login.dummy" },
  });
  check(response.access_token && response.user_id, `register ${name}: ${JSON.stringify(response)}`);
  const client = sdk.createClient({
    baseUrl: base,
    accessToken: response.access_token,
    userId: response.user_id,
    deviceId: response.device_id,
  });
  return { client, token: response.access_token, deviceId: response.device_id };
}

const text = (body) => ({ msgtype: "m.text", body });
const brief = (value) => JSON.stringify(value)?.slice(0, 1500);

// ---- Waiting: a condition is re-tested on every sliding sync request and response of bob's SDK
// and on the SDK events below; it fails the script after 20 s. ----
const waiters = new Set();
const notify = () => {
  for (const test of [...waiters]) test();
};
function waitFor(condition, what, describe = () => "") {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      waiters.delete(test);
      check(false, `timed out after ${WAIT_MS / 1000} s waiting for ${what} ${describe()}`);
    }, WAIT_MS);
    function test() {
      let value;
      try {
        value = condition();
      } catch {
        value = undefined;
      }
      if (value) {
        clearTimeout(timer);
        waiters.delete(test);
        resolve(value);
      }
    }
    waiters.add(test);
    test();
  });
}
async function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${WAIT_MS / 1000} s: ${what}`)), WAIT_MS);
  });
  try {
    return await Promise.race([promise, timeout]);
  } catch (e) {
    check(false, `${what}: ${e}`);
  } finally {
    clearTimeout(timer);
  }
}

// ---- Raw requests (the Element X-shaped connection) ----
async function rawSync(token, body, { pos, timeout = 0 } = {}) {
  const url = new URL(base + SYNC_PATH);
  if (pos !== undefined) url.searchParams.set("pos", pos);
  url.searchParams.set("timeout", String(timeout));
  const started = Date.now();
  const response = await fetch(url, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeout + WAIT_MS),
  });
  const json = await response.json().catch(() => ({}));
  return { status: response.status, json, ms: Date.now() - started, request: { pos, timeout, body } };
}
const okSync = async (token, body, options) => {
  const r = await rawSync(token, body, options);
  check(r.status === 200 && r.json.pos, `sliding sync ${brief(r.request)} -> ${r.status} ${brief(r.json)}`);
  return r.json;
};

// ---- Users and rooms ----
const { client: alice } = await register("alice");
const { client: bob, token: bobToken, deviceId: bobDevice } = await register("bob");
const aliceId = alice.getUserId();
const bobId = bob.getUserId();
const rooms = {};
for (const name of ["A", "B", "C"]) {
  const { room_id: roomId } = await alice.createRoom({ name, invite: [bobId] });
  check(roomId, `createRoom ${name} returned no room_id`);
  await bob.joinRoom(roomId);
  rooms[name] = roomId;
}
const { room_id: inviteId } = await alice.createRoom({ name: "Invite", invite: [bobId] });
check(inviteId, "createRoom Invite returned no room_id");
rooms.Invite = inviteId;
const nameOf = (roomId) => Object.keys(rooms).find((n) => rooms[n] === roomId) ?? roomId;
const names = (ids) => ids.map(nameOf);
const send = async (roomName, body) => {
  const { event_id: eventId } = await alice.sendEvent(rooms[roomName], "m.room.message", text(body));
  check(eventId, `sending "${body}" in ${roomName} returned no event_id`);
  return eventId;
};
const hasEvent = (roomData, eventId) => (roomData?.timeline ?? []).some((e) => e.event_id === eventId);

// ---- bob's SDK with a SlidingSync ----
// Element Web's room list: one list, the newest rooms first, one timeline event each.
const LIST = "all_rooms";
const listConfig = (ranges) => ({
  ranges,
  timeline_limit: 1,
  required_state: [
    ["m.room.join_rules", ""],
    ["m.room.avatar", ""],
    ["m.room.tombstone", ""],
    ["m.room.encryption", ""],
    ["m.room.create", ""],
    ["m.room.name", ""],
    ["m.room.member", "$ME"],
    ["m.room.member", "$LAZY"],
  ],
  filters: { not_room_types: ["m.space"] },
});
const slidingSync = new SlidingSync(
  base,
  new Map([[LIST, listConfig([[0, 9]])]]),
  { timeline_limit: 5, required_state: [["*", "*"]] },
  bob,
  10000,
);
// The SDK registers e2ee only with its crypto stack; this one just asks for it.
const e2eeResponses = [];
slidingSync.registerExtension({
  name: () => "e2ee",
  when: () => ExtensionState.PreProcess,
  onRequest: async () => ({ enabled: true }),
  onResponse: async (data) => {
    e2eeResponses.push(data);
  },
});

// Every request the SlidingSync sends and the response it gets, as sent and received (copied
// before the SDK processes them).
const exchanges = [];
const sendSlidingSync = bob.slidingSync.bind(bob);
bob.slidingSync = (req, proxyBaseUrl, abortSignal) => {
  const exchange = { req: structuredClone(req) };
  exchanges.push(exchange);
  const pending = sendSlidingSync(req, proxyBaseUrl, abortSignal);
  pending.then(
    (resp) => {
      exchange.resp = structuredClone(resp);
      notify();
    },
    (err) => {
      exchange.error = err;
    },
  );
  queueMicrotask(notify);
  return pending;
};
const answered = () => exchanges.filter((x) => x.resp);
const findResponse = (predicate) => answered().find((x) => predicate(x.resp, x.req));

const toDevice = [];
bob.on(sdk.ClientEvent.ToDeviceEvent, (event) => {
  if (event.getType() === "org.example.ping") toDevice.push(event.getContent());
});
for (const name of [
  sdk.ClientEvent.Sync,
  sdk.ClientEvent.Room,
  sdk.ClientEvent.AccountData,
  sdk.ClientEvent.ToDeviceEvent,
  sdk.RoomEvent.Timeline,
  sdk.RoomEvent.Receipt,
  sdk.RoomEvent.MyMembership,
  sdk.RoomEvent.Name,
  sdk.RoomMemberEvent.Typing,
]) {
  bob.on(name, notify);
}

await bob.startClient({ slidingSync });
await waitFor(() => ["PREPARED", "SYNCING"].includes(bob.getSyncState()), "bob's first sliding sync", () =>
  brief(exchanges.map((x) => x.error?.message ?? x.resp?.pos)),
);

// ---- The first response ----
const first = exchanges[0];
check(first?.resp && first.req.pos === undefined, `the first request had a pos or no answer: ${brief(first?.req)}`);
const count = first.resp.lists?.[LIST]?.count;
check(count === 4, `list count ${count}, want 4 (3 joined + 1 invite): ${brief(first.resp.lists)}`);
const firstRooms = first.resp.rooms ?? {};
check(
  JSON.stringify(names(Object.keys(firstRooms)).sort()) === JSON.stringify(["A", "B", "C", "Invite"]),
  `first response rooms ${names(Object.keys(firstRooms))}, want A, B, C, Invite`,
);
const bumps = {};
for (const name of ["A", "B", "C"]) {
  const data = firstRooms[rooms[name]];
  check(data.initial === true, `room ${name} without initial: ${brief(data)}`);
  check(data.name === name, `room ${name} named ${JSON.stringify(data.name)}`);
  check(data.timeline?.length === 1, `room ${name}: ${data.timeline?.length} timeline events, want 1 (timeline_limit)`);
  const state = data.required_state ?? [];
  check(
    state.some((e) => e.type === "m.room.create") &&
      state.some((e) => e.type === "m.room.member" && e.state_key === bobId && e.content?.membership === "join"),
    `room ${name}'s required_state lacks m.room.create or bob's own membership ($ME): ${brief(state.map((e) => [e.type, e.state_key]))}`,
  );
  check(Number.isInteger(data.bump_stamp), `room ${name} without bump_stamp`);
  bumps[name] = data.bump_stamp;
}
const invite = firstRooms[rooms.Invite];
check(invite.initial === true, `the invite without initial: ${brief(invite)}`);
const inviteState = invite.invite_state ?? [];
check(
  inviteState.some((e) => e.type === "m.room.member" && e.state_key === bobId && e.content?.membership === "invite") &&
    inviteState.some((e) => e.type === "m.room.name" && e.content?.name === "Invite"),
  `the invite's invite_state lacks bob's invite or the room name: ${brief(inviteState)}`,
);
bumps.Invite = invite.bump_stamp;
const initialOrder = Object.keys(bumps).sort((a, b) => bumps[b] - bumps[a]);
check(
  JSON.stringify(initialOrder) === JSON.stringify(["Invite", "C", "B", "A"]),
  `bump_stamp order ${initialOrder} (${brief(bumps)}), want Invite, C, B, A`,
);
for (const name of ["A", "B", "C"]) {
  const room = bob.getRoom(rooms[name]);
  check(room?.name === name, `bob's SDK names room ${name} "${room?.name}"`);
  // The SDK takes room state from required_state only (timeline events do not change it).
  check(
    room.getMember(bobId)?.membership === "join",
    `bob's SDK does not know his own membership of ${name}: ${room.getMember(bobId)?.membership}`,
  );
}
check(
  bob.getRoom(rooms.Invite)?.getMyMembership() === "invite" && bob.getRoom(rooms.Invite)?.name === "Invite",
  `bob's SDK: the invite is ${bob.getRoom(rooms.Invite)?.getMyMembership()} named "${bob.getRoom(rooms.Invite)?.name}"`,
);
check(
  e2eeResponses.length > 0 && typeof e2eeResponses[0].device_one_time_keys_count === "object",
  `e2ee extension: ${brief(e2eeResponses[0])}`,
);

// ---- A message in A ----
const helloId = await send("A", "hello A");
const helloExchange = await waitFor(
  () => answered().find((x) => hasEvent(x.resp.rooms?.[rooms.A], helloId)),
  "the message in A in bob's sliding sync",
);
const helloRooms = helloExchange.resp.rooms;
check(
  JSON.stringify(names(Object.keys(helloRooms))) === JSON.stringify(["A"]),
  `the response with A's message has rooms ${names(Object.keys(helloRooms))}, want A alone`,
);
const roomA = helloRooms[rooms.A];
check(roomA.initial !== true, `A came as initial with its new message: ${brief(roomA)}`);
check(roomA.num_live >= 1, `A's num_live ${roomA.num_live}, want >= 1`);
const countedA = await waitFor(
  () =>
    exchanges
      .slice(exchanges.indexOf(helloExchange))
      .find((x) => x.resp?.rooms?.[rooms.A]?.notification_count === 1)?.resp.rooms[rooms.A],
  "A's notification_count 1 (with the message or in a response just after it)",
);
check(
  roomA.bump_stamp > Math.max(bumps.B, bumps.C, bumps.Invite),
  `A's bump_stamp ${roomA.bump_stamp} is not above the others' ${brief(bumps)}`,
);
bumps.A = roomA.bump_stamp;
const bobA = bob.getRoom(rooms.A);
await waitFor(
  () => bobA.getLiveTimeline().getEvents().at(-1)?.getId() === helloId,
  "the message at the end of A in bob's SDK",
);
await waitFor(
  () => bobA.getUnreadNotificationCount(sdk.NotificationCountType.Total) === 1,
  "bob's SDK: A's notification count 1",
);
const sdkOrder = bob
  .getRooms()
  .slice()
  .sort((a, b) => (b.getBumpStamp() ?? 0) - (a.getBumpStamp() ?? 0))
  .map((r) => nameOf(r.roomId));
check(sdkOrder[0] === "A", `bob's SDK orders the rooms ${sdkOrder} by bump stamp, want A first`);
const firstAfterMessage = rooms[sdkOrder[0]];

// ---- Typing ----
await alice.sendTyping(rooms.A, true, 30000);
await waitFor(
  () =>
    bobA.getMember(aliceId)?.typing === true &&
    findResponse((r) => r.extensions?.typing?.rooms?.[rooms.A]?.content?.user_ids?.includes(aliceId)),
  "alice's typing in bob's typing extension and SDK",
  () => `(member typing: ${bobA.getMember(aliceId)?.typing})`,
);
await alice.sendTyping(rooms.A, false);

// ---- Receipts ----
const helloEvent = new sdk.MatrixEvent({ event_id: helloId, room_id: rooms.A, type: "m.room.message", sender: aliceId, content: {} });
await alice.sendReadReceipt(helloEvent);
await waitFor(
  () =>
    bobA.getReadReceiptForUserId(aliceId, true)?.eventId === helloId &&
    findResponse((r) => r.extensions?.receipts?.rooms?.[rooms.A]?.content?.[helloId]?.["m.read"]?.[aliceId]),
  "alice's read receipt in bob's receipts extension and SDK",
  () => `(SDK: ${brief(bobA.getReadReceiptForUserId(aliceId, true))})`,
);

// ---- A state change: required_state carries the room's current state ----
const { event_id: joinRulesId } = await alice.sendStateEvent(rooms.A, "m.room.join_rules", { join_rule: "public" }, "");
check(joinRulesId, "setting A's join rules returned no event_id");
await waitFor(
  () => answered().find((x) => hasEvent(x.resp.rooms?.[rooms.A], joinRulesId)),
  "A's join rules change in bob's sliding sync",
);
const joinRulesRoom = answered().find((x) => hasEvent(x.resp.rooms?.[rooms.A], joinRulesId)).resp.rooms[rooms.A];
check(
  (joinRulesRoom.required_state ?? []).some((e) => e.event_id === joinRulesId),
  `A's new join rules are in the timeline but not in required_state (["m.room.join_rules", ""] is requested): ` +
    brief({ timeline: joinRulesRoom.timeline?.map((e) => [e.type, e.state_key]), required_state: joinRulesRoom.required_state?.map((e) => [e.type, e.state_key]) }),
);
await waitFor(() => bobA.getJoinRule() === "public", "A's public join rule in bob's SDK", () => `(SDK: ${bobA.getJoinRule()})`);

// ---- Account data ----
const marker = `set by bob ${suffix}`;
await within(bob.setAccountData("org.example.test", { marker }), "bob's account data echoed by sliding sync");
check(
  bob.getAccountData("org.example.test")?.getContent()?.marker === marker,
  `bob's SDK account data: ${brief(bob.getAccountData("org.example.test")?.getContent())}`,
);
check(
  findResponse((r) => r.extensions?.account_data?.global?.some((e) => e.type === "org.example.test" && e.content?.marker === marker)),
  "no response had org.example.test in account_data.global",
);

// ---- To-device ----
const ping = { ping: suffix };
await alice.sendToDevice("org.example.ping", new Map([[bobId, new Map([[bobDevice, ping]])]]), `ping-${suffix}`);
const pings = (resp) => (resp.extensions?.to_device?.events ?? []).filter((e) => e.type === "org.example.ping");
const pingExchange = await waitFor(
  () => toDevice.length > 0 && answered().find((x) => pings(x.resp).length > 0),
  "alice's to-device message in bob's to_device extension and SDK",
);
check(
  JSON.stringify(toDevice[0]) === JSON.stringify(ping) && pings(pingExchange.resp)[0].sender === aliceId,
  `the to-device message: ${brief(pings(pingExchange.resp))}`,
);
const nextBatch = pingExchange.resp.extensions.to_device.next_batch;
check(nextBatch, `to_device without next_batch: ${brief(pingExchange.resp.extensions.to_device)}`);
// Something new for the next responses: they must not bring the message again.
const afterPingId = await send("A", "after the ping");
const afterPing = await waitFor(
  () => answered().find((x) => hasEvent(x.resp.rooms?.[rooms.A], afterPingId)),
  "the message after the ping in bob's sliding sync",
);
const nextRequest = exchanges[exchanges.indexOf(pingExchange) + 1];
check(
  nextRequest?.req.extensions?.to_device?.since === nextBatch,
  `the request after the to-device message sent since ${nextRequest?.req.extensions?.to_device?.since}, want ${nextBatch}`,
);
const pingDeliveries = answered().reduce((n, x) => n + pings(x.resp).length, 0);
check(
  pingDeliveries === 1 && toDevice.length === 1 && pings(afterPing.resp).length === 0,
  `the to-device message came ${pingDeliveries} times (SDK: ${toDevice.length})`,
);

// ---- Room subscription ----
const lastFive = await alice.createMessagesRequest(rooms.B, null, 5, sdk.Direction.Backward);
const expectedFive = lastFive.chunk.map((e) => e.event_id).reverse();
check(expectedFive.length === 5, `/messages in B returned ${expectedFive.length} events`);
slidingSync.modifyRoomSubscriptions(new Set([rooms.B]));
const subscribed = await waitFor(
  () => answered().find((x) => x.req.room_subscriptions?.[rooms.B] && x.resp.rooms?.[rooms.B]),
  "B through its room subscription",
  () => brief(exchanges.at(-1)?.req),
);
const subscribedB = subscribed.resp.rooms[rooms.B];
const subscribedIds = (subscribedB.timeline ?? []).map((e) => e.event_id);
check(
  JSON.stringify(subscribedIds) === JSON.stringify(expectedFive),
  `the subscription's timeline ${brief(subscribedIds)}, want B's last five ${brief(expectedFive)}`,
);
check(
  (subscribedB.required_state ?? []).some((e) => e.type === "m.room.power_levels"),
  `the subscription's required_state ["*", "*"] lacks m.room.power_levels: ${brief((subscribedB.required_state ?? []).map((e) => e.type))}`,
);
const bobB = bob.getRoom(rooms.B);
await waitFor(
  () => JSON.stringify(bobB.getLiveTimeline().getEvents().map((e) => e.getId()).slice(-5)) === JSON.stringify(expectedFive),
  "B's last five events in bob's SDK timeline",
  () => brief(bobB.getLiveTimeline().getEvents().map((e) => e.getId())),
);

// ---- Window: [0, 0], a message outside it, then [0, 9] (bob's SDK) ----
slidingSync.setListRanges(LIST, [[0, 0]]);
await waitFor(
  () => exchanges.some((x) => x.req.lists?.[LIST]?.ranges?.[0]?.[1] === 0),
  "a request with the range [0, 0]",
);
const lateId = await send("B", "late in B");
const bumpId = await send("C", "bump in C");
await waitFor(
  () => bob.getRoom(rooms.C).getLiveTimeline().getEvents().some((e) => e.getId() === bumpId),
  "C's message in bob's SDK with the range [0, 0]",
);
const lateDelivery = () => answered().find((x) => hasEvent(x.resp.rooms?.[rooms.B], lateId));
const lateInNarrowWindow = lateDelivery()?.req.lists?.[LIST]?.ranges?.[0]?.[1] === 0;
slidingSync.setListRanges(LIST, [[0, 9]]);
await waitFor(
  () => bobB.getLiveTimeline().getEvents().some((e) => e.getId() === lateId),
  "B's message in bob's SDK after the range widened",
  () => brief(lateDelivery()?.resp.rooms?.[rooms.B]),
);

// ---- A raw connection shaped like Element X's room list ----
const elementX = (ranges) => ({
  conn_id: "room-list",
  lists: {
    all_rooms: {
      ranges,
      timeline_limit: 1,
      required_state: [
        ["m.room.name", ""],
        ["m.room.member", "$LAZY"],
        ["m.room.member", "$ME"],
        ["m.room.encryption", ""],
        ["m.room.create", ""],
        ["m.room.join_rules", ""],
        ["m.room.power_levels", ""],
        ["m.room.canonical_alias", ""],
        ["m.room.topic", ""],
        ["m.room.avatar", ""],
        ["m.room.history_visibility", ""],
        ["m.room.pinned_events", ""],
      ],
      filters: { not_room_types: ["m.space"] },
    },
  },
  extensions: {
    to_device: { enabled: true },
    e2ee: { enabled: true },
    account_data: { enabled: true },
    receipts: { enabled: true, rooms: ["*"] },
    typing: { enabled: true },
  },
});
// A room's unread counts may change after its message was sent (the push rules run beside the
// append; their verdicts come with a later commit): an entry with nothing but counts may come
// in any response, and the checks of which rooms came leave it out.
const COUNTS = new Set(["bump_stamp", "notification_count", "highlight_count", "unread_thread_notifications"]);
const countsOnly = (room) => Object.keys(room).every((k) => COUNTS.has(k));
const keys = (resp) =>
  names(Object.keys(resp.rooms ?? {}).filter((id) => !countsOnly(resp.rooms[id])));
// Newest first: C ("bump in C"), then B, A, Invite.
const r1 = await okSync(bobToken, elementX([[0, 0]]));
check(r1.lists?.all_rooms?.count === 4, `raw: list count ${r1.lists?.all_rooms?.count}, want 4`);
check(
  JSON.stringify(keys(r1)) === JSON.stringify(["C"]) && r1.rooms[rooms.C].initial === true,
  `raw [0, 0]: rooms ${keys(r1)}, want the newest, C, as initial`,
);
const ext = r1.extensions ?? {};
check(
  ext.to_device?.next_batch && ext.e2ee?.device_one_time_keys_count && ext.account_data && ext.receipts && ext.typing,
  `raw: the five extensions: ${brief(ext)}`,
);
check(
  (ext.to_device.events ?? []).every((e) => e.type !== "org.example.ping"),
  `raw: the to-device message the SDK acknowledged came again on a new connection: ${brief(ext.to_device)}`,
);
check(
  ext.account_data.global?.some((e) => e.type === "org.example.test"),
  `raw: a new connection's account_data.global lacks org.example.test: ${brief(ext.account_data)}`,
);
const r2 = await okSync(bobToken, elementX([[0, 9]]), { pos: r1.pos });
check(
  JSON.stringify(keys(r2).sort()) === JSON.stringify(["A", "B", "Invite"]) &&
    ["A", "B"].every((n) => r2.rooms[rooms[n]].initial === true),
  `raw [0, 9] after [0, 0]: rooms ${keys(r2)}, want A, B and Invite as initial`,
);
const r3 = await okSync(bobToken, elementX([[0, 0]]), { pos: r2.pos });
check(keys(r3).length === 0, `raw [0, 0] with nothing new: rooms ${keys(r3)}`);
const lateRawId = await send("B", "late in B (raw)");
const bumpRawId = await send("C", "bump in C (raw)");
const r4 = await okSync(bobToken, elementX([[0, 0]]), { pos: r3.pos });
check(
  JSON.stringify(keys(r4)) === JSON.stringify(["C"]) && hasEvent(r4.rooms[rooms.C], bumpRawId),
  `raw [0, 0] after messages in B then C: rooms ${keys(r4)} ${brief(r4.rooms)}, want C alone with its message`,
);
check(r4.rooms[rooms.C].initial !== true && r4.rooms[rooms.C].num_live >= 1, `raw: C ${brief(r4.rooms[rooms.C])}`);
const r5 = await okSync(bobToken, elementX([[0, 9]]), { pos: r4.pos });
const lateB = r5.rooms?.[rooms.B];
check(
  JSON.stringify(keys(r5)) === JSON.stringify(["B"]),
  `raw [0, 9] after B's message outside [0, 0]: rooms ${keys(r5)}, want B alone`,
);
check(
  hasEvent(lateB, lateRawId) || (lateB.limited === true && lateB.prev_batch),
  `raw: B's message outside the window was lost: ${brief(lateB)}`,
);
check(lateB.initial !== true && lateB.num_live >= 1, `raw: B came back as ${brief(lateB)}`);

// Long-poll: woken by a message, else answered at the timeout.
const polling = rawSync(bobToken, elementX([[0, 9]]), { pos: r5.pos, timeout: 15000 });
const wakeId = await send("A", "wake up");
let woken = await polling;
// The earlier messages' counts (their push verdicts are written a moment after them) may answer
// the poll first, with nothing but counts: poll again for the message, as a client would.
for (
  let again = 0;
  again < 3 &&
  woken.status === 200 &&
  Object.keys(woken.json.rooms ?? {}).length > 0 &&
  Object.values(woken.json.rooms).every(countsOnly);
  again++
) {
  woken = await rawSync(bobToken, elementX([[0, 9]]), { pos: woken.json.pos, timeout: 15000 });
}
check(
  woken.status === 200 && hasEvent(woken.json.rooms?.[rooms.A], wakeId) && woken.ms < 15000,
  `raw long-poll: ${woken.status} after ${woken.ms} ms: ${brief(woken.json)}`,
);
let idle = await rawSync(bobToken, elementX([[0, 9]]), { pos: woken.json.pos, timeout: 1000 });
// One answer with nothing but the message's counts may come first.
if (
  idle.status === 200 &&
  Object.keys(idle.json.rooms ?? {}).length > 0 &&
  Object.values(idle.json.rooms).every(countsOnly)
) {
  idle = await rawSync(bobToken, elementX([[0, 9]]), { pos: idle.json.pos, timeout: 1000 });
}
check(
  idle.status === 200 && keys(idle.json).length === 0 && idle.ms >= 900,
  `raw long-poll with nothing new: ${idle.status} after ${idle.ms} ms: ${brief(idle.json)}`,
);

// An unknown pos: the client must start over.
const unknown = await rawSync(bobToken, elementX([[0, 9]]), { pos: "999999999" });
check(
  unknown.status === 400 && unknown.json.errcode === "M_UNKNOWN_POS",
  `unknown pos: ${unknown.status} ${brief(unknown.json)}`,
);

// Discovery: clients look for simplified sliding sync in /versions (matrix-rust-sdk's
// DiscoverNative, as Element X logs in; Element Web's native sliding sync check).
const versions = await fetch(`${base}/_matrix/client/versions`).then((r) => r.json());
check(
  versions.unstable_features?.["org.matrix.simplified_msc3575"] === true,
  `/versions does not advertise org.matrix.simplified_msc3575: ${brief(versions)}`,
);

// The SDK sends a room subscription once; B sent again as initial after that (its combined room
// config shrank back to the list's)?
const resentAfterSubscription = answered()
  .slice(answered().indexOf(subscribed) + 1)
  .some((x) => x.resp.rooms?.[rooms.B]?.initial === true);

bob.stopClient();
alice.stopClient();
console.log(
  JSON.stringify({
    client: "matrix-js-sdk 43",
    node: process.version,
    polyfilled_promise_with_resolvers: polyfilled,
    count,
    initial_order: initialOrder,
    first_after_message: firstAfterMessage,
    num_live: roomA.num_live,
    notification_count: countedA.notification_count,
    typing: true,
    receipts: true,
    account_data: true,
    to_device: pingDeliveries,
    subscription_timeline: subscribedIds.length,
    resent_as_initial_after_subscription: resentAfterSubscription,
    sdk_late_message_in_narrow_window: lateInNarrowWindow,
    window_rooms: keys(r4).length,
    late_message_delivered: true,
    long_poll_woken_ms: woken.ms,
    long_poll_idle_ms: idle.ms,
    unknown_pos: unknown.json.errcode,
    sdk_requests: exchanges.length,
  }),
);
process.exit(0);

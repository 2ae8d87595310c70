// Two matrix-js-sdk clients chat on a Unitas node (client-server API, part 1).
//
// Usage: node chat.mjs BASE_URL
//
// alice and bob register (m.login.dummy), alice creates a room and invites bob, bob joins, they
// exchange 100 messages; both read them back in order through the SDK's sync (startClient) and
// through /messages; bob's typing and read receipt reach alice. Prints a JSON line of facts;
// exits 1 on the first failure.

import * as sdk from "matrix-js-sdk";

const base = process.argv[2];
const check = (ok, message) => {
  if (!ok) {
    console.error(message);
    process.exit(1);
  }
};

// Keep the SDK's own logging quiet.
sdk.logger?.setLevel?.("error");

async function register(name) {
  const anonymous = sdk.createClient({ baseUrl: base });
  const response = await anonymous.registerRequest({
    username: name,
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

async function until(condition, what) {
  const deadline = Date.now() + 15000;
  while (!condition()) {
    check(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const alice = await register("alice");
const bob = await register("bob");
const { room_id: roomId } = await alice.createRoom({ name: "js chat", invite: [bob.getUserId()] });
check(roomId, "createRoom returned no room_id");
await bob.joinRoom(roomId);

for (let i = 0; i < 100; i++) {
  const sender = i % 2 === 0 ? alice : bob;
  const { event_id: eventId } = await sender.sendEvent(roomId, "m.room.message", { msgtype: "m.text", body: `message ${i}` });
  check(eventId, `send ${i} returned no event_id`);
}
const expected = Array.from({ length: 100 }, (_, i) => `message ${i}`);

// /messages, backwards from the end, page by page.
for (const client of [alice, bob]) {
  const bodies = [];
  let from = null;
  for (let page = 0; page < 10; page++) {
    const response = await client.createMessagesRequest(roomId, from, 30, sdk.Direction.Backward);
    bodies.push(...response.chunk.filter((e) => e.type === "m.room.message").map((e) => e.content.body));
    if (!response.end) break;
    from = response.end;
  }
  check(JSON.stringify(bodies.reverse()) === JSON.stringify(expected), `${client.getUserId()} /messages order: ${bodies.slice(0, 3)}`);
}

// Sync: the SDK's own timeline of the room.
await synced(alice);
await synced(bob);
const timeline = () =>
  alice.getRoom(roomId).getLiveTimeline().getEvents().filter((e) => e.getType() === "m.room.message").map((e) => e.getContent().body);
check(JSON.stringify(timeline()) === JSON.stringify(expected), `alice's synced timeline: ${timeline().slice(0, 3)}...`);

// A live message arrives through the long-poll.
await bob.sendEvent(roomId, "m.room.message", { msgtype: "m.text", body: "live" });
await until(() => timeline().at(-1) === "live", "the live message");

// Typing and receipts.
await bob.sendTyping(roomId, true, 30000);
await until(() => alice.getRoom(roomId).getMember(bob.getUserId())?.typing === true, "bob's typing");
const last = alice.getRoom(roomId).getLiveTimeline().getEvents().at(-1);
await bob.sendReadReceipt(last);
await until(() => alice.getRoom(roomId).getEventReadUpTo(bob.getUserId()) === last.getId(), "bob's receipt");

// Media.
const upload = await alice.uploadContent(Buffer.from("js media bytes"), { type: "text/plain", name: "hello.txt" });
check(upload.content_uri?.startsWith("mxc://"), `upload: ${JSON.stringify(upload)}`);

alice.stopClient();
bob.stopClient();
console.log(JSON.stringify({ roomId, messages: 101, typing: true, receipts: true, media: upload.content_uri }));
process.exit(0);

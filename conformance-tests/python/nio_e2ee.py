"""Two matrix-nio clients with encryption (vodozemac) talk in an encrypted room.

Usage: nio_e2ee.py ALICE_BASE_URL BOB_BASE_URL STORE_DIR

alice registers on the first node, bob on the second (the same node, or another one federating
with it). alice creates an encrypted room (m.megolm.v1.aes-sha2) and invites bob; bob joins.
Each uploads device and one-time keys; alice's client queries bob's keys, claims a one-time
key, shares the room key with bob's device over to-device (Olm) and sends an encrypted message;
bob decrypts it, answers, and alice decrypts the answer. Prints a JSON line (room ID, event
IDs, the decrypted bodies); exits 1 on the first failure. The server relays only ciphertext.
"""

import asyncio
import json
import sys
import time

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    KeysUploadResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)


def check(condition, message):
    if not condition:
        raise SystemExit(message)


def client(base, name, store):
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    return AsyncClient(base, name, store_path=store, config=config)


async def sync_until(c, what, predicate, seconds=30):
    """Syncs (long-poll) until predicate(response) holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = await c.sync(timeout=2000, full_state=False)
        check(isinstance(response, SyncResponse), f"{c.user_id} sync: {response}")
        if c.should_upload_keys:
            await c.keys_upload()
        if c.should_query_keys:
            await c.keys_query()
        if c.should_claim_keys:
            await c.keys_claim(c.get_users_for_key_claiming())
        found = predicate(response)
        if found:
            return found
    raise SystemExit(f"{c.user_id}: timed out waiting for {what}")


def decrypted_text(c, room_id, body):
    def predicate(response):
        room = response.rooms.join.get(room_id)
        if room is None:
            return None
        for event in room.timeline.events:
            check(not isinstance(event, MegolmEvent), f"{c.user_id} could not decrypt {event.event_id}: {event}")
            if isinstance(event, RoomMessageText) and event.body == body:
                check(event.decrypted, f"{c.user_id}: {event.event_id} arrived unencrypted")
                return event
        return None

    return predicate


def progress(message):
    print(message, file=sys.stderr, flush=True)


async def main(alice_base, bob_base, store):
    progress(f"alice on {alice_base}, bob on {bob_base}")
    alice = client(alice_base, "alice", store)
    bob = client(bob_base, "bob", store)
    try:
        for c, name in ((alice, "alice"), (bob, "bob")):
            response = await c.register(name, f"{name}-password", f"{name.upper()}DEVICE")
            check(isinstance(response, RegisterResponse), f"register {name}: {response}")
            c.load_store()
            uploaded = await c.keys_upload()
            check(isinstance(uploaded, KeysUploadResponse), f"{name} keys/upload: {uploaded}")
            check(uploaded.signed_curve25519_count > 0, f"{name}: no one-time keys counted: {uploaded}")

        created = await alice.room_create(
            name="secret",
            invite=[bob.user_id],
            initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        )
        check(isinstance(created, RoomCreateResponse), f"createRoom: {created}")
        room_id = created.room_id
        progress(f"room {room_id} created, bob invited")

        await sync_until(bob, "the invite", lambda r: room_id in r.rooms.invite)
        joined = await bob.join(room_id)
        check(isinstance(joined, JoinResponse), f"join: {joined}")
        await sync_until(bob, "the joined room", lambda r: room_id in r.rooms.join)
        # alice sees bob joined (and so will share the room key with his devices).
        def bob_joined(response):
            room = alice.rooms.get(room_id)
            return room is not None and bob.user_id in room.users
        await sync_until(alice, "bob's join", bob_joined)
        check(alice.rooms[room_id].encrypted, "alice's client does not see the room as encrypted")

        sent = await alice.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": "a secret from alice"},
            ignore_unverified_devices=True,
        )
        check(isinstance(sent, RoomSendResponse), f"alice send: {sent}")
        first = await sync_until(bob, "alice's message", decrypted_text(bob, room_id, "a secret from alice"))

        answer = await bob.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": "a secret from bob"},
            ignore_unverified_devices=True,
        )
        check(isinstance(answer, RoomSendResponse), f"bob send: {answer}")
        second = await sync_until(alice, "bob's answer", decrypted_text(alice, room_id, "a secret from bob"))

        print(json.dumps({
            "room_id": room_id,
            "events": [sent.event_id, answer.event_id],
            "bodies": [first.body, second.body],
        }))
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))

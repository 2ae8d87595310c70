"""Two matrix-nio clients chat on a Unitas node (client-server API, part 1).

Usage: nio_chat.py BASE_URL

alice and bob register (m.login.dummy), alice creates a room and invites bob, bob joins (nio
sends an empty POST body), they exchange 100 messages, and both read them back in order through
/sync and through /messages. Prints a JSON line of facts; exits 1 on the first failure.
"""

import asyncio
import io
import json
import sys

from nio import (
    AsyncClient,
    DownloadResponse,
    UploadResponse,
    JoinResponse,
    LoginResponse,
    MessageDirection,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomMessageText,
    ReceiptEvent,
    RoomReadMarkersResponse,
    RoomSendResponse,
    RoomTypingResponse,
    SyncResponse,
    TypingNoticeEvent,
)


def check(condition, message):
    if not condition:
        raise SystemExit(message)


async def main(base):
    alice = AsyncClient(base, "alice")
    bob = AsyncClient(base, "bob")
    try:
        for client, name in ((alice, "alice"), (bob, "bob")):
            response = await client.register(name, f"{name}-password", f"{name}-device")
            check(isinstance(response, RegisterResponse), f"register {name}: {response}")
        # A fresh login works too.
        response = await AsyncClient(base, "alice").login("alice-password")
        check(isinstance(response, LoginResponse), f"login: {response}")

        created = await alice.room_create(name="nio chat", invite=[bob.user_id])
        check(isinstance(created, RoomCreateResponse), f"createRoom: {created}")
        room_id = created.room_id

        synced = await bob.sync(timeout=0)
        check(isinstance(synced, SyncResponse), f"bob sync: {synced}")
        check(room_id in synced.rooms.invite, f"bob sees no invite to {room_id}: {synced.rooms.invite}")
        joined = await bob.join(room_id)
        check(isinstance(joined, JoinResponse), f"join: {joined}")

        for i in range(100):
            sender = alice if i % 2 == 0 else bob
            sent = await sender.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"message {i}"})
            check(isinstance(sent, RoomSendResponse), f"send {i}: {sent}")

        expected = [f"message {i}" for i in range(100)]
        for client in (alice, bob):
            full = await client.sync(timeout=0, full_state=True, sync_filter={"room": {"timeline": {"limit": 200}}})
            check(isinstance(full, SyncResponse), f"{client.user_id} sync: {full}")
            timeline = full.rooms.join[room_id].timeline.events
            bodies = [e.body for e in timeline if isinstance(e, RoomMessageText)]
            check(bodies == expected, f"{client.user_id} sync order: {bodies[:5]}...")

            pages, bodies, token = 0, [], full.next_batch
            while token and pages < 20:
                page = await client.room_messages(room_id, start=token, direction=MessageDirection.back, limit=30)
                check(isinstance(page, RoomMessagesResponse), f"messages: {page}")
                bodies.extend(e.body for e in page.chunk if isinstance(e, RoomMessageText))
                token = page.end
                pages += 1
            check(list(reversed(bodies)) == expected, f"{client.user_id} /messages order: {bodies[:5]}...")

        # Incremental sync sees exactly what comes next.
        since = (await bob.sync(timeout=0)).next_batch
        await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "after"})
        later = await bob.sync(timeout=5000, since=since)
        bodies = [e.body for e in later.rooms.join[room_id].timeline.events if isinstance(e, RoomMessageText)]
        check(bodies == ["after"], f"incremental sync: {bodies}")
        # Typing and receipts reach the other client through sync.
        since = later.next_batch
        typed = await alice.room_typing(room_id, typing_state=True, timeout=30000)
        check(isinstance(typed, RoomTypingResponse), f"typing: {typed}")
        seen = await bob.sync(timeout=5000, since=since)
        typing = [e for e in seen.rooms.join[room_id].ephemeral if isinstance(e, TypingNoticeEvent)]
        check(typing and alice.user_id in typing[-1].users, f"bob sees no typing: {seen.rooms.join[room_id].ephemeral}")
        last_event = later.rooms.join[room_id].timeline.events[-1].event_id
        since = seen.next_batch
        marked = await bob.room_read_markers(room_id, fully_read_event=last_event, read_event=last_event)
        check(isinstance(marked, RoomReadMarkersResponse), f"read markers: {marked}")
        seen = await alice.sync(timeout=0, full_state=True)
        receipts = [
            r for e in seen.rooms.join[room_id].ephemeral if isinstance(e, ReceiptEvent) for r in e.receipts
        ]
        check(any(r.user_id == bob.user_id and r.event_id == last_event for r in receipts), f"alice sees no receipt: {receipts}")
        # Media: alice uploads, bob downloads the same bytes.
        data = bytes(range(256)) * 64
        uploaded, _ = await alice.upload(io.BytesIO(data), content_type="image/png", filename="pixels.png", filesize=len(data))
        check(isinstance(uploaded, UploadResponse), f"upload: {uploaded}")
        downloaded = await bob.download(mxc=uploaded.content_uri)
        check(isinstance(downloaded, DownloadResponse), f"download: {downloaded}")
        check(downloaded.body == data, "downloaded bytes differ")
        check(downloaded.content_type == "image/png", f"content type {downloaded.content_type}")
        print(json.dumps({"room_id": room_id, "messages": 101, "pages": pages, "typing": True, "receipts": True, "media": len(data)}))
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

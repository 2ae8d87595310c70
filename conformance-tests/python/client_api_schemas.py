"""Drive the client API through everyday use and validate every JSON response against the
Matrix spec's own OpenAPI schema for that path, method and status.

Usage: client_api_schemas.py SPEC_DIR BASE_URL

Prints one line per validated call; exits 1 listing every mismatch (schema or status).
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from jsonschema import Draft202012Validator

spec_dir, base = sys.argv[1], sys.argv[2].rstrip("/")
spec = json.load(open(f"{spec_dir}/client-server.json"))
failures, validated = [], []


def call(method, template, params=None, body=None, token=None, status=200, query=None, raw=None, content_type=None):
    params = params or {}
    path = template
    for name, value in params.items():
        path = path.replace("{" + name + "}", urllib.parse.quote(value, safe=""))
    url = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", content_type or "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            code, payload, ctype = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        code, payload, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    label = f"{method} {template} -> {code}"
    if code != status:
        failures.append(f"{label}: expected {status}: {payload[:300]!r}")
        return None
    operation = spec["paths"].get(template, {}).get(method.lower())
    if operation is None:
        failures.append(f"{label}: not in the spec's OpenAPI data")
        return None
    response_spec = operation["responses"].get(str(code), {})
    content = response_spec.get("content", {})
    if "application/json" not in content:
        validated.append(label + " (not JSON)")
        return payload
    document = json.loads(payload)
    schema = content["application/json"].get("schema", {})
    errors = list(Draft202012Validator(schema).iter_errors(document))
    for error in errors:
        failures.append(f"{label}: {'/'.join(map(str, error.path))}: {error.message}")
    if not errors:
        validated.append(label)
    return document


def main():
    c = "/_matrix/client/v3"
    call("GET", "/_matrix/client/versions")
    call("GET", f"{c}/login")
    call("GET", f"{c}/register/available", query={"username": "schema_alice"})
    call("POST", f"{c}/register", body={"username": "schema_alice", "password": "pw"}, status=401)
    alice = call("POST", f"{c}/register", body={"username": "schema_alice", "password": "pw", "auth": {"type": "m.login.dummy"}})
    bob = call("POST", f"{c}/register", body={"username": "schema_bob", "password": "pw", "auth": {"type": "m.login.dummy"}})
    a, b = alice["access_token"], bob["access_token"]
    ua, ub = alice["user_id"], bob["user_id"]
    login = call("POST", f"{c}/login", body={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "schema_alice"}, "password": "pw"})
    call("POST", f"{c}/logout", token=login["access_token"])
    call("GET", f"{c}/account/whoami", token=a)
    call("GET", f"{c}/capabilities", token=a)
    call("GET", f"{c}/devices", token=a)
    call("GET", f"{c}/devices/{{deviceId}}", {"deviceId": alice["device_id"]}, token=a)
    call("PUT", f"{c}/devices/{{deviceId}}", {"deviceId": alice["device_id"]}, body={"display_name": "laptop"}, token=a)
    call("PUT", f"{c}/profile/{{userId}}/{{keyName}}", {"userId": ua, "keyName": "displayname"}, body={"displayname": "Alice"}, token=a)
    call("GET", f"{c}/profile/{{userId}}", {"userId": ua}, token=a)
    dev = alice["device_id"]
    sig = {ua: {f"ed25519:{dev}": "c2ln"}}
    call("POST", f"{c}/keys/upload", body={
        "device_keys": {"user_id": ua, "device_id": dev, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                        "keys": {f"curve25519:{dev}": "Y3Vy", f"ed25519:{dev}": "ZWQ"}, "signatures": sig},
        "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "b3Rr", "signatures": sig}},
        "fallback_keys": {"signed_curve25519:AAAAAg": {"key": "ZmI", "fallback": True, "signatures": sig}}}, token=a)
    call("POST", f"{c}/keys/query", body={"device_keys": {ua: []}}, token=b)
    call("POST", f"{c}/keys/claim", body={"one_time_keys": {ua: {dev: "signed_curve25519"}}}, token=b)
    call("PUT", f"{c}/sendToDevice/{{eventType}}/{{txnId}}", {"eventType": "m.dummy", "txnId": "d1"}, body={"messages": {ua: {"*": {}}}}, token=b)
    call("POST", f"{c}/keys/upload", body={"device_keys": {"user_id": ua, "device_id": "OTHER", "algorithms": [], "keys": {}, "signatures": {}}}, token=a, status=400)
    filter_id = call("POST", f"{c}/user/{{userId}}/filter", {"userId": ua}, body={"room": {"timeline": {"limit": 5}}}, token=a)["filter_id"]
    call("GET", f"{c}/user/{{userId}}/filter/{{filterId}}", {"userId": ua, "filterId": filter_id}, token=a)

    room = call("POST", f"{c}/createRoom", body={"name": "Schemas", "topic": "t", "preset": "public_chat", "room_alias_name": "schemas", "visibility": "public", "invite": [ub]}, token=a)["room_id"]
    server = ua.split(":", 1)[1]
    alias = f"#schemas:{server}"
    # A creation the rules would stop half-way (the override takes the creator's power, so the
    # join rules event after it is refused) is refused whole: no room is left behind.
    rooms_before = call("GET", f"{c}/joined_rooms", token=a)
    call("POST", f"{c}/createRoom", body={"preset": "private_chat", "power_level_content_override": {"users": {ua: 0}, "state_default": 100}}, token=a, status=403)
    rooms_after = call("GET", f"{c}/joined_rooms", token=a)
    if rooms_before is not None and rooms_before != rooms_after:
        failures.append(f"a refused createRoom left a room behind: {rooms_before} -> {rooms_after}")
    call("GET", f"{c}/directory/room/{{roomAlias}}", {"roomAlias": alias})
    call("PUT", f"{c}/directory/room/{{roomAlias}}", {"roomAlias": f"#second:{server}"}, body={"room_id": room}, token=a)
    call("DELETE", f"{c}/directory/room/{{roomAlias}}", {"roomAlias": f"#second:{server}"}, token=a)
    call("GET", f"{c}/directory/list/room/{{roomId}}", {"roomId": room})
    call("PUT", f"{c}/directory/list/room/{{roomId}}", {"roomId": room}, body={"visibility": "public"}, token=a)
    call("GET", f"{c}/publicRooms")
    call("POST", f"{c}/publicRooms", body={"filter": {"generic_search_term": "schem"}, "limit": 10}, token=a)
    call("POST", f"{c}/join/{{roomIdOrAlias}}", {"roomIdOrAlias": alias}, body={}, token=b)
    call("GET", f"{c}/rooms/{{roomId}}/aliases", {"roomId": room}, token=a)
    event = call("PUT", f"{c}/rooms/{{roomId}}/send/{{eventType}}/{{txnId}}", {"roomId": room, "eventType": "m.room.message", "txnId": "t1"}, body={"msgtype": "m.text", "body": "hi"}, token=a)["event_id"]
    call("PUT", f"{c}/rooms/{{roomId}}/state/{{eventType}}/{{stateKey}}", {"roomId": room, "eventType": "m.room.topic", "stateKey": ""}, body={"topic": "new"}, token=a)
    call("GET", f"{c}/rooms/{{roomId}}/state/{{eventType}}/{{stateKey}}", {"roomId": room, "eventType": "m.room.topic", "stateKey": ""}, token=a)
    call("GET", f"{c}/rooms/{{roomId}}/state", {"roomId": room}, token=a)
    call("GET", f"{c}/rooms/{{roomId}}/event/{{eventId}}", {"roomId": room, "eventId": event}, token=a)
    call("GET", f"{c}/rooms/{{roomId}}/messages", {"roomId": room}, query={"dir": "b", "limit": "5"}, token=a)
    call("GET", f"{c}/rooms/{{roomId}}/context/{{eventId}}", {"roomId": room, "eventId": event}, query={"limit": "4"}, token=a)
    doomed = call("PUT", f"{c}/rooms/{{roomId}}/send/{{eventType}}/{{txnId}}", {"roomId": room, "eventType": "m.room.message", "txnId": "t2"}, body={"msgtype": "m.text", "body": "secret"}, token=a)["event_id"]
    call("PUT", f"{c}/rooms/{{roomId}}/redact/{{eventId}}/{{txnId}}", {"roomId": room, "eventId": doomed, "txnId": "r1"}, body={"reason": "oops"}, token=a)
    redacted = call("GET", f"{c}/rooms/{{roomId}}/event/{{eventId}}", {"roomId": room, "eventId": doomed}, token=a)
    if redacted is not None and redacted.get("content") != {}:
        failures.append(f"a redacted event still shows its content: {redacted}")
    call("GET", f"{c}/rooms/{{roomId}}/members", {"roomId": room}, token=a)
    call("GET", f"{c}/rooms/{{roomId}}/joined_members", {"roomId": room}, token=a)
    call("GET", f"{c}/joined_rooms", token=b)
    call("PUT", f"{c}/rooms/{{roomId}}/typing/{{userId}}", {"roomId": room, "userId": ub}, body={"typing": True, "timeout": 10000}, token=b)
    call("POST", f"{c}/rooms/{{roomId}}/receipt/{{receiptType}}/{{eventId}}", {"roomId": room, "receiptType": "m.read", "eventId": event}, body={}, token=b)
    call("POST", f"{c}/rooms/{{roomId}}/read_markers", {"roomId": room}, body={"m.fully_read": event, "m.read": event}, token=b)
    call("PUT", f"{c}/user/{{userId}}/account_data/{{type}}", {"userId": ub, "type": "org.example.settings"}, body={"theme": "dark"}, token=b)
    call("GET", f"{c}/user/{{userId}}/account_data/{{type}}", {"userId": ub, "type": "org.example.settings"}, token=b)
    call("PUT", f"{c}/user/{{userId}}/rooms/{{roomId}}/account_data/{{type}}", {"userId": ub, "roomId": room, "type": "org.example.room"}, body={"x": 1}, token=b)
    call("PUT", f"{c}/user/{{userId}}/rooms/{{roomId}}/tags/{{tag}}", {"userId": ub, "roomId": room, "tag": "m.favourite"}, body={"order": 0.5}, token=b)
    call("GET", f"{c}/user/{{userId}}/rooms/{{roomId}}/tags", {"userId": ub, "roomId": room}, token=b)
    call("DELETE", f"{c}/user/{{userId}}/rooms/{{roomId}}/tags/{{tag}}", {"userId": ub, "roomId": room, "tag": "m.favourite"}, token=b)
    call("PUT", f"{c}/presence/{{userId}}/status", {"userId": ub}, body={"presence": "unavailable", "status_msg": "in a meeting"}, token=b)
    status = call("GET", f"{c}/presence/{{userId}}/status", {"userId": ub}, token=a)
    if status is not None and (status.get("presence"), status.get("status_msg")) != ("unavailable", "in a meeting"):
        failures.append(f"presence as set is not what is read back: {status}")
    call("PUT", f"{c}/presence/{{userId}}/status", {"userId": ua}, body={"presence": "online"}, token=b, status=403)
    sync = call("GET", f"{c}/sync", token=b)
    if sync is not None and not any(e.get("sender") == ub for e in sync.get("presence", {}).get("events", [])):
        failures.append(f"an initial sync does not show the user's own presence: {sync.get('presence')}")
    call("GET", f"{c}/sync", query={"since": sync["next_batch"], "timeout": "0"}, token=b)
    call("GET", f"{c}/sync", query={"filter": filter_id, "full_state": "true"}, token=a)
    call("POST", f"{c}/user_directory/search", body={"search_term": "schema", "limit": 5}, token=a)
    upload = call("POST", "/_matrix/media/v3/upload", raw=b"hello media", content_type="text/plain", query={"filename": "hello.txt"}, token=a)
    media_id = upload["content_uri"].rsplit("/", 1)[1]
    call("GET", "/_matrix/client/v1/media/config", token=a)
    call("GET", "/_matrix/client/v1/media/download/{serverName}/{mediaId}", {"serverName": server, "mediaId": media_id}, token=a)
    call("GET", "/_matrix/media/v3/download/{serverName}/{mediaId}", {"serverName": server, "mediaId": media_id})
    # An image gets a real thumbnail: a PNG inside the asked box.
    import struct, zlib
    def png(width, height):
        rows = b"".join(b"\x00" + bytes((x * 7 + y) % 256 for x in range(width * 3)) for y in range(height))
        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    picture = call("POST", "/_matrix/media/v3/upload", raw=png(200, 100), content_type="image/png", query={"filename": "p.png"}, token=a)
    picture_id = picture["content_uri"].rsplit("/", 1)[1]
    small = call("GET", "/_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}", {"serverName": server, "mediaId": picture_id}, query={"width": "32", "height": "32", "method": "scale"}, token=a)
    if not small or small[:8] != b"\x89PNG\r\n\x1a\n":
        failures.append("thumbnail is not a PNG")
    else:
        width, height = struct.unpack(">II", small[16:24])
        if (width, height) != (32, 16):
            failures.append(f"thumbnail is {width}x{height}, expected 32x16")
    call("POST", f"{c}/rooms/{{roomId}}/kick", {"roomId": room}, body={"user_id": ub, "reason": "test"}, token=a)
    call("POST", f"{c}/rooms/{{roomId}}/ban", {"roomId": room}, body={"user_id": ub}, token=a)
    call("POST", f"{c}/rooms/{{roomId}}/unban", {"roomId": room}, body={"user_id": ub}, token=a)
    call("POST", f"{c}/rooms/{{roomId}}/invite", {"roomId": room}, body={"user_id": ub}, token=a)
    call("POST", f"{c}/rooms/{{roomId}}/join", {"roomId": room}, body={}, token=b)
    call("POST", f"{c}/rooms/{{roomId}}/leave", {"roomId": room}, body={}, token=b)
    call("POST", f"{c}/rooms/{{roomId}}/forget", {"roomId": room}, body={}, token=b)
    # Refresh tokens: a refreshable login, then one refresh.
    refreshable = call("POST", f"{c}/login", body={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "schema_bob"}, "password": "pw", "refresh_token": True})
    if refreshable and "refresh_token" in refreshable and "expires_in_ms" in refreshable:
        renewed = call("POST", f"{c}/refresh", body={"refresh_token": refreshable["refresh_token"]})
        call("GET", f"{c}/account/whoami", token=renewed["access_token"])
        call("POST", f"{c}/refresh", body={"refresh_token": refreshable["refresh_token"]}, status=401)
        # Deleting a device asks for the password first.
        call("DELETE", f"{c}/devices/{{deviceId}}", {"deviceId": refreshable["device_id"]}, body={}, token=b, status=401)
        auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": ub}, "password": "pw"}
        call("DELETE", f"{c}/devices/{{deviceId}}", {"deviceId": refreshable["device_id"]}, body={"auth": auth}, token=b)
        call("GET", f"{c}/account/whoami", token=renewed["access_token"], status=401)
    else:
        failures.append(f"refreshable login: {refreshable}")
    # Password change behind user-interactive auth.
    call("POST", f"{c}/account/password", body={"new_password": "pw2"}, token=b, status=401)
    wrong = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": ub}, "password": "nope"}
    call("POST", f"{c}/account/password", body={"new_password": "pw2", "auth": wrong}, token=b, status=403)
    right = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": ub}, "password": "pw"}
    call("POST", f"{c}/account/password", body={"new_password": "pw2", "auth": right, "logout_devices": False}, token=b)
    call("POST", f"{c}/login", body={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "schema_bob"}, "password": "pw2"})
    # Shared-secret registration as provisioning tools do it.
    import hashlib, hmac
    nonce = json.loads(urllib.request.urlopen(base + "/_synapse/admin/v1/register").read())["nonce"]
    mac = hmac.new(b"s3cret", b"\0".join([nonce.encode(), b"provisioned", b"pw", b"notadmin"]), hashlib.sha1).hexdigest()
    request = urllib.request.Request(base + "/_synapse/admin/v1/register", data=json.dumps({"nonce": nonce, "username": "provisioned", "password": "pw", "admin": False, "mac": mac}).encode(), method="POST")
    provisioned = json.loads(urllib.request.urlopen(request).read())
    if not provisioned.get("access_token"):
        failures.append(f"shared-secret registration: {provisioned}")
    call("GET", f"{c}/account/whoami", token=provisioned["access_token"])
    # Deactivation closes the account.
    auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": provisioned["user_id"]}, "password": "pw"}
    call("POST", f"{c}/account/deactivate", body={"auth": auth}, token=provisioned["access_token"])
    call("POST", f"{c}/login", body={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "provisioned"}, "password": "pw"}, status=403)
    # Knocking.
    knock_room = call("POST", f"{c}/createRoom", body={"preset": "private_chat", "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}, token=a)["room_id"]
    call("POST", f"{c}/knock/{{roomIdOrAlias}}", {"roomIdOrAlias": knock_room}, body={"reason": "let me in"}, token=b)
    # Unread counts (mentions highlight: the spec's .m.rule.is_user_mention) and lazy-loaded members.
    lazy_room = call("POST", f"{c}/createRoom", body={"preset": "public_chat"}, token=a)["room_id"]
    call("POST", f"{c}/join/{{roomIdOrAlias}}", {"roomIdOrAlias": lazy_room}, body={}, token=b)
    last = None
    for i in range(2):
        last = call("PUT", f"{c}/rooms/{{roomId}}/send/{{eventType}}/{{txnId}}", {"roomId": lazy_room, "eventType": "m.room.message", "txnId": f"u{i}"}, body={"msgtype": "m.text", "body": f"hey {ub}", "m.mentions": {"user_ids": [ub]}}, token=a)["event_id"]
    lazy = json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 1}}})
    # Counts hold up to the position the push rules had seen (the token's last part): asked
    # again until that covers the messages.
    for _ in range(1000):
        synced = call("GET", f"{c}/sync", query={"filter": lazy}, token=b)
        stream, _, counted = synced["next_batch"][1:].split("_")
        if int(counted) >= int(stream):
            break
    room_view = synced["rooms"]["join"][lazy_room]
    counts = room_view["unread_notifications"]
    if counts != {"notification_count": 2, "highlight_count": 2}:
        failures.append(f"unread counts before reading: {counts}")
    members = sorted(e["state_key"] for e in room_view["state"]["events"] if e["type"] == "m.room.member")
    if members != sorted({ua, ub}):
        failures.append(f"lazy-loaded members: {members}")
    call("POST", f"{c}/rooms/{{roomId}}/receipt/{{receiptType}}/{{eventId}}", {"roomId": lazy_room, "receiptType": "m.read", "eventId": last}, body={}, token=b)
    counts = call("GET", f"{c}/sync", query={"filter": lazy}, token=b)["rooms"]["join"][lazy_room]["unread_notifications"]
    if counts.get("notification_count") != 0:
        failures.append(f"unread counts after reading: {counts}")
    # Server-side key backup: versions, keys at three levels, the better key kept, writes to
    # an old version refused, deletes.
    algorithm = "m.megolm_backup.v1.curve25519-aes-sha2"
    auth_data = {"public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo", "signatures": {}}
    call("GET", f"{c}/room_keys/version", token=a, status=404)
    version = call("POST", f"{c}/room_keys/version", body={"algorithm": algorithm, "auth_data": auth_data}, token=a)["version"]
    def backup_key(index, verified):
        return {"first_message_index": index, "forwarded_count": 0, "is_verified": verified,
                "session_data": {"ephemeral": "base64+ephemeral", "ciphertext": "base64+ciphertext", "mac": "base64+mac"}}
    call("PUT", f"{c}/room_keys/keys", query={"version": version}, body={"rooms": {room: {"sessions": {"s1": backup_key(3, False)}}}}, token=a)
    call("PUT", f"{c}/room_keys/keys/{{roomId}}", {"roomId": room}, query={"version": version}, body={"sessions": {"s2": backup_key(0, True)}}, token=a)
    put = call("PUT", f"{c}/room_keys/keys/{{roomId}}/{{sessionId}}", {"roomId": room, "sessionId": "s1"}, query={"version": version}, body=backup_key(1, False), token=a)
    info = call("GET", f"{c}/room_keys/version", token=a)
    if info is not None and (info.get("count"), info.get("version"), info.get("etag")) != (2, version, put.get("etag")):
        failures.append(f"backup info after three puts: {info} (last put {put})")
    call("GET", f"{c}/room_keys/version/{{version}}", {"version": version}, token=a)
    call("PUT", f"{c}/room_keys/version/{{version}}", {"version": version}, body={"algorithm": algorithm, "auth_data": auth_data, "version": version}, token=a)
    everything = call("GET", f"{c}/room_keys/keys", query={"version": version}, token=a)
    call("GET", f"{c}/room_keys/keys/{{roomId}}", {"roomId": room}, query={"version": version}, token=a)
    one = call("GET", f"{c}/room_keys/keys/{{roomId}}/{{sessionId}}", {"roomId": room, "sessionId": "s1"}, query={"version": version}, token=a)
    if one is not None and one.get("first_message_index") != 1:
        failures.append(f"the better backup key was not kept: {one}")
    if everything is not None and sorted(everything.get("rooms", {}).get(room, {}).get("sessions", {})) != ["s1", "s2"]:
        failures.append(f"backup keys: {everything}")
    call("GET", f"{c}/room_keys/keys/{{roomId}}/{{sessionId}}", {"roomId": room, "sessionId": "nope"}, query={"version": version}, token=a, status=404)
    newer = call("POST", f"{c}/room_keys/version", body={"algorithm": algorithm, "auth_data": auth_data}, token=a)["version"]
    wrong = call("PUT", f"{c}/room_keys/keys", query={"version": version}, body={"rooms": {}}, token=a, status=403)
    if wrong is not None and (wrong.get("errcode"), wrong.get("current_version")) != ("M_WRONG_ROOM_KEYS_VERSION", newer):
        failures.append(f"a write to an old backup version: {wrong}")
    call("DELETE", f"{c}/room_keys/keys/{{roomId}}/{{sessionId}}", {"roomId": room, "sessionId": "s1"}, query={"version": version}, token=a)
    call("DELETE", f"{c}/room_keys/keys/{{roomId}}", {"roomId": room}, query={"version": version}, token=a)
    call("DELETE", f"{c}/room_keys/keys", query={"version": version}, token=a)
    call("DELETE", f"{c}/room_keys/version/{{version}}", {"version": newer}, token=a)
    call("GET", f"{c}/room_keys/version/{{version}}", {"version": newer}, token=a, status=404)
    # Cross-signing keys and signatures, key changes between two sync tokens.
    first = call("GET", f"{c}/sync", query={"timeout": "0"}, token=a)["next_batch"]
    master_public = "bWFzdGVyIGtleSBvZiB0aGUgc2NoZW1hIHVzZXIgMTIzNDU"
    call("POST", f"{c}/keys/device_signing/upload", body={"master_key": {"user_id": ua, "usage": ["master"], "keys": {f"ed25519:{master_public}": master_public}}}, token=a)
    call("POST", f"{c}/keys/signatures/upload", body={ua: {master_public: {"user_id": ua, "usage": ["master"], "keys": {f"ed25519:{master_public}": master_public}, "signatures": {ua: {"ed25519:NOPE": "AAAA"}}}}}, token=a)
    queried = call("POST", f"{c}/keys/query", body={"device_keys": {ua: []}}, token=b)
    if queried is not None and ua not in queried.get("master_keys", {}):
        failures.append(f"the master key is not in /keys/query: {queried}")
    second = call("GET", f"{c}/sync", query={"timeout": "0"}, token=a)["next_batch"]
    call("GET", f"{c}/keys/changes", query={"from": first, "to": second}, token=a)
    # Search.
    found = call("POST", f"{c}/search", body={"search_categories": {"room_events": {"search_term": "hey", "order_by": "recent", "filter": {"limit": 2}}}}, token=a)
    if found is not None and found["search_categories"]["room_events"].get("count", 0) < 1:
        failures.append(f"search found nothing: {found}")
    # Relations and threads.
    v1 = "/_matrix/client/v1"
    root = call("PUT", f"{c}/rooms/{{roomId}}/send/{{eventType}}/{{txnId}}", {"roomId": room, "eventType": "m.room.message", "txnId": "root"}, body={"msgtype": "m.text", "body": "thread root"}, token=a)["event_id"]
    call("PUT", f"{c}/rooms/{{roomId}}/send/{{eventType}}/{{txnId}}", {"roomId": room, "eventType": "m.room.message", "txnId": "in-thread"}, body={"msgtype": "m.text", "body": "in the thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}, token=a)
    call("PUT", f"{c}/rooms/{{roomId}}/send/{{eventType}}/{{txnId}}", {"roomId": room, "eventType": "m.reaction", "txnId": "react"}, body={"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "x"}}, token=a)
    call("GET", f"{v1}/rooms/{{roomId}}/relations/{{eventId}}", {"roomId": room, "eventId": root}, token=a)
    call("GET", f"{v1}/rooms/{{roomId}}/relations/{{eventId}}/{{relType}}", {"roomId": room, "eventId": root, "relType": "m.thread"}, token=a)
    call("GET", f"{v1}/rooms/{{roomId}}/relations/{{eventId}}/{{relType}}/{{eventType}}", {"roomId": room, "eventId": root, "relType": "m.annotation", "eventType": "m.reaction"}, token=a)
    threads = call("GET", f"{v1}/rooms/{{roomId}}/threads", {"roomId": room}, token=a)
    if threads is not None and [e["event_id"] for e in threads.get("chunk", [])] != [root]:
        failures.append(f"threads: {threads}")
    # A space and its hierarchy.
    space = call("POST", f"{c}/createRoom", body={"preset": "public_chat", "name": "A space", "creation_content": {"type": "m.space"}}, token=a)["room_id"]
    call("PUT", f"{c}/rooms/{{roomId}}/state/{{eventType}}/{{stateKey}}", {"roomId": space, "eventType": "m.space.child", "stateKey": room}, body={"via": [server]}, token=a)
    tree = call("GET", "/_matrix/client/v1/rooms/{roomId}/hierarchy", {"roomId": space}, token=a)
    if tree is not None and [r["room_id"] for r in tree.get("rooms", [])] != [space, room]:
        failures.append(f"hierarchy: {tree}")
    # Push rules: the defaults, a rule of the user's own, enabled and actions, deletion.
    rules = call("GET", f"{c}/pushrules/", token=a)
    if rules is not None and not any(r.get("rule_id") == ".m.rule.master" for r in rules["global"].get("override", [])):
        failures.append(f"the default push rules lack .m.rule.master: {rules}")
    call("GET", f"{c}/pushrules/global/", token=a)
    call("PUT", f"{c}/user/{{userId}}/account_data/{{type}}", {"userId": ua, "type": "m.push_rules"}, body={"global": {}}, token=a, status=405)
    p = f"{c}/pushrules/global/{{kind}}/{{ruleId}}"
    call("PUT", p, {"kind": "content", "ruleId": "cats"}, body={"pattern": "cat", "actions": ["notify"]}, token=a)
    call("GET", p, {"kind": "content", "ruleId": "cats"}, token=a)
    call("PUT", p + "/enabled", {"kind": "content", "ruleId": "cats"}, body={"enabled": False}, token=a)
    enabled = call("GET", p + "/enabled", {"kind": "content", "ruleId": "cats"}, token=a)
    if enabled is not None and enabled.get("enabled") is not False:
        failures.append(f"a disabled push rule reads back enabled: {enabled}")
    call("PUT", p + "/actions", {"kind": "content", "ruleId": "cats"}, body={"actions": ["notify", {"set_tweak": "highlight"}]}, token=a)
    call("GET", p + "/actions", {"kind": "content", "ruleId": "cats"}, token=a)
    call("DELETE", p, {"kind": "content", "ruleId": "cats"}, token=a)
    call("GET", p, {"kind": "content", "ruleId": "cats"}, token=a, status=404)
    call("PUT", p + "/enabled", {"kind": "override", "ruleId": ".m.rule.master"}, body={"enabled": False}, token=a)
    initial = call("GET", f"{c}/sync", token=a)
    if initial is not None and not any(e["type"] == "m.push_rules" for e in initial.get("account_data", {}).get("events", [])):
        failures.append("an initial sync has no m.push_rules account data")
    # Notifications and pushers (a gateway name that resolves nowhere: nothing is delivered).
    notes = call("GET", f"{c}/notifications", token=b, query={"limit": "5"})
    if notes is not None and not notes.get("notifications"):
        failures.append(f"b has no notifications after a's messages: {notes}")
    pusher = {"kind": "http", "app_id": "org.example.app", "pushkey": "k1", "app_display_name": "App",
              "device_display_name": "Phone", "lang": "en",
              "data": {"url": "https://push.invalid/_matrix/push/v1/notify", "format": "event_id_only"}}
    call("POST", f"{c}/pushers/set", body=pusher, token=b)
    listed = call("GET", f"{c}/pushers", token=b)
    if listed is not None and [p["pushkey"] for p in listed.get("pushers", [])] != ["k1"]:
        failures.append(f"pushers: {listed}")
    call("POST", f"{c}/pushers/set", body={**pusher, "data": {"url": "http://push.invalid/x"}}, token=b, status=400)
    call("POST", f"{c}/pushers/set", body={"kind": None, "app_id": "org.example.app", "pushkey": "k1"}, token=b)
    # Calls and reports.
    turn = call("GET", f"{c}/voip/turnServer", token=a)
    if turn is not None and not turn.get("username", "").endswith(ua):
        failures.append(f"TURN credentials: {turn}")
    call("POST", f"{c}/rooms/{{roomId}}/report/{{eventId}}", {"roomId": room, "eventId": event}, body={"reason": "spam"}, token=b)
    call("POST", f"{c}/rooms/{{roomId}}/report/{{eventId}}", {"roomId": room, "eventId": "$unknown"}, body={"reason": "spam"}, token=b, status=404)
    call("POST", f"{c}/rooms/{{roomId}}/report", {"roomId": room}, body={"reason": "the whole room"}, token=b)
    call("POST", f"{c}/users/{{userId}}/report", {"userId": ua}, body={"reason": "rude"}, token=b)
    # Registration tokens.
    call("GET", "/_matrix/client/v1/register/m.login.registration_token/validity", query={"token": "letmein"})
    call("POST", f"{c}/register", body={"username": "tokened", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "wrong"}}, status=401)
    call("POST", f"{c}/register", body={"username": "tokened", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "letmein"}})
    # Errors are Matrix errors.
    call("GET", f"{c}/account/whoami", token="nonsense", status=401)
    call("GET", f"{c}/account/whoami", status=401)
    call("POST", f"{c}/logout/all", token=a)
    for line in validated:
        print("valid:", line)
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


main()

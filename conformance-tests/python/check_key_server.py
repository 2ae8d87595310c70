"""Verify a Unitas node's key server document with an independent implementation.

Usage: check_key_server.py FEDERATION_URL [HOST]

Fetches FEDERATION_URL/_matrix/key/v2/server (self-signed TLS accepted, as a test network
would), then checks with PyPI `signedjson` (the library Synapse uses) that the document is
signed by the key it publishes under its own server name, and with `canonicaljson` that the
signed bytes are the spec's canonical JSON. Prints one JSON line of facts; exits 1 on failure.
"""

import json
import ssl
import sys
import time
import urllib.request

import canonicaljson
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64


def fetch(url, host=None):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url)
    if host:
        request.add_header("Host", host)
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        return json.loads(response.read())


def main():
    base = sys.argv[1].rstrip("/")
    host = sys.argv[2] if len(sys.argv) > 2 else None
    doc = fetch(base + "/_matrix/key/v2/server", host)
    server_name = doc["server_name"]
    if not doc.get("verify_keys"):
        raise SystemExit("no verify_keys")
    if doc["valid_until_ts"] <= int(time.time() * 1000):
        raise SystemExit("valid_until_ts is in the past")
    verified = []
    for key_id, key in doc["verify_keys"].items():
        algorithm, version = key_id.split(":", 1)
        if algorithm != "ed25519":
            raise SystemExit(f"unexpected algorithm {algorithm}")
        verify_key = decode_verify_key_bytes(key_id, decode_base64(key["key"]))
        try:
            verify_signed_json(doc, server_name, verify_key)
        except SignatureVerifyException as e:
            raise SystemExit(f"signature by {key_id} does not verify: {e}")
        verified.append(key_id)
    # Tampering must break it (the check above could not pass by accident).
    tampered = dict(doc, valid_until_ts=doc["valid_until_ts"] + 1)
    key_id = verified[0]
    verify_key = decode_verify_key_bytes(key_id, decode_base64(doc["verify_keys"][key_id]["key"]))
    try:
        verify_signed_json(tampered, server_name, verify_key)
        raise SystemExit("a tampered document still verified")
    except SignatureVerifyException:
        pass
    unsigned = {k: v for k, v in doc.items() if k not in ("signatures", "unsigned")}
    canonical = canonicaljson.encode_canonical_json(unsigned).decode()
    print(json.dumps({"server_name": server_name, "verified": verified, "canonical_bytes": len(canonical)}))


if __name__ == "__main__":
    main()

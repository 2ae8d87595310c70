"""Validate live responses of a node against the Matrix spec's OpenAPI schemas.

Usage: validate_responses.py SPEC_DIR CASES_JSON

CASES_JSON is a list of {"api": "client-server"|"server-server", "path": <OpenAPI path>,
"method": "get", "status": 200, "url": <live URL>, "host": <optional Host header>}. Each live
response must have the expected status and match the response schema of that path, method and
status in SPEC_DIR/<api>.json (JSON Schema 2020-12, as OpenAPI 3.1 uses). Exits 1 listing every
mismatch; prints one line per validated case otherwise.
"""

import json
import ssl
import sys
import urllib.error
import urllib.request

from jsonschema import Draft202012Validator


def fetch(url, host, method):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, method=method.upper())
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def main():
    spec_dir, cases = sys.argv[1], json.loads(sys.argv[2])
    specs = {}
    failures = []
    for case in cases:
        api = case["api"]
        if api not in specs:
            with open(f"{spec_dir}/{api}.json") as f:
                specs[api] = json.load(f)
        operation = specs[api]["paths"][case["path"]][case["method"]]
        response_spec = operation["responses"][str(case["status"])]
        schema = response_spec["content"]["application/json"]["schema"]
        status, body = fetch(case["url"], case.get("host"), case["method"])
        label = f'{case["method"].upper()} {case["path"]}'
        if status != case["status"]:
            failures.append(f"{label}: status {status}, expected {case['status']}: {body}")
            continue
        errors = sorted(Draft202012Validator(schema).iter_errors(body), key=lambda e: list(e.path))
        for error in errors:
            failures.append(f"{label}: {'/'.join(map(str, error.path))}: {error.message}")
        if not errors:
            print(f"valid: {label} {status}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

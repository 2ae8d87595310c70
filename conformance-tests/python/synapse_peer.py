"""Runs a Synapse homeserver from PyPI as a federation peer on 127.0.0.1 for the tests.

Usage: synapse_peer.py DIR PORT [--plain]

Writes a self-signed TLS certificate, a config and a signing key into DIR, then replaces this
process with Synapse. One HTTPS listener on PORT serves the client and federation APIs (plain
HTTP with --plain: what the client load run of scripts/bench-client talks to). The
config lets Synapse call loopback peers with self-signed certificates (test networks only),
opens registration and raises the rate limits so the tests measure federation, not limits.
"""

import datetime
import ipaddress
import os
import secrets
import sys

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_certificate(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "tls.crt")
    key_path = os.path.join(directory, "tls.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def main():
    directory, port = sys.argv[1], int(sys.argv[2])
    plain = "--plain" in sys.argv[3:]
    cert, key = write_certificate(directory)
    fast = {"per_second": 10000, "burst_count": 10000}
    config = {
        "server_name": f"127.0.0.1:{port}",
        "pid_file": os.path.join(directory, "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": not plain,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation", "keys"], "compress": False}],
            }
        ],
        "tls_certificate_path": cert,
        "tls_private_key_path": key,
        "database": {
            "name": "sqlite3",
            "args": {"database": os.path.join(directory, "homeserver.db")},
        },
        "media_store_path": os.path.join(directory, "media"),
        "signing_key_path": os.path.join(directory, "signing.key"),
        "report_stats": False,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "registration_shared_secret": secrets.token_hex(16),
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_verify_certificates": False,
        # IP-literal server names are checked against the block list alone: empty it.
        "ip_range_blacklist": [],
        "ip_range_whitelist": ["127.0.0.0/8"],
        "presence": {"enabled": False},
        "rc_message": fast,
        "rc_registration": fast,
        "rc_login": {"address": fast, "account": fast, "failed_attempts": fast},
        "rc_joins": {"local": fast, "remote": fast},
        "rc_joins_per_room": fast,
        "rc_invites": {"per_room": fast, "per_user": fast, "per_issuer": fast},
        "rc_federation": {
            "window_size": 1000,
            "sleep_limit": 10000,
            "sleep_delay": 1,
            "reject_limit": 10000,
            "concurrent": 100,
        },
        "federation_rr_transactions_per_room_per_second": 1000,
    }
    path = os.path.join(directory, "homeserver.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    args = [sys.executable, "-m", "synapse.app.homeserver", "-c", path]
    # Writes the signing key, then exits.
    pid = os.fork()
    if pid == 0:
        os.execv(sys.executable, args + ["--generate-keys"])
    _, status = os.waitpid(pid, 0)
    if status != 0:
        sys.exit("synapse --generate-keys failed")
    os.execv(sys.executable, args)


if __name__ == "__main__":
    main()

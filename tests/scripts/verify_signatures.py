"""Verifies captured wasmhook deliveries with other people's code: the
Standard Webhooks reference library (PyPI `standardwebhooks`) for `v1`,
`cryptography`'s ed25519 for `v1a` (the library has no asymmetric support),
and Python's hmac for Chatwoot's scheme. Reads a JSON list of
{"kind", "key", "headers", "body_b64"}; prints one line per check; exits 1
on the first failure.

    python verify_signatures.py captured.json
"""

import base64
import hashlib
import hmac
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook


def fail(message):
    print("FAIL", message)
    sys.exit(1)


for case in json.load(open(sys.argv[1])):
    kind, key, headers = case["kind"], case["key"], case["headers"]
    body = base64.b64decode(case["body_b64"])
    if kind == "v1":
        # The library, with the secret as given and without its prefix.
        for secret in (key, key.removeprefix("whsec_")):
            Webhook(secret).verify(body, headers)
        # A changed body must fail.
        try:
            Webhook(key).verify(body + b" ", headers)
            fail("v1: a changed body verified")
        except Exception:
            pass
        print("ok v1")
    elif kind == "v1a":
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.removeprefix("whpk_")))
        content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        found = [s for s in headers["webhook-signature"].split(" ") if s.startswith("v1a,")]
        if not found:
            fail("v1a: no v1a signature in " + headers["webhook-signature"])
        verified = 0
        for sig in found:
            try:
                public.verify(base64.b64decode(sig[4:]), content)
                verified += 1
            except InvalidSignature:
                pass
        if verified == 0:
            fail("v1a: no signature verifies with " + key)
        try:
            public.verify(base64.b64decode(found[0][4:]), content + b" ")
            fail("v1a: a changed body verified")
        except InvalidSignature:
            pass
        print("ok v1a")
    elif kind == "chatwoot":
        ts = headers["x-chatwoot-timestamp"]
        expected = "sha256=" + hmac.new(key.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers["x-chatwoot-signature"]):
            fail("chatwoot: " + headers["x-chatwoot-signature"] + " != " + expected)
        if not headers.get("x-chatwoot-delivery"):
            fail("chatwoot: no X-Chatwoot-Delivery")
        print("ok chatwoot")
    else:
        fail("unknown kind " + kind)

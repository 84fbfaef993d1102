"""Producing signed invalidation requests (for the CLI, producers and tests).

>>> secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
>>> headers, body = signed_request(secret, [{"type": "flush"}])
>>> sorted(headers)
['content-type', 'webhook-id', 'webhook-signature', 'webhook-timestamp']
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sessionmw.hook import secret_key


def new_secret() -> str:
    """A fresh Standard Webhooks secret (``whsec_`` + base64 of 32 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of a body: HMAC-SHA256 over
    ``"{id}.{timestamp}."`` and the raw body bytes, as Standard Webhooks defines it
    (any bytes: the signature does not depend on the body being text)."""
    prefix = f"{msg_id}.{int(timestamp)}.".encode()
    digest = hmac.new(secret_key(secret), prefix + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_request(
    secret: str,
    events: Sequence[Mapping[str, Any]],
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a hook call carrying ``events``."""
    body = json.dumps({"events": list(events)}, separators=(",", ":")).encode()
    msg_id = msg_id or "msg_" + secrets.token_hex(12)
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    return headers, body

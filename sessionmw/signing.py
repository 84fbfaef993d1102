"""Producing signed invalidation requests (for the CLI, producers and tests).

Two kinds of keys, as Standard Webhooks defines them:

* a shared ``whsec_`` secret (base64 of random bytes) signs ``v1`` entries,
  HMAC-SHA256; the app holds the same secret in ``invalidation_secret``;
* a ``whsk_`` signing key (base64 of a 32-byte ed25519 seed) signs ``v1a`` entries,
  ed25519; the app holds only its ``whpk_`` public key in
  ``invalidation_public_key``, so the app can check events but never forge them.

Both sign the same bytes, ``"{id}.{timestamp}."`` followed by the raw body.
ed25519 needs the ``cryptography`` package.

>>> secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
>>> headers, body = signed_request(secret, [{"type": "flush"}])
>>> sorted(headers)
['content-type', 'webhook-id', 'webhook-signature', 'webhook-timestamp']

Run ``python -m sessionmw.signing`` to print a new key pair: the ``whsk_`` signing
key on the first line, its ``whpk_`` public key on the second.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sessionmw.hook import secret_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "new_key_pair",
    "new_secret",
    "public_key_of",
    "sign",
    "sign_v1a",
    "signed_request",
]

_SEED_BYTES = 32


def new_secret() -> str:
    """A fresh Standard Webhooks secret (``whsec_`` + base64 of 32 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _ed25519_private_key() -> type[Ed25519PrivateKey]:
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        raise ImportError(
            "v1a (ed25519) signatures need the 'cryptography' package: pip install cryptography"
        ) from None
    return Ed25519PrivateKey


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _private_key(signing_key: str) -> Ed25519PrivateKey:
    """The ed25519 key of a ``whsk_`` signing key: base64 of the 32-byte seed (what
    the Standard Webhooks libraries write), or of the 64-byte libsodium form (seed
    followed by the public key, which must then match)."""
    body = signing_key.removeprefix("whsk_")
    problem = "a signing key must be 'whsk_' + base64 of a 32-byte ed25519 seed"
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(problem) from None
    if len(raw) not in (_SEED_BYTES, 2 * _SEED_BYTES):
        raise ValueError(f"{problem}, got {len(raw)} bytes")
    key = _ed25519_private_key().from_private_bytes(raw[:_SEED_BYTES])
    if len(raw) > _SEED_BYTES and not hmac.compare_digest(raw[_SEED_BYTES:], _raw_public(key)):
        raise ValueError("a 64-byte signing key must end with the public key of its seed")
    return key


def new_key_pair() -> tuple[str, str]:
    """A fresh ed25519 key pair: ``(whsk_ signing key, whpk_ public key)``.

    Give the signing key to the producer only; configure the public key as
    ``invalidation_public_key``.
    """
    key = _ed25519_private_key().generate()
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return (
        "whsk_" + base64.b64encode(seed).decode(),
        "whpk_" + base64.b64encode(_raw_public(key)).decode(),
    )


def public_key_of(signing_key: str) -> str:
    """The ``whpk_`` public key that checks what ``signing_key`` (``whsk_``) signs."""
    return "whpk_" + base64.b64encode(_raw_public(_private_key(signing_key))).decode()


def sign_v1a(signing_key: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1a,<base64>`` signature entry of a body: ed25519 over
    ``"{id}.{timestamp}."`` and the raw body bytes, by a ``whsk_`` signing key."""
    prefix = f"{msg_id}.{int(timestamp)}.".encode()
    signature = _private_key(signing_key).sign(prefix + body)
    return "v1a," + base64.b64encode(signature).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` entry of a body, as Standard Webhooks defines it (any
    bytes: the signature does not depend on the body being text).

    A ``whsk_`` signing key gives a ``v1a,`` entry (see :func:`sign_v1a`); anything
    else is taken as a ``whsec_`` secret and gives ``v1,`` + base64 HMAC-SHA256 over
    ``"{id}.{timestamp}."`` and the raw body bytes.
    """
    if secret.startswith("whsk_"):
        return sign_v1a(secret, msg_id, timestamp, body)
    prefix = f"{msg_id}.{int(timestamp)}.".encode()
    digest = hmac.new(secret_key(secret), prefix + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_request(
    secret: str | Sequence[str],
    events: Sequence[Mapping[str, Any]],
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a hook call carrying ``events``.

    ``secret`` is a ``whsec_`` secret, a ``whsk_`` signing key, or several of either
    (during a rotation): each adds its entry to ``webhook-signature``, space-separated.
    """
    keys = [secret] if isinstance(secret, str) else list(secret)
    if not keys:
        raise ValueError("signed_request needs at least one secret or signing key")
    body = json.dumps({"events": list(events)}, separators=(",", ":")).encode()
    msg_id = msg_id or "msg_" + secrets.token_hex(12)
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(key, msg_id, timestamp, body) for key in keys),
    }
    return headers, body


def _main() -> None:
    signing_key, public = new_key_pair()
    print(signing_key)
    print(public)
    print(
        "line 1: the signing key (whsk_), for the producer only, keep it secret; "
        "line 2: its public key (whpk_), for the app's invalidation_public_key",
        file=sys.stderr,
    )


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess
    _main()

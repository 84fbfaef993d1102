"""Asymmetric Standard Webhooks signatures on the hook (SPEC sections 4 and 8):
``v1a,<base64 ed25519 signature>`` over ``{id}.{timestamp}.{body}``, checked against
every ``invalidation_public_key`` (``whpk_``), produced with a ``whsk_`` signing key.

The format is pinned to the specification, not only to our own signer: the
reference Go library's test vector, signatures made with ``cryptography`` directly
and with the ``openssl`` command line all verify. Then every adapter serves a hook
that holds only a public key, and ``sessionmw revoke --signing-key`` revokes a
session on a real server.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.test import AsyncClient, Client, override_settings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from examples import flask_app, wsgi_app
from examples.starlette_app import healthz, whoami
from sessionmw import ConfigError, Settings
from sessionmw.asgi import DeviceSessionMiddleware, invalidation_route
from sessionmw.backends.sql import SQLBackend
from sessionmw.cli import main
from sessionmw.events import Event
from sessionmw.gate import Gate
from sessionmw.hook import InvalidationHook, public_key
from sessionmw.records import SessionRecord, SessionStatus
from sessionmw.replay import LocalReplayGuard, ReplayGuard
from sessionmw.signing import (
    new_key_pair,
    new_secret,
    public_key_of,
    sign,
    sign_v1a,
    signed_request,
)
from tests import django_settings, hook_cases
from tests.hook_cases import HOOK_PATH, INVALID_SIGNATURE, SECRET, decode
from tests.servers import BIN, clean_env, free_port, running, uvicorn
from tests.spec_cases import HEADER, VALID, VALID_NO_EXPIRY

django_settings.setup()
webtest = django_settings.import_webtest()

pytestmark = pytest.mark.usefixtures("fresh_gates")

SIGNING_KEY, PUBLIC_KEY = new_key_pair()
#: The key being rotated out: the app trusts both public keys.
OLD_SIGNING_KEY, OLD_PUBLIC_KEY = new_key_pair()
STRANGER_KEY, STRANGER_PUBLIC_KEY = new_key_pair()
NOW = 1_800_000_000
FLUSH = [{"type": "flush"}]

#: The Standard Webhooks reference Go library's asymmetric signing test vector
#: (libraries/go/webhook_asymmetric_test.go, TestAsymmetricWebhookSign).
SPEC_KEY = "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = (
    "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag=="
)


# -- the hook, framework-free --------------------------------------------------------------


class Bus:
    """The local bus's part the hook needs: a replay guard; publishing does nothing."""

    def __init__(self) -> None:
        self.guard = LocalReplayGuard()

    @property
    def replay_guard(self) -> ReplayGuard:
        return self.guard

    def publish(self, events: Sequence[Event]) -> None:
        pass

    async def apublish(self, events: Sequence[Event]) -> None:
        pass


def make_hook(
    secrets: Sequence[str] = (), public_keys: Sequence[str] = (PUBLIC_KEY,), now: float = NOW
) -> tuple[InvalidationHook, list[list[Event]]]:
    applied: list[list[Event]] = []
    hook = InvalidationHook(
        secrets,
        public_keys=public_keys,
        apply=lambda events: applied.append(list(events)),
        bus=Bus(),
        clock=lambda: now,
    )
    return hook, applied


def answer(hook: InvalidationHook, headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
    result = hook.handle(headers, body)
    return result.status, json.loads(result.body)


def request(keys: str | Sequence[str] = SIGNING_KEY, **kw: Any) -> tuple[dict[str, str], bytes]:
    kw.setdefault("timestamp", NOW)
    return signed_request(keys, FLUSH, **kw)


def raw_public(key: Ed25519PrivateKey) -> str:
    return (
        "whpk_"
        + base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    )


def test_reference_test_vector() -> None:
    """Our signer reproduces the reference library's v1a signature byte for byte, and
    the hook accepts that signature with the matching whpk_ key."""
    assert sign_v1a(SPEC_KEY, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    assert sign(SPEC_KEY, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    # The Go library also takes the key without its prefix.
    assert sign_v1a(SPEC_KEY.removeprefix("whsk_"), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == (
        SPEC_SIGNATURE
    )
    hook, _ = make_hook(public_keys=[public_key_of(SPEC_KEY)], now=SPEC_TIMESTAMP + 10)
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": SPEC_SIGNATURE,
    }
    # Verified, then refused as a payload (that body is no event batch): not a 401.
    assert hook.handle(headers, SPEC_BODY).status == 400


def test_signatures_from_cryptography_directly() -> None:
    """A producer that uses ``cryptography`` itself (no sessionmw): raw 32-byte key,
    ed25519 over the documented bytes. And the other way: what our signer makes
    verifies with the bare public key."""
    producer = Ed25519PrivateKey.generate()
    body = json.dumps({"events": FLUSH}).encode()  # not our serialisation: spaces
    signature = producer.sign(f"msg_direct.{NOW}.".encode() + body)
    headers = {
        "webhook-id": "msg_direct",
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1a," + base64.b64encode(signature).decode(),
    }
    hook, applied = make_hook(public_keys=[raw_public(producer)])
    assert answer(hook, headers, body) == (200, {"applied": 1})
    assert len(applied) == 1

    headers, body = request(msg_id="msg_ours")
    version, _, encoded = headers["webhook-signature"].partition(",")
    assert version == "v1a"
    raw = base64.b64decode(PUBLIC_KEY.removeprefix("whpk_"))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(raw).verify(
        base64.b64decode(encoded), f"msg_ours.{NOW}.".encode() + body
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
def test_signature_from_the_openssl_command(tmp_path: Path) -> None:
    """A shell producer: a key made and used by ``openssl`` (PEM, DER public key)."""
    key = tmp_path / "key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    whpk = "whpk_" + base64.b64encode(der[-32:]).decode()  # the raw key ends the DER
    body = b'{"events":[{"type":"flush"}]}'
    message = tmp_path / "message"
    message.write_bytes(f"msg_openssl.{NOW}.".encode() + body)
    signature = subprocess.run(
        ["openssl", "pkeyutl", "-sign", "-inkey", str(key), "-rawin", "-in", str(message)],
        check=True,
        capture_output=True,
    ).stdout
    headers = {
        "webhook-id": "msg_openssl",
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1a," + base64.b64encode(signature).decode(),
    }
    hook, _ = make_hook(public_keys=[whpk])
    assert answer(hook, headers, body) == (200, {"applied": 1})


def _resigned(signature: Callable[[dict[str, str], bytes], str]) -> Callable[[], Any]:
    """A request to the default hook whose signature header is ``signature(...)``."""

    def build() -> tuple[dict[str, str], bytes]:
        headers, body = request()
        headers["webhook-signature"] = signature(headers, body)
        return headers, body

    return build


def _entry(headers: dict[str, str]) -> str:
    return headers["webhook-signature"].partition(",")[2]


def _bytes_changed(change: Callable[[bytes], bytes]) -> Callable[[], Any]:
    """The valid v1a signature, decoded, changed, encoded again."""
    return _resigned(
        lambda h, b: "v1a," + base64.b64encode(change(base64.b64decode(_entry(h)))).decode()
    )


def _signed_over(msg_id: str | None = None, timestamp: int = NOW, extra: bytes = b"") -> Any:
    """A v1a signature by the right key over other bytes than the request's."""
    return _resigned(
        lambda h, b: sign_v1a(SIGNING_KEY, msg_id or h["webhook-id"], timestamp, b + extra)
    )


REFUSED: dict[str, Callable[[], tuple[dict[str, str], bytes]]] = {
    "unknown_key": lambda: request(STRANGER_KEY),
    "over_other_body_bytes": _signed_over(extra=b" "),
    "for_another_id": _signed_over(msg_id="msg_other"),
    "for_another_timestamp": _signed_over(timestamp=NOW - 1),
    "truncated_base64": _resigned(lambda h, b: "v1a," + _entry(h)[:-4]),
    "unpadded_base64": _resigned(lambda h, b: "v1a," + _entry(h).rstrip("=")),
    "63_bytes": _bytes_changed(lambda sig: sig[:63]),
    "65_bytes": _bytes_changed(lambda sig: sig + b"\0"),
    "one_bit_flipped": _bytes_changed(lambda sig: bytes([sig[0] ^ 1]) + sig[1:]),
    "garbage_base64": _resigned(lambda h, b: "v1a,@@not*base64@@"),
    "empty_entry": _resigned(lambda h, b: "v1a,"),
    "no_comma": _resigned(lambda h, b: "v1a"),
    "non_ascii": _resigned(lambda h, b: "v1a,\u00e9\u00e9\u00e9\u00e9"),
    "wrong_version_label": _resigned(lambda h, b: "v1b," + _entry(h)),
    "v1_label_on_ed25519": _resigned(lambda h, b: "v1," + _entry(h)),
    "stale_6_minutes": lambda: request(timestamp=NOW - 360),
    "future_6_minutes": lambda: request(timestamp=NOW + 360),
    "hmac_by_a_secret": lambda: request(new_secret()),
    "hmac_bytes_labelled_v1a": _resigned(
        lambda h, b: "v1a," + sign(SECRET, h["webhook-id"], NOW, b).partition(",")[2]
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_bad_v1a_signatures_are_401(name: str) -> None:
    """Wrong key, other bytes, another id or timestamp, damaged or garbage entries:
    401 invalid_signature, nothing applied, never an exception."""
    hook, applied = make_hook()
    headers, body = REFUSED[name]()
    assert answer(hook, headers, body) == (401, INVALID_SIGNATURE)
    assert applied == []


def test_within_tolerance_accepted() -> None:
    hook, _ = make_hook()
    assert answer(hook, *request(timestamp=NOW - 240, msg_id="a"))[0] == 200
    assert answer(hook, *request(timestamp=NOW + 240, msg_id="b"))[0] == 200


def test_public_key_only_hook_refuses_hmac_and_secret_only_refuses_v1a() -> None:
    """Each scheme is checked against its own keys only."""
    only_public, _ = make_hook(secrets=(), public_keys=[PUBLIC_KEY])
    assert answer(only_public, *request(SECRET)) == (401, INVALID_SIGNATURE)
    only_secret, _ = make_hook(secrets=[SECRET], public_keys=())
    assert answer(only_secret, *request(SIGNING_KEY)) == (401, INVALID_SIGNATURE)
    assert answer(only_secret, *request(SECRET))[0] == 200


def test_secret_only_hook_ignores_a_valid_hmac_labelled_v1a() -> None:
    """A whsec_ secret signs v1 entries only: the right HMAC under a v1a label is 401
    (while the same bytes labelled v1 pass)."""
    hook, applied = make_hook(secrets=[SECRET], public_keys=())
    headers, body = request(SECRET)
    version, _, mac = headers["webhook-signature"].partition(",")
    assert version == "v1"
    assert answer(hook, {**headers, "webhook-signature": "v1a," + mac}, body) == (
        401,
        INVALID_SIGNATURE,
    )
    assert applied == []
    assert answer(hook, headers, body)[0] == 200


def test_both_kinds_configured_accept_either_and_mixed_headers() -> None:
    """With a secret and a public key, a v1 or a v1a signature passes; in a header
    holding several entries, one valid entry of either kind is enough."""
    hook, _ = make_hook(secrets=[SECRET], public_keys=[PUBLIC_KEY])
    assert answer(hook, *request(SECRET, msg_id="m1"))[0] == 200
    assert answer(hook, *request(SIGNING_KEY, msg_id="m2"))[0] == 200
    assert answer(hook, *request([new_secret(), SIGNING_KEY], msg_id="m3"))[0] == 200
    assert answer(hook, *request([STRANGER_KEY, SECRET], msg_id="m4"))[0] == 200
    headers, body = request(SIGNING_KEY, msg_id="m5")
    headers["webhook-signature"] = f"v1,AAAA v1a,!!! v9,x {headers['webhook-signature']} v1a,"
    assert answer(hook, headers, body)[0] == 200
    assert answer(hook, *request([STRANGER_KEY, new_secret()], msg_id="m6"))[0] == 401


def test_key_rotation() -> None:
    """Two trusted public keys: either signs; a producer signing with both during its
    switch is accepted by an app that trusts only one of them."""
    both, _ = make_hook(public_keys=[PUBLIC_KEY, OLD_PUBLIC_KEY])
    assert answer(both, *request(SIGNING_KEY, msg_id="new"))[0] == 200
    assert answer(both, *request(OLD_SIGNING_KEY, msg_id="old"))[0] == 200
    assert answer(both, *request(STRANGER_KEY, msg_id="x"))[0] == 401
    for trusted in (PUBLIC_KEY, OLD_PUBLIC_KEY):
        one, _ = make_hook(public_keys=[trusted])
        assert answer(one, *request([OLD_SIGNING_KEY, SIGNING_KEY]))[0] == 200


def test_replay_of_a_v1a_call_is_a_duplicate() -> None:
    hook, applied = make_hook()
    headers, body = request(msg_id="msg_twice")
    assert answer(hook, headers, body) == (200, {"applied": 1})
    assert answer(hook, headers, body) == (200, {"applied": 0, "duplicate": True})
    assert len(applied) == 1


def test_v1a_entries_tried_are_bounded() -> None:
    """An unsigned caller cannot make the hook run many ed25519 checks: only the first
    four v1a entries are tried (a rotating producer sends one or two)."""
    hook, _ = make_hook()
    headers, body = request(msg_id="msg_fifth")
    junk = "v1a," + base64.b64encode(bytes(64)).decode()
    good = headers["webhook-signature"]
    headers["webhook-signature"] = " ".join([junk] * 3 + [good])
    assert answer(hook, headers, body)[0] == 200
    headers["webhook-id"] = "msg_fifth_again"
    headers["webhook-signature"] = " ".join(
        [junk] * 4 + [sign_v1a(SIGNING_KEY, "msg_fifth_again", NOW, body)]
    )
    assert answer(hook, headers, body)[0] == 401


def test_gate_serves_the_hook_with_only_a_public_key() -> None:
    gate = Gate(Settings(invalidation_public_key=[PUBLIC_KEY]))
    assert gate.hook is not None
    assert gate.hook_path == "/_internal/session-invalidation"


def test_missing_cryptography_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the ``cryptography`` package, a public key stops the app at start-up
    naming the key and what to install; a producer gets an ImportError saying so."""
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric.ed25519", None)
    with pytest.raises(ConfigError, match=r"invalidation_public_key.*pip install cryptography"):
        public_key(PUBLIC_KEY)
    with pytest.raises(ConfigError, match="invalidation_public_key"):
        Gate(Settings(invalidation_public_key=[PUBLIC_KEY]))
    with pytest.raises(ImportError, match="pip install cryptography"):
        sign_v1a(SIGNING_KEY, "m", NOW, b"")


def test_signing_key_forms() -> None:
    """whsk_ is the 32-byte seed; the 64-byte libsodium form (seed + public key) signs
    alike; anything else is a ValueError that does not echo the key."""
    seed = base64.b64decode(SIGNING_KEY.removeprefix("whsk_"))
    public = base64.b64decode(PUBLIC_KEY.removeprefix("whpk_"))
    assert len(seed) == 32
    assert public_key_of(SIGNING_KEY) == PUBLIC_KEY
    sodium = "whsk_" + base64.b64encode(seed + public).decode()
    assert sign_v1a(sodium, "m", NOW, b"x") == sign_v1a(SIGNING_KEY, "m", NOW, b"x")
    other = base64.b64decode(OLD_PUBLIC_KEY.removeprefix("whpk_"))
    for bad in (
        "whsk_" + base64.b64encode(seed + other).decode(),
        "whsk_" + base64.b64encode(seed[:31]).decode(),
        "whsk_not base64!",
        "whsk_" + base64.b64encode(seed).decode().rstrip("="),
    ):
        with pytest.raises(ValueError, match="signing key") as info:
            sign_v1a(bad, "m", NOW, b"x")
        assert bad.removeprefix("whsk_") not in str(info.value)
    with pytest.raises(ValueError, match="at least one"):
        signed_request([], FLUSH)


def test_keygen_module_prints_a_working_pair() -> None:
    """``python -m sessionmw.signing``: the signing key, then its public key."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "sessionmw.signing"],
        capture_output=True,
        text=True,
        check=True,
    )
    signing_key, public = result.stdout.split()
    assert signing_key.startswith("whsk_")
    assert public == public_key_of(signing_key)
    assert "invalidation_public_key" in result.stderr
    hook, _ = make_hook(public_keys=[public])
    assert answer(hook, *request(signing_key))[0] == 200


# -- every adapter, with a hook that holds only public keys ------------------------------

#: The app trusts the current and the rotated-out public key, and no secret.
PUBLIC_ONLY = {"invalidation_secret": None, "invalidation_public_key": [PUBLIC_KEY, OLD_PUBLIC_KEY]}

Post = Callable[[Mapping[str, str], bytes], tuple[int, Any]]
StatusOf = Callable[[str], int]


def v1a_revoke(session_id: str, key: str = SIGNING_KEY, **kw: Any) -> tuple[dict[str, str], bytes]:
    return signed_request(key, [{"type": "session_revoked", "session_id": session_id}], **kw)


def check_v1a_hook(post: Post, status_of: StatusOf) -> None:
    """The push path with v1a only: HMAC and unknown keys refused, a v1a revocation
    applied at once, a replay answered as a duplicate, the old key still trusted."""
    assert status_of(VALID) == 200  # cached now
    assert post(*hook_cases.revoke(VALID)) == (401, INVALID_SIGNATURE), "v1 HMAC refused"
    assert post(*v1a_revoke(VALID, STRANGER_KEY)) == (401, INVALID_SIGNATURE)
    assert status_of(VALID) == 200
    headers, body = v1a_revoke(VALID)
    assert post(headers, body) == (200, {"applied": 1})
    assert status_of(VALID) == 401
    assert post(headers, body) == (200, {"applied": 0, "duplicate": True})
    assert status_of(VALID_NO_EXPIRY) == 200
    assert post(*v1a_revoke(VALID_NO_EXPIRY, OLD_SIGNING_KEY)) == (200, {"applied": 1})
    assert status_of(VALID_NO_EXPIRY) == 401


def _settings(**extra: Any) -> dict[str, Any]:
    return hook_cases.hook_settings(**{**PUBLIC_ONLY, **extra})


@contextmanager
def asgi_client(app: Any) -> Iterator[Callable[..., httpx.Response]]:
    with anyio.from_thread.start_blocking_portal() as portal:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

        def call(method: str, path: str, **kw: Any) -> httpx.Response:
            return portal.call(lambda: client.request(method, path, **kw))

        try:
            yield call
        finally:
            portal.call(client.aclose)


def _asgi_check(app: Any, path: str) -> None:
    with asgi_client(app) as call:

        def post(headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
            response = call("POST", path, content=body, headers=dict(headers))
            return response.status_code, decode(response.content)

        check_v1a_hook(post, lambda sid: call("GET", "/whoami", headers={HEADER: sid}).status_code)


def test_asgi_middleware() -> None:
    app = Starlette(routes=[Route("/whoami", whoami), Route("/healthz", healthz)])
    app.add_middleware(DeviceSessionMiddleware, **_settings())
    _asgi_check(app, HOOK_PATH)


def test_asgi_invalidation_route() -> None:
    settings = Settings(**_settings(exempt_paths=["/healthz", "/hooks/"]))
    routes = [Route("/whoami", whoami), invalidation_route(settings, "/hooks/sessions")]
    app = Starlette(routes=routes, middleware=[Middleware(DeviceSessionMiddleware, settings)])
    _asgi_check(app, "/hooks/sessions")


@pytest.mark.parametrize("case", hook_cases.SIGNED_CASES, ids=lambda c: c.name)
def test_shared_cases_with_a_public_key_added(case: hook_cases.HookCase) -> None:
    """Every shared signature and payload case keeps its answer when the app trusts a
    public key besides its secrets (ASGI middleware)."""
    app = Starlette(routes=[Route("/whoami", whoami), Route("/healthz", healthz)])
    settings = hook_cases.hook_settings(invalidation_public_key=[PUBLIC_KEY])
    app.add_middleware(DeviceSessionMiddleware, **settings)
    with asgi_client(app) as call:

        def post(headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
            response = call("POST", HOOK_PATH, content=body, headers=dict(headers))
            return response.status_code, decode(response.content)

        hook_cases.run_signed_case(post, case)


@pytest.mark.parametrize(
    "build", [wsgi_app.create_app, flask_app.create_app], ids=["wsgi", "flask"]
)
def test_wsgi_and_flask(build: Callable[[Settings], Any]) -> None:
    client = webtest.TestApp(build(Settings(**_settings())))

    def post(headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        response = client.post(HOOK_PATH, body, headers=dict(headers), expect_errors=True)
        return response.status_int, decode(response.body)

    def status_of(session_id: str) -> int:
        response = client.get("/whoami", headers={HEADER: session_id}, expect_errors=True)
        return int(response.status_int)

    check_v1a_hook(post, status_of)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_django(flavour: str) -> None:
    def run(call: Callable[[Any], Any]) -> Any:
        if flavour == "sync":
            return call(Client(enforce_csrf_checks=True))

        async def go() -> Any:
            return await call(AsyncClient(enforce_csrf_checks=True))

        return asyncio.run(go())

    def post(headers: Mapping[str, str], body: bytes) -> tuple[int, Any]:
        rest = {k: v for k, v in headers.items() if k != "content-type"}
        response = run(
            lambda c: c.post(HOOK_PATH, body, content_type="application/json", headers=rest)
        )
        return response.status_code, decode(response.content)

    def status_of(session_id: str) -> int:
        return int(run(lambda c: c.get("/whoami", headers={HEADER: session_id})).status_code)

    with override_settings(SESSIONMW=_settings()):
        check_v1a_hook(post, status_of)


# -- the command line against a real server ----------------------------------------------


def doc_block(marker: str) -> str:
    """The ``python`` block of docs/invalidation.md whose first line is ``marker``."""
    text = (Path(__file__).parent.parent / "docs" / "invalidation.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)
    found = [block for block in blocks if block.startswith(marker + "\n")]
    assert len(found) == 1, marker
    return str(found[0])


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("value", "message"),
    [("whsec_" + "A" * 43 + "=", "whsk_"), ("whsk_AAAA", "32-byte"), ("whsk_!!", "base64")],
)
def test_cli_bad_signing_key_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    code, out, err = cli(capsys, "revoke", "--flush", "--hook", "http://127.0.0.1:1",
                         "--signing-key", value)  # fmt: skip
    assert (code, out) == (2, "")
    assert "--signing-key" in err
    assert message in err


@pytest.mark.slow
def test_cli_revoke_with_a_signing_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: a key pair from ``python -m sessionmw.signing``, the example app
    under uvicorn trusting only the public key, ``sessionmw revoke --signing-key``
    refusing the session at once; an HMAC secret or another key is refused (exit 1).
    The documented ``cryptography``-only producer works against the same app."""
    keygen = subprocess.run(
        [str(BIN / "python"), "-m", "sessionmw.signing"], capture_output=True, text=True, check=True
    )
    signing_key, public = keygen.stdout.split()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = SQLBackend(url)
    store.create_schema()
    for sid in ("v1a-1", "v1a-2", "v1a-3"):
        store.put(SessionRecord(sid, "u", SessionStatus.ACTIVE, None, time.time()))
    store.put(SessionRecord("v1a-doc", "w", SessionStatus.ACTIVE, None, time.time()))
    store.close()
    port = free_port()
    env = clean_env({"SESSIONMW_BACKEND": url, "SESSIONMW_INVALIDATION_PUBLIC_KEY": public})
    with running(uvicorn("examples.starlette_app:app", port), env, port=port) as base:

        def status(sid: str) -> int:
            return httpx.get(base + "/whoami", headers={HEADER: sid}).status_code

        assert status("v1a-1") == 200
        code, out, _ = cli(capsys, "revoke", "--hook", base, "--signing-key", signing_key,
                           "--session", "v1a-1")  # fmt: skip
        assert (code, json.loads(out)) == (0, {"applied": 1})
        assert status("v1a-1") == 401
        assert status("v1a-2") == 200

        code, out, err = cli(capsys, "revoke", "--hook", base, "--secret", new_secret(),
                             "--session", "v1a-2")  # fmt: skip
        assert (code, out) == (1, "")
        assert "401" in err
        assert "--signing-key" in err, "the hint names both options"
        code, _, err = cli(capsys, "revoke", "--hook", base, "--signing-key", STRANGER_KEY,
                           "--session", "v1a-2")  # fmt: skip
        assert code == 1
        assert "invalid_signature" in err
        assert STRANGER_KEY.removeprefix("whsk_") not in err
        assert status("v1a-2") == 200

        # The documented producer that needs only `cryptography`, run as printed.
        namespace: dict[str, Any] = {}
        exec(doc_block("# producer: ed25519"), namespace)  # noqa: S102 - our own docs
        event = {"type": "session_revoked", "session_id": "v1a-doc"}
        hook = base + HOOK_PATH
        assert namespace["send_events_v1a"](hook, signing_key, [event]) == {"applied": 1}
        assert status("v1a-doc") == 401

        # A secret and a signing key together: two entries, the v1a one passes; the
        # key read from stdin stays out of the process list.
        monkeypatch.setattr(sys, "stdin", io.StringIO(signing_key + "\n"))
        code, out, _ = cli(capsys, "revoke", "--hook", base, "--secret", new_secret(),
                           "--signing-key", "-", "--user", "u")  # fmt: skip
        assert (code, json.loads(out)) == (0, {"applied": 1})
        assert status("v1a-2") == 401
        assert status("v1a-3") == 401

"""A local OpenID provider (and Shared Signals transmitter) stand-in, over real HTTP.

It serves what sessionmw fetches from a provider, on a free loopback port:

* ``/.well-known/openid-configuration`` and ``/.well-known/ssf-configuration``
  (discovery: ``issuer`` and ``jwks_uri``);
* ``/jwks``: the public halves of its current signing keys (RSA and EC to start
  with; :meth:`Provider.rotate` adds a new one and can drop old ones), counting
  every fetch.

It mints tokens with PyJWT, a different JOSE library than the one sessionmw verifies
with (joserfc), so a quirk shared by the two sides cannot hide a bug.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import types
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sessionmw import SessionRecord, Sessions, SessionStatus, Settings
from sessionmw.answers import Answer
from sessionmw.gate import Gate
from sessionmw.idp import Receiver
from tests.servers import LocalServer, QuietHandler

BACKCHANNEL_LOGOUT = "http://schemas.openid.net/event/backchannel-logout"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
AUDIENCE = "sessionmw-test-app"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @property
    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg.startswith(("RS", "PS")) else ECAlgorithm
        jwk: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def rsa_key(kid: str, alg: str = "RS256") -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Provider(LocalServer):
    """The stand-in: start it with ``with Provider() as op:``; ``op.issuer`` is its URL."""

    def __init__(self, keys: list[SigningKey] | None = None) -> None:
        self.keys = keys if keys is not None else [rsa_key("rsa-1"), ec_key("ec-1")]
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        #: While set, /jwks answers 503 (a provider outage).
        self.down = False
        self._lock = threading.Lock()
        self._rotations = 0
        provider = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/.well-known/openid-configuration", "/.well-known/ssf-configuration"):
                    with provider._lock:
                        provider.discovery_fetches += 1
                    document: dict[str, Any] = {
                        "issuer": provider.issuer,
                        "jwks_uri": provider.issuer + "/jwks",
                    }
                    if path.endswith("ssf-configuration"):
                        document["delivery_methods_supported"] = ["urn:ietf:rfc:8935"]
                    else:
                        document["backchannel_logout_supported"] = True
                        document["backchannel_logout_session_supported"] = True
                    self.send_json(200, json.dumps(document).encode())
                elif path == "/jwks":
                    with provider._lock:
                        provider.jwks_fetches += 1
                        keys = [key.public_jwk for key in provider.keys]
                    if provider.down:
                        self.send_json(503, b'{"error": "down"}')
                    else:
                        self.send_json(200, json.dumps({"keys": keys}).encode())
                else:
                    self.send_json(404, b'{"error": "not_found"}')

        super().__init__(Handler)

    @property
    def issuer(self) -> str:
        return self.base_url

    # -- keys ----------------------------------------------------------------------

    def key(self, kid: str) -> SigningKey:
        return next(key for key in self.keys if key.kid == kid)

    def rotate(self, *, drop: tuple[str, ...] = ()) -> SigningKey:
        """Publish a new RSA key (and withdraw the keys named in ``drop``)."""
        with self._lock:
            self._rotations += 1
            new = rsa_key(f"rsa-rotated-{self._rotations}")
            self.keys = [key for key in self.keys if key.kid not in drop] + [new]
        return new

    # -- tokens --------------------------------------------------------------------

    def sign(
        self,
        claims: dict[str, Any],
        *,
        kid: str = "rsa-1",
        typ: str | None = "JWT",
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """``claims`` signed with the key ``kid`` (or ``key``), PyJWT doing the JOSE."""
        signer = key or self.key(kid)
        header: dict[str, Any] = {"kid": signer.kid, "typ": typ, **(headers or {})}
        return jwt.encode(claims, signer.private, algorithm=signer.alg, headers=header)

    def _claims(self, claims: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        """A token's registered claims (``iss``, ``aud``, ``iat``, a fresh ``jti``), then
        ``claims``, then ``overrides``; a claim set to :data:`DROP` is left out."""
        every = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "iat": int(time.time()),
            "jti": uuid.uuid4().hex,
            **claims,
            **overrides,
        }
        return {name: value for name, value in every.items() if value is not DROP}

    def logout_claims(
        self, *, sid: Any = None, sub: Any = None, **overrides: Any
    ) -> dict[str, Any]:
        claims: dict[str, Any] = {"events": {BACKCHANNEL_LOGOUT: {}}}
        if sid is not None:
            claims["sid"] = sid
        if sub is not None:
            claims["sub"] = sub
        return self._claims(claims, overrides)

    def logout_token(
        self,
        *,
        sid: Any = None,
        sub: Any = None,
        kid: str = "rsa-1",
        **overrides: Any,
    ) -> str:
        """A valid back-channel logout token (``overrides`` replace or, with
        :data:`DROP`, remove claims)."""
        return self.sign(self.logout_claims(sid=sid, sub=sub, **overrides), kid=kid,
                         typ="logout+jwt")  # fmt: skip

    def set_claims(
        self,
        event: str = SESSION_REVOKED,
        sub_id: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        events = {event: {"event_timestamp": int(time.time())}}
        return self._claims({"sub_id": sub_id, "events": events}, overrides)

    def set_token(
        self,
        event: str = SESSION_REVOKED,
        sub_id: dict[str, Any] | None = None,
        *,
        kid: str = "rsa-1",
        **overrides: Any,
    ) -> str:
        """A valid Security Event Token carrying one CAEP event about ``sub_id``."""
        return self.sign(self.set_claims(event, sub_id, **overrides), kid=kid, typ="secevent+jwt")

    def user_subject(self, sub: str) -> dict[str, Any]:
        return {"format": "iss_sub", "iss": self.issuer, "sub": sub}

    def session_subject(self, idp_sid: str, sub: str | None = None) -> dict[str, Any]:
        subject: dict[str, Any] = {
            "format": "complex",
            "session": {"format": "opaque", "id": idp_sid},
        }
        if sub is not None:
            subject["user"] = self.user_subject(sub)
        return subject

    # -- forgeries (hand-made on purpose: no JOSE library signs these) -------------

    def unsigned(self, claims: dict[str, Any]) -> str:
        """``alg: none``."""
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{b64url(json.dumps(claims).encode())}."

    def hmac_with_public_key(self, claims: dict[str, Any], kid: str = "rsa-1") -> str:
        """HS256 keyed with the provider's public key (the classic algorithm confusion)."""
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
        mac = hmac.new(self.key(kid).public_pem, signing_input.encode(), hashlib.sha256)
        return f"{signing_input}.{b64url(mac.digest())}"


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


#: Pass as a claim override to remove that claim.
DROP: Any = _Drop()


# -- one route in-process --------------------------------------------------------------


class ReceiverWorld:
    """A gate with one identity-provider route on (``route``: the gate's attribute,
    ``oidc`` or ``ssf``), its sessions, and its receiver's answers to posted bodies."""

    def __init__(self, settings: Settings, route: str, content_type: str) -> None:
        self.gate = Gate(settings)
        self.sessions = Sessions(self.gate)
        receiver = getattr(self.gate, route)
        assert receiver is not None
        self.receiver: Receiver = receiver
        self.content_type = content_type

    def answer(
        self, body: bytes, content_type: str | None = None, *, through_async: bool = False
    ) -> Answer:
        """The answer to ``body`` posted as ``content_type`` (by default the route's
        own), through ``handle`` or, with ``through_async``, ``ahandle``."""
        headers = {"content-type": self.content_type if content_type is None else content_type}
        if through_async:
            return asyncio.run(self.receiver.ahandle(headers, body))
        return self.receiver.handle(headers, body)

    def active(self, session_id: str) -> bool:
        """Both the store and the gate (its cache) let the session through."""
        stored = self.sessions.get(session_id)
        assert stored is not None
        outcome = self.gate.check(session_id)
        return stored.status is SessionStatus.ACTIVE and isinstance(outcome, SessionRecord)

    @property
    def applied(self) -> int:
        """Events applied to this process's cache so far."""
        return sum(self.gate.events_applied.values())


# -- the routes through each adapter ------------------------------------------------

ADAPTERS = ("asgi", "wsgi", "flask", "django")


class Mounted:
    """One adapter serving an app whose only route is ``GET /whoami``, behind the gate
    configured by ``settings``; requests go through httpx's ASGI or WSGI transport."""

    def __init__(self, adapter: str, app: Any) -> None:
        self.adapter = adapter
        self.app = app

    def request(
        self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> httpx.Response:
        if self.adapter == "asgi":

            async def go() -> httpx.Response:
                transport = httpx.ASGITransport(app=self.app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://testserver"
                ) as c:
                    return await c.request(method, path, content=body, headers=headers)

            return asyncio.run(go())
        transport = httpx.WSGITransport(app=self.app)
        with httpx.Client(transport=transport, base_url="http://testserver") as client:
            return client.request(method, path, content=body, headers=headers)

    def post(self, path: str, body: bytes, content_type: str) -> httpx.Response:
        return self.request("POST", path, body=body, headers={"content-type": content_type})

    def status_of(self, session_id: str) -> int:
        return self.request(
            "GET", "/whoami", headers={"x-device-session-id": session_id}
        ).status_code


@contextmanager
def mounted(adapter: str, settings: dict[str, Any]) -> Iterator[Mounted]:
    """The adapter's app for ``settings`` (Django: through ``sessionmw.contrib.django.urls``
    reloaded for these settings, and restored afterwards)."""
    if adapter == "asgi":
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from sessionmw.asgi import DeviceSessionMiddleware as ASGIMiddleware

        async def whoami(request: Request) -> JSONResponse:
            return JSONResponse({"user_id": request.state.device_session.user_id})

        app = Starlette(routes=[Route("/whoami", whoami)])
        app.add_middleware(ASGIMiddleware, **settings)
        yield Mounted(adapter, app)
    elif adapter == "wsgi":
        from sessionmw.wsgi import DeviceSessionMiddleware as WSGIMiddleware

        def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [environ["sessionmw.session"].user_id.encode()]

        yield Mounted(adapter, WSGIMiddleware(plain, **settings))
    elif adapter == "flask":
        from flask import Flask, g

        from sessionmw.contrib.flask import SessionMW

        flask_app = Flask(__name__)
        flask_app.config.update({f"SESSIONMW_{k.upper()}": v for k, v in settings.items()})
        SessionMW(flask_app)

        @flask_app.get("/whoami")
        def whoami_view() -> dict[str, Any]:
            return {"user_id": g.device_session.user_id}

        yield Mounted(adapter, flask_app)
    else:
        import importlib

        from django.core.handlers.wsgi import WSGIHandler
        from django.test import override_settings

        from tests import django_settings

        django_settings.setup()
        from django.urls import include, path

        import sessionmw.contrib.django.urls as urls
        from examples.django_app import views

        try:
            with override_settings(SESSIONMW=settings):
                importlib.reload(urls)  # its routes depend on the settings
                # A URLconf of this test's own (a module object is a valid ROOT_URLCONF),
                # so no resolver built for other settings is reused.
                root = types.ModuleType("idp_test_urls")
                root.urlpatterns = [  # type: ignore[attr-defined]
                    path("whoami", views.whoami),
                    path("", include(urls)),
                ]
                with override_settings(ROOT_URLCONF=root):
                    yield Mounted(adapter, WSGIHandler())
        finally:
            importlib.reload(urls)

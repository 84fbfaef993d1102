"""Which of a provider's keys sessionmw verifies identity-provider tokens with
(SPEC section 14), against the local provider of :mod:`tests.oidc_provider`:

* keys older than ``max_age`` are fetched again, so a key the provider withdrew
  stops verifying;
* a discovery document naming another issuer is not followed (OpenID Connect
  Discovery 1.0, section 4.3): its ``jwks_uri`` is never fetched;
* a key published for encryption (``"use": "enc"``) never verifies a signature.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sessionmw.backends import MemoryBackend
from sessionmw.bus import LocalBus
from sessionmw.idp.jwks import JWKSCache, JWKSError, key_set
from sessionmw.idp.receivers import BackChannelLogout, Revoker, SecurityEventReceiver
from tests.oidc_provider import AUDIENCE, Provider, SigningKey, rsa_key
from tests.servers import LocalServer, QuietHandler
from tests.test_oidc_logout import HEADERS, Clock, form

SET_HEADERS = {"content-type": "application/secevent+jwt"}


@dataclass
class EncryptionKey(SigningKey):
    """A key the provider publishes for encryption only (PyJWT's ``key_ops: verify``
    dropped: it would contradict ``use``)."""

    @property
    def public_jwk(self) -> dict[str, Any]:
        jwk = {**super().public_jwk, "use": "enc"}
        del jwk["key_ops"]
        return jwk


ENC = EncryptionKey("enc-1", "RS256", rsa_key("enc-1").private)


@pytest.fixture(scope="module")
def op() -> Iterator[Provider]:
    with Provider([rsa_key("rsa-1"), ENC]) as provider:
        yield provider


def _logout(issuer: str, keys: JWKSCache) -> BackChannelLogout:
    revoker = Revoker(MemoryBackend(), lambda events: None, LocalBus(), source="oidc")
    return BackChannelLogout(issuer=issuer, audiences=[AUDIENCE], keys=keys, revoker=revoker)


def _ssf(issuer: str, keys: JWKSCache) -> SecurityEventReceiver:
    revoker = Revoker(MemoryBackend(), lambda events: None, LocalBus(), source="ssf")
    return SecurityEventReceiver(issuer=issuer, audiences=[AUDIENCE], keys=keys, revoker=revoker)


def test_keys_older_than_max_age_are_fetched_again() -> None:
    """max_age 100 s: before it the cached set is used without I/O; past it, a token
    signed with a key the provider has since withdrawn is refused after a refetch."""
    clock = Clock()
    with Provider() as rotating:
        keys = JWKSCache(rotating.issuer, max_age=100, refetch_interval=1, clock=clock, timeout=5)
        receiver = _logout(rotating.issuer, keys)
        old = rotating.key("rsa-1")
        assert receiver.handle(HEADERS, form(rotating.logout_token(sid="a"))).status == 200
        clock.now += 50
        assert receiver.handle(HEADERS, form(rotating.logout_token(sid="b"))).status == 200
        assert (rotating.jwks_fetches, keys.fetches) == (1, 1)
        rotating.rotate(drop=("rsa-1",))
        clock.now += 51
        withdrawn = rotating.sign(rotating.logout_claims(sid="c"), key=old)
        assert receiver.handle(HEADERS, form(withdrawn)).status == 400
        assert (rotating.jwks_fetches, keys.fetches) == (2, 2)


class Discovery(LocalServer):
    """Serves only discovery documents naming ``issuer`` and ``jwks_uri``."""

    def __init__(self) -> None:
        self.issuer = ""
        self.jwks_uri = ""
        self.fetches = 0
        discovery = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                discovery.fetches += 1
                document = {"issuer": discovery.issuer, "jwks_uri": discovery.jwks_uri}
                self.send_json(200, json.dumps(document).encode())

        super().__init__(Handler)


@pytest.mark.parametrize("route", ["oidc", "ssf"])
@pytest.mark.parametrize("advertised", ["itself", "another issuer"])
def test_discovery_must_name_the_configured_issuer(
    op: Provider, route: str, advertised: str
) -> None:
    """The discovery document at the configured issuer points at a working JWKS (the
    provider's). Naming that issuer, it is followed; naming another, no key set is
    used, the token is refused (SSF: invalid_key) and the JWKS is never fetched."""
    with Discovery() as site:
        issuer = site.base_url
        site.issuer = issuer if advertised == "itself" else op.issuer
        site.jwks_uri = op.issuer + "/jwks"
        discovery = "openid-configuration" if route == "oidc" else "ssf-configuration"
        keys = JWKSCache(issuer, discovery=discovery, timeout=5)
        start = op.jwks_fetches
        if route == "oidc":
            token = op.logout_token(sid="s", iss=issuer)
            answer = _logout(issuer, keys).handle(HEADERS, form(token))
        else:
            token = op.set_token(sub_id=op.session_subject("s"), iss=issuer)
            answer = _ssf(issuer, keys).handle(SET_HEADERS, token.encode())
        assert site.fetches == 1
        if advertised == "itself":
            assert answer.status in (200, 202)
            assert op.jwks_fetches - start == 1
            return
        assert answer.status == 400
        if route == "ssf":
            assert json.loads(answer.body)["err"] == "invalid_key"
        assert keys.keys("rsa-1") is None
        assert op.jwks_fetches == start


def test_encryption_keys_never_verify(op: Provider) -> None:
    """The provider publishes a key with "use": "enc": it is left out of the key set,
    and a token signed with it is refused on both routes (its "sig" key still works)."""
    keys = JWKSCache(op.issuer, timeout=5)
    logout = _logout(op.issuer, keys)
    assert logout.handle(HEADERS, form(op.logout_token(sid="a", kid="enc-1"))).status == 400
    assert logout.handle(HEADERS, form(op.logout_token(sid="a"))).status == 200
    cached = keys.keys("enc-1")
    assert cached is not None
    assert [key.kid for key in cached.keys] == ["rsa-1"]
    ssf = _ssf(op.issuer, JWKSCache(op.issuer, discovery="ssf-configuration", timeout=5))
    answer = ssf.handle(
        SET_HEADERS, op.set_token(sub_id=op.user_subject("u"), kid="enc-1").encode()
    )
    assert (answer.status, json.loads(answer.body)["err"]) == (400, "invalid_key")
    with pytest.raises(JWKSError):
        key_set({"keys": [ENC.public_jwk]})

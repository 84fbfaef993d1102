"""The identity provider's signing keys: fetched over HTTP, cached, refetched sparingly.

Design, in short:

* The JWKS comes from a configured URL, or from the ``jwks_uri`` of the provider's
  discovery document (``{issuer}/.well-known/openid-configuration`` for OpenID
  Connect, ``{issuer}/.well-known/ssf-configuration`` for a Shared Signals
  transmitter), fetched with httpx within ``timeout`` seconds.
* A token whose ``kid`` is in the cached set costs no I/O. A token with a ``kid`` the
  set lacks (the provider rotated its keys) triggers a refetch, but at most one
  attempt per ``refetch_interval`` (60 s) whatever the outcome: a flood of tokens
  with made-up ``kid`` values costs the provider one request a minute, not one per
  token. Keys older than ``max_age`` are refetched under the same limit, so a key the
  provider withdrew stops verifying without a restart.
* Concurrent callers share one fetch, whether they are threads (sync adapters) or
  asyncio tasks (async adapters), even both at once: the first caller fetches and
  publishes the outcome in a ``concurrent.futures.Future``; the others wait on it
  (threads block on it, tasks await it through ``asyncio.wrap_future``, so the event
  loop never blocks).
* Only public keys of asymmetric types (RSA, EC, OKP) meant for signatures are kept:
  a symmetric (``oct``) key in the set is ignored, so no HMAC can ever verify.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from sessionmw import _fork
from sessionmw._log import get_logger

__all__ = ["JWKS_FETCHED", "JWKS_UNAVAILABLE", "JWKSCache", "JWKSError"]

JWKS_FETCHED = "idp.jwks_fetched"
JWKS_UNAVAILABLE = "idp.jwks_unavailable"

#: At most this many keys are kept from one JWKS (providers publish a handful).
MAX_KEYS = 64
_KEY_TYPES: dict[str, Any] = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}


class JWKSError(Exception):
    """The JWKS (or the discovery document) could not be fetched or read."""


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise JWKSError(f"{what}: HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise JWKSError(f"{what}: not JSON") from None
    if not isinstance(document, dict):
        raise JWKSError(f"{what}: not a JSON object")
    return document


def key_set(document: dict[str, Any]) -> KeySet:
    """The usable signature keys of a JWKS document (``JWKSError`` when none)."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise JWKSError("JWKS: no 'keys' array")
    keys = []
    for entry in entries[:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        key_cls = _KEY_TYPES.get(entry.get("kty"))  # type: ignore[arg-type]
        if key_cls is None:  # oct (HMAC), or a type we do not know
            continue
        public = {name: value for name, value in entry.items() if name != "d"}
        try:
            keys.append(key_cls.import_key(public))
        except (JoseError, ValueError, TypeError):
            continue
    if not keys:
        raise JWKSError("JWKS: no usable signature key")
    return KeySet(keys)


class JWKSCache:
    """The signing keys of one issuer (see the module docs).

    ``issuer``: the provider's issuer URL; ``jwks_url``: where its JWKS lives (``None``:
    read ``jwks_uri`` from ``{issuer}/.well-known/{discovery}``); ``timeout``: seconds
    per HTTP request; ``clock``: monotonic seconds (tests inject one).
    """

    def __init__(
        self,
        issuer: str,
        *,
        jwks_url: str | None = None,
        discovery: str = "openid-configuration",
        timeout: float = 2.0,
        refetch_interval: float = 60.0,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.configured_url = jwks_url
        self.discovery_url = f"{issuer.rstrip('/')}/.well-known/{discovery}"
        self.timeout = timeout
        self.refetch_interval = refetch_interval
        self.max_age = max_age
        self._clock = clock
        self._jwks_url = jwks_url
        self._keys: KeySet | None = None
        self._kids: frozenset[str | None] = frozenset()
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._inflight: concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()
        self._log = get_logger()
        #: HTTP fetches of the JWKS attempted (for tests and debugging).
        self.fetches = 0
        _fork.register(self)

    def __repr__(self) -> str:
        return f"<JWKSCache {self.issuer!r} keys={sorted(map(str, self._kids))}>"

    # -- decisions (no I/O) ------------------------------------------------------

    def _usable(self, kid: str | None) -> bool:
        return (
            self._keys is not None
            and (kid is None or kid in self._kids)
            and self._clock() - self._fetched_at < self.max_age
        )

    def _begin(self, kid: str | None) -> tuple[concurrent.futures.Future[None] | None, bool]:
        """``(future to wait on, whether this caller fetches)``; ``(None, False)`` when
        the cached set will do, or the refetch budget is spent (use what is cached)."""
        if self._usable(kid):
            return None, False
        with self._lock:
            if self._inflight is not None:
                return self._inflight, False
            last = self._last_attempt
            if last is not None and self._clock() - last < self.refetch_interval:
                return None, False
            self._last_attempt = self._clock()
            self.fetches += 1
            future: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._inflight = future
            return future, True

    @contextlib.contextmanager
    def _fetching(self, future: concurrent.futures.Future[None] | None) -> Iterator[list[KeySet]]:
        """Around the fetch of the caller that owns ``future``: the key set it appends
        to the yielded list is published; whatever happens (a failure is logged and
        the old keys kept, to try again later), the waiters are woken."""
        assert future is not None
        found: list[KeySet] = []
        try:
            yield found
            self._log.info(
                JWKS_FETCHED, issuer=self.issuer, kids=sorted(str(k.kid) for k in found[0].keys)
            )
        except Exception as exc:  # any failure: keep the old keys, try again later
            # Discover again next time: the provider may have moved its JWKS.
            self._jwks_url = self.configured_url
            self._log.warning(
                JWKS_UNAVAILABLE, issuer=self.issuer, error=f"{type(exc).__name__}: {exc}"
            )
        finally:
            with self._lock:
                if found:
                    self._keys = found[0]
                    self._kids = frozenset(key.kid for key in found[0].keys)
                    self._fetched_at = self._clock()
                self._inflight = None
            future.set_result(None)

    # -- sync --------------------------------------------------------------------

    def keys(self, kid: str | None) -> KeySet | None:
        """The key set to verify a token signed with ``kid`` (fetching when needed and
        allowed); ``None`` when no key set could ever be fetched."""
        future, owner = self._begin(kid)
        if owner:
            with self._fetching(future) as found:
                found.append(self._fetch())
        elif future is not None:
            with contextlib.suppress(concurrent.futures.TimeoutError):
                future.result(timeout=self.timeout * 2 + 1)
        return self._keys

    def _fetch(self) -> KeySet:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
            url = self._jwks_url
            if url is None:
                url = self._jwks_url = self._from_discovery(client.get(self.discovery_url))
            return key_set(_json_object(client.get(url), "JWKS"))

    # -- async -------------------------------------------------------------------

    async def akeys(self, kid: str | None) -> KeySet | None:
        """Like :meth:`keys`; the fetch (or the wait for another caller's) never
        blocks the event loop."""
        future, owner = self._begin(kid)
        if owner:
            with self._fetching(future) as found:
                found.append(await self._afetch())
        elif future is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.wrap_future(future), self.timeout * 2 + 1)
        return self._keys

    async def _afetch(self) -> KeySet:
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            url = self._jwks_url
            if url is None:
                url = self._jwks_url = self._from_discovery(await client.get(self.discovery_url))
            return key_set(_json_object(await client.get(url), "JWKS"))

    # -- discovery ---------------------------------------------------------------

    def _from_discovery(self, response: httpx.Response) -> str:
        document = _json_object(response, "discovery document")
        issuer = document.get("issuer")
        if not isinstance(issuer, str) or issuer.rstrip("/") != self.issuer.rstrip("/"):
            raise JWKSError(f"discovery document: issuer {issuer!r} is not {self.issuer!r}")
        url = document.get("jwks_uri")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise JWKSError("discovery document: no http(s) jwks_uri")
        return url

    def _reset_after_fork(self) -> None:
        # A fetch in flight in the parent does not exist in the child.
        self._lock = threading.Lock()
        self._inflight = None

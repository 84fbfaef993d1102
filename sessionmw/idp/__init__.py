"""Identity-provider logouts (SPEC section 14), framework-free.

Two receivers turn a request body into an :class:`~sessionmw.answers.Answer` plus the
revocations it asks for:

* :class:`~sessionmw.idp.receivers.BackChannelLogout`: OpenID Connect Back-Channel
  Logout 1.0 (a ``logout_token`` form field, answered 200 / 400);
* :class:`~sessionmw.idp.receivers.SecurityEventReceiver`: Shared Signals / CAEP
  push delivery (RFC 8935: a Security Event Token as the body, answered 202 / 400).

Like the invalidation hook, they know nothing of gates or frameworks: they are given
the store to write revocations to, the function that applies events in this process
and the bus that publishes them to every other process (and remembers token IDs).
Adapters serve them exactly like the hook: :class:`Receiver` is what they call.

Importing this package imports neither ``joserfc`` nor ``httpx``; :func:`build`
(called by the gate when ``oidc_issuer`` or ``ssf_issuer`` is set) does, and fails at
start-up with the extra to install when they are missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sessionmw._compat import require_extra
from sessionmw.errors import ConfigError

if TYPE_CHECKING:
    from sessionmw.answers import Answer
    from sessionmw.hook import Publisher
    from sessionmw.idp.receivers import BackChannelLogout, SecurityEventReceiver, _Receiver
    from sessionmw.settings import Settings

    _R = TypeVar("_R", bound=_Receiver)

__all__ = ["Receiver", "build"]


class Receiver(Protocol):
    """An internal POST route's handler, as adapters see it (the hook is one too).

    ``headers``: the request headers under lower-case names (at least
    ``content-type``); ``body``: the raw body, already read within the 64 KiB limit.
    """

    def handle(self, headers: Mapping[str, str], body: bytes) -> Answer: ...

    async def ahandle(self, headers: Mapping[str, str], body: bytes) -> Answer: ...


def build(
    settings: Settings,
    *,
    store: Any,
    apply: Callable[..., None],
    bus: Publisher,
) -> tuple[BackChannelLogout | None, SecurityEventReceiver | None]:
    """The receivers the settings ask for (``None`` for one not configured).

    ``store``: the session store (it must be writable: revocations are written there
    first); ``apply(events, source=...)``: applies events to this process's cache;
    ``bus``: publishes them and holds the replay guard.
    """
    wanted = [key for key in ("oidc_issuer", "ssf_issuer") if getattr(settings, key)]
    if not wanted:
        return None, None
    for key in wanted:
        if not all(
            callable(getattr(store, name, None))
            for name in ("ids_for_idp_sid", "revoke", "revoke_user")
        ):
            raise ConfigError(
                key,
                f"{type(store).__name__} is read-only here (an auth service owns these "
                "sessions): receive identity-provider logouts at that service and push "
                "the revocations through the invalidation hook or the bus",
            )
    with require_extra("joserfc", "oidc", feature=wanted[0]):
        import joserfc  # noqa: F401
    with require_extra("httpx", "oidc", feature=wanted[0]):
        import httpx  # noqa: F401

    from sessionmw.idp.jwks import JWKSCache
    from sessionmw.idp.receivers import BackChannelLogout, Revoker, SecurityEventReceiver

    def receiver(kind: type[_R], issuer: str, audiences: Sequence[str], jwks_url: str | None) -> _R:
        source = kind.source
        keys = JWKSCache(
            issuer, jwks_url=jwks_url, discovery=kind.discovery, timeout=settings.backend_timeout
        )
        revoker = Revoker(store, lambda events: apply(events, source=source), bus, source=source)
        return kind(issuer=issuer, audiences=audiences, keys=keys, revoker=revoker)

    oidc = ssf = None
    if settings.oidc_issuer:
        oidc = receiver(
            BackChannelLogout, settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_url
        )
    if settings.ssf_issuer:
        ssf = receiver(
            SecurityEventReceiver, settings.ssf_issuer, settings.ssf_audience, settings.ssf_jwks_url
        )
    return oidc, ssf

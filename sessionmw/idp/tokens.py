"""Verifying a provider's signed JWT (a logout token, a Security Event Token).

Everything JOSE is joserfc's: splitting the compact form, the header registry, the
algorithm allow-list, key selection by ``kid``, the signature, the payload's JSON,
and the registered claims (``iss``, ``aud``, ``exp``, ``nbf``, ``jti``, ``iat``) through a
:class:`~joserfc.jwt.JWTClaimsRegistry`. This module only decides the policy:

* asymmetric algorithms only (:data:`ALGORITHMS`): ``none`` and every HMAC are
  refused before any key is looked at, so a token "signed" with the provider's public
  key as an HMAC secret cannot pass;
* an explicit ``typ`` must be one the caller accepts (a missing one is accepted:
  older providers omit it);
* ``iat`` within a window of now, both ways, when the caller asks for one.

Every refusal is a :class:`TokenError` whose ``code`` is one of RFC 8935's error
codes (the SSF receiver sends it; the logout receiver answers ``invalid_request``
whatever it is) and whose ``reason`` is for the log only.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    InvalidClaimError,
    InvalidKeyIdError,
    InvalidKeyTypeError,
    JoseError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

__all__ = ["ALGORITHMS", "Rules", "TokenError", "kid_of", "verify"]

#: The signature algorithms accepted: RSA, RSA-PSS, ECDSA and EdDSA. Never ``none``,
#: never ``HS*``.
ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
)  # fmt: skip

# Unknown header parameters are ignored (providers add their own); ``crit`` is still
# enforced by joserfc.
_REGISTRY = JWSRegistry(algorithms=ALGORITHMS, strict_check_header=False)

#: Longest ``jti`` accepted (the replay memory stores a digest, but a log line may
#: carry a hash of it: keep it sane).
MAX_JTI = 1024


class TokenError(Exception):
    """A refused token. ``code``: an RFC 8935 error code; ``reason``: for the log."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


@dataclass(frozen=True)
class Rules:
    """What a token must satisfy beyond a good signature.

    ``typs``: the accepted ``typ`` header values (lower case, without
    ``application/``); ``iat_window``: seconds ``iat`` may be off now, both ways
    (``None``: any ``iat``, and none is needed).
    """

    issuer: str
    audiences: tuple[str, ...]
    typs: frozenset[str]
    iat_window: float | None


class _Claims(jwt.JWTClaimsRegistry):
    """joserfc's claims registry, with ``iat`` checked against a window both ways
    (or, without a window, only for its type)."""

    def __init__(self, now: float, iat_window: float | None, **options: Any) -> None:
        super().__init__(now=int(now), leeway=0, **options)
        self._float_now = now
        self._iat_window = iat_window

    def validate_iat(self, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidClaimError("iat", "Claim 'iat' must be a NumericDate value")
        if self._iat_window is not None and not (
            math.isfinite(value) and abs(self._float_now - value) <= self._iat_window
        ):
            raise InvalidClaimError("iat", "issued too long ago or in the future")


def kid_of(token: str) -> str | None:
    """The ``kid`` of a compact JWS, unverified (only to pick the key to verify with).

    Raises :class:`TokenError` for anything that is not a compact JWS whose header
    names an allowed algorithm: no key is fetched for such a token.
    """
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except Exception:
        raise TokenError("invalid_request", "not a compact JWS") from None
    if header.get("alg") not in ALGORITHMS:
        raise TokenError("authentication_failed", "algorithm not allowed")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenError("invalid_request", "kid is not a string")
    return kid


def _typ_ok(typ: object, accepted: Collection[str]) -> bool:
    if typ is None:
        return True
    if not isinstance(typ, str):
        return False
    typ = typ.lower()
    return typ.removeprefix("application/") in accepted


def _claim_code(claim: str) -> str:
    if "iss" in claim.split(","):
        return "invalid_issuer"
    if "aud" in claim.split(","):
        return "invalid_audience"
    return "invalid_request"


def verify(token: str, keys: KeySet | None, rules: Rules, now: float) -> dict[str, Any]:
    """The verified claims of ``token``, or :class:`TokenError`.

    ``keys``: the issuer's key set (``None``: none could be fetched); ``now``: wall
    clock seconds.
    """
    if keys is None:
        raise TokenError("invalid_key", "no signing keys could be fetched")
    try:
        decoded = jwt.decode(token, keys, registry=_REGISTRY)
    except UnsupportedAlgorithmError:
        raise TokenError("authentication_failed", "algorithm not allowed") from None
    except (InvalidKeyIdError, InvalidKeyTypeError):
        raise TokenError("invalid_key", "no key of the issuer matches kid and alg") from None
    except BadSignatureError:
        raise TokenError("authentication_failed", "bad signature") from None
    except Exception as exc:  # a payload that is not a JSON object, any other defect
        raise TokenError("invalid_request", f"malformed ({type(exc).__name__})") from None
    if not _typ_ok(decoded.header.get("typ"), rules.typs):
        raise TokenError("invalid_request", "unexpected typ")
    claims: dict[str, Any] = decoded.claims
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": rules.issuer},
        "aud": {"essential": True, "values": list(rules.audiences)},
        "jti": {"essential": True},
    }
    if rules.iat_window is not None:
        options["iat"] = {"essential": True}
    try:
        _Claims(now, rules.iat_window, **options).validate(claims)
    except ClaimError as exc:
        raise TokenError(_claim_code(exc.claim), exc.description) from None
    except (JoseError, TypeError, ValueError, OverflowError) as exc:
        raise TokenError("invalid_request", f"bad claims ({type(exc).__name__})") from None
    jti = claims["jti"]
    if len(jti) > MAX_JTI:
        raise TokenError("invalid_request", "jti too long")
    return claims

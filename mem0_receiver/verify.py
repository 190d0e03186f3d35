"""Verification of webhook requests: bytes and headers in, ``None`` or one error out.

Three schemes, each a small class with ``verify()`` and a matching signer:

* ``token``: a secret-bearing URL. Mem0 signs nothing, so the URL a user
  registers carries a token made with itsdangerous; it is the only scheme
  Mem0 itself can satisfy today.
* ``hmac``: ``X-Mem0-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``.
* ``standard``: Standard Webhooks (https://www.standardwebhooks.com/), as
  signed by the ``standardwebhooks`` reference library.

Nothing here knows about HTTP frameworks or pydantic. Every malformed input
raises :class:`VerificationError`, and no message contains a secret, a token
or a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _random
from collections.abc import Mapping, Sequence
from typing import Protocol

from itsdangerous import URLSafeSerializer

from .errors import ConfigurationError, VerificationError

__all__ = [
    "HMAC_HEADER",
    "SCHEMES",
    "HmacVerifier",
    "StandardVerifier",
    "TokenVerifier",
    "Verifier",
    "build_verifiers",
    "new_secret",
]

SCHEMES = ("token", "hmac", "standard")
HMAC_HEADER = "x-mem0-signature"
TOKEN_PARAM = "token"
# A salt of our own, so that a token can never be replayed as another
# itsdangerous signature made with the same secret (itsdangerous docs, "The Salt").
TOKEN_SALT = "mem0-receiver.webhook-url"
_TOKEN_VALUE = "mem0"
_MAX_SIGNATURE_HEADER = 4096


class Verifier(Protocol):
    """What the receiver asks of a verification scheme."""

    name: str

    def verify(
        self, body: bytes, headers: Mapping[str, str], *, token: str | None, now: float
    ) -> None:
        """Return if the request is authentic, else raise VerificationError."""


class TokenVerifier:
    """A token in the webhook URL, signed with the first secret, accepted with any.

    Secrets are listed newest first: to rotate, put the new secret in front,
    re-register the URL with Mem0, then drop the old secret.
    """

    name = "token"

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ConfigurationError("The token scheme needs at least one secret.")
        # itsdangerous signs with the last key and accepts all of them.
        self._serializer = URLSafeSerializer(list(reversed(secrets)), salt=TOKEN_SALT)
        # The signed value is constant, so each secret has exactly one valid
        # token: compute them once instead of re-deriving keys per request.
        self._valid = [
            URLSafeSerializer(secret, salt=TOKEN_SALT).dumps(_TOKEN_VALUE).encode()
            for secret in secrets
        ]

    def sign(self) -> str:
        """Return the token for the current (first) secret."""
        token = self._serializer.dumps(_TOKEN_VALUE)
        assert isinstance(token, str)
        return token

    def verify(
        self, body: bytes, headers: Mapping[str, str], *, token: str | None, now: float
    ) -> None:
        if not token:
            raise VerificationError("The webhook URL carries no token.")
        presented = token.encode("utf-8", "replace")
        # Compare against every token so that timing does not reveal which matched.
        matched = False
        for valid in self._valid:
            matched |= hmac.compare_digest(presented, valid)
        if not matched:
            raise VerificationError("The webhook URL's token is not valid.")


def _hmac_hex(key: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """``headers[name]`` for a lower-case ``name``, whatever the mapping's case."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _check_timestamp(raw: str, *, now: float, tolerance: int) -> None:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise VerificationError("The signature timestamp is not a number of seconds.")
    if abs(now - int(raw)) > tolerance:
        raise VerificationError("The signature timestamp is outside the allowed window.")


class HmacVerifier:
    """``X-Mem0-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]``."""

    name = "hmac"

    def __init__(self, secrets: Sequence[str], *, tolerance: int = 300) -> None:
        if not secrets:
            raise ConfigurationError("The hmac scheme needs at least one secret.")
        self._keys = [secret.encode() for secret in secrets]
        self.tolerance = tolerance

    def sign(self, body: bytes, *, timestamp: int) -> str:
        """Return the header value for ``body`` signed with the current secret."""
        return f"t={timestamp},v1={_hmac_hex(self._keys[0], str(timestamp), body)}"

    def verify(
        self, body: bytes, headers: Mapping[str, str], *, token: str | None, now: float
    ) -> None:
        header = _header(headers, HMAC_HEADER)
        if not header:
            raise VerificationError("The request has no X-Mem0-Signature header.")
        if len(header) > _MAX_SIGNATURE_HEADER:
            raise VerificationError("The X-Mem0-Signature header is too long.")
        timestamp, signatures = None, []
        for part in header.split(","):
            name, sep, value = part.strip().partition("=")
            if not sep:
                raise VerificationError("The X-Mem0-Signature header is malformed.")
            if name == "t":
                timestamp = value
            elif name == "v1":
                signatures.append(value.encode("ascii", "replace"))
        if timestamp is None or not signatures:
            raise VerificationError("The X-Mem0-Signature header needs t= and v1=.")
        _check_timestamp(timestamp, now=now, tolerance=self.tolerance)
        for key in self._keys:
            expected = _hmac_hex(key, timestamp, body).encode()
            if any(hmac.compare_digest(expected, given) for given in signatures):
                return
        raise VerificationError("No X-Mem0-Signature matches the body.")


def _standard_key(secret: str) -> bytes:
    # As the reference library does: strip the prefix, base64-decode the rest.
    # Unpadded base64 is accepted too, as the reference library does.
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ConfigurationError(
            "A secret is not a Standard Webhooks secret (whsec_ followed by base64); "
            "generate one with `mem0-receiver secret`."
        )
    return key


class StandardVerifier:
    """Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``."""

    name = "standard"

    def __init__(self, secrets: Sequence[str], *, tolerance: int = 300) -> None:
        if not secrets:
            raise ConfigurationError("The standard scheme needs at least one secret.")
        self._keys = [_standard_key(secret) for secret in secrets]
        self.tolerance = tolerance

    def _signature(self, key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
        content = f"{msg_id}.{timestamp}.".encode() + body
        return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())

    def sign(self, body: bytes, *, msg_id: str, timestamp: int) -> dict[str, str]:
        """Return the three headers for ``body`` signed with the current secret."""
        signature = self._signature(self._keys[0], msg_id, str(timestamp), body)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + signature.decode(),
        }

    def verify(
        self, body: bytes, headers: Mapping[str, str], *, token: str | None, now: float
    ) -> None:
        msg_id = _header(headers, "webhook-id")
        timestamp = _header(headers, "webhook-timestamp")
        header = _header(headers, "webhook-signature")
        if not msg_id or not timestamp or not header:
            raise VerificationError(
                "The request lacks webhook-id, webhook-timestamp or webhook-signature."
            )
        if len(header) > _MAX_SIGNATURE_HEADER or len(msg_id) > 256:
            raise VerificationError("A Standard Webhooks header is too long.")
        _check_timestamp(timestamp, now=now, tolerance=self.tolerance)
        given = []
        for entry in header.split():
            version, sep, signature = entry.partition(",")
            if sep and version == "v1":
                given.append(signature.encode("ascii", "replace"))
        if not given:
            raise VerificationError("The webhook-signature header has no v1 signature.")
        for key in self._keys:
            expected = self._signature(key, msg_id, timestamp, body)
            if any(hmac.compare_digest(expected, signature) for signature in given):
                return
        raise VerificationError("No webhook-signature matches the body.")


def new_secret() -> str:
    """A strong random secret that every scheme accepts (Standard Webhooks' format)."""
    return "whsec_" + base64.b64encode(_random.token_bytes(32)).decode()


def build_verifiers(
    schemes: Sequence[str], secrets: Sequence[str], *, tolerance: int
) -> list[Verifier]:
    """The verifiers for ``schemes``, or a ConfigurationError naming the fix."""
    unknown = [scheme for scheme in schemes if scheme not in SCHEMES]
    if unknown:
        raise ConfigurationError(
            f"Unknown verification scheme {unknown[0]!r}; choose from {', '.join(SCHEMES)}."
        )
    if not secrets:
        raise ConfigurationError(
            "No webhook secret is set. Did you forget to set MEM0_RECEIVER_SECRETS? "
            "Generate one with `mem0-receiver secret`, or pass insecure=True for local tests."
        )
    verifiers: list[Verifier] = []
    for scheme in schemes:
        if scheme == "token":
            verifiers.append(TokenVerifier(secrets))
        elif scheme == "hmac":
            verifiers.append(HmacVerifier(secrets, tolerance=tolerance))
        else:
            verifiers.append(StandardVerifier(secrets, tolerance=tolerance))
    return verifiers

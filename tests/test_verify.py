"""Verification is pure: bytes and headers in, ``None`` or one error out.

Headers are passed with lower-case names, as the HTTP edge hands them over (ASGI
lower-cases every header name). Every test passes ``now=`` explicitly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone

import pytest
from itsdangerous import BadSignature, URLSafeSerializer
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from mem0_receiver.errors import ConfigurationError, Mem0ReceiverError, VerificationError
from mem0_receiver.testing import DOCUMENTED_BODIES
from mem0_receiver.verify import (
    HmacVerifier,
    StandardVerifier,
    TokenVerifier,
    build_verifiers,
    new_secret,
)

NOW = 1_700_000_000
TOLERANCE = 300
BODY = DOCUMENTED_BODIES["memory_add"]
NEW, OLD, OTHER = new_secret(), new_secret(), new_secret()
MSG_ID = "msg_2b3JQZ8kLmN"


def mem0_signature(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 of ``"<t>.<body>"`` in hex, computed here rather than by the package."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def mem0_header(secret: str, body: bytes = BODY, *, timestamp: int = NOW) -> dict[str, str]:
    signature = mem0_signature(secret, str(timestamp), body)
    return {"x-mem0-signature": f"t={timestamp},v1={signature}"}


def standard_headers(
    secret: str, body: bytes = BODY, *, timestamp: int = NOW, msg_id: str = MSG_ID
) -> dict[str, str]:
    """The three Standard Webhooks headers, signed by the reference library."""
    when = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def tampered(token: str) -> str:
    """``token`` with the first character of its signature changed."""
    value, signature = token.rsplit(".", 1)
    return f"{value}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"


# The token scheme


def test_a_token_made_by_sign_verifies() -> None:
    verifier = TokenVerifier([NEW])

    verifier.verify(BODY, {}, token=verifier.sign(), now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "garbage",
        TokenVerifier([OTHER]).sign(),
        tampered(TokenVerifier([NEW]).sign()),
        TokenVerifier([NEW]).sign() + "x",
        "Im1lbTAi.é",
    ],
    ids=[
        "missing",
        "empty",
        "garbage",
        "signed with another secret",
        "tampered signature",
        "trailing character",
        "non-ASCII signature",
    ],
)
def test_a_bad_token_is_refused(token: str | None) -> None:
    with pytest.raises(VerificationError):
        TokenVerifier([NEW]).verify(BODY, {}, token=token, now=NOW)


def test_a_token_signed_with_the_old_secret_verifies_while_both_are_listed() -> None:
    old_token = TokenVerifier([OLD]).sign()

    TokenVerifier([NEW, OLD]).verify(BODY, {}, token=old_token, now=NOW)


def test_new_tokens_are_made_with_the_first_secret_and_verify_with_it_alone() -> None:
    token = TokenVerifier([NEW, OLD]).sign()

    assert token == TokenVerifier([NEW]).sign()
    TokenVerifier([NEW]).verify(BODY, {}, token=token, now=NOW)
    with pytest.raises(VerificationError):
        TokenVerifier([OLD]).verify(BODY, {}, token=token, now=NOW)


def test_a_token_signed_with_the_old_secret_fails_once_that_secret_is_removed() -> None:
    old_token = TokenVerifier([OLD]).sign()

    with pytest.raises(VerificationError):
        TokenVerifier([NEW]).verify(BODY, {}, token=old_token, now=NOW)


def test_itsdangerous_signs_with_the_last_key_and_accepts_every_key() -> None:
    # TokenVerifier reverses its newest-first secrets because of this. In
    # itsdangerous 2.2.0, Serializer.make_signer() hands the whole key list to
    # the Signer (serializer.py: `self.signer(self.secret_keys, ...)`),
    # Signer.derive_key() signs with `self.secret_keys[-1]` when given no key,
    # and Signer.verify_signature() tries `for secret_key in
    # reversed(self.secret_keys)` (itsdangerous/signer.py).
    both = URLSafeSerializer([OLD, NEW], salt="test")

    signed = both.dumps("mem0")

    assert signed == URLSafeSerializer(NEW, salt="test").dumps("mem0")
    with pytest.raises(BadSignature):
        URLSafeSerializer(OLD, salt="test").loads(signed)
    assert both.loads(URLSafeSerializer(OLD, salt="test").dumps("mem0")) == "mem0"
    assert both.loads(URLSafeSerializer(NEW, salt="test").dumps("mem0")) == "mem0"


# The hmac scheme


def test_an_independently_computed_signature_verifies() -> None:
    HmacVerifier([NEW]).verify(BODY, mem0_header(NEW), token=None, now=NOW)


def test_sign_produces_the_documented_header() -> None:
    header = HmacVerifier([NEW, OLD]).sign(BODY, timestamp=NOW)

    assert header == mem0_header(NEW)["x-mem0-signature"]


@pytest.mark.parametrize(
    "header",
    [
        f"t={NOW},v1={'0' * 64},v1={mem0_signature(NEW, str(NOW), BODY)}",
        f"v1={mem0_signature(NEW, str(NOW), BODY)},t={NOW},v1={'0' * 64}",
        f"t={NOW}, v1=abc, v1={mem0_signature(NEW, str(NOW), BODY)}",
    ],
    ids=["matching one last", "matching one first", "spaces after commas"],
)
def test_a_header_with_several_signatures_verifies_when_one_matches(header: str) -> None:
    HmacVerifier([NEW]).verify(BODY, {"x-mem0-signature": header}, token=None, now=NOW)


@pytest.mark.parametrize(
    "delta", [-TOLERANCE, TOLERANCE], ids=["exactly tolerance old", "exactly tolerance ahead"]
)
def test_an_hmac_signature_exactly_at_the_tolerance_verifies(delta: int) -> None:
    headers = mem0_header(NEW, timestamp=NOW + delta)

    HmacVerifier([NEW], tolerance=TOLERANCE).verify(BODY, headers, token=None, now=NOW)


def test_an_hmac_signature_made_with_an_older_secret_listed_second_verifies() -> None:
    HmacVerifier([NEW, OLD]).verify(BODY, mem0_header(OLD), token=None, now=NOW)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (BODY, mem0_header(OTHER)),
        (BODY, mem0_header(OLD)),
        (BODY[:-1] + b" ", mem0_header(NEW)),
        (BODY, mem0_header(NEW, timestamp=NOW - TOLERANCE - 1)),
        (BODY, mem0_header(NEW, timestamp=NOW + TOLERANCE + 1)),
        (BODY, mem0_header(NEW, timestamp=0)),
    ],
    ids=[
        "wrong secret",
        "secret rotated away",
        "body changed by one byte",
        "expired",
        "too far in the future",
        "epoch",
    ],
)
def test_an_hmac_signature_that_does_not_prove_the_body_is_refused(
    body: bytes, headers: dict[str, str]
) -> None:
    with pytest.raises(VerificationError):
        HmacVerifier([NEW], tolerance=TOLERANCE).verify(body, headers, token=None, now=NOW)


def _signed(timestamp: str) -> str:
    """A header whose only fault is ``timestamp``: its v1 is right for it."""
    return f"t={timestamp},v1={mem0_signature(NEW, timestamp, BODY)}"


GOOD_V1 = mem0_signature(NEW, str(NOW), BODY)

MALFORMED_HMAC_HEADERS = {
    "missing header": None,
    "empty": "",
    "no equals sign": "garbage",
    "only commas": ",,,",
    "only an equals sign": "=",
    "no comma between parts": f"t={NOW} v1={GOOD_V1}",
    "t missing": f"v1={GOOD_V1}",
    "v1 missing": f"t={NOW}",
    "v1 empty": f"t={NOW},v1=",
    "t empty": f"t=,v1={GOOD_V1}",
    "non-numeric t": _signed("yesterday"),
    "fractional t": _signed(f"{NOW}.5"),
    "superscript digit t": _signed("²"),
    "arabic-indic digits t": _signed("١٢"),
    "arabic-indic digits t that int() reads as now": _signed(
        str(NOW).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    ),
    "negative t": _signed(f"-{NOW}"),
    "huge t": _signed("9" * 20),
    "t with spaces": _signed(f" {NOW} "),
    "10 KB header": f"t={NOW},v1={GOOD_V1}," + "v1=" + "0" * 10_240,
    "v1 not hex": f"t={NOW},v1={'z' * 64}",
    "non-ASCII in v1": f"t={NOW},v1={GOOD_V1[:-1]}é",
    "non-ASCII only v1": f"t={NOW},v1=ünïcödé",
}


@pytest.mark.parametrize(
    "header", list(MALFORMED_HMAC_HEADERS.values()), ids=list(MALFORMED_HMAC_HEADERS)
)
def test_a_malformed_hmac_header_raises_verification_error_and_nothing_else(
    header: str | None,
) -> None:
    headers = {} if header is None else {"x-mem0-signature": header}

    with pytest.raises(VerificationError):
        HmacVerifier([NEW], tolerance=TOLERANCE).verify(BODY, headers, token=None, now=NOW)


# The standard scheme


def test_what_the_reference_library_signs_our_standard_verifier_accepts() -> None:
    StandardVerifier([NEW]).verify(BODY, standard_headers(NEW), token=None, now=NOW)


def test_what_our_standard_verifier_signs_the_reference_library_accepts() -> None:
    # The reference library reads the clock itself and takes no `now`, so this
    # one signature is made at the current time.
    headers = StandardVerifier([NEW]).sign(BODY, msg_id=MSG_ID, timestamp=int(time.time()))

    assert Webhook(NEW).verify(BODY, headers) == json.loads(BODY)


def test_our_standard_signature_is_the_reference_signature() -> None:
    ours = StandardVerifier([NEW, OLD]).sign(BODY, msg_id=MSG_ID, timestamp=NOW)

    assert ours == standard_headers(NEW)


def test_a_standard_signature_made_with_an_older_secret_listed_second_verifies() -> None:
    StandardVerifier([NEW, OLD]).verify(BODY, standard_headers(OLD), token=None, now=NOW)


@pytest.mark.parametrize(
    "delta", [-TOLERANCE, TOLERANCE], ids=["exactly tolerance old", "exactly tolerance ahead"]
)
def test_a_standard_signature_exactly_at_the_tolerance_verifies(delta: int) -> None:
    headers = standard_headers(NEW, timestamp=NOW + delta)

    StandardVerifier([NEW], tolerance=TOLERANCE).verify(BODY, headers, token=None, now=NOW)


def test_a_standard_signature_header_with_several_entries_verifies_when_one_matches() -> None:
    headers = standard_headers(NEW)
    good = headers["webhook-signature"]
    wrong = standard_headers(OTHER)["webhook-signature"]
    headers["webhook-signature"] = f"v1a,{good.split(',')[1]} {wrong}  {good} v2,abc"

    StandardVerifier([NEW]).verify(BODY, headers, token=None, now=NOW)


def _with(**changes: str | None) -> dict[str, str]:
    """Reference-signed headers for BODY with some replaced (or, given None, removed)."""
    headers = standard_headers(NEW)
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is None:
            del headers[key]
        else:
            headers[key] = value
    return headers


_GOOD_STANDARD = standard_headers(NEW)["webhook-signature"]

REFUSED_STANDARD = {
    "expired": (BODY, standard_headers(NEW, timestamp=NOW - TOLERANCE - 1)),
    "too far in the future": (BODY, standard_headers(NEW, timestamp=NOW + TOLERANCE + 1)),
    "wrong secret": (BODY, standard_headers(OTHER)),
    "secret rotated away": (BODY, standard_headers(OLD)),
    "tampered body": (BODY.replace(b"Alex", b"Alec"), standard_headers(NEW)),
    "other message id": (BODY, _with(webhook_id="msg_other")),
    "only a v1a entry": (BODY, _with(webhook_signature="v1a," + _GOOD_STANDARD[3:])),
    "several entries none matching": (
        BODY,
        _with(webhook_signature=f"v1a,abc {standard_headers(OTHER)['webhook-signature']} v1,"),
    ),
    "webhook-id missing": (BODY, _with(webhook_id=None)),
    "webhook-timestamp missing": (BODY, _with(webhook_timestamp=None)),
    "webhook-signature missing": (BODY, _with(webhook_signature=None)),
    "no headers": (BODY, {}),
    "empty signature": (BODY, _with(webhook_signature="")),
    "bad base64 signature": (BODY, _with(webhook_signature="v1,!!not*base64!!")),
    "signature without a comma": (BODY, _with(webhook_signature=_GOOD_STANDARD.replace(",", ""))),
    "non-numeric timestamp": (BODY, _with(webhook_timestamp="now")),
    "unicode digit timestamp": (BODY, _with(webhook_timestamp="١٢")),
    "huge timestamp": (BODY, _with(webhook_timestamp="9" * 20)),
    "10 KB signature header": (BODY, _with(webhook_signature=_GOOD_STANDARD + " v1,A" * 2048)),
    "non-ASCII signature": (BODY, _with(webhook_signature="v1,ünïcödé")),
}


@pytest.mark.parametrize(
    ("body", "headers"), list(REFUSED_STANDARD.values()), ids=list(REFUSED_STANDARD)
)
def test_a_standard_request_that_does_not_prove_the_body_is_refused(
    body: bytes, headers: dict[str, str]
) -> None:
    with pytest.raises(VerificationError):
        StandardVerifier([NEW], tolerance=TOLERANCE).verify(body, headers, token=None, now=NOW)


@pytest.mark.parametrize(
    "secret",
    ["not base64!", "whsec_not base64!", "whsec_c2VjcmV0!"],
    ids=["no prefix", "with prefix", "base64 with a stray character"],
)
def test_a_standard_secret_that_is_not_base64_is_a_configuration_error_that_hides_it(
    secret: str,
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        StandardVerifier([NEW, secret])

    assert secret not in str(caught.value)
    assert "mem0-receiver secret" in str(caught.value)


def test_a_standard_secret_with_no_key_after_the_prefix_is_a_configuration_error() -> None:
    # The reference library refuses it too, rather than sign with an empty key
    # that anyone can use (standardwebhooks/webhooks.py, Webhook.__init__).
    with pytest.raises(EmptyWebhookSecretError):
        Webhook("whsec_")

    with pytest.raises(ConfigurationError):
        StandardVerifier(["whsec_"])


# build_verifiers


def test_build_verifiers_builds_one_verifier_per_scheme_in_order() -> None:
    verifiers = build_verifiers(["standard", "token", "hmac"], [NEW], tolerance=TOLERANCE)

    assert [verifier.name for verifier in verifiers] == ["standard", "token", "hmac"]


def test_an_unknown_scheme_is_a_configuration_error_that_lists_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"'rsa'.*token, hmac, standard"):
        build_verifiers(["hmac", "rsa"], [NEW], tolerance=TOLERANCE)


def test_no_secrets_is_a_configuration_error_that_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="MEM0_RECEIVER_SECRETS"):
        build_verifiers(["token"], [], tolerance=TOLERANCE)


@pytest.mark.parametrize(
    "verifier_class",
    [TokenVerifier, HmacVerifier, StandardVerifier],
    ids=["token", "hmac", "standard"],
)
def test_a_verifier_without_secrets_is_a_configuration_error(
    verifier_class: type[TokenVerifier | HmacVerifier | StandardVerifier],
) -> None:
    with pytest.raises(ConfigurationError, match="at least one secret"):
        verifier_class([])


# No message gives anything away


def _fail_token(token: str) -> Callable[[], None]:
    return lambda: TokenVerifier([NEW, OLD]).verify(BODY, {}, token=token, now=NOW)


def _fail_hmac(header: str, body: bytes = BODY) -> Callable[[], None]:
    headers = {"x-mem0-signature": header}
    return lambda: HmacVerifier([NEW, OLD]).verify(body, headers, token=None, now=NOW)


def _fail_standard(headers: dict[str, str], body: bytes = BODY) -> Callable[[], None]:
    return lambda: StandardVerifier([NEW, OLD]).verify(body, headers, token=None, now=NOW)


_OTHER_TOKEN = TokenVerifier([OTHER]).sign()
_OTHER_V1 = mem0_signature(OTHER, str(NOW), BODY)
_OTHER_STANDARD = standard_headers(OTHER)["webhook-signature"]

# Each case: what raises, and what must not appear in its message. Every
# failing case also includes the signatures the verifier expected.
LEAK_CASES: dict[str, tuple[Callable[[], object], list[str]]] = {
    "token signed with another secret": (_fail_token(_OTHER_TOKEN), [_OTHER_TOKEN]),
    "tampered token": (
        _fail_token(tampered(TokenVerifier([NEW]).sign())),
        [tampered(TokenVerifier([NEW]).sign())],
    ),
    "hmac wrong secret": (_fail_hmac(f"t={NOW},v1={_OTHER_V1}"), [_OTHER_V1]),
    "hmac tampered body": (_fail_hmac(f"t={NOW},v1={GOOD_V1}", BODY + b" "), [GOOD_V1]),
    "hmac expired": (_fail_hmac(mem0_header(NEW, timestamp=0)["x-mem0-signature"]), []),
    "hmac without t": (_fail_hmac(f"v1={GOOD_V1}"), [GOOD_V1]),
    "hmac too long": (_fail_hmac(f"t={NOW},v1={GOOD_V1}," + "x" * 10_240), [GOOD_V1]),
    "hmac bad timestamp": (_fail_hmac(f"t=١٢,v1={GOOD_V1}"), [GOOD_V1]),
    "standard wrong secret": (_fail_standard(standard_headers(OTHER)), [_OTHER_STANDARD[3:]]),
    "standard tampered body": (
        _fail_standard(standard_headers(NEW), BODY + b" "),
        [_GOOD_STANDARD[3:]],
    ),
    "standard expired": (_fail_standard(standard_headers(NEW, timestamp=0)), []),
    "standard bad base64": (_fail_standard(_with(webhook_signature="v1,s3cr3t!!")), ["s3cr3t"]),
    "standard no comma": (
        _fail_standard(_with(webhook_signature=_GOOD_STANDARD.replace(",", ""))),
        [_GOOD_STANDARD[3:]],
    ),
    "standard secret not base64": (
        lambda: StandardVerifier(["whsec_s3cr3t not base64!"]),
        ["s3cr3t"],
    ),
}


def _expected_signatures() -> list[str]:
    """What the verifiers compute for BODY: a message must not reveal these either."""
    return [
        TokenVerifier([NEW]).sign(),
        TokenVerifier([OLD]).sign(),
        *(mem0_signature(secret, str(NOW), BODY) for secret in (NEW, OLD)),
        *(standard_headers(secret)["webhook-signature"][3:] for secret in (NEW, OLD)),
    ]


@pytest.mark.parametrize(("fail", "given"), list(LEAK_CASES.values()), ids=list(LEAK_CASES))
def test_no_error_message_contains_a_secret_a_token_or_a_signature(
    fail: Callable[[], object], given: list[str]
) -> None:
    with pytest.raises(Mem0ReceiverError) as caught:
        fail()

    message = f"{caught.value} {caught.value!r}"
    secrets = [NEW, OLD, OTHER, *(s.removeprefix("whsec_") for s in (NEW, OLD, OTHER))]
    for sensitive in [*secrets, *given, *_expected_signatures()]:
        assert sensitive not in message
    raw_keys = [base64.b64decode(s.removeprefix("whsec_")) for s in (NEW, OLD, OTHER)]
    assert not any(repr(key) in message for key in raw_keys)

"""The HTTP edge: every status a sender can meet, through the real ASGI app."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import RedisServer
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from mem0_receiver import Receiver
from mem0_receiver.testing import DOCUMENTED_BODIES, Signer, WebhookTester, make_body
from mem0_receiver.verify import new_secret

SECRET = new_secret()
BODY = make_body("memory_add", memory="Name is Alex")


def make_receiver(**kwargs: object) -> Receiver:
    receiver = Receiver(secrets=[SECRET], environ={}, **kwargs)  # type: ignore[arg-type]

    @receiver.on("*")
    def audit(event: object) -> None:
        pass

    return receiver


@pytest.fixture
def hooks() -> Iterator[WebhookTester]:
    with WebhookTester(make_receiver(verify=["token", "hmac", "standard"])) as tester:
        yield tester


@pytest.mark.parametrize("name", sorted(DOCUMENTED_BODIES), ids=sorted(DOCUMENTED_BODIES))
def test_documented_payloads_are_acknowledged_byte_for_byte(
    hooks: WebhookTester, name: str
) -> None:
    response = hooks.post(DOCUMENTED_BODIES[name])
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.headers["content-type"] == "application/json"
    assert hooks.pending() == 1


@pytest.mark.parametrize("scheme", ["token", "hmac", "standard"])
def test_each_enabled_scheme_alone_is_enough(hooks: WebhookTester, scheme: str) -> None:
    assert hooks.post(BODY, scheme=scheme).status_code == 202


def test_standard_webhook_id_becomes_the_delivery_id(hooks: WebhookTester) -> None:
    headers = hooks.signer.standard_headers(BODY, msg_id="msg_2Lh9")
    response = hooks.post(BODY, scheme="standard", headers=headers)
    assert response.json() == {"status": "queued", "delivery_id": "msg_2Lh9"}


def test_a_webhook_id_that_no_signature_covers_does_not_name_the_delivery(
    hooks: WebhookTester,
) -> None:
    # hmac signs the timestamp and body only: a replay with a fresh id is a duplicate.
    first = hooks.post(BODY, scheme="hmac", headers={"webhook-id": "a"}).json()
    again = hooks.post(BODY, scheme="hmac", headers={"webhook-id": "b"}).json()
    assert first["delivery_id"] != "a"
    assert again == {"status": "duplicate", "delivery_id": first["delivery_id"]}


OTHER = Signer([new_secret()])


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({}, {}),
        ({"token": "nope"}, {}),
        ({"token": OTHER.token()}, {}),
        ({}, OTHER.hmac_headers(BODY)),
        ({}, OTHER.standard_headers(BODY)),
        ({}, {"X-Mem0-Signature": "garbage"}),
        ({}, {"webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,%%%"}),
    ],
    ids=[
        "nothing",
        "bad-token",
        "foreign-token",
        "foreign-hmac",
        "foreign-standard",
        "malformed-hmac",
        "malformed-standard",
    ],
)
def test_requests_without_valid_credentials_get_401(
    params: dict[str, str], headers: dict[str, str]
) -> None:
    receiver = make_receiver(verify=["token", "hmac", "standard"])
    with TestClient(receiver) as client:
        response = client.post(
            "/",
            content=BODY,
            params=params,
            headers={"Content-Type": "application/json", **headers},
        )
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert SECRET not in response.text and "Name is Alex" not in response.text


def test_expired_hmac_signature_gets_401(hooks: WebhookTester) -> None:
    stale = hooks.signer.hmac_headers(BODY, timestamp=int(time.time()) - 301)
    response = hooks.post(BODY, scheme="hmac", headers=stale)
    assert response.status_code == 401
    assert "outside the allowed window" in response.json()["detail"]


def test_rotated_secret_keeps_old_urls_working_until_removed() -> None:
    old, new = new_secret(), new_secret()
    old_token = Signer([old]).token()
    with TestClient(Receiver(secrets=[new, old], environ={})) as client:
        assert client.post("/", params={"token": old_token}, content=BODY).status_code == 202
    with TestClient(Receiver(secrets=[new], environ={})) as client:
        assert client.post("/", params={"token": old_token}, content=BODY).status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"not json", 400, "malformed_body"),
        (b"\xff\xfe", 400, "malformed_body"),
        (b"[1, 2]", 400, "malformed_body"),
        (b'"ADD"', 400, "malformed_body"),
        (b"{}", 422, "not_a_mem0_event"),
        (b'{"event_details": {"event": "ADD", "data": {"memory": "x"}}}', 422, "not_a_mem0_event"),
        (b'{"event_details": {"event": "CATEGORIZE", "memory_id": "m"}}', 422, "not_a_mem0_event"),
        (b'{"event_details": "ADD"}', 422, "not_a_mem0_event"),
        (b'{"event": "memory_add", "memory_id": "m", "memory": "\\ud800"}', 400, "malformed_body"),
        (b'{"event": "memory_add", "memory_id": "m", "x": {"\\udfff": 1}}', 400, "malformed_body"),
    ],
    ids=[
        "text",
        "not-utf8",
        "array",
        "string",
        "empty-object",
        "add-without-id",
        "categorize-without-categories",
        "details-not-object",
        "lone-surrogate",
        "lone-surrogate-key",
    ],
)
def test_bodies_that_are_not_mem0_events_get_a_json_error(
    hooks: WebhookTester, body: bytes, status: int, error: str
) -> None:
    response = hooks.post(body)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["detail"].endswith(".")
    assert hooks.pending() == 0


def test_missing_field_is_named_in_the_422(hooks: WebhookTester) -> None:
    response = hooks.post(b'{"event_details": {"event": "UPDATE", "data": {"memory": "x"}}}')
    assert "memory's id (id or memory_id)" in response.json()["detail"]
    assert '"x"' not in response.json()["detail"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_non_json_content_type_gets_415(hooks: WebhookTester, content_type: str) -> None:
    response = hooks.post(BODY, headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert hooks.pending() == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/cloudevents+json"],
)
def test_json_content_types_are_accepted(hooks: WebhookTester, content_type: str) -> None:
    assert hooks.post(BODY, headers={"Content-Type": content_type}).status_code == 202


def test_body_over_the_limit_gets_413_from_content_length() -> None:
    with WebhookTester(make_receiver(max_body_bytes=100)) as hooks:
        response = hooks.post(b"{" + b" " * 200 + b"}")
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


def test_chunked_body_over_the_limit_gets_413_while_reading() -> None:
    # Straight through the ASGI interface, to see how much of the body the app
    # reads: TestClient would buffer the whole stream before the app saw it.
    receiver = make_receiver(max_body_bytes=1000)
    token = Signer([SECRET]).token().encode()
    chunks_read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b" " * 100, "more_body": chunks_read < 50}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "root_path": "",
        "query_string": b"token=" + token,
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
    }

    async def scenario() -> None:
        await receiver.startup()
        try:
            await receiver(scope, receive, send)
        finally:
            await receiver.shutdown()

    asyncio.run(scenario())
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"] == "body_too_large"
    assert chunks_read == 11  # refused at the chunk that passed 1000 bytes, not after 5000


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_other_methods_get_405_with_allow(hooks: WebhookTester, method: str) -> None:
    response = hooks._client.request(method, "/")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"] == "method_not_allowed"


def test_unknown_paths_get_a_json_404(hooks: WebhookTester) -> None:
    response = hooks._client.post("/elsewhere", content=BODY)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_duplicate_delivery_is_acknowledged_but_not_queued_again(hooks: WebhookTester) -> None:
    first = hooks.post(BODY)
    second = hooks.post(BODY)
    assert second.json() == {"status": "duplicate", "delivery_id": first.json()["delivery_id"]}
    assert hooks.pending() == 1


def test_unknown_event_type_is_acknowledged_and_logged_once(
    hooks: WebhookTester, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mem0_receiver")
    for memory_id in ("m1", "m2"):
        body = json.dumps({"event": "memory_archive", "memory_id": memory_id}).encode()
        assert hooks.post(body).status_code == 202
    assert hooks.pending() == 2
    assert sum("memory_archive" in r.getMessage() for r in caplog.records) == 1


def test_event_without_matching_handlers_is_acknowledged_as_ignored() -> None:
    receiver = Receiver(secrets=[SECRET], environ={})

    @receiver.on("memory_delete")
    def forget(event: object) -> None:
        pass

    with WebhookTester(receiver) as hooks:
        response = hooks.post(BODY)
        assert response.json()["status"] == "ignored"
        assert hooks.pending() == 0


def test_insecure_receiver_accepts_unsigned_requests_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mem0_receiver")
    with TestClient(make_receiver(insecure=True)) as client:
        assert client.post("/", content=BODY).status_code == 202
    assert any("Verification is OFF" in r.getMessage() for r in caplog.records)


def test_readyz_reports_an_available_broker(hooks: WebhookTester) -> None:
    response = hooks._client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "broker": "StubBroker"}


def test_healthz_stays_200_while_readyz_follows_redis_down_and_back(
    make_redis: Callable[..., RedisServer],
) -> None:
    server = make_redis()
    receiver = make_receiver(broker=server.url, enqueue_timeout=0.5)
    with TestClient(receiver) as client:
        assert client.get("/readyz").status_code == 200
        server.stop()
        started = time.monotonic()
        ready = client.get("/readyz")
        waited = time.monotonic() - started
        alive = client.get("/healthz")
        server.start()
        back = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "broker": server.url}
    assert waited < 1.5
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    assert back.status_code == 200


def test_receiver_mounts_under_a_path_in_starlette() -> None:
    receiver = make_receiver()
    app = Starlette(routes=[Mount("/webhooks/mem0", app=receiver)], lifespan=receiver.lifespan)
    url = receiver.webhook_url("http://testserver/webhooks/mem0")
    with TestClient(app) as client:
        response = client.post(url, content=BODY, headers={"Content-Type": "application/json"})
        assert response.status_code == 202
        assert client.get("/webhooks/mem0/healthz").status_code == 200


def test_misconfigured_mounted_receiver_answers_json_not_a_traceback() -> None:
    receiver = Receiver(environ={})  # no secret
    app = Starlette(routes=[Mount("/hooks", app=receiver)])
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/hooks/", content=BODY)
    assert response.status_code == 500
    assert "MEM0_RECEIVER_SECRETS" in response.json()["detail"]


# The queue is the subject from here on: a real Redis that is down or frozen.


def _post_with_redis(url: str, **kwargs: object) -> httpx.Response:
    receiver = make_receiver(broker=url, **kwargs)
    with TestClient(receiver) as client:
        return client.post(
            receiver.webhook_url("http://testserver/"),
            content=BODY,
            headers={"Content-Type": "application/json"},
        )


def test_redis_enqueue_acknowledges_only_what_redis_holds(
    redis_server: RedisServer, redis_url: str
) -> None:
    response = _post_with_redis(redis_url)
    assert response.status_code == 202
    client = redis_server.client()
    assert client.llen("dramatiq:mem0") == 1
    assert client.hlen("dramatiq:mem0.msgs") == 1


def test_broker_down_gets_503_with_retry_after(make_redis: object) -> None:
    server = make_redis()  # type: ignore[operator]
    url = server.url
    server.stop()
    started = time.monotonic()
    response = _post_with_redis(url)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "broker_unavailable"
    assert time.monotonic() - started < 5


def test_frozen_redis_gets_503_within_the_enqueue_deadline(make_redis: object) -> None:
    server = make_redis()  # type: ignore[operator]
    receiver = make_receiver(broker=server.url, enqueue_timeout=0.5)
    with TestClient(receiver) as client:
        url = receiver.webhook_url("http://testserver/")
        headers = {"Content-Type": "application/json"}
        assert client.post(url, content=BODY, headers=headers).status_code == 202
        server.freeze()
        try:
            started = time.monotonic()
            response = client.post(url, content=make_body("memory_delete"), headers=headers)
            waited = time.monotonic() - started
            ready = client.get("/readyz")
            alive = client.get("/healthz")
        finally:
            server.thaw()
        assert (
            client.post(url, content=make_body("memory_update"), headers=headers).status_code == 202
        )
    assert response.status_code == 503
    assert waited < 1.5
    assert ready.status_code == 503
    assert alive.status_code == 200

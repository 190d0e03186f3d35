"""Registering the receiver's webhook with the real mem0ai client against a fake Mem0."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import cli_env, mem0_receiver

from mem0_receiver.errors import ConfigurationError
from mem0_receiver.registration import (
    EVENT_TYPES,
    Mem0Client,
    close_client,
    create_webhook,
    delete_webhook,
    list_webhooks,
    make_client,
    redact_url,
    redact_webhook,
)

if TYPE_CHECKING:
    from fake_mem0 import FakeMem0

# tests/fake_mem0.py provides the `fake_mem0` and `mem0_sdk_offline` fixtures. Loading it
# as a plugin (not `from fake_mem0 import ...`) lets pytest rewrite it and keeps ruff quiet
# about fixture arguments shadowing imports.
pytest_plugins = ["fake_mem0"]

TOKEN = "s3cret-webhook-token-value"
SIGNED_URL = f"https://receiver.example.com/mem0/webhook?token={TOKEN}"
WEBHOOKS_PATH = "/api/v1/webhooks/projects/{}/"


@pytest.fixture
def client(fake_mem0: FakeMem0) -> Iterator[Mem0Client]:
    client = make_client(api_key=fake_mem0.api_key, host=fake_mem0.url)
    yield client
    close_client(client)


def _register(client: Mem0Client, project_id: str | None = None) -> dict[str, object]:
    return create_webhook(
        client,
        url=SIGNED_URL,
        name="mem0-receiver",
        event_types=["memory_add", "memory_update"],
        project_id=project_id,
    )


def _assert_one_safe_line(message: str, *secrets: str) -> None:
    assert "\n" not in message
    assert message.endswith(".")
    for secret in secrets:
        assert secret not in message


@pytest.mark.parametrize(
    ("project_id", "expected_project"),
    [(None, "proj_fake"), ("proj_other", "proj_other")],
    ids=["in-the-api-keys-project", "in-an-explicit-project"],
)
def test_create_webhook_registers_the_signed_url_with_mem0(
    fake_mem0: FakeMem0, client: Mem0Client, project_id: str | None, expected_project: str
) -> None:
    webhook = _register(client, project_id)

    assert fake_mem0.webhooks == {webhook["webhook_id"]: webhook}
    assert webhook["url"] == SIGNED_URL
    assert webhook["event_types"] == ["memory_add", "memory_update"]
    assert webhook["project"] == expected_project
    assert webhook["name"] == "mem0-receiver"
    assert fake_mem0.calls() == [
        ("GET", "/v1/ping/", 200),
        ("POST", WEBHOOKS_PATH.format(expected_project), 201),
    ]
    post = fake_mem0.requests[-1]
    assert post.headers["authorization"] == f"Token {fake_mem0.api_key}"
    assert post.json == {
        "url": SIGNED_URL,
        "name": "mem0-receiver",
        "event_types": ["memory_add", "memory_update"],
    }


def test_a_created_webhook_prints_without_its_token(client: Mem0Client) -> None:
    webhook = _register(client)

    printable = redact_webhook(webhook)

    assert printable["url"] == "https://receiver.example.com/mem0/webhook?token=\u2026"
    assert TOKEN not in repr(printable)
    assert webhook["url"] == SIGNED_URL


def test_list_webhooks_returns_the_webhooks_of_one_project(
    fake_mem0: FakeMem0, client: Mem0Client
) -> None:
    ours = _register(client)
    _register(client, "proj_other")

    assert list_webhooks(client, project_id=None) == [ours]
    others = list_webhooks(client, project_id="proj_other")
    assert [webhook["project"] for webhook in others] == ["proj_other"]
    assert fake_mem0.calls()[-2:] == [
        ("GET", WEBHOOKS_PATH.format("proj_fake"), 200),
        ("GET", WEBHOOKS_PATH.format("proj_other"), 200),
    ]


def test_delete_webhook_removes_it_from_mem0(fake_mem0: FakeMem0, client: Mem0Client) -> None:
    webhook_id = str(_register(client)["webhook_id"])

    answer = delete_webhook(client, webhook_id=webhook_id)

    assert answer == {"message": "Webhook deleted successfully"}
    assert fake_mem0.webhooks == {}
    assert list_webhooks(client, project_id=None) == []
    assert ("DELETE", f"/api/v1/webhooks/{webhook_id}/", 200) in fake_mem0.calls()


def test_deleting_an_unknown_webhook_names_mem0s_answer(client: Mem0Client) -> None:
    with pytest.raises(ConfigurationError) as caught:
        delete_webhook(client, webhook_id="wh_404")

    message = str(caught.value)
    assert "delete webhook wh_404" in message
    assert "HTTP 404: Webhook not found" in message
    _assert_one_safe_line(message)


def test_a_wrong_api_key_is_a_one_line_configuration_error_without_the_key(
    fake_mem0: FakeMem0,
) -> None:
    wrong_key = "m0-wrong-key-fedcba9876543210"

    with pytest.raises(ConfigurationError) as caught:
        make_client(api_key=wrong_key, host=fake_mem0.url)

    message = str(caught.value)
    _assert_one_safe_line(message, wrong_key, fake_mem0.api_key)
    assert "refused the API key (HTTP 401" in message
    assert "MEM0_API_KEY" in message
    assert "--api-key" in message
    assert fake_mem0.calls() == [("GET", "/v1/ping/", 401)]
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize(
    "operation",
    [
        lambda client: _register(client),
        lambda client: list_webhooks(client, project_id=None),
        lambda client: delete_webhook(client, webhook_id="wh_1"),
    ],
    ids=["create", "list", "delete"],
)
def test_a_key_revoked_after_the_ping_fails_each_call_without_leaking_secrets(
    fake_mem0: FakeMem0,
    client: Mem0Client,
    caplog: pytest.LogCaptureFixture,
    operation: Callable[[Mem0Client], object],
) -> None:
    fake_mem0.revoke_key()
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ConfigurationError) as caught:
        operation(client)

    message = str(caught.value)
    _assert_one_safe_line(message, fake_mem0.api_key, TOKEN)
    assert "with this API key (HTTP 401: Invalid API key)" in message
    assert "MEM0_API_KEY" in message
    assert fake_mem0.calls()[-1][2] == 401
    # mem0ai logs failed requests itself; those lines must not carry secrets either.
    assert fake_mem0.api_key not in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("event_types", "named"),
    [
        (["memory_add", "memory_created"], "'memory_created'"),
        (["memory:add"], "'memory:add' (did you mean memory_add?)"),
        (["MEMORY_ADD", "memory_delete", "bogus"], "'MEMORY_ADD', 'bogus'"),
        ([], "at least one event type"),
    ],
    ids=["unknown-name", "colon-spelling", "several-bad-ones", "none-at-all"],
)
def test_an_unknown_event_type_is_refused_before_any_http_call(
    fake_mem0: FakeMem0, client: Mem0Client, event_types: list[str], named: str
) -> None:
    calls_before = fake_mem0.calls()

    with pytest.raises(ConfigurationError) as caught:
        create_webhook(
            client, url=SIGNED_URL, name="mem0-receiver", event_types=event_types, project_id=None
        )

    message = str(caught.value)
    assert named in message
    assert ", ".join(EVENT_TYPES) in message
    _assert_one_safe_line(message, TOKEN)
    assert fake_mem0.calls() == calls_before
    assert fake_mem0.webhooks == {}


@pytest.mark.parametrize(
    "url",
    [f"receiver.example.com/hook?token={TOKEN}", f"ftp://receiver.example.com/?token={TOKEN}"],
    ids=["no-scheme", "not-http"],
)
def test_a_webhook_url_that_is_not_http_is_refused_before_any_http_call(
    fake_mem0: FakeMem0, client: Mem0Client, url: str
) -> None:
    calls_before = fake_mem0.calls()

    with pytest.raises(ConfigurationError) as caught:
        create_webhook(
            client, url=url, name="mem0-receiver", event_types=["memory_add"], project_id=None
        )

    message = str(caught.value)
    assert "token=\u2026" in message
    _assert_one_safe_line(message, TOKEN)
    assert fake_mem0.calls() == calls_before


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (
            "https://r.example.com/hook?token=abc123",
            "https://r.example.com/hook?token=\u2026",
        ),
        (
            "https://r.example.com/hook?v=1&token=abc123&x=2#top",
            "https://r.example.com/hook?v=1&token=\u2026&x=2#top",
        ),
        ("https://r.example.com/hook?Token=abc123", "https://r.example.com/hook?Token=\u2026"),
        ("https://r.example.com/hook?token=", "https://r.example.com/hook?token=\u2026"),
        (
            "https://r.example.com/hook?csrftoken=keep&mytoken=keep",
            "https://r.example.com/hook?csrftoken=keep&mytoken=keep",
        ),
        ("https://r.example.com/hook", "https://r.example.com/hook"),
        (
            "https://user:hunter2@r.example.com/hook?token=abc123",
            "https://user:\u2026@r.example.com/hook?token=\u2026",
        ),
    ],
    ids=[
        "only-parameter",
        "among-others",
        "any-case",
        "empty-value",
        "similar-names-kept",
        "no-token",
        "password-in-userinfo",
    ],
)
def test_redact_url_hides_the_token(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_make_client_reads_the_key_and_host_from_the_environment(
    fake_mem0: FakeMem0, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEM0_API_KEY", fake_mem0.api_key)
    monkeypatch.setenv("MEM0_HOST", fake_mem0.url)

    client = make_client()
    try:
        assert client.project_id == "proj_fake"
        assert list_webhooks(client, project_id=None) == []
    finally:
        close_client(client)
    assert fake_mem0.requests[0].headers["authorization"] == f"Token {fake_mem0.api_key}"


def test_a_project_id_given_to_make_client_wins_over_the_pinged_one(
    fake_mem0: FakeMem0,
) -> None:
    client = make_client(api_key=fake_mem0.api_key, host=fake_mem0.url, project_id="proj_other")
    try:
        webhook = _register(client)
    finally:
        close_client(client)

    assert webhook["project"] == "proj_other"


@pytest.mark.parametrize("blank", [None, "", "   "], ids=["unset", "empty", "whitespace"])
def test_a_missing_api_key_says_how_to_provide_one(
    monkeypatch: pytest.MonkeyPatch, blank: str | None
) -> None:
    monkeypatch.delenv("MEM0_API_KEY", raising=False)

    with pytest.raises(ConfigurationError, match=r"^Set MEM0_API_KEY or pass --api-key\.$"):
        make_client(api_key=blank, host="http://127.0.0.1:9")


def test_a_missing_mem0ai_package_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mem0", None)  # makes `import mem0` raise ImportError

    with pytest.raises(ConfigurationError) as caught:
        make_client(api_key="m0-any-key", host="http://127.0.0.1:9")

    assert str(caught.value) == (
        "The register command needs the mem0ai package: pip install 'mem0-receiver[mem0]'."
    )


def test_an_unreachable_host_is_a_one_line_configuration_error(mem0_sdk_offline: None) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "m0-any-key-0011223344"

    with pytest.raises(ConfigurationError) as caught:
        make_client(api_key=key, host=f"http://127.0.0.1:{port}")

    message = str(caught.value)
    assert message.startswith(f"Could not reach Mem0 at http://127.0.0.1:{port} ")
    assert "MEM0_HOST" in message
    _assert_one_safe_line(message, key)


@pytest.mark.parametrize(
    "host",
    ["api.mem0.ai", "ftp://api.mem0.ai", "not a url"],
    ids=["no-scheme", "not-http", "not-a-url"],
)
def test_a_host_that_is_not_an_http_url_is_refused_before_any_http_call(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.setitem(sys.modules, "mem0", None)  # proves the check runs before the import

    with pytest.raises(
        ConfigurationError, match=r"is not an absolute http\(s\) URL; set MEM0_HOST"
    ):
        make_client(api_key="m0-any-key", host=host)


# The `mem0-receiver register` command, with the real client in a subprocess.


def test_register_command_creates_lists_and_deletes_the_webhook(
    fake_mem0: FakeMem0, tmp_path: Path
) -> None:
    secret = "whsec_" + "A" * 43 + "="
    env = cli_env(
        MEM0_RECEIVER_SECRETS=secret,
        MEM0_API_KEY=fake_mem0.api_key,
        MEM0_HOST=fake_mem0.url,
        MEM0_TELEMETRY="false",
        MEM0_DIR=str(tmp_path),
        NO_PROXY="127.0.0.1",
    )
    created = mem0_receiver(
        "register",
        "https://example.com/webhooks/mem0",
        "--event-types",
        "memory_add,memory_delete",
        cwd=tmp_path,
        env=env,
    )
    assert created.returncode == 0, created.stderr
    (hook,) = fake_mem0.webhooks.values()
    assert hook["url"].startswith("https://example.com/webhooks/mem0/?token=")
    assert hook["event_types"] == ["memory_add", "memory_delete"]
    token = hook["url"].split("token=")[1]
    assert token not in created.stdout and "token=…" in created.stdout

    listed = mem0_receiver("register", "--list", cwd=tmp_path, env=env)
    assert hook["webhook_id"] in listed.stdout and token not in listed.stdout

    deleted = mem0_receiver("register", "--delete", hook["webhook_id"], cwd=tmp_path, env=env)
    assert deleted.stdout.strip() == f"Deleted webhook {hook['webhook_id']}."
    assert fake_mem0.webhooks == {}


def test_register_command_with_a_bad_key_fails_in_one_line(
    fake_mem0: FakeMem0, tmp_path: Path
) -> None:
    env = cli_env(
        MEM0_RECEIVER_SECRETS="s3cret-value",
        MEM0_API_KEY="m0-wrong-key-value",
        MEM0_HOST=fake_mem0.url,
        MEM0_TELEMETRY="false",
        MEM0_DIR=str(tmp_path),
    )
    result = mem0_receiver("register", "https://example.com/x", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "m0-wrong-key-value" not in result.stderr
    assert "Traceback" not in result.stderr

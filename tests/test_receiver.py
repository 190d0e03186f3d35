"""The Receiver: settings, signed URLs, copies, and start-up failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import cli_env, free_port
from dramatiq.brokers.stub import StubBroker

from mem0_receiver import ConfigurationError, Receiver
from mem0_receiver.testing import Signer
from mem0_receiver.verify import new_secret


def test_settings_come_from_arguments_then_the_environment() -> None:
    environ = {
        "MEM0_RECEIVER_SECRETS": "current, previous",
        "MEM0_RECEIVER_BROKER_URL": "redis://localhost:6379/3",
        "MEM0_RECEIVER_VERIFY": "token,hmac",
    }
    from_env = Receiver(environ=environ)
    assert from_env.settings.secrets == ("current", "previous")
    assert from_env.settings.broker_url == "redis://localhost:6379/3"
    assert from_env.settings.verify == ("token", "hmac")
    explicit = Receiver(secrets="mine", verify="standard", broker="redis://h/1", environ=environ)
    assert explicit.settings.secrets == ("mine",)
    assert explicit.settings.verify == ("standard",)
    assert explicit.settings.broker_url == "redis://h/1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_body_bytes": 0}, "max_body_bytes must be a positive whole number"),
        ({"enqueue_timeout": -1}, "enqueue_timeout must be a positive number"),
        ({"dedupe_window": True}, "dedupe_window must be a positive whole number"),
        ({"broker": 6379}, "broker must be a URL"),
        ({"secrets": ["ok", ""]}, "Every secret must be a non-empty string"),
    ],
    ids=["body-limit", "timeout", "window", "broker-type", "empty-secret"],
)
def test_bad_settings_raise_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Receiver(environ={}, **kwargs)


def test_webhook_url_carries_a_token_signed_with_the_current_secret() -> None:
    current, previous = new_secret(), new_secret()
    receiver = Receiver(secrets=[current, previous], environ={})
    url = receiver.webhook_url("https://example.com/webhooks/mem0?team=a")
    assert url == f"https://example.com/webhooks/mem0/?team=a&token={Signer([current]).token()}"


def test_webhook_url_needs_the_token_scheme() -> None:
    receiver = Receiver(secrets=[new_secret()], verify="hmac", environ={})
    with pytest.raises(ConfigurationError, match='add "token" to verify='):
        receiver.webhook_url("https://example.com/")


def test_copy_keeps_handlers_and_changes_only_what_is_asked() -> None:
    receiver = Receiver(secrets=["s"], broker="redis://localhost:1/0", environ={})

    @receiver.on("memory_add")
    def remember(event: Any) -> None:
        pass

    stub = StubBroker()
    clone = receiver.copy(broker=stub)
    assert clone.broker is stub
    assert clone.settings.secrets == ("s",)
    assert [h.name for h in clone.handlers] == [h.name for h in receiver.handlers]
    assert stub.get_actor(clone.handlers[0].actor_name) is not None
    assert receiver.settings.broker_url == "redis://localhost:1/0"


def test_describe_announces_the_in_memory_broker_as_not_durable() -> None:
    secret = new_secret()
    line = Receiver(secrets=[secret], environ={}).describe()
    assert "broker=in-memory" in line and "NOT durable" in line
    assert secret not in line


def test_uvicorn_start_up_without_a_secret_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("from mem0_receiver import Receiver\nreceiver = Receiver()\n")
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app:receiver", "--port", str(free_port())],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "Did you forget to set MEM0_RECEIVER_SECRETS?" in result.stderr
    assert "Traceback" not in result.stderr


def test_start_up_warns_when_redis_could_lose_acknowledged_events(
    make_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    volatile = make_redis(appendonly=False)
    volatile.client().config_set("maxmemory", "100mb")
    volatile.client().config_set("maxmemory-policy", "allkeys-lru")
    receiver = Receiver(secrets=[new_secret()], broker=volatile.url, environ={})
    receiver.check_durability()
    messages = [r.getMessage() for r in caplog.records]
    assert any("appendonly=no" in m and "CONFIG SET appendonly yes" in m for m in messages)
    assert any("maxmemory-policy=allkeys-lru" in m and "noeviction" in m for m in messages)


def test_strict_receiver_refuses_to_start_on_redis_without_appendonly(make_redis: Any) -> None:
    volatile = make_redis(appendonly=False)
    receiver = Receiver(secrets=[new_secret()], broker=volatile.url, strict=True, environ={})
    with pytest.raises(ConfigurationError, match=r"appendonly=no.*strict=True refuses to start"):
        receiver.check_durability()
    durable = make_redis(appendonly=True)
    Receiver(secrets=[new_secret()], broker=durable.url, strict=True, environ={}).check_durability()


def test_redis_without_config_access_gets_a_warning_not_a_failure(
    make_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    managed = make_redis(appendonly=True)
    managed.client().execute_command("ACL", "SETUSER", "default", "-config")
    receiver = Receiver(secrets=[new_secret()], broker=managed.url, environ={})
    receiver.check_durability()
    assert any("CONFIG is not allowed here" in r.getMessage() for r in caplog.records)

"""Settings, their defaults, and the one place that reads the environment.

Every setting is a keyword argument of :class:`~mem0_receiver.Receiver`; the
environment fills in what the arguments leave out:

=============================  ==========================================
``MEM0_RECEIVER_SECRETS``      comma-separated secrets, the current one first
``MEM0_RECEIVER_BROKER_URL``   ``redis://…`` (or ``amqp://…``); unset: in-memory
``MEM0_RECEIVER_VERIFY``       comma-separated schemes: token, hmac, standard
``MEM0_RECEIVER_STATE_URL``    with RabbitMQ: the Redis for dedupe, order, failures
``MEM0_RECEIVER_METRICS``      1 to serve Prometheus metrics (the ``metrics`` extra)
=============================  ==========================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = [
    "DEFAULT_DEDUPE_WINDOW",
    "DEFAULT_ENQUEUE_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_SIGNATURE_TOLERANCE",
    "DEFAULT_VERIFY",
    "Settings",
]

#: Verification schemes used when none are configured: the URL token, the
#: only one Mem0 itself can satisfy.
DEFAULT_VERIFY: tuple[str, ...] = ("token",)
#: Largest body accepted, in bytes; larger ones get 413 while still being read.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: Seconds a request waits for the broker to confirm the message before 503.
DEFAULT_ENQUEUE_TIMEOUT = 2.0
#: Seconds during which a repeated delivery is recognised and not handled again.
DEFAULT_DEDUPE_WINDOW = 3600
#: Seconds a signed timestamp may differ from our clock (hmac and standard).
DEFAULT_SIGNATURE_TOLERANCE = 300

ENV_SECRETS = "MEM0_RECEIVER_SECRETS"
ENV_BROKER_URL = "MEM0_RECEIVER_BROKER_URL"
ENV_VERIFY = "MEM0_RECEIVER_VERIFY"
ENV_STATE_URL = "MEM0_RECEIVER_STATE_URL"
ENV_METRICS = "MEM0_RECEIVER_METRICS"
#: prometheus-client's own: when set at its first import, samples go to files
#: in this directory, so that several processes can be scraped as one.
ENV_PROMETHEUS_DIR = "PROMETHEUS_MULTIPROC_DIR"


ENV_DASHBOARD_PASSWORD = "MEM0_RECEIVER_DASHBOARD_PASSWORD"


def dashboard_password(environ: Mapping[str, str] | None = None) -> str | None:
    """For ``mem0-receiver dashboard``: the password its page asks for, if set."""
    env = os.environ if environ is None else environ
    return env.get(ENV_DASHBOARD_PASSWORD) or None


def use_throwaway_secret(secret: str) -> bool:
    """For ``mem0-receiver dev`` only: set ``secret`` if no secret is configured."""
    if os.environ.get(ENV_SECRETS):
        return False
    os.environ[ENV_SECRETS] = secret
    return True


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _flag(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be 1 or 0 (or true or false), not {value!r}.")


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one receiver."""

    secrets: tuple[str, ...] = ()
    verify: tuple[str, ...] = DEFAULT_VERIFY
    broker_url: str | None = None
    state_url: str | None = None
    metrics: bool = False
    insecure: bool = False
    strict: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    enqueue_timeout: float = DEFAULT_ENQUEUE_TIMEOUT
    dedupe_window: int = DEFAULT_DEDUPE_WINDOW
    signature_tolerance: int = DEFAULT_SIGNATURE_TOLERANCE

    @classmethod
    def resolve(
        cls,
        *,
        secrets: Sequence[str] | str | None,
        verify: Sequence[str] | str | None,
        broker_url: str | None,
        state_url: str | None = None,
        metrics: bool | None = None,
        environ: Mapping[str, str] | None = None,
        **values: object,
    ) -> Settings:
        """Arguments first, then the environment, then the defaults."""
        env = os.environ if environ is None else environ
        if secrets is None:
            secrets = _split(env.get(ENV_SECRETS, ""))
        elif isinstance(secrets, str):
            secrets = (secrets,)
        if verify is None:
            verify = _split(env.get(ENV_VERIFY, "")) or DEFAULT_VERIFY
        elif isinstance(verify, str):
            verify = (verify,)
        if broker_url is None:
            broker_url = env.get(ENV_BROKER_URL) or None
        if state_url is None:
            state_url = env.get(ENV_STATE_URL) or None
        if metrics is None:
            metrics = _flag(ENV_METRICS, env.get(ENV_METRICS, ""))
        settings = cls(
            secrets=tuple(secrets),
            verify=tuple(verify),
            broker_url=broker_url,
            state_url=state_url,
            metrics=metrics,
            **values,  # type: ignore[arg-type]
        )
        settings._check()
        return settings

    def _check(self) -> None:
        for name in ("max_body_bytes", "dedupe_window", "signature_tolerance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive whole number, not {value!r}.")
        if not isinstance(self.enqueue_timeout, (int, float)) or self.enqueue_timeout <= 0:
            raise ConfigurationError(
                f"enqueue_timeout must be a positive number of seconds, not "
                f"{self.enqueue_timeout!r}."
            )
        if any(not isinstance(secret, str) or not secret for secret in self.secrets):
            raise ConfigurationError("Every secret must be a non-empty string.")

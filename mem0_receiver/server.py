"""Running the ASGI app under uvicorn, with an access log that never shows the token."""

from __future__ import annotations

import logging
import re
from typing import Any

from .verify import TOKEN_PARAM

__all__ = ["RedactToken", "log_config", "redact_access_log", "redact_token"]

# Anywhere in a text (a path, a URL inside an error message), whatever its case.
_TOKEN = re.compile(rf"""(?i)(?<=[?&;])({TOKEN_PARAM})=[^&;#\s'"]*""")


def redact_token(text: str) -> str:
    """``/?token=abc&x=1`` → ``/?token=…&x=1``."""
    return _TOKEN.sub(r"\1=…", text)


class RedactToken(logging.Filter):
    """Blanks the URL token in uvicorn's access log, whose args hold the full path."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "token=" in a for a in args):
            record.args = tuple(redact_token(a) if isinstance(a, str) else a for a in args)
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = redact_token(record.msg)
        return True


def redact_access_log() -> None:
    """Blank the token in uvicorn's access log, however uvicorn was started.

    A filter on the ``uvicorn.access`` logger itself applies to every record
    uvicorn logs there, whatever handlers the host app configured, so
    ``uvicorn app:app`` with the receiver mounted is covered too.
    """
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactToken) for f in access.filters):
        access.addFilter(RedactToken())


def log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's default logging config, plus our filter and our own logger."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {
        **LOGGING_CONFIG,
        "filters": {"redact_token": {"()": "mem0_receiver.server.RedactToken"}},
        "handlers": {name: {**h} for name, h in LOGGING_CONFIG["handlers"].items()},
        "loggers": {name: {**lg} for name, lg in LOGGING_CONFIG["loggers"].items()},
    }
    for handler in config["handlers"].values():
        handler["filters"] = ["redact_token"]
    config["loggers"]["mem0_receiver"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config

"""A minimal pipelined Redis connection for the acknowledgement path.

The receiver writes every request of one event-loop tick to Redis in one
write and reads the replies back in order (group commit). redis-py's
pipeline does the same but spends most of its time per command on packing,
observability hooks and per-reply timeouts, which on a 2-core machine cost
more than the whole bare HTTP request. Here a command is packed with one
``bytes.join``, the replies are parsed by hiredis (a dependency of
``redis[hiredis]``), and redis-py is used only to parse the URL.

Only what the enqueue needs: connect (TCP, TLS or a Unix socket), AUTH,
SELECT, then batches of commands. Any error or timeout closes the
connection; the next batch opens a new one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError, ResponseError

__all__ = ["Connection", "pack"]


def _bulk(arg: bytes | str | int) -> bytes:
    data = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack(*args: bytes | str | int) -> bytes:
    """One command in the Redis protocol."""
    return b"*%d\r\n" % len(args) + b"".join(map(_bulk, args))


class Connection:
    """One connection that runs one batch of commands at a time."""

    def __init__(self, url: str, *, connect_timeout: float) -> None:
        self._options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        options = self._options
        kind = options.get("connection_class")
        if kind is UnixDomainSocketConnection:
            opening = asyncio.open_unix_connection(options["path"])
        else:
            context = ssl.create_default_context() if kind is SSLConnection else None
            host, port = options.get("host", "localhost"), options.get("port", 6379)
            opening = asyncio.open_connection(host, port, ssl=context)
        self._reader, self._writer = await asyncio.wait_for(opening, self._connect_timeout)
        hello = []
        if options.get("password"):
            credentials = [options.get("username") or "default", options["password"]]
            hello.append(pack("AUTH", *credentials))
        if options.get("db"):
            hello.append(pack("SELECT", options["db"]))
        if hello:
            for reply in await self._exchange(hello):
                if isinstance(reply, Exception):
                    raise ConnectionError(f"Redis refused the connection set-up: {reply}")

    async def execute(self, commands: Sequence[bytes]) -> list[Any]:
        """Send packed commands in one write; return their replies (errors as values).

        Raises ConnectionError (and closes) if the connection fails; the caller
        bounds the wait with its own deadline and calls :meth:`close` on expiry.
        """
        try:
            if self._writer is None:
                await self._connect()
            return await self._exchange(commands)
        except (OSError, EOFError, asyncio.IncompleteReadError, hiredis.ProtocolError) as exc:
            self.close()
            raise ConnectionError(f"Redis connection failed: {type(exc).__name__}") from exc
        except BaseException:
            self.close()  # Cancelled mid-exchange: the stream is out of step.
            raise

    async def _exchange(self, commands: Sequence[bytes]) -> list[Any]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"".join(commands))
        await self._writer.drain()
        parser = hiredis.Reader(replyError=ResponseError)
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = parser.gets()
            if reply is False:
                data = await self._reader.read(65536)
                if not data:
                    raise EOFError("Redis closed the connection")
                parser.feed(data)
            else:
                replies.append(reply)
        return replies

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

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
connection; the next batch opens a new one. :class:`SyncConnection` is the
same for the worker's bookkeeping (tracking.py), which runs two scripts per
message in worker threads, where redis-py's per-call overhead tripled the
cost of a no-op handler.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Coroutine, Sequence
from typing import Any

import hiredis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError, ResponseError

__all__ = ["Connection", "SyncConnection", "pack"]


def pack(*args: bytes | str | int) -> bytes:
    """One command in the Redis protocol."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


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
        return await self._settle(self._exchange(commands))

    def send(self, commands: Sequence[bytes]) -> bool:
        """Write packed commands now if connected; False if not (use :meth:`execute`)."""
        if self._writer is None or self._writer.is_closing():
            return False
        self._writer.write(b"".join(commands))
        return True

    async def replies(self, count: int) -> list[Any]:
        """The replies of ``count`` commands written with :meth:`send`, as execute() gives."""
        return await self._settle(self._read(count))

    async def _settle(self, exchange: Coroutine[Any, Any, list[Any]]) -> list[Any]:
        try:
            return await exchange
        except (OSError, EOFError, asyncio.IncompleteReadError, hiredis.ProtocolError) as exc:
            self.close()
            raise ConnectionError(f"Redis connection failed: {type(exc).__name__}") from exc
        except BaseException:
            self.close()  # Cancelled mid-exchange: the stream is out of step.
            raise

    async def _exchange(self, commands: Sequence[bytes]) -> list[Any]:
        if self._writer is None:
            await self._connect()
            assert self._writer is not None
        self._writer.write(b"".join(commands))
        await self._writer.drain()
        return await self._read(len(commands))

    async def _read(self, count: int) -> list[Any]:
        assert self._reader is not None
        parser = hiredis.Reader(replyError=ResponseError)
        replies: list[Any] = []
        while len(replies) < count:
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


class SyncConnection:
    """A blocking connection per thread, for one command at a time."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    def _connect(self) -> socket.socket:
        options = self._options
        kind = options.get("connection_class")
        if kind is UnixDomainSocketConnection:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            sock.connect(options["path"])
        else:
            host, port = options.get("host", "localhost"), options.get("port", 6379)
            sock = socket.create_connection((host, port), timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if kind is SSLConnection:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self._local.sock = sock
        with self._lock:
            self._sockets.add(sock)
        if options.get("password"):
            credentials = [options.get("username") or "default", options["password"]]
            self._check(self._exchange(pack("AUTH", *credentials)))
        if options.get("db"):
            self._check(self._exchange(pack("SELECT", options["db"])))
        return sock

    @staticmethod
    def _check(reply: Any) -> None:
        if isinstance(reply, Exception):
            raise ConnectionError(f"Redis refused the connection set-up: {reply}")

    def execute(self, command: bytes) -> Any:
        """Send one packed command; return its reply (an error reply as a value)."""
        try:
            if getattr(self._local, "sock", None) is None:
                self._connect()
            return self._exchange(command)
        except (OSError, EOFError, hiredis.ProtocolError) as exc:
            self._drop()
            raise ConnectionError(f"Redis connection failed: {type(exc).__name__}") from exc

    def _exchange(self, command: bytes) -> Any:
        sock: socket.socket = self._local.sock
        sock.sendall(command)
        parser = hiredis.Reader(replyError=ResponseError)
        while True:
            reply = parser.gets()
            if reply is not False:
                return reply
            data = sock.recv(65536)
            if not data:
                raise EOFError("Redis closed the connection")
            parser.feed(data)

    def _drop(self) -> None:
        """Close this thread's socket."""
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()
        self._local.sock = None

    def close(self) -> None:
        """Close every thread's socket (at worker shutdown)."""
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            sock.close()
        self._local = threading.local()

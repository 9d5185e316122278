"""A TCP proxy that can take a real endpoint off the network and bring it back.

``moto_server`` keeps its state in memory, so stopping it to simulate an
outage would also lose every bucket. Instead :class:`FaultProxy` listens on
127.0.0.1 in front of it and forwards bytes both ways; the code under test is
given the proxy's URL. :meth:`FaultProxy.stop` closes the listening socket and
every open connection (clients then see resets and "connection refused", as
when a server goes away), :meth:`FaultProxy.start` listens again on the same
port, and the store behind it has kept its state.

The client-to-server stream is parsed just enough to find HTTP/1.1 request
boundaries (headers, then ``Content-Length`` bytes or chunked encoding), so
the proxy counts requests and can go down at a precise point of a run:
:meth:`FaultProxy.cut_after` ``(n)`` lets ``n`` requests through and stops
when request ``n + 1`` arrives, either before forwarding any of it or after
forwarding its headers and part of its body (a PUT cut mid-upload).

Stdlib only, threads only: every connection gets two pump threads.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass
class _Cut:
    after: int  # requests let through
    part: float | None  # of request after+1: None nothing, else headers + this share of the body
    operations: tuple[str, ...] = ()  # only requests whose line contains one of these count


@dataclass
class _Stats:
    requests: int = 0
    counted: int = 0  # requests that matched the cut's filter
    lines: list[str] = field(default_factory=list)


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``upstream`` until told to fail."""

    def __init__(self, upstream: str, port: int = 0, host: str = "127.0.0.1") -> None:
        target = upstream.split("://", 1)[-1].rstrip("/")
        up_host, _, up_port = target.rpartition(":")
        self.upstream = (up_host, int(up_port))
        self.host = host
        self.port = port
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.RLock()
        self._cut: _Cut | None = None
        self.stats = _Stats()
        self.cuts = 0  # how many times a cut fired

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> FaultProxy:
        with self._lock:
            if self._listener is not None:
                return self
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
            self.port = listener.getsockname()[1]
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True,
                         name=f"fault-proxy-{self.port}").start()
        return self

    def stop(self) -> None:
        """Refuse new connections and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            _close(listener)
        for sock in sockets:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            _close(sock)

    def cut_after(self, requests: int, *, part: float | None = None,
                  operations: tuple[str, ...] = ()) -> None:
        """Go down when request ``requests + 1`` (counting only request lines containing one
        of ``operations``, e.g. ``("PUT ",)``, when given) arrives.

        ``part=None``: nothing of that request reaches the server. ``part=0.5``: its headers
        and half its body do, then every connection is reset.
        """
        with self._lock:
            self._cut = _Cut(requests, part, operations)
            self.stats.counted = 0

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- forwarding -------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._sockets |= {client, upstream}
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client), daemon=True).start()

    def _replies(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(upstream, client)

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        parser = _RequestStream(self._on_request)
        try:
            while data := client.recv(65536):
                forward, cut = parser.feed(data)
                if forward:
                    upstream.sendall(forward)
                if cut:
                    self.cuts += 1
                    self.stop()
                    return
        except OSError:
            pass
        finally:
            self._drop(client, upstream)

    def _on_request(self, line: str) -> float | None | bool:
        """Called at each request's headers: True to forward it whole, else the cut's part."""
        with self._lock:
            self.stats.requests += 1
            self.stats.lines.append(line)
            cut = self._cut
            if cut is None or (cut.operations and not any(op in line for op in cut.operations)):
                return True
            self.stats.counted += 1
            if self.stats.counted <= cut.after:
                return True
            self._cut = None
            return cut.part

    def _drop(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._sockets -= set(sockets)
        for sock in sockets:
            _close(sock)


class _RequestStream:
    """Splits a client's byte stream into HTTP/1.1 requests, deciding per request.

    A chunked body is held back until its last chunk arrived (requests are small here).
    """

    def __init__(self, decide) -> None:  # noqa: ANN001 - FaultProxy._on_request
        self.decide = decide
        self.head = b""
        self.body_left = 0  # bytes of a Content-Length body still to come
        self.chunked = False
        self.chunks = b""
        self.cut_part: float | None = None  # cut within the current body, after this share
        self.cut_at: int | None = None  # forward this many more body bytes, then cut

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """``(bytes to forward, whether to cut after them)``."""
        out = b""
        while data:
            if self.body_left or self.chunked:
                taken, data = self._body(data)
                if self.cut_part is not None and taken:
                    if self.cut_at is None:  # chunked: the size is known only now
                        self.cut_at = int(len(taken) * self.cut_part)
                    if len(taken) >= self.cut_at:
                        return out + taken[: self.cut_at], True
                    self.cut_at -= len(taken)
                out += taken
                continue
            self.head += data
            data = b""
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                break
            head, data = self.head[: end + 4], self.head[end + 4 :]
            self.head = b""
            headers = _headers(head)
            self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            length = 0 if self.chunked else int(headers.get("content-length", "0") or 0)
            self.body_left = length
            verdict = self.decide(head.split(b"\r\n", 1)[0].decode("latin-1"))
            if verdict is True:
                out += head
                continue
            if verdict is None:
                return out, True
            out += head
            self.cut_part = float(verdict)
            self.cut_at = None if self.chunked else int(length * self.cut_part)
            if self.cut_at == 0 or not (self.chunked or length):
                return out, True
        return out, False

    def _body(self, data: bytes) -> tuple[bytes, bytes]:
        if not self.chunked:
            taken, rest = data[: self.body_left], data[self.body_left :]
            self.body_left -= len(taken)
            return taken, rest
        self.chunks += data
        end = _chunked_end(self.chunks)
        if end is None:
            return b"", b""  # held until complete
        taken, rest = self.chunks[:end], self.chunks[end:]
        self.chunks, self.chunked = b"", False
        return taken, rest


def _chunked_end(buffer: bytes) -> int | None:
    """Index just past the end of a chunked body in ``buffer``, or None if not complete yet."""
    position = 0
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(buffer[position:line_end].split(b";", 1)[0].strip() or b"0", 16)
        position = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", position - 2)
            return None if trailer_end < 0 else trailer_end + 4
        position += size + 2
        if position > len(buffer):
            return None


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip()
            for name, sep, value in (line.partition(":") for line in lines) if sep}


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass

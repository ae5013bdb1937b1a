"""How connections reach the page's handlers: one thread reads each request whole, under a deadline, before any
handler thread sees it.

Why this layer: with a thread per connection reading its own request, a client that sends its body one byte every
few seconds keeps its thread and its connection slot for as long as it likes (80 such clients held a 64-slot page
shut for a minute, and their cut-off bodies counted as failed logins), and a socket timeout cannot stop it, since
every read succeeds. Here one selector thread does all the waiting, at the cost of a small buffer per connection
and no thread: a request goes to a handler thread only once its line, headers and body have all arrived, and a
connection whose request is not complete `deadline_s` after it could have started is closed. A handler therefore
never sees a slow or truncated body.

Two bounds, kept apart so that one cannot eat the other: at most `max_served` requests are being answered at once
(live streams included; a request that finds them all busy gets a 503), and at most MAX_WAITING connections wait
for their request. When the waiting room is full, the connection that has waited longest is closed to make room (an
honest request arrives in milliseconds; one still arriving after seconds is the likeliest attacker). Slow clients
therefore only ever occupy the waiting room, whose every seat is freed by the deadline.
"""

from __future__ import annotations

import json
import logging
import re
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # a request line and headers larger than this are refused (431): cookies and auth fit easily
SOCKET_TIMEOUT_S = 10.0  # once served: a write (an answer, a stream) that makes no progress for this long is dropped
ACCEPTS_PER_ROUND = 64  # so that a burst of new connections cannot starve the reading of those already open
# Connections waiting for their request: each costs a file descriptor and a buffer of at most MAX_HEAD + the body
# (32 KiB, 8 MiB for all in the worst case, nothing like a thread); with the served ones and the daemon's own files
# this stays under the 1024 descriptors a service gets by default at the default web.max_connections (64); a larger
# setting raises the process's soft limit (`_enough_descriptors`). 80 slow clients fit with room to spare; when
# more come, the oldest make room, so the deadline, not the attacker, decides how long a seat is held.
MAX_WAITING = 256
OWN_DESCRIPTORS = 128  # the daemon's own: models, SQLite files and their WALs, the broker, the camera, pipes
_HEAD_END = re.compile(rb"\r?\n\r?\n")


@dataclass
class Request:
    """What a handler gets: the request's bytes exactly (line, headers, body); `body_read` is False when its body
    was refused unread (too large), so the connection must close after the answer."""

    raw: bytes
    body_read: bool = True


@dataclass(eq=False)  # a key in the waiting table: by identity
class _Conn:
    sock: Any  # socket.socket or ssl.SSLSocket
    address: tuple[Any, ...]
    since: float  # monotonic: when this connection could start sending its (next) request
    handshaking: bool = False
    buf: bytearray = field(default_factory=bytearray)
    head_end: int | None = None
    body_len: int = 0
    continued: bool = False  # "100 Continue" sent
    draining: bool = False  # answered and closing: what the client still sends is read and dropped until it hangs up


def _response(code: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\nConnection: close\r\n"
        + ("Retry-After: 5\r\n" if code == 503 else "")
        + "\r\n"
    ).encode() + body


REFUSED = _response(503, "Service Unavailable", "too many requests at once (web.max_connections); try again shortly")


class Listener:
    """Accepts, reads requests whole in `run()` (its own thread), and calls `serve(sock, address, request)` in a new
    thread per request; `serve` returns True to keep the connection for another request."""

    def __init__(
        self,
        address: tuple[str, int],
        tls: ssl.SSLContext | None,
        max_served: int,
        deadline_s: float,
        max_body: int,
        serve: Callable[[Any, tuple[Any, ...], Request], bool],
    ) -> None:
        self.tls, self.max_served, self.deadline_s, self.max_body = tls, max_served, deadline_s, max_body
        self._serve = serve
        _enough_descriptors(MAX_WAITING + max_served + OWN_DESCRIPTORS)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(address)
            self._sock.listen(128)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self._waiting: dict[_Conn, None] = {}  # insertion order is `since` order: the oldest first
        self._lock = threading.Lock()
        self._served = 0  # connections handed to a handler thread
        self._returned: list[_Conn] = []  # kept-alive connections back from their handler
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._started = False
        self._sel = selectors.DefaultSelector()
        self.refused = 0  # requests answered 503: every handler was busy
        self.timed_out = 0  # requests that did not arrive whole within deadline_s
        self.evicted = 0  # waiting connections closed to make room for a newcomer (the waiting room was full)

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        self._started = True
        self._sel.register(self._sock, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                accept = False
                for key, _ in self._sel.select(self._next_timeout()):
                    if key.fileobj is self._sock:
                        accept = True
                    elif key.fileobj is self._wake_r:
                        self._take_returned()
                    else:
                        self._readable(key.data)
                if accept:  # after reading: a newcomer's eviction never comes before a request already here
                    self._accept()
                self._expire()
        finally:
            for conn in list(self._waiting):
                self._close(conn)
            self._sel.close()
            self._sock.close()
            self._done.set()

    def stop(self) -> None:
        self._stopping.set()
        if self._started:
            self._wake()
            self._done.wait(timeout=5)
        else:
            self._sock.close()
        for s in (self._wake_r, self._wake_w):
            s.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # full (already woken) or closed
            pass

    def _next_timeout(self) -> float:
        if not self._waiting:
            return 1.0
        oldest = next(iter(self._waiting))
        return min(1.0, max(0.0, oldest.since + self.deadline_s - time.monotonic()) + 0.01)

    # ------------------------------------------------------------------ connections

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                sock, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: the backlog waits, and this loop must not spin
                logger.debug("web: accept failed (%s)", exc)
                self._stopping.wait(0.1)
                return
            if len(self._waiting) >= MAX_WAITING:
                self.evicted += 1
                self._close(next(iter(self._waiting)), b"")
            sock.setblocking(False)
            conn = _Conn(sock, address, time.monotonic())
            if self.tls is not None:  # the handshake, too, happens here and within the deadline
                try:
                    conn.sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (OSError, ssl.SSLError):
                    sock.close()
                    continue
                conn.handshaking = True
            self._waiting[conn] = None
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)

    def _take_returned(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        with self._lock:
            returned, self._returned = self._returned, []
        for conn in returned:
            if self._stopping.is_set():
                conn.sock.close()
                continue
            conn.sock.setblocking(False)
            self._waiting[conn] = None
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
            if conn.draining:
                try:
                    conn.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    self._close(conn)
            else:
                self._advance(conn)  # a pipelined request may already be here whole

    def _readable(self, conn: _Conn) -> None:
        if conn.handshaking and not self._handshake(conn):
            return
        try:
            chunk = conn.sock.recv(65536)
            while chunk and isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                chunk += conn.sock.recv(65536)  # decrypted bytes the selector cannot see
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:  # reset, or a TLS error
            self._close(conn, b"")
            return
        if not chunk:  # the client went away before its request was whole: nothing to answer, nothing to count
            self._close(conn, b"")
            return
        if conn.draining:
            return
        conn.buf += chunk
        self._advance(conn)

    def _handshake(self, conn: _Conn) -> bool:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
            return False
        except ssl.SSLWantWriteError:
            self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return False
        except (OSError, ssl.SSLError):  # e.g. plain HTTP on the HTTPS port
            self._close(conn, b"")
            return False
        conn.handshaking = False
        self._sel.modify(conn.sock, selectors.EVENT_READ, conn)
        return True

    def _advance(self, conn: _Conn) -> None:
        """Hand the request on once it is whole; refuse what can never be."""
        buf = conn.buf
        if conn.head_end is None:
            m = _HEAD_END.search(buf, 0, MAX_HEAD + 4)
            if m is None:
                if len(buf) > MAX_HEAD:
                    long_line = b"\n" not in buf[:MAX_HEAD]
                    self._drain(conn, _response(414, "URI Too Long", "request line too long") if long_line else
                                _response(431, "Request Header Fields Too Large", "request headers too large"))  # fmt: skip
                return
            conn.head_end = m.end()
            try:
                conn.body_len = self._body_length(bytes(buf[: conn.head_end]))
            except ValueError as exc:
                self._drain(conn, _response(*exc.args))
                return
            if conn.body_len > self.max_body:  # the handler answers 413 without the body, then the connection ends
                self._dispatch(conn, Request(bytes(buf[: conn.head_end]), body_read=False), conn.head_end)
                return
        end = conn.head_end + conn.body_len
        if len(buf) < end:
            if not conn.continued and b"100-continue" in bytes(buf[: conn.head_end]).lower():
                conn.continued = True  # clients that ask wait for this before sending the body
                try:
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                except (OSError, ssl.SSLError):
                    pass
            return
        self._dispatch(conn, Request(bytes(buf[:end])), end)

    @staticmethod
    def _body_length(head: bytes) -> int:
        """The body's length from Content-Length; ValueError(code, reason, message) for what cannot be read."""
        lengths = set()
        for line in head.split(b"\n")[1:]:
            name, sep, value = line.partition(b":")
            name = name.strip().lower()
            if not sep:
                continue
            if name == b"transfer-encoding":
                raise ValueError(411, "Length Required", "chunked request bodies are not accepted; send Content-Length")
            if name == b"content-length":
                lengths.add(value.strip())
        if not lengths:
            return 0
        text = lengths.pop()
        if lengths or not text.isdigit() or len(text) > 18:  # bytes.isdigit is ASCII only
            raise ValueError(400, "Bad Request", "unreadable Content-Length")
        return int(text)

    def _dispatch(self, conn: _Conn, request: Request, end: int) -> None:
        del conn.buf[:end]  # what came after it (a pipelined request) stays for the next round
        conn.head_end, conn.body_len, conn.continued = None, 0, False
        self._sel.unregister(conn.sock)
        del self._waiting[conn]
        with self._lock:
            busy = self._served >= self.max_served
            self._served += not busy
        if busy:
            self.refused += 1
            self._close(conn, REFUSED)
            return
        threading.Thread(target=self._serve_one, args=(conn, request), name="web-request", daemon=True).start()

    def _serve_one(self, conn: _Conn, request: Request) -> None:
        keep = False
        try:
            conn.sock.settimeout(SOCKET_TIMEOUT_S)
            keep = self._serve(conn.sock, conn.address, request) and request.body_read
        except (ConnectionError, TimeoutError, ssl.SSLError):
            pass  # a client that goes away mid-answer is normal on a phone
        except Exception:  # a bug in a handler: the traceback is worth having, the connection is not
            logger.exception("web: error while serving %s", conn.address[0] if conn.address else "a client")
        # A body refused unread may still be on its way: the connection drains it, so that closing with unread
        # bytes does not reset the connection before the client has read the answer.
        conn.draining = not request.body_read
        with self._lock:
            self._served -= 1
            back = (keep or conn.draining) and not self._stopping.is_set()
            if back:
                conn.since = time.monotonic()
                self._returned.append(conn)
        if back:
            self._wake()
        else:
            _close_quietly(conn.sock)

    def _drain(self, conn: _Conn, answer: bytes) -> None:
        """Answer a request that can never be served, stop sending, and read until the client hangs up (at most
        until the deadline)."""
        conn.draining = True
        conn.buf.clear()
        try:
            conn.sock.send(answer)
            conn.sock.shutdown(socket.SHUT_WR)
        except (OSError, ssl.SSLError):
            self._close(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._waiting:
            conn = next(iter(self._waiting))
            if now - conn.since <= self.deadline_s:
                return
            self.timed_out += not conn.draining
            # An idle kept-alive connection is closed silently; a request cut off mid-way is told why.
            late = _response(408, "Request Timeout", "the request did not arrive in time") if conn.buf else b""
            late = b"" if conn.draining else late
            self._close(conn, late)

    def _close(self, conn: _Conn, last_words: bytes = b"") -> None:
        self._waiting.pop(conn, None)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        if last_words and not conn.handshaking:
            try:
                conn.sock.send(last_words)  # best effort, never waited for
            except (OSError, ssl.SSLError):
                pass
        _close_quietly(conn.sock)


def _enough_descriptors(needed: int) -> None:
    """Raise the soft limit on open files to what a full waiting room and web.max_connections need. Running out
    would not break the page alone: the broker's reconnect and the outbox's SQLite file need descriptors too."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logger.warning(
            "web: the open-file limit (%d) is below the %d that web.max_connections and the waiting room can use; "
            "lower web.max_connections or raise LimitNOFILE in the service unit",
            target,
            needed,
        )


def _close_quietly(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass
    try:
        sock.close()
    except OSError:
        pass

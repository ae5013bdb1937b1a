"""Server-Sent Events fan-out: the daemon publishes, each connected stream reads its own bounded queue.

`publish` never blocks and never waits for a client: a client that does not keep up (its queue is
full, it never reads its socket) is cut off, and the fusion thread that published goes on at once.
"""

from __future__ import annotations

import queue
import threading

PER_CLIENT = 256  # messages waiting for one client; at one event per 2 s window that is over 8 minutes


class Client:
    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | None] = queue.Queue(PER_CLIENT)
        self.overrun = False


class Feed:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: list[Client] = []
        self.cut_off = 0  # clients dropped for not keeping up

    def subscribe(self) -> Client:
        c = Client()
        with self._lock:
            self._clients.append(c)
        return c

    def unsubscribe(self, c: Client) -> None:
        with self._lock:
            if c in self._clients:
                self._clients.remove(c)

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def publish(self, kind: str, data: str) -> None:
        """One SSE message (`event: kind`, `data: …` on one line) to every client."""
        msg = f"event: {kind}\ndata: {data}\n\n".encode()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            try:
                c.queue.put_nowait(msg)
            except queue.Full:
                self._cut(c)

    def _cut(self, c: Client) -> None:
        c.overrun = True
        self.unsubscribe(c)
        self.cut_off += 1
        try:  # wake its handler so that it closes the connection
            c.queue.get_nowait()
            c.queue.put_nowait(None)
        except (queue.Empty, queue.Full):
            pass

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.queue.put_nowait(None)
            except queue.Full:
                c.overrun = True

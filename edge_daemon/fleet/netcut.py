"""A TCP relay on a loopback port that can cut the network: what the simulation puts between some devices and
their broker node to take them off the network for a while (their outboxes keep the events meanwhile).

While cut, open connections are reset and new ones are closed at once, as a device sees a dead uplink.
"""

from __future__ import annotations

import asyncio
import threading

from ..devbroker import free_port


class CuttableLink:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, name="netcut", daemon=True).start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self, on: bool) -> None:
        """Take the devices behind this link off the network (True) or back on (False)."""

        def apply() -> None:
            self._cut = on
            if on:
                for w in list(self._writers):
                    w.transport.abort()
                self._writers.clear()

        self._loop.call_soon_threadsafe(apply)

"""Fallback broker for `demo` on machines without Mosquitto: `python -m edge_daemon.devbroker_amqtt PORT`."""

from __future__ import annotations

import asyncio
import sys


async def serve(port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}}})
    await broker.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))

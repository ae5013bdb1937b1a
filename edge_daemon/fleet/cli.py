"""`emotion-edge collect`: load collector.yaml, optionally set up the database, run until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from ..errors import UserError

logger = logging.getLogger(__name__)


def find_collector_config(arg: str | None) -> Path:
    """--config, else $EMOTION_EDGE_COLLECTOR_CONFIG, else ./collector.yaml, else /etc/emotion-edge/collector.yaml."""
    if arg:
        return Path(arg)
    if os.environ.get("EMOTION_EDGE_COLLECTOR_CONFIG"):
        return Path(os.environ["EMOTION_EDGE_COLLECTOR_CONFIG"])
    for candidate in (Path("collector.yaml"), Path("/etc/emotion-edge/collector.yaml")):
        if candidate.is_file():
            return candidate
    raise UserError("collect: no collector.yaml; pass --config FILE (collector.example.yaml shows every field)")


def collect(args: argparse.Namespace) -> int:
    try:
        from .collector import Collector, init_db
        from .settings import load_collector_config
    except ImportError as exc:  # psycopg is the `fleet` extra, not a device dependency
        raise UserError(
            f"collect needs the fleet extra ({exc.name} missing): pip install 'emotion-edge[fleet]'"
        ) from None
    from ..logsetup import setup_logging

    config = load_collector_config(find_collector_config(args.config))
    if config.jetstream.enabled:
        try:
            import nats  # noqa: F401 - nats-py, the fleet extra's JetStream client
        except ImportError:
            raise UserError(
                "jetstream.enabled needs nats-py (the fleet extra): pip install 'emotion-edge[fleet]'"
            ) from None
    setup_logging(args.log_level or config.log_level)
    if args.init_db:
        init_db(config, args.init_db)
        logger.info("database ready: tables, indexes, the purge function and the collector's grants")
        return 0
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logger.info("%s received: stopping (what is not stored stays with the broker)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return Collector(config).run(stop)

"""The log format and handlers every command shares (the daemon's `run`, `collect`, the tools)."""

from __future__ import annotations

import logging
import sys
import threading


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("paho").setLevel(logging.WARNING)
    # A thread that dies on an unexpected error is replaced by the daemon's supervisor; its traceback belongs in
    # the same log, with a timestamp, not as bare text on stderr.
    threading.excepthook = lambda a: logging.getLogger("edge_daemon").error(
        "%s thread failed", a.thread.name if a.thread else "a", exc_info=(a.exc_type, a.exc_value, a.exc_traceback)
    )

"""The last error the daemon logged, for `stats` (Home Assistant's "Last error" sensor and the device page).

Errors a user can act on are logged once, as one line (see docs/style in the README): remembering the last of
those lines is enough to show remotely what the journal says, without a second error channel to keep in step.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

MAX_CHARS = 1000  # one log line; a traceback is not part of the message


class LastError(logging.Handler):
    """Keeps the message and time of the last ERROR (or worse) record of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._last: dict[str, Any] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        at = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        # One assignment of a new dict: a reader on another thread sees the old one or the new one, never half.
        self._last = {"at": at, "message": record.getMessage()[:MAX_CHARS], "logger": record.name}

    def last(self) -> dict[str, Any] | None:
        return self._last

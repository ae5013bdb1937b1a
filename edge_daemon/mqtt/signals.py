"""What the parts of a session tell each other across paho's network thread and the drain thread.

The session makes one `Signals` and hands it to each part, so that no part needs to know another: the connection
sets `connected` and `lost`, delivery waits on `wake` and forgets what was in flight on `lost`, everyone checks
`stopping`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Signals:
    connected: threading.Event = field(default_factory=threading.Event)  # set once a connection is fully set up
    lost: threading.Event = field(default_factory=threading.Event)  # the connection ended: forget what was in flight
    wake: threading.Event = field(default_factory=threading.Event)  # the drain thread should look now
    stopping: threading.Event = field(default_factory=threading.Event)  # stop(): `stopped` is the last word
    lost_reason: str = ""  # why the last connection ended (paho's reason code, in words)

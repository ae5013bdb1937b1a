"""The broker session: topics, availability, retained state, stats, Home Assistant discovery, and draining the outbox.

Topics live under `<topic_prefix>/<device_id>/`:

* `availability`: `online` on every connect, `offline` as the will, `stopped` on clean shutdown (QoS 1, retained)
* `events`: one JSON object per window (QoS 1, never retained), drained from the outbox in `seq` order
* `state`: the current emotion (QoS 1, retained; re-published after every reconnect)
* `state_changed`: the new state once per change (QoS 1, never retained; Home Assistant's device triggers)
* `stats`: counters on an interval (QoS 0)

A replay's session says the same under `<base>/replay/` (homeassistant.base_topic), never on the service's topics.

paho's resend queue is emptied at every connect (client.forget_queued): what was not acknowledged is offered again
from the outbox, which also covers what paho's memory cannot, a restart.

The rooms, each importing only those above it (the session imports them all; none imports the session):

* `topics.py`     the topic names; `signals.py` the events the parts tell each other across threads
* `client.py`     making the paho client (credentials, TLS, protocol) and the paho internals we reach (pinned paho<3)
* `diagnosis.py`  why a broker cannot be used, in words (the log, `check`): diagnose, probe_broker
* `connection.py` the connection: MQTT 5 / 3.1.1 fallback, back-off with jitter, flapping, take-overs, its log lines
* `delivery.py`   the delivery policy: the outbox drained in order, in flight, acknowledged, refused, offered again
* `presence.py`   availability, retained state, `state_changed`, stats, Home Assistant discovery; ours is the last word
* `incoming.py`   what arrives: commands and buttons (never a retained one), and what presence must answer
* `session.py`    MqttSession, which wires them: what the daemon, a replay and the fleet simulation use
"""

from .client import UNSUPPORTED_PROTOCOL, client_id_of, make_client
from .connection import SESSION_TAKEN_OVER, SHORT_LIVED_S
from .delivery import INFLIGHT, RETRY_DROPPED_S, RETRY_REFUSED_S
from .diagnosis import closed_without_answer, diagnose, probe_broker, resolve_broker
from .presence import FOREIGN_ANSWER_S
from .session import MqttSession
from .topics import OFFLINE, ONLINE, STOPPED, Topics

__all__ = [
    "FOREIGN_ANSWER_S",
    "INFLIGHT",
    "OFFLINE",
    "ONLINE",
    "RETRY_DROPPED_S",
    "RETRY_REFUSED_S",
    "SESSION_TAKEN_OVER",
    "SHORT_LIVED_S",
    "STOPPED",
    "UNSUPPORTED_PROTOCOL",
    "MqttSession",
    "Topics",
    "client_id_of",
    "closed_without_answer",
    "diagnose",
    "make_client",
    "probe_broker",
    "resolve_broker",
]

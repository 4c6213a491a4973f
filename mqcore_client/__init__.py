"""mqcore_client: async, sync and command-line clients for mqcore (and aiomemq) servers.

``async with mqcore_client.connect(host, port) as client:`` (or
``connect("mqcore://host:port")``, ``connect("unix:///path")``) gives an
async :class:`Client` (anyio: asyncio or trio); :class:`SyncClient` wraps it
for scripts; ``python -m mqcore_client`` (the ``mqcore`` command, :func:`main`)
is the command line.

Layers, bottom up: ``_url`` (addresses), ``_protocol`` (framing and line
classification), ``_subscription_state`` and ``_session`` (the protocol's
rules, no I/O), ``_connection`` (an anyio stream pumped into a session),
``_subscription`` and ``_client`` (what the application awaits),
``_connect`` (the ``async with`` block), ``_sync`` and ``_cli``.
"""

from mqcore import Message

from ._cli import main
from ._client import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_TIMEOUT,
    Client,
)
from ._connect import connect
from ._consume import Consumer, Job
from ._errors import (
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeoutError,
    MQError,
    MQTimeoutError,
    ProtocolError,
    ServerError,
    SubscriptionOverflowError,
)
from ._protocol import Received
from ._subscription import Subscription
from ._subscription_state import SubState
from ._sync import SyncClient, SyncSubscription
from ._url import DEFAULT_HOST, DEFAULT_PORT, Address, parse_url

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "Address",
    "AuthenticationError",
    "Client",
    "ConnectError",
    "ConnectTimeoutError",
    "ConnectionLostError",
    "Consumer",
    "Job",
    "MQError",
    "MQTimeoutError",
    "Message",
    "ProtocolError",
    "Received",
    "ServerError",
    "SubState",
    "Subscription",
    "SubscriptionOverflowError",
    "SyncClient",
    "SyncSubscription",
    "connect",
    "main",
    "parse_url",
]

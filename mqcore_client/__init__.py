"""mqcore_client: async, sync and command-line clients for mqcore (and aiomemq) servers.

``async with mqcore_client.connect(host, port) as client:`` gives an async
:class:`Client` (anyio: asyncio or trio); :class:`SyncClient` wraps it for
scripts; ``python -m mqcore_client`` is the command line.
"""

from mqcore import Message

from ._async import (
    DEFAULT_HOST,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUED,
    DEFAULT_PORT,
    Client,
    Received,
    Subscription,
    connect,
)
from ._errors import (
    ConnectError,
    ConnectionLostError,
    ConnectTimeoutError,
    MQError,
    MQTimeoutError,
    ProtocolError,
    ServerError,
    SubscriptionOverflowError,
)
from ._sync import SyncClient, SyncSubscription

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_PORT",
    "Client",
    "ConnectError",
    "ConnectTimeoutError",
    "ConnectionLostError",
    "MQError",
    "MQTimeoutError",
    "Message",
    "ProtocolError",
    "Received",
    "ServerError",
    "Subscription",
    "SubscriptionOverflowError",
    "SyncClient",
    "SyncSubscription",
    "connect",
]

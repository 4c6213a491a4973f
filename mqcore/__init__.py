"""mqcore: an embeddable, aiomemq-compatible message broker core with no I/O.

Feed a :class:`Broker` the bytes each connection sends; take an
:class:`Output` of what to write to (and whom to close) in return. Transports
live elsewhere: ``mqcore_tcp`` serves it over TCP.
"""

from . import _broker
from ._acks import (
    DEFAULT_ACK_WAIT,
    DEFAULT_MAX_DELIVER,
    DEFAULT_MAX_JOB_BYTES,
    DEFAULT_MAX_JOBS,
    DEFAULT_PREFETCH,
    MAX_PREFETCH,
)
from ._auth import Credentials, HelloRequest, Permissions
from ._broker import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_CACHE_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_TOPIC_BYTES,
    DEFAULT_MAX_TOPICS,
    Broker,
    ConnectionId,
    Output,
)
from ._protocol import (
    COMMAND_DECODER,
    SUCCESS,
    Ack,
    Command,
    Delivery,
    Hello,
    HelloReply,
    Message,
    Nack,
    Reason,
    Reply,
    Send,
    Subscribe,
    Unsubscribe,
    error_reply,
    hello_reply,
)
from ._records import (
    CacheAdd,
    CacheRemove,
    CacheTrim,
    DropTopic,
    JobAdd,
    JobAttempts,
    JobDone,
    JobState,
    NextIndex,
    Record,
    TopicState,
)
from ._stats import BrokerStats
from ._store import MemoryStore, Snapshot, Store, StoreError, StoreUnavailable
from ._version import __version__

#: Whether this core runs compiled by mypyc (``MQCORE_COMPILE=1 pip install``,
#: see setup.py) rather than as pure Python: the same source, the same tests.
COMPILED: bool = not _broker.__file__.endswith(".py")

__all__ = [
    "COMMAND_DECODER",
    "COMPILED",
    "DEFAULT_ACK_WAIT",
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_MAX_CACHE_BYTES",
    "DEFAULT_MAX_DELIVER",
    "DEFAULT_MAX_JOBS",
    "DEFAULT_MAX_JOB_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_TOPICS",
    "DEFAULT_MAX_TOPIC_BYTES",
    "DEFAULT_PREFETCH",
    "MAX_PREFETCH",
    "SUCCESS",
    "Ack",
    "Broker",
    "BrokerStats",
    "CacheAdd",
    "CacheRemove",
    "CacheTrim",
    "Command",
    "ConnectionId",
    "Credentials",
    "Delivery",
    "DropTopic",
    "Hello",
    "HelloReply",
    "HelloRequest",
    "JobAdd",
    "JobAttempts",
    "JobDone",
    "JobState",
    "MemoryStore",
    "Message",
    "Nack",
    "NextIndex",
    "Output",
    "Permissions",
    "Reason",
    "Record",
    "Reply",
    "Send",
    "Snapshot",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Subscribe",
    "TopicState",
    "Unsubscribe",
    "__version__",
    "error_reply",
    "hello_reply",
]

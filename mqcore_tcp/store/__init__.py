"""The file-backed store of a durable server (``--data-dir``): SQLite, standard library.

It is not TCP-specific: any transport's hub writes to it through the
:class:`mqcore.Store` protocol.
"""

from ._sqlite import DEFAULT_FSYNC, FSYNC_MODES, STORE_FILE, FsyncMode, SQLiteStore

__all__ = ["DEFAULT_FSYNC", "FSYNC_MODES", "STORE_FILE", "FsyncMode", "SQLiteStore"]

"""``--auth FILE``: users, their hashed secrets and permissions, and checking credentials.

The file is TOML (see the README's *Authentication* section)::

    [users.alice]
    password_hash = "scrypt$16384$8$1$<salt>$<hash>"   # python -m mqcore_tcp hash-password
    publish = ["orders.>", "alerts"]
    subscribe = ["orders.*"]
    deny_publish = ["orders.internal.>"]

    [users.metrics-bot]
    token_hash = "scrypt$..."
    subscribe = [">"]

Rules (and where mqcore chooses):

- **Secrets are stored only as slow hashes**: ``hashlib.scrypt`` (stdlib)
  with a random 16-byte salt per hash, its parameters in the string, so
  they may be raised later without breaking old entries. A user may have a
  ``password_hash`` (the client sends ``user`` and ``password``), a
  ``token_hash`` (the client sends ``token`` alone), both, or neither (then
  only a client certificate can stand for it: see ``_tls``).
- **A token names no user**, so it is checked against every user with a
  ``token_hash`` (one scrypt each): keep token users few, or give bots
  passwords. An unknown user costs one scrypt too, so timing tells nothing.
- **Verification runs in a worker thread**, at most :data:`MAX_CONCURRENT`
  at a time (scrypt takes ~16 MiB and tens of ms each): the event loop never
  waits for it, and a flood of logins queues instead of exhausting memory.
- **Loading is all or nothing**: an unreadable file, bad TOML, an unknown
  key, a wrong type, a malformed hash or pattern raises
  :class:`AuthConfigError` with one line naming the user and key. On SIGHUP
  a bad file is logged and the old one kept.
- Nothing here logs or repeats a secret; :class:`User`'s repr shows no hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from mqcore import Permissions
from mqcore._auth import Credentials
from mqcore._subjects import is_pattern, pattern_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "MAX_CONCURRENT",
    "AuthConfigError",
    "AuthFile",
    "User",
    "hash_password",
    "hash_secret",
    "verify_secret",
]

#: scrypt's cost parameters for new hashes: n (CPU/memory), r (block size), p (parallelism).
SCRYPT_N: Final = 1 << 14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SALT_BYTES: Final = 16
_KEY_BYTES: Final = 32
#: Hashes computed at once, at most (each takes 128 * n * r bytes: 16 MiB by default).
MAX_CONCURRENT: Final = 2
#: The most memory one hash may ask for (bounds the n and r read from a file).
_MAX_MEMORY: Final = 256 << 20

_PERMISSION_KEYS: Final = ("publish", "subscribe", "deny_publish", "deny_subscribe")
_USER_KEYS: Final = frozenset({"password_hash", "token_hash", *_PERMISSION_KEYS})


class AuthConfigError(ValueError):
    """The auth file cannot be used; the message says where and why (never a secret)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The string to store for ``secret``: ``scrypt$N$R$P$SALT$HASH`` (base64, unpadded)."""
    salt = os.urandom(_SALT_BYTES)
    key = _scrypt(secret.encode("utf-8"), salt, n, r, p)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def _scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        secret, salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEMORY + (1 << 20), dklen=_KEY_BYTES
    )


@dataclass(frozen=True, slots=True)
class _Hash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> _Hash:
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("not an scrypt$N$R$P$SALT$HASH string (use hash-password)")
        n, r, p = (int(x) for x in parts[1:4])
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r > _MAX_MEMORY:
            raise ValueError("scrypt parameters out of range")
        return cls(n, r, p, _unb64(parts[4]), _unb64(parts[5]))

    def check(self, secret: str) -> bool:
        key = _scrypt(secret.encode("utf-8"), self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(key, self.key)


def verify_secret(secret: str, encoded: str) -> bool:
    """Whether ``secret`` is the one ``encoded`` (from :func:`hash_secret`) was made from."""
    return _Hash.parse(encoded).check(secret)


@dataclass(frozen=True, slots=True)
class User:
    """One user of the auth file."""

    name: str
    permissions: Permissions
    password: _Hash | None = field(default=None, repr=False)
    token: _Hash | None = field(default=None, repr=False)


#: Checked when the user is unknown, so that an unknown name costs as long as a known one.
_DECOY: Final = _Hash(SCRYPT_N, SCRYPT_R, SCRYPT_P, b"\0" * _SALT_BYTES, b"\0" * _KEY_BYTES)


@dataclass(frozen=True)
class AuthFile:
    """The users of one auth file, as loaded."""

    path: str
    users: dict[str, User]

    @classmethod
    def load(cls, path: str) -> AuthFile:
        """Read and check ``path``; raise :class:`AuthConfigError` with one line if it is bad."""
        try:
            with open(path, "rb") as file:
                document = tomllib.load(file)
        except OSError as exc:
            raise AuthConfigError(f"--auth {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise AuthConfigError(f"--auth {path}: not valid TOML: {exc}") from None
        extra = set(document) - {"users"}
        if extra:
            raise AuthConfigError(f"--auth {path}: unknown table(s) {sorted(extra)}")
        table = document.get("users", {})
        if not isinstance(table, dict):
            raise AuthConfigError(f"--auth {path}: 'users' must be a table")
        users = {name: _user(path, name, entry) for name, entry in table.items()}
        return cls(path, users)

    def permissions_of(self, name: str | None) -> Permissions | None:
        """The permissions of user ``name`` (None if there is no such user)."""
        user = None if name is None else self.users.get(name)
        return None if user is None else user.permissions

    def authenticate(self, credentials: Credentials) -> str | None:
        """The user these credentials prove, or None. Slow (scrypt): call from a worker thread."""
        if credentials.token is not None and credentials.user is None:
            token = credentials.token
            found = None
            for user in self.users.values():
                # Check every one: the time does not tell which user matched.
                if user.token is not None and user.token.check(token) and found is None:
                    found = user.name
            if found is None:
                _DECOY.check(token)
            return found
        if credentials.user is None or credentials.password is None:
            return None
        known = self.users.get(credentials.user)
        hashed = None if known is None else known.password
        if hashed is None:
            _DECOY.check(credentials.password)
            return None
        return credentials.user if hashed.check(credentials.password) else None


def _user(path: str, name: str, entry: Any) -> User:
    where = f"--auth {path}: users.{name}"
    if not isinstance(entry, dict):
        raise AuthConfigError(f"{where}: must be a table")
    unknown = set(entry) - _USER_KEYS
    if unknown:
        raise AuthConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    lists: dict[str, tuple[str, ...]] = {}
    for key in _PERMISSION_KEYS:
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise AuthConfigError(f"{where}.{key}: must be a list of topic patterns")
        for pattern in value:
            problem = pattern_problem(pattern) if is_pattern(pattern) else None
            if problem is not None:
                raise AuthConfigError(f"{where}.{key}: {pattern!r}: {problem}")
        lists[key] = tuple(value)
    hashes: dict[str, _Hash | None] = {}
    for key in ("password_hash", "token_hash"):
        value = entry.get(key)
        if value is None:
            hashes[key] = None
            continue
        if not isinstance(value, str):
            raise AuthConfigError(f"{where}.{key}: must be a string")
        try:
            hashes[key] = _Hash.parse(value)
        except ValueError as exc:
            raise AuthConfigError(f"{where}.{key}: {exc}") from None
    return User(name, Permissions(**lists), hashes["password_hash"], hashes["token_hash"])


def hash_password(argv: Sequence[str], program: str) -> int:
    """``hash-password``: read a secret on stdin, print the string for ``--auth`` files."""
    if argv and argv[0] in ("-h", "--help"):
        print(
            f"usage: {program} hash-password < secret\n\n"
            "Reads a password or token on stdin (its first line; prompts on a terminal) and "
            "prints its scrypt hash, for password_hash or token_hash in an --auth file."
        )
        return 0
    if sys.stdin.isatty():
        import getpass

        secret = getpass.getpass("secret: ")
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        print("hash-password: no secret on stdin", file=sys.stderr)
        return 2
    print(hash_secret(secret))
    return 0

"""``stats`` and ``ping``: the command line's view of a server's HTTP listener (``--listen http://``).

Plain blocking HTTP (the standard library's ``http.client``): both are one
request. ``ping`` is for scripts and container health checks; its exit status
says what it found:

| status | meaning |
|---|---|
| 0 | ``/healthz`` answered 200: the server accepts work |
| 1 | it answered 503 (shutting down, store failed...): the reason is printed |
| 3 | no connection (refused, unreachable, or not an mqcore web listener) |
| 4 | no answer within ``--timeout`` |

Register them in the client CLI with :func:`add_web_commands` and dispatch
``args.command in WEB_COMMANDS`` to :func:`run_web_command`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_WEB_URL",
    "WEB_COMMANDS",
    "add_web_commands",
    "get_json",
    "ping",
    "run_web_command",
    "stats",
]

#: Where ``stats`` and ``ping`` look by default.
DEFAULT_WEB_URL: Final = "http://127.0.0.1:8222"
WEB_COMMANDS: Final = ("stats", "ping")

EXIT_OK: Final = 0
EXIT_UNHEALTHY: Final = 1
EXIT_CONNECTION: Final = 3
EXIT_TIMEOUT: Final = 4
#: A server's answer is read up to this many bytes.
MAX_ANSWER: Final = 4 << 20


class WebError(Exception):
    """The web listener could not be asked; ``status`` is the exit status to use."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def get_json(url: str, path: str, timeout: float) -> tuple[int, Any]:
    """``GET path`` on the listener at ``url``: (HTTP status, parsed JSON body)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise WebError(f"{url!r}: expected http://HOST:PORT", EXIT_CONNECTION)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 8222, timeout=timeout)
    try:
        connection.request("GET", path, headers={"accept": "application/json"})
        response = connection.getresponse()
        body = response.read(MAX_ANSWER)
    except TimeoutError:
        raise WebError(f"{url}: no answer within {timeout} s", EXIT_TIMEOUT) from None
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise WebError(f"{url}: cannot connect: {reason}", EXIT_CONNECTION) from None
    finally:
        connection.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        raise WebError(f"{url}{path}: not an mqcore web listener", EXIT_CONNECTION) from None


def ping(url: str = DEFAULT_WEB_URL, timeout: float = 5.0, out: TextIO = sys.stdout) -> int:
    """Ask ``/healthz``; print ``ok`` or the reason; return the exit status (see the module)."""
    try:
        status, body = get_json(url, "/healthz", timeout)
    except WebError as exc:
        print(f"error: {exc}", file=out)
        return exc.status
    if status == 200:
        print("ok", file=out)
        return EXIT_OK
    print(
        f"unavailable: {body.get('reason', status) if isinstance(body, dict) else status}", file=out
    )
    return EXIT_UNHEALTHY


def stats(
    url: str = DEFAULT_WEB_URL,
    timeout: float = 5.0,
    as_json: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Print ``/api/stats`` (a summary, or the JSON itself); return the exit status."""
    try:
        status, body = get_json(url, "/api/stats", timeout)
    except WebError as exc:
        print(f"error: {exc}", file=out)
        return exc.status
    if status != 200 or not isinstance(body, dict):
        print(f"error: {url}/api/stats answered {status}", file=out)
        return EXIT_CONNECTION
    if as_json:
        print(json.dumps(body, indent=2), file=out)
        return EXIT_OK
    server, counters = body.get("server", {}), body.get("counters", {})
    print(
        f"{server.get('name')} {server.get('version')}, up {server.get('uptime', 0):.0f} s, "
        f"{server.get('health')}, {'durable' if server.get('durable') else 'in memory'}",
        file=out,
    )
    for key, value in counters.items():
        if key == "failures":
            value = ", ".join(f"{reason}: {n}" for reason, n in value.items()) or "none"
        print(f"  {key.replace('_', ' ')}: {'-' if value is None else value}", file=out)
    return EXIT_OK


def add_web_commands(commands: Any) -> None:
    """Add ``stats`` and ``ping`` to the client CLI's subparsers (``add_subparsers()``)."""
    for name, text in (
        ("stats", "print a server's counters (from its --listen http:// listener)"),
        (
            "ping",
            "check a server's health: exit 0 if it accepts work, 1 if not, 3/4 if unreachable",
        ),
    ):
        parser: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
        parser.add_argument(
            "--web-url",
            default=DEFAULT_WEB_URL,
            metavar="URL",
            help="the server's HTTP listener (default: %(default)s)",
        )
        parser.add_argument(
            "--timeout", type=float, default=5.0, help="seconds to wait (default: %(default)s)"
        )
        if name == "stats":
            parser.add_argument("--json", action="store_true", help="print the JSON as it came")


def run_web_command(args: argparse.Namespace) -> int:
    """Run a parsed ``stats`` or ``ping``; return the exit status."""
    if args.command == "ping":
        return ping(args.web_url, args.timeout)
    return stats(args.web_url, args.timeout, as_json=args.json)

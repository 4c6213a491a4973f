"""Serve the mqcore core over stdin/stdout or a Unix socket, in under 60 lines.

The Broker does no I/O: bytes in; bytes to write and connections to close out. So
any byte stream carries it. Type command lines, or use ``--unix PATH`` and ``nc -U PATH``.
"""

import argparse
import asyncio
import os
import sys

from mqcore import Broker, ConnectionId


def serve_stdio(broker: Broker) -> None:
    """One connection: read stdin, write stdout, until EOF or ``quit``."""
    cid = broker.open_connection()
    while data := os.read(sys.stdin.fileno(), 65536):
        broker.receive_data(cid, data)
        output = broker.take_output()
        sys.stdout.buffer.write(b"".join(output.writes.get(cid, [])))
        sys.stdout.buffer.flush()
        if output.close:
            break


async def serve_unix(broker: Broker, path: str) -> None:
    """Many connections on a Unix socket, with asyncio's streams (the core needs no anyio)."""
    writers: dict[ConnectionId, asyncio.StreamWriter] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cid = broker.open_connection()
        writers[cid] = writer
        try:
            while data := await reader.read(65536):
                broker.receive_data(cid, data)
                output = broker.take_output()
                for target, chunks in output.writes.items():
                    writers[target].writelines(chunks)  # Unbounded: see mqcore_tcp.
                for target in output.close:  # After `quit`.
                    writers[target].close()
        finally:
            broker.connection_lost(cid)
            writers.pop(cid).close()

    async with await asyncio.start_unix_server(handle, path):
        print(f"listening on {path}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve mqcore over stdio or a Unix socket.")
    parser.add_argument("--unix", metavar="PATH", help="listen on this Unix socket")
    path = parser.parse_args().unix
    if path:
        asyncio.run(serve_unix(Broker(), path))
    else:
        serve_stdio(Broker())

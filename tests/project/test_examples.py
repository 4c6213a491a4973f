"""Every example runs, and does what its docstring says, against an in-process server.

The client benchmark gets a smoke run here too."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from benchmarks import client_bench
from examples import chat, cluster, custom_transport, embedded, resumable_consumer, work_queue
from mqcore_client import Received, connect

from ..client.support import serving
from ..redis_fixtures import need_cluster_mode

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEADLINE = 20


async def test_chat_fans_out_to_the_others_in_the_room() -> None:
    typed = {name: anyio.create_memory_object_stream[str](10) for name in ("alice", "bob")}
    shown = {name: anyio.create_memory_object_stream[str](10) for name in ("alice", "bob")}
    with anyio.fail_after(DEADLINE), ExitStack() as streams:
        for pair in (*typed.values(), *shown.values()):
            for stream in pair:
                streams.enter_context(stream)
        async with serving() as port, anyio.create_task_group() as tg:
            for name in typed:
                tg.start_soon(chat_as, port, name, typed[name][1], shown[name][0].send_nowait)
            typed["alice"][0].send_nowait("hi bob")
            assert await shown["bob"][1].receive() == "<alice> hi bob"
            typed["bob"][0].send_nowait("hi alice")
            # Alice's first line shown is Bob's: her own is not echoed back.
            assert await shown["alice"][1].receive() == "<bob> hi alice"
            for send, _ in typed.values():
                send.close()  # End of input: both chats return.


async def chat_as(
    port: int, name: str, typed: anyio.abc.ObjectReceiveStream[str], show: Callable[[str], None]
) -> None:
    """Run the chat example as ``name`` in room ``r``, reading ``typed`` lines."""

    async def lines() -> AsyncIterator[str]:
        async for line in typed:
            yield line

    async with connect(port=port) as client:
        await chat.chat(client, name, "r", lines(), show)


async def test_work_queue_does_every_job_exactly_once() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port:
            by_worker = await work_queue.run("127.0.0.1", port, 3, 60)
            done = await anyio.run_process(
                [
                    sys.executable,
                    str(EXAMPLES / "work_queue.py"),
                    "--port",
                    str(port),
                    "--jobs",
                    "30",
                ]
            )
    assert sum(by_worker.values()) == 60
    assert set(by_worker) <= {"w0", "w1", "w2"}
    assert done.stdout.decode().startswith("30 jobs done exactly once by ")


async def test_resumable_consumer_continues_where_it_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state.json"
    seen: list[Received] = []
    with anyio.fail_after(DEADLINE):
        async with serving() as port, connect(port=port) as producer:
            for i in range(10):
                await producer.send("news", f"m{i}")
            first = await resumable_consumer.consume(
                "127.0.0.1", port, "news", state, 4, seen.append
            )
            argv = ["news", "--state", str(state), "--count", "3", "--port", str(port)]
            status = await anyio.to_thread.run_sync(resumable_consumer.main, argv)
            saved = json.loads(state.read_text())
            assert saved == {"last_index": 6, "epoch": producer.epoch}
        # A new server numbers from 0 in a new epoch: the saved position is void.
        async with serving() as port, connect(port=port) as producer:
            await producer.send("news", "fresh")
            await resumable_consumer.consume("127.0.0.1", port, "news", state, 1, seen.append)
    assert first == 4
    assert status == 0
    assert capsys.readouterr().out == "4: m4\n5: m5\n6: m6\n"
    assert [(m.msg, m.index, m.gap) for m in seen] == [
        ("m0", 0, False),
        ("m1", 1, False),
        ("m2", 2, False),
        ("m3", 3, False),
        ("fresh", 0, True),
    ]


def test_embedded_decouples_parts_without_a_network() -> None:
    log: list[str] = []
    embedded.run(4, log.append)
    for n in range(1, 5):
        assert f"shipping: order.placed order-{n}" in log
        assert f"shipping: invoice.sent order-{n}" in log
        # `one`: each email goes out once, the two mailers taking turns.
        assert sum(line.endswith(f"email for order-{n}") for line in log) == 1
    assert {line.split(":")[0] for line in log if "email" in line} == {"mailer-1", "mailer-2"}


def test_custom_transport_over_stdio() -> None:
    lines = [
        {"command": "subscribe", "topic": "t"},
        {"command": "send", "topic": "t", "msg": "hi", "delivery": "all"},
    ]
    stdin = "".join(json.dumps(line) + "\n" for line in lines) + "quit\n" + "not answered\n"
    result = anyio.run(
        lambda: anyio.run_process(
            [sys.executable, str(EXAMPLES / "custom_transport.py")], input=stdin.encode()
        )
    )
    assert result.stdout == (
        b'{"success": true}\r\n'
        b'{"command": "send", "topic": "t", "msg": "hi", "delivery": "all", "index": 0}\r\n'
        b'{"success": true}\r\n'
    )
    assert len(Path(custom_transport.__file__).read_text().splitlines()) < 60


async def test_custom_transport_over_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "mq.sock"
    with anyio.fail_after(DEADLINE):
        async with await anyio.open_process(
            [sys.executable, str(EXAMPLES / "custom_transport.py"), "--unix", str(path)]
        ) as process:
            assert process.stdout is not None
            assert (await process.stdout.receive()).startswith(b"listening on")
            async with (
                await anyio.connect_unix(str(path)) as one,
                await anyio.connect_unix(str(path)) as two,
            ):
                await one.send(b'{"command": "subscribe", "topic": "t"}\n')
                assert await one.receive() == b'{"success": true}\r\n'
                await two.send(
                    b'{"command": "send", "topic": "t", "msg": "x", "delivery": "one"}\n'
                )
                assert await two.receive() == b'{"success": true}\r\n'
                assert b'"index": 0' in await one.receive()
            process.terminate()


@pytest.mark.parametrize("example", [chat, work_queue, resumable_consumer, embedded])
def test_help(example: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        example.main(["--help"])  # type: ignore[attr-defined]
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_client_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Smoke only: it runs and reports every case; no speed is asserted."""
    assert client_bench.main(["-n", "300", "--in-process"]) == 0
    table = capsys.readouterr().out
    for case in ("send (awaited)", "publish + flush", "consume"):
        assert case in table


def test_the_cluster_example_shows_one_broker_across_three_nodes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    need_cluster_mode()
    assert cluster.main([]) == 0
    out = capsys.readouterr().out
    assert "node 2 got 'sent on node 1' #0" in out
    assert "node 3 got 'sent on node 1' #0" in out
    assert "replays what it missed: ['later 0', 'later 1', 'later 2']" in out
    assert "each taken once: ['job 0 on" in out
    assert "then #1 'after', gap=False" in out
    assert out.rstrip().endswith("stopped everything")

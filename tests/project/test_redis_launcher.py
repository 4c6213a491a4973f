"""The Redis launcher (mqcore_tcp.testing_redis): servers start, answer, stop, leave nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import anyio
import pytest

from mqcore_tcp.testing_redis import (
    RedisError,
    RedisNotInstalled,
    RedisStartError,
    free_port,
    redis_command,
    running_redis,
    running_redis_async,
    start_redis,
    start_redis_cluster,
)

from ..conftest import BOTH_BACKENDS
from ..redis_fixtures import need_redis


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(autouse=True)
def _redis_installed() -> None:
    need_redis(cluster=True)


def test_a_server_answers_and_stops_by_pid_leaving_nothing() -> None:
    with running_redis() as redis:
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        assert redis.command("PING") == b"PONG"
        assert redis.command("SET", "k", "v") == b"OK"
        assert redis.command("GET", "k") == b"v"
        assert redis.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
        assert redis.command("CONFIG", "GET", "save") == [b"save", b""]
        pid, directory = redis.pid, redis.directory
        assert _alive(pid)
    assert redis.returncode == 0  # SIGTERM: a graceful shutdown
    assert not _alive(pid)
    assert _refused(redis.port)
    assert not directory.exists()


def test_kill_is_a_crash_and_restart_keeps_the_port_and_the_aof() -> None:
    with start_redis(appendonly=True) as redis:
        port, first_pid = redis.port, redis.pid
        assert redis.command("RPUSH", "topic", "m0", "m1") == 2
        redis.kill()
        assert redis.wait() == -signal.SIGKILL
        assert _refused(port)
        with pytest.raises(ConnectionRefusedError):
            redis.command("PING", timeout=1.0)
        redis.restart()
        assert (redis.port, redis.url.endswith(f":{port}/0")) == (port, True)
        assert redis.pid != first_pid
        assert not _alive(first_pid)
        assert redis.command("LRANGE", "topic", 0, -1) == [b"m0", b"m1"]  # appendfsync always


def test_without_the_aof_a_restart_starts_empty() -> None:
    with start_redis() as redis:
        redis.command("SET", "k", "v")
        redis.restart()
        assert redis.command("GET", "k") is None


def test_stop_sigkills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    with start_redis() as redis:
        redis.send_signal(signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
        try:
            assert redis.stop(grace=0.3) == -signal.SIGKILL
        finally:
            if redis.returncode is None:
                redis.send_signal(signal.SIGCONT)
        assert not _alive(redis.pid)


def test_error_replies_raise() -> None:
    with running_redis() as redis, pytest.raises(RedisError, match="unknown command"):
        redis.command("NOSUCHCOMMAND")


def test_a_taken_port_is_a_clear_error_with_the_log() -> None:
    with running_redis() as taken, pytest.raises(RedisStartError, match="exited with status"):
        start_redis(port=taken.port)


def test_a_bad_option_fails_fast_with_the_log() -> None:
    with pytest.raises(RedisStartError):
        start_redis("--no-such-option", "1", ready_within=10)


def test_a_bind_race_is_retried_on_another_port(monkeypatch: pytest.MonkeyPatch) -> None:
    with running_redis() as taken:
        offered = iter([taken.port, free_port()])
        monkeypatch.setattr("mqcore_tcp.testing_redis_server.free_port", lambda *_: next(offered))
        with start_redis() as redis:
            assert redis.port != taken.port
            assert redis.command("PING") == b"PONG"


def test_missing_redis_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RedisNotInstalled, match="redis-server not on PATH"):
        start_redis()


def test_need_redis_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the Redis tests"):
        need_redis()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="not on PATH"):
        need_redis()


@BOTH_BACKENDS
@pytest.mark.anyio
async def test_the_async_variants_do_not_block_the_loop() -> None:
    async with running_redis_async() as redis:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(tick)
            await redis.restart_async()
            tasks.cancel_scope.cancel()
        assert ticks > 0
        assert redis.command("PING") == b"PONG"
        pid = redis.pid
    assert not _alive(pid)


def test_a_cluster_forms_and_stops() -> None:
    with start_redis_cluster(3) as cluster:
        assert len(cluster.urls) == 3
        assert all(cluster.state(node) == "ok" for node in cluster.nodes)
        slots = [redis_command(port, "CLUSTER", "COUNTKEYSINSLOT", 0) for port in cluster.ports]
        assert slots == [0, 0, 0]
        replies: list[bytes] = []
        for port in cluster.ports:  # a key lives on its shard only; the others redirect
            try:
                reply = redis_command(port, "SET", "{topic}:index", "1")
                assert isinstance(reply, bytes)
                replies.append(reply)
            except RedisError as moved:
                replies.append(str(moved).split()[0].encode())
        assert sorted(replies) == [b"MOVED", b"MOVED", b"OK"]
        pids = [node.pid for node in cluster.nodes]
    assert not any(_alive(pid) for pid in pids)
    assert all(_refused(port) for port in cluster.ports)


def test_a_cluster_needs_three_masters() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        start_redis_cluster(2)


def test_no_redis_process_is_left_behind() -> None:
    """Every server these tests started is gone (none is a child of this process)."""
    children = subprocess.run(
        ["ps", "-o", "pid=,comm=", "--ppid", str(os.getpid())],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert "redis-server" not in children

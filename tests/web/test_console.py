"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Load the page, see a topic appear after a client sends to it, send a message
from the page and receive it with the Python client, tail a topic, and see
the rate chart draw. In CI (``CI=true``) a missing browser fails the test;
locally it is skipped. ``MQCORE_CONSOLE_SCREENSHOT=PATH`` also saves a
screenshot there (how ``docs/console.png`` is made).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from mqcore_client import SyncClient

from ..helpers import listening_port, server_command

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds the page gets for each thing it must show (it polls every 2 s).
WAIT_MS = 15_000


def _need_browser() -> None:
    if os.path.exists(CHROMIUM):
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser test: no chromium at {CHROMIUM}")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


@pytest.fixture
def web_ports() -> Iterator[tuple[int, int]]:
    """``python -m mqcore_tcp`` with a TCP and an HTTP listener: (tcp port, http port)."""
    command = server_command("--port", "0", "--listen", "http://127.0.0.1:0")
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        ports: dict[str, int] = {}
        for text in proc.stderr:
            port = listening_port(text)
            if port is not None:
                ports["http" if "http://" in text else "tcp"] = port
                if len(ports) == 2:
                    break
        else:
            pytest.fail(f"server exited with {proc.wait()} before listening")
        yield ports["tcp"], ports["http"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()


def test_console_shows_topics_sends_tails_and_charts(web_ports: tuple[int, int]) -> None:
    _need_browser()
    sync_api = pytest.importorskip("playwright.sync_api")
    tcp_port, http_port = web_ports
    with sync_api.sync_playwright() as playwright, SyncClient("127.0.0.1", tcp_port) as client:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{http_port}/")
            _check_console(page, client)
            assert errors == []
            screenshot = os.environ.get("MQCORE_CONSOLE_SCREENSHOT")
            if screenshot:
                page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()


def _check_console(page: Any, client: SyncClient) -> None:
    # A topic appears in the table after a client sends to it.
    client.send("seen-by-the-browser", "hello")
    page.wait_for_selector("#topics td.name:text-is('seen-by-the-browser')", timeout=WAIT_MS)
    assert page.text_content("#identity").startswith("mqcore ")
    assert page.text_content("#health") == "ok"

    # A message sent from the page reaches a Python subscriber.
    with client.subscribe("from-the-page", timeout=10) as sub:
        page.fill("#send-topic", "from-the-page")
        page.fill("#send-msg", "hello from chromium")
        page.click("#send-button")
        received = sub.get(timeout=10)
        assert (received.topic, received.msg) == ("from-the-page", "hello from chromium")
    page.wait_for_selector("#send-result:text('sent to from-the-page')", timeout=WAIT_MS)

    # The page tails a topic: a Python client's message shows up in its log.
    page.fill("#tail-topic", "tailed")
    page.click("#tail-button")
    page.wait_for_selector("#tail-log :text('tailing tailed')", timeout=WAIT_MS)
    client.send("tailed", "tail me")
    page.wait_for_selector("#tail-log .delivery:text('tail me')", timeout=WAIT_MS)

    # The rate chart draws: two rate points, and the received-rate line's colour on the canvas.
    for n in range(50):
        client.publish("busy", str(n))
    client.flush()
    page.wait_for_function(
        "() => Number(document.getElementById('rate-chart').dataset.points) >= 2",
        timeout=WAIT_MS,
    )
    coloured = page.evaluate(
        """() => {
          const c = document.getElementById('rate-chart');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 0; i < d.length; i += 4)
            if (Math.abs(d[i] - 0x4f) < 24 && Math.abs(d[i+1] - 0xb3) < 24 && d[i+2] > 200) n++;
          return n;
        }"""
    )
    assert coloured > 20
    # The connections table lists the page's WebSocket and the Python client.
    page.wait_for_selector("#connections td:text-is('websocket')", timeout=WAIT_MS)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))

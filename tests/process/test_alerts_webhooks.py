"""Alert webhooks against real local HTTP receivers (aiohttp on 127.0.0.1, port 0).

Synchronisation is by events and deadline-bounded polling only; the retry backoff is set
to 0 so no test waits on it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from helixd import __version__
from helixd.config.jobs import Webhook
from helixd.jobs.alerts import AlertBook
from tests.conftest import wait_for


@dataclass
class Receiver:
    """A webhook receiver: records each POST; answers with scripted statuses, then 200."""

    base_url: str = ""
    posts: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        return self.base_url + path

    def bodies(self, path: str = "/hook") -> list[dict[str, Any]]:
        return [body for got, body, _ in self.posts if got == path]

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append((request.path, await request.json(), dict(request.headers)))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.json_response({"ok": status < 300}, status=status)


@dataclass
class DeadReceiver:
    """Accepts connections, reads nothing and never answers."""

    url: str
    connected: asyncio.Event
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", recv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    recv.base_url = f"http://{host}:{port}"
    yield recv
    await runner.cleanup()


@pytest.fixture
async def dead_receiver() -> AsyncIterator[DeadReceiver]:
    connected = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        connected.set()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dead = DeadReceiver(f"http://127.0.0.1:{port}/hook", connected, writers)
    yield dead
    server.close()
    for writer in writers:
        writer.close()
    await server.wait_closed()


def closed_port_url() -> str:
    """An URL on a loopback port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def hook(url: str, **values: Any) -> Webhook:
    return Webhook.model_validate({"url": url, "min_severity": "info", **values})


@pytest.fixture
async def book(tmp_path: Path) -> AsyncIterator[AlertBook]:
    alerts = AlertBook(tmp_path / "alerts.json", retry_base_s=0.0)
    yield alerts
    await alerts.close(grace_s=0.5)


async def settled(book: AlertBook) -> None:
    """Wait until no delivery is in flight."""
    await wait_for(lambda: book.in_flight == 0, timeout=10, what="deliveries to finish")


async def test_firing_and_resolution_arrive_with_the_documented_shape(
    book: AlertBook, receiver: Receiver
) -> None:
    book.configure([hook(receiver.url(), headers={"Authorization": "Bearer t0ken"})])
    book.fire("inference:qwen", "error", "no answer within 30 s", source="health")
    await wait_for(lambda: len(receiver.posts) == 1, timeout=10, what="the firing")
    book.resolve("inference:qwen", "answers again")
    await wait_for(lambda: len(receiver.posts) == 2, timeout=10, what="the resolution")

    (_, firing, headers), (_, resolved, _) = receiver.posts
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer t0ken"
    assert headers["User-Agent"] == f"helixd/{__version__}"
    for body in (firing, resolved):
        assert body["host"] == socket.gethostname() and body["helixd"] == __version__
    alert = firing["alert"]
    assert alert["key"] == "inference:qwen" and alert["severity"] == "error"
    assert alert["status"] == "firing" and alert["source"] == "health"
    assert alert["message"] == "no answer within 30 s"
    assert alert["fired_at"].endswith("Z") and isinstance(alert["fired_at_epoch"], float)
    assert alert["resolved_at"] is None
    assert resolved["alert"]["status"] == "resolved"
    assert resolved["alert"]["resolution"] == "answers again"
    assert resolved["alert"]["resolved_at"].endswith("Z")
    await settled(book)
    assert (book.delivered, book.failed_deliveries) == (2, 0)


async def test_min_severity_filters_firings_escalations_and_resolutions(
    book: AlertBook, receiver: Receiver
) -> None:
    book.configure(
        [
            hook(receiver.url("/all"), min_severity="info"),
            hook(receiver.url("/errors"), min_severity="error"),
        ]
    )
    book.fire("disk:/d", "warning", "low", source="rules")
    book.fire("queue_backlog:qwen", "warning", "busy", source="rules")
    book.fire("queue_backlog:qwen", "error", "very busy", source="rules")  # escalation
    book.resolve("disk:/d")
    book.resolve("queue_backlog:qwen")
    await settled(book)

    def seen(path: str) -> list[tuple[str, str, str]]:
        return [
            (b["alert"]["key"], b["alert"]["severity"], b["alert"]["status"])
            for b in receiver.bodies(path)
        ]

    assert sorted(seen("/all")) == sorted(
        [
            ("disk:/d", "warning", "firing"),
            ("queue_backlog:qwen", "warning", "firing"),
            ("queue_backlog:qwen", "error", "firing"),
            ("disk:/d", "warning", "resolved"),
            ("queue_backlog:qwen", "error", "resolved"),
        ]
    )
    assert sorted(seen("/errors")) == [
        ("queue_backlog:qwen", "error", "firing"),
        ("queue_backlog:qwen", "error", "resolved"),
    ]


@pytest.mark.parametrize("transient", [[500, 500], [429, 503]])
async def test_transient_failures_are_retried(
    book: AlertBook, receiver: Receiver, transient: list[int]
) -> None:
    receiver.statuses = list(transient)
    book.configure([hook(receiver.url(), retries=3)])
    book.fire("k", "error", "m", source="jobs")
    await settled(book)
    assert len(receiver.posts) == 3
    assert (book.delivered, book.failed_deliveries) == (1, 0)


async def test_retries_run_out(
    book: AlertBook, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500] * 10
    book.configure([hook(receiver.url(), retries=2)])
    with caplog.at_level(logging.WARNING, logger="helixd.alerts"):
        book.fire("k", "error", "m", source="jobs")
        await settled(book)
    assert len(receiver.posts) == 3
    assert (book.delivered, book.failed_deliveries) == (0, 1)
    [record] = [r for r in caplog.records if "webhook" in r.getMessage()]
    assert receiver.url() in record.getMessage() and "HTTP 500" in record.getMessage()
    assert "3 attempt(s)" in record.getMessage()


async def test_client_error_is_not_retried(
    book: AlertBook, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [400]
    book.configure([hook(receiver.url(), retries=5)])
    with caplog.at_level(logging.WARNING, logger="helixd.alerts"):
        book.fire("k", "error", "m", source="jobs")
        await settled(book)
    assert len(receiver.posts) == 1
    assert (book.delivered, book.failed_deliveries) == (0, 1)
    assert "HTTP 400" in caplog.text and "1 attempt(s)" in caplog.text


async def test_connection_refused_is_retried_then_logged(
    book: AlertBook, caplog: pytest.LogCaptureFixture
) -> None:
    url = closed_port_url()
    book.configure([hook(url, retries=2)])
    with caplog.at_level(logging.WARNING, logger="helixd.alerts"):
        book.fire("k", "critical", "m", source="jobs")
        await settled(book)
    assert book.failed_deliveries == 1
    assert url in caplog.text and "3 attempt(s)" in caplog.text


async def test_an_unreachable_webhook_delays_nothing(
    book: AlertBook, receiver: Receiver, dead_receiver: DeadReceiver
) -> None:
    book.configure([hook(dead_receiver.url, timeout_s=5, retries=3), hook(receiver.url())])

    alert = book.fire("provider_down:ollama", "error", "failed", source="rules")
    # fire() is a plain call: it returned without the loop running once, so nothing has
    # been sent yet and both deliveries are queued as tasks.
    assert alert is not None and not asyncio.iscoroutine(alert)
    assert receiver.posts == [] and book.in_flight == 2

    await wait_for(lambda: len(receiver.posts) == 1, timeout=4, what="the good receiver")
    await asyncio.wait_for(dead_receiver.connected.wait(), timeout=4)
    assert book.in_flight == 1  # the dead one is still waiting for an answer

    await asyncio.wait_for(book.close(grace_s=0.1), timeout=4)
    assert book.in_flight == 0
    assert (book.delivered, book.failed_deliveries, book.dropped_deliveries) == (1, 0, 1)


async def test_deliveries_in_flight_are_bounded(
    tmp_path: Path, dead_receiver: DeadReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    book = AlertBook(None, retry_base_s=0.0, max_in_flight=2)
    book.configure([hook(dead_receiver.url, timeout_s=30)])
    try:
        with caplog.at_level(logging.WARNING, logger="helixd.alerts"):
            for i in range(3):
                book.fire(f"k{i}", "error", "m", source="jobs")
        assert book.in_flight == 2 and book.dropped_deliveries == 1
        assert "alert k0: webhook delivery dropped" in caplog.text
    finally:
        await asyncio.wait_for(book.close(grace_s=0), timeout=4)
    assert book.in_flight == 0


async def test_nothing_is_sent_after_close(book: AlertBook, receiver: Receiver) -> None:
    book.configure([hook(receiver.url())])
    await book.close()
    assert book.fire("k", "error", "m", source="jobs") is not None
    assert book.in_flight == 0 and [a.key for a in book.active()] == ["k"]


async def test_a_receiver_that_never_answers_times_out_and_is_retried(
    book: AlertBook, dead_receiver: DeadReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    book.configure([hook(dead_receiver.url, timeout_s=0.2, retries=1)])
    with caplog.at_level(logging.WARNING, logger="helixd.alerts"):
        book.fire("k", "error", "m", source="jobs")
        await settled(book)
    assert len(dead_receiver.writers) == 2  # two attempts, each a fresh connection
    assert book.failed_deliveries == 1
    assert "no answer within 0.2 s" in caplog.text and "2 attempt(s)" in caplog.text

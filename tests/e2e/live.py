"""Readers of the live view's streams for the e2e tests: server-sent events over TCP."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from typing import Any

Event = tuple[str, Any]


class SseStream:
    """One ``GET`` of an event stream, read event by event with deadlines."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        self.connection.request("GET", path, headers=headers or {})
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers

    def body(self) -> Any:
        """The JSON body of a refusal."""
        return json.loads(self.response.read())

    def next(self) -> Event | None:
        """The next event, or None at the end of the stream."""
        name, data = "message", []
        while True:
            raw = self.response.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    return name, json.loads("\n".join(data))
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)

    def until(self, wanted: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        """Read until an event ``wanted`` accepts; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            event = self.next()
            if event is None:
                raise AssertionError(f"the stream ended; saw {[e[0] for e in seen]}")
            if wanted(event):
                return event
            seen.append(event)
        raise AssertionError(f"no wanted event within {timeout} s; saw {len(seen)}")

    def close(self) -> None:
        self.connection.close()


def model_state(event: Event, name: str) -> str | None:
    """The state of model ``name`` in a snapshot event (None for other events)."""
    kind, data = event
    if kind != "snapshot":
        return None
    return next((m["state"] for m in data["models"] if m["name"] == name), None)

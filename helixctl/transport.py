"""A minimal HTTP/1.1 client over AF_UNIX, just what helixctl needs.

helixctl must start fast (``helixctl status`` ≤ 60 ms as a whole process), and importing
``http.client`` alone costs a third of that budget (it pulls in the email package), so
this speaks the few lines of HTTP the control API needs: one request per connection,
a Content-Length or chunked body, and line streaming for ``logs -f``.
"""

from __future__ import annotations

import json
import os
import socket

# typing.TYPE_CHECKING without importing typing, which costs ``helixctl status`` some
# 3 ms of its start-up (the idiom PEP 781 names; mypy reads it the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


class Unreachable(Exception):
    """No helixd answers on the socket; the message says where we looked and what to do."""


class ProtocolError(Exception):
    """The other end did not speak the control API's HTTP."""


def _default_sockets() -> list[str]:
    """The places helixd puts its socket (mirrors ``helixd.paths``; a test keeps them equal)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime or not os.path.isabs(runtime):
        runtime = f"/tmp/helixd-{os.getuid()}"
    user = os.path.join(runtime, "helixd", "helixd.sock")
    system = "/run/helixd/helixd.sock"
    return [system, user] if os.geteuid() == 0 else [user, system]


def find_socket(explicit: str | None) -> tuple[str, list[str]]:
    """The socket to use and every place that was considered (for error messages)."""
    if explicit:
        return explicit, [explicit]
    env = os.environ.get("HELIXD_SOCKET")
    if env:
        return env, [env]
    candidates = _default_sockets()
    for path in candidates:
        if os.path.exists(path):
            return path, candidates
    return candidates[0], candidates


class _Default:
    """Marks "use the client's default timeout", as distinct from ``None`` (wait forever)."""


DEFAULT = _Default()
Timeout = float | None | _Default


class Response:
    """Status, headers and a body reader."""

    def __init__(self, sock: socket.socket, status: int, headers: dict[str, str], rest: bytes):
        self.status = status
        self.headers = headers
        self._sock = sock
        self._buffer = bytearray(rest)
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = headers.get("content-length")
        self._remaining = int(length) if length is not None else None

    def _fill(self) -> bool:
        data = self._sock.recv(65536)
        if not data:
            return False
        self._buffer.extend(data)
        return True

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise ProtocolError("connection closed in the middle of a response")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _read_line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if not self._fill():
                raise ProtocolError("connection closed in the middle of a response")
        index = self._buffer.index(b"\r\n")
        line = bytes(self._buffer[:index])
        del self._buffer[: index + 2]
        return line

    def iter_chunks(self) -> Iterator[bytes]:
        """Body data as it arrives."""
        if self._chunked:
            while True:
                size = int(self._read_line().split(b";")[0], 16)
                if size == 0:
                    return
                chunk = self._read_exact(size)
                self._read_exact(2)
                yield chunk
        elif self._remaining is not None:
            yield self._read_exact(self._remaining)
        else:
            while self._buffer or self._fill():
                data = bytes(self._buffer)
                self._buffer.clear()
                yield data

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self.iter_chunks())

    def json(self) -> Any:
        """The body as JSON."""
        try:
            return json.loads(self.read() or b"null")
        except ValueError:
            raise ProtocolError(
                f"helixd sent a reply that is not JSON (HTTP {self.status})"
            ) from None

    def iter_lines(self) -> Iterator[bytes]:
        """Body lines as they arrive (for NDJSON streams)."""
        pending = b""
        for chunk in self.iter_chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            yield from lines
        if pending:
            yield pending

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()


class Client:
    """One control-API request per connection: simple and plenty fast on a Unix socket."""

    def __init__(self, path: str, looked_at: list[str], timeout: float | None = 30.0) -> None:
        self.path = path
        self.looked_at = looked_at
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            places = " or ".join(self.looked_at)
            raise Unreachable(
                f"helixd is not running: no control socket at {places}.\n"
                "Start it with 'sudo systemctl start helixd' (system service) or "
                "'helixd --user' (user instance), or point --socket / HELIXD_SOCKET at its socket."
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise Unreachable(
                f"helixd is not running: {self.path} exists but nothing answers on it "
                "(left over from a helixd that stopped).\nStart helixd again; it replaces the "
                "stale socket."
            ) from None
        except PermissionError:
            sock.close()
            raise Unreachable(
                f"permission denied on {self.path}: add your user to the 'helixd' group "
                "(sudo usermod -aG helixd $USER, then log in again) or run as that user."
            ) from None
        except OSError as exc:
            sock.close()
            raise Unreachable(f"cannot connect to helixd at {self.path}: {exc.strerror}") from None
        return sock

    def request(self, method: str, path: str, timeout: Timeout = DEFAULT) -> Response:
        """Send one request; return the response with its body unread.

        ``timeout`` bounds each wait for data; ``None`` waits forever (``logs -f``).
        """
        sock = self._connect()
        sock.settimeout(self.timeout if isinstance(timeout, _Default) else timeout)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: helixd\r\nUser-Agent: helixctl\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        try:
            sock.sendall(head.encode())
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(65536)
                if not data:
                    raise ProtocolError("helixd closed the connection without an answer")
                buffer += data
        except TimeoutError:
            sock.close()
            raise Unreachable(f"helixd at {self.path} did not answer in time") from None
        except OSError as exc:
            sock.close()
            raise Unreachable(f"lost the connection to helixd at {self.path}: {exc}") from None
        header_block, rest = buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = header_block.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            sock.close()
            raise ProtocolError(f"not an HTTP answer from {self.path}: {status_line!r}")
        headers = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return Response(sock, int(parts[1]), headers, rest)

    def call(self, method: str, path: str, timeout: Timeout = DEFAULT) -> tuple[int, Any]:
        """A request whose answer is JSON: ``(status, document)``."""
        response = self.request(method, path, timeout)
        try:
            return response.status, response.json()
        except TimeoutError:
            raise Unreachable(f"helixd at {self.path} did not answer in time") from None
        except OSError as exc:
            raise Unreachable(f"lost the connection to helixd at {self.path}: {exc}") from None
        finally:
            response.close()

"""``helixctl top``: helixd live in the terminal, from its ``/v1/events`` stream.

:func:`render` turns the live document (see :mod:`helixd.ui.document`) and the recent
requests into screen lines; it is pure, so the picture is tested as data, without curses.
The rest is plumbing: a reader thread follows the NDJSON stream (helixctl's transport is
blocking) and hands each record to the screen loop through a bounded queue, and the loop
redraws at most about four times a second. A stream that ends (helixd's ``end`` record, a
closed connection, or 15 s of silence) shows as "disconnected" over the last picture, and
the reader tries again every 2 s. ``curses`` is imported only by the full-screen view, so
neither ``--once`` nor any other command pays for it.

``--once`` prints one frame as wide as the terminal (``COLUMNS``, else 80); to a terminal
it fits the screen (above the prompt), to a file or a pipe it has every line (unless
``LINES`` sets a height).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from helixctl.context import EXIT_FAILED, EXIT_UNREACHABLE, Context, echo, fail
from helixctl.render import duration, size
from helixctl.transport import ProtocolError, Response, Unreachable
from helixd import protocol

if TYPE_CHECKING:
    import curses

# helixd sends a snapshot at least every 5 s; a stream silent for three of those is lost.
STALE_S = 15.0
# How long to wait between tries to reach a helixd that went away.
RETRY_S = 2.0
# The screen loop's tick: at most this many redraws a second, and keys read meanwhile.
REDRAW_S = 0.25
# Requests kept for the screen (helixd's own live document keeps 50).
KEEP_REQUESTS = 50
# Records the reader may get ahead of the screen; past that it waits, and helixd drops a
# reader that falls far behind, so a suspended ``top`` never grows without bound.
QUEUE_LIMIT = 256
# Alerts shown before "… N more": they are important, but must not push memory off.
MAX_ALERT_LINES = 3
# ``--once`` to a file or a pipe (no LINES): every line, not a screenful.
ONCE_LINES = 1000

GIB = 1024**3
MODEL_BLOCK = "█"
OTHER_BLOCK = "░"
ELLIPSIS = "…"
# For terminals that cannot show the block characters (a C locale).
ASCII = str.maketrans({MODEL_BLOCK: "#", OTHER_BLOCK: ":", ELLIPSIS: "~"})
# States a model passes through: they show how long they have lasted so far.
TRANSITIONS = frozenset({"loading", "unloading"})
# The first words of the lines the screen shows as headings.
HEADINGS = ("MODEL ", "PROVIDER ", "TIME ")


# -- the picture, pure -------------------------------------------------------------------


@dataclass
class _Column:
    """One table column: its title, its cells, and how it gives way when space is short."""

    title: str
    cells: list[str]
    right: bool = False  # numbers line up on the right
    drop: int = 0  # the highest is left out first; 0: never left out
    flex: int = 0  # > 0: takes what is left down to this width, truncated with "…"
    tail: bool = False  # last column, shown only in what room is left

    def natural(self) -> int:
        return max([len(self.title), *(len(c) for c in self.cells)])

    def first(self, rows: int) -> _Column:
        """This column with only its first ``rows`` cells: a table cut at the bottom."""
        return _Column(self.title, self.cells[:rows], self.right, self.drop, self.flex, self.tail)


def _clip(text: str, width: int) -> str:
    """``text`` in ``width`` characters, an ellipsis marking a cut."""
    if len(text) <= width:
        return text
    return text[: width - 1] + ELLIPSIS if width > 1 else text[:width]


def _table(columns: list[_Column], width: int) -> list[str]:
    """Rows (the title row first) fitted to ``width``.

    Short of room, the gaps narrow to one space if that is enough to show every name
    whole; if not, names are cut with "…" (gaps of two again: a cut name needs no more),
    then the gaps narrow, then columns drop, the least useful first.
    """
    body = [c for c in columns if not c.tail]
    tail = next((c for c in columns if c.tail and any(c.cells)), None)

    def needed(cols: list[_Column], gap: int, cut: bool = True) -> int:
        widths = [min(c.flex, c.natural()) if c.flex and cut else c.natural() for c in cols]
        return sum(widths) + gap * (len(cols) - 1)

    gap = 2
    if needed(body, 2, cut=False) > width and needed(body, 1, cut=False) <= width:
        gap = 1  # a name is worth more than the air around it
    while needed(body, gap) > width:
        if gap == 2:
            gap = 1
            continue
        droppable = [c for c in body if c.drop]
        if not droppable:
            break  # nothing more to give: lines are cut at the edge below
        body.remove(max(droppable, key=lambda c: c.drop))
    widths = [c.natural() for c in body]
    spare = width - needed(body, gap)
    for i, col in enumerate(body):
        if col.flex:
            widths[i] = min(col.natural(), col.flex + max(0, spare))
    shown: list[tuple[_Column, int]] = list(zip(body, widths, strict=True))
    left = width - (sum(widths) + gap * (len(widths) - 1))
    if tail is not None and left >= gap + 6:
        shown.append((tail, min(tail.natural(), left - gap)))
    rows = []
    for r in range(len(columns[0].cells) + 1):
        cells = []
        for col, w in shown:
            text = _clip(col.title if r == 0 else col.cells[r - 1], w)
            cells.append(text.rjust(w) if col.right else text.ljust(w))
        rows.append((" " * gap).join(cells).rstrip()[:width])
    return rows


@dataclass
class _Section:
    """Lines of one part of the screen, and what to say when only some of them fit."""

    lines: list[str]
    min_lines: int = 1  # fewer than this and the section is left out
    more: Callable[[int], str] | None = None  # "… N more", given how many lines were hidden
    cap: int | None = None  # never more lines than this, even with room to spare
    # The first N lines built anew (a table sized to the rows shown, not to those cut).
    head: Callable[[int], list[str]] | None = None


def _table_section(
    columns: list[_Column], width: int, more: Callable[[int], str] | None = None
) -> _Section:
    """A table as a section: cut at the bottom, its columns fit the rows still shown."""
    return _Section(
        _table(columns, width),
        min_lines=2,
        more=more,
        head=lambda n: _table([c.first(n - 1) for c in columns], width),
    )


def _fit(sections: list[_Section], height: int) -> list[str]:
    """Sections top down in ``height`` lines; those lower down give way first.

    A blank line separates sections only when every line fits with them, since at 80x24 a
    models row is worth more than the air between sections.
    """
    wanted = [s for s in sections if s.lines]
    total = sum(min(len(s.lines), s.cap or len(s.lines)) for s in wanted)
    gaps = total + len(wanted) - 1 <= height
    out: list[str] = []
    for section in wanted:
        lines = section.lines
        limit = min(len(lines), section.cap or len(lines))
        room = height - len(out) - (1 if gaps and out else 0)
        room = min(room, limit)
        if room < min(section.min_lines, len(lines)):
            break  # this one and everything below it do not fit
        if gaps and out:
            out.append("")
        if room >= len(lines):
            out.extend(lines)
            continue
        # Say what is hidden, unless that line would leave less than the minimum shown.
        more = section.more if section.more and room - 1 >= section.min_lines else None
        shown = room - 1 if more else room
        out.extend(section.head(shown) if section.head else lines[:shown])
        if more:
            out.append(more(len(lines) - shown))
    return out[:height]


def _header(doc: dict[str, Any], width: int, now: float) -> list[str]:
    started = doc.get("started_at")
    parts = [f"helixd {doc.get('version') or '?'} on {doc.get('host') or '?'}"]
    if started is not None:
        parts.append(f"up {duration(max(0.0, now - started))}")
    parts.append(time.strftime("%H:%M:%S", time.localtime(now)))
    lines = ["   ".join(parts)]
    if doc.get("summary"):
        lines.append(str(doc["summary"]))
    return [_clip(line, width) for line in lines]


def _bar_cells(holders: Sequence[tuple[str, int, str]], total: int, width: int) -> str:
    """``tiny███other░░   ``: each holder's share of ``width`` cells, its name at its start.

    Every holder with any memory gets at least one cell, so a small model is not lost in a
    big card; the cut is cumulative, so rounding never adds up past the bar.
    """
    cells = ""
    held = 0
    for name, n, block in holders:
        if n <= 0 or total <= 0:
            continue
        held += n
        end = min(width, max(len(cells) + 1, round(held / total * width)))
        span = end - len(cells)
        if span <= 0:
            break
        # Leave at least one block after the name, so neighbours stay apart.
        label = name[: span - 1] if span >= 2 else ""
        cells += label + block * (span - len(label))
    return cells.ljust(width)


def _memory(devices: dict[str, Any], width: int) -> list[str]:
    bars: list[tuple[str, dict[str, Any]]] = [
        (str(g.get("id") or "gpu"), g) for g in devices.get("gpus") or []
    ]
    if devices.get("ram"):
        bars.append(("ram", devices["ram"]))
    lines = []
    if bars:
        label_w = max(len(label) for label, _ in bars)
        figures = [
            f"{(b.get('used_bytes') or 0) / GIB:.1f}/{(b.get('total_bytes') or 0) / GIB:.1f} GiB"
            for _, b in bars
        ]
        fig_w = max(len(f) for f in figures)
        bar_w = width - label_w - fig_w - 4  # "LABEL [BAR] FIGURES"
        for (label, bar), fig in zip(bars, figures, strict=True):
            if bar_w < 8:  # no room for a picture: the figures alone, lined up
                lines.append(_clip(f"{label.ljust(label_w)} {fig.rjust(fig_w)}", width))
                continue
            holders = [
                (str(m.get("name") or "?"), int(m.get("bytes") or 0), MODEL_BLOCK)
                for m in bar.get("models") or []
            ]
            holders.append(("other", int(bar.get("other_bytes") or 0), OTHER_BLOCK))
            cells = _bar_cells(holders, int(bar.get("total_bytes") or 0), bar_w)
            lines.append(f"{label.ljust(label_w)} [{cells}] {fig.rjust(fig_w)}")
    else:
        lines.append("memory: no figures from helixd yet")
    if not devices.get("gpus") and devices.get("mode") == "ram-only":
        note = devices.get("note")
        lines.append(_clip("no GPU in use: RAM-only mode" + (f" ({note})" if note else ""), width))
    return lines


def _models(models: list[dict[str, Any]], width: int, now: float) -> _Section:
    if not models:
        return _Section(["no models configured; add [models.NAME] tables to the config"])

    def state(m: dict[str, Any]) -> str:
        text = str(m.get("state") or "?")
        since = m.get("state_since")
        if text in TRANSITIONS and since is not None:
            text += f" {duration(max(0.0, now - since))}"
        return text

    def memory(m: dict[str, Any]) -> str:
        device = m.get("device") or ""
        n = m.get("vram_bytes") if str(device).startswith("gpu") else m.get("ram_bytes")
        if not n:
            n = m.get("vram_bytes") or m.get("ram_bytes")
        if not n:
            return "-"
        # A figure helixd only estimated says so: it may be off until measured.
        return ("~" if m.get("memory_source") == "estimated" else "") + size(n)

    def keep(m: dict[str, Any]) -> str:
        expires = m.get("expires_at")
        return "-" if expires is None else duration(max(0.0, expires - now))

    def evict(m: dict[str, Any]) -> str:
        # Pinned models are never evicted, so the two share a column.
        if m.get("pinned"):
            return "pinned"
        return f"#{m['evict_rank']}" if m.get("evict_rank") else "-"

    def rate(m: dict[str, Any]) -> str:
        r = float(m.get("requests_per_min") or 0.0)
        return f"{r:.0f}" if r == int(r) or r >= 10 else f"{r:.1f}"

    columns = [
        _Column("MODEL", [str(m.get("name")) for m in models], flex=10),
        _Column("STATE", [state(m) for m in models]),
        _Column("DEVICE", [str(m.get("device") or "-") for m in models], drop=5),
        _Column("MEM", [memory(m) for m in models], right=True, drop=2),
        _Column("IN/Q", [f"{m.get('in_flight', 0)}/{m.get('queued', 0)}" for m in models], drop=3),
        _Column("REQ/M", [rate(m) for m in models], right=True, drop=7),
        _Column("KEEP", [keep(m) for m in models], right=True, drop=4),
        _Column("EVICT", [evict(m) for m in models], drop=6),
        _Column("NOTE", [str(m.get("message") or "") for m in models], tail=True),
    ]
    return _table_section(columns, width, more=lambda n: f"{ELLIPSIS} {n} more models")


def _providers(doc: dict[str, Any], width: int, now: float) -> _Section:
    providers = doc.get("providers") or []
    # The document's uptime is as of when helixd built it; count on from there.
    age = max(0.0, now - doc["time"]) if doc.get("time") is not None else 0.0

    def uptime(p: dict[str, Any]) -> str:
        up = p.get("uptime_s")
        return "-" if up is None else duration(up + age)

    def note(p: dict[str, Any]) -> str:
        last = p.get("last_exit") or {}
        return str(p.get("message") or last.get("description") or "")

    columns = [
        _Column("PROVIDER", [str(p.get("name")) for p in providers], flex=10),
        _Column("KIND", [str(p.get("kind") or "-") for p in providers], drop=3),
        _Column("STATE", [str(p.get("state") or "?") for p in providers]),
        _Column("PID", [str(p.get("pid") or "-") for p in providers], right=True, drop=2),
        _Column("RESTARTS", [str(p.get("restarts", 0)) for p in providers], right=True, drop=1),
        _Column("UPTIME", [uptime(p) for p in providers], right=True),
        _Column("NOTE", [note(p) for p in providers], tail=True),
    ]
    if not providers:
        return _Section([])
    return _table_section(columns, width, more=lambda n: f"{ELLIPSIS} {n} more providers")


def _alerts(alerts: list[dict[str, Any]], width: int, now: float) -> _Section:
    lines = []
    for a in alerts:
        since = a.get("since")
        age = f" {duration(max(0.0, now - since))}" if since is not None else ""
        lines.append(_clip(f"! {a.get('severity') or 'alert'}{age}: {a.get('message')}", width))
    return _Section(
        lines,
        cap=MAX_ALERT_LINES,
        more=lambda n: _clip(f"{ELLIPSIS} {n} more alerts (helixctl alerts)", width),
    )


def _requests(requests: list[dict[str, Any]], width: int) -> _Section:
    newest = sorted(requests, key=lambda r: r.get("time") or 0.0, reverse=True)

    def ms(value: Any) -> str:
        return "-" if value is None else f"{float(value):.0f}"

    columns = [
        _Column(
            "TIME",
            [time.strftime("%H:%M:%S", time.localtime(r.get("time") or 0.0)) for r in newest],
        ),
        _Column("MODEL", [str(r.get("model") or r.get("asked") or "-") for r in newest], flex=10),
        _Column("STATUS", [str(r.get("status", "-")) for r in newest], right=True),
        _Column("MS", [ms(r.get("ms")) for r in newest], right=True),
        _Column("TTFT", [ms(r.get("ttft_ms")) for r in newest], right=True, drop=2),
        _Column("TRIES", [str(r.get("attempts", 1)) for r in newest], right=True, drop=3),
        _Column("PATH", [str(r.get("path") or "") for r in newest], tail=True),
    ]
    # Older requests cut off at the bottom need no "more" line: there are always older ones.
    return _table_section(columns, width) if newest else _Section([])


def render(
    doc: dict[str, Any], requests: list[dict[str, Any]], width: int, height: int, now: float
) -> list[str]:
    """The screen: at most ``height`` lines of at most ``width`` characters.

    Top down: the header (host, version, uptime, summary), active alerts, a memory bar per
    GPU and for RAM, the models, the providers and the latest ``requests``, newest first.
    When lines run short the lower sections give way first; a table too wide narrows its
    gaps, then leaves out its less useful columns, then truncates names with "…".
    """
    if width <= 0 or height <= 0:
        return []
    sections = [
        _Section(_header(doc, width, now)),
        _alerts(list(doc.get("alerts") or []), width, now),
        _Section(_memory(doc.get("devices") or {}, width)),
        _models(list(doc.get("models") or []), width, now),
        _providers(doc, width, now),
        _requests(requests, width),
    ]
    return [line[:width] for line in _fit(sections, height)]


# -- the stream --------------------------------------------------------------------------


def _request_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What tells two request records apart (one may come both streamed and in a snapshot)."""
    return tuple(record.get(k) for k in ("time", "method", "path", "model", "status", "ms"))


def merge_requests(
    kept: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``kept`` and ``new`` without repeats, oldest first, the last :data:`KEEP_REQUESTS`."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in (*kept, *new):
        if isinstance(record, dict):
            seen.setdefault(_request_key(record), record)
    merged = sorted(seen.values(), key=lambda r: r.get("time") or 0.0)
    return merged[-KEEP_REQUESTS:]


def _open(ctx: Context) -> Response:
    """A response to ``GET /v1/events`` with status 200, its body unread.

    Raises :class:`Unreachable` or :class:`ProtocolError`; an error answer raises
    :class:`_Refused` with helixd's message.
    """
    response = ctx.client.request(protocol.Events.method, protocol.Events.target(), STALE_S)
    if response.status == 200:
        return response
    try:
        document = response.json()
    except (ProtocolError, OSError):
        document = None
    finally:
        response.close()
    raise _Refused(response.status, document)


class _Refused(Exception):
    """helixd answered ``/v1/events`` with an error status."""

    def __init__(self, status: int, document: Any) -> None:
        error = document.get("error") if isinstance(document, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if status == 404 and not message:
            message = "this helixd has no live feed (GET /v1/events); upgrade helixd"
        super().__init__(message or f"helixd answered HTTP {status} to GET /v1/events")
        self.status = status
        self.document = document


# A message from the reader to the screen: ("snapshot", doc), ("request", record),
# ("up", None) when connected, ("down", why) when the stream is lost.
Message = tuple[str, Any]


def _records(response: Response) -> Iterator[Message]:
    """The stream's records that make sense; a line that does not is skipped.

    ``("end", reason)`` is the last: helixd ended the stream (it is stopping, or this
    reader fell too far behind), and anything after it is not read.
    """
    for raw in response.iter_lines():
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        kind, data = record.get("type"), record.get("data")
        if kind in ("snapshot", "request") and isinstance(data, dict):
            yield kind, data
        elif kind == "end":
            reason = data.get("reason") if isinstance(data, dict) else None
            yield "end", str(reason or "no reason given")
            return


class _Reader(threading.Thread):
    """Follows the stream, and reconnects every :data:`RETRY_S` after it is lost."""

    def __init__(self, ctx: Context, first: Response) -> None:
        # A daemon thread: quitting must not wait for a read blocked on the socket.
        super().__init__(name="helixctl-top-reader", daemon=True)
        self._ctx = ctx
        self._response: Response | None = first
        self.messages: queue.Queue[Message] = queue.Queue(QUEUE_LIMIT)
        self.stopping = threading.Event()

    def _put(self, message: Message) -> None:
        while not self.stopping.is_set():
            try:
                self.messages.put(message, timeout=REDRAW_S)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        while not self.stopping.is_set():
            response, self._response = self._response, None
            if response is None:
                try:
                    response = _open(self._ctx)
                except (Unreachable, ProtocolError, _Refused) as exc:
                    self._put(("down", str(exc).splitlines()[0]))
                    self.stopping.wait(RETRY_S)
                    continue
            self._put(("up", None))
            why = "helixd closed the stream (stopped or restarting)"
            try:
                for kind, data in _records(response):
                    if self.stopping.is_set():
                        return
                    if kind == "end":
                        why = f"helixd ended the stream ({data})"
                        break
                    self._put((kind, data))
            except TimeoutError:
                why = f"helixd sent nothing for {STALE_S:g} s"
            except (ProtocolError, OSError):
                why = "lost the connection to helixd (stopped or restarting)"
            finally:
                response.close()
            self._put(("down", why))
            self.stopping.wait(RETRY_S)


# -- the command -------------------------------------------------------------------------


def _first_snapshot(response: Response) -> dict[str, Any]:
    """Read until the stream's first snapshot (the first line, from a current helixd)."""
    try:
        for kind, data in _records(response):
            if kind == "snapshot":
                return dict(data)
            if kind == "end":
                fail(f"helixd ended the live feed before its first snapshot ({data})", EXIT_FAILED)
    except TimeoutError:
        fail(f"helixd sent no snapshot in {STALE_S:g} s", EXIT_FAILED)
    except (ProtocolError, OSError):
        fail("helixd closed the live feed before its first snapshot", EXIT_FAILED)
    fail("helixd closed the live feed before its first snapshot", EXIT_FAILED)


def _printable(lines: list[str], encoding: str | None) -> list[str]:
    """``lines`` as ``encoding`` can show them: the block characters swapped for ASCII if
    it lacks them, and any other character it lacks (in a name, a message) as ``?``.
    """
    target = encoding or "ascii"
    try:
        (MODEL_BLOCK + OTHER_BLOCK + ELLIPSIS).encode(target)
    except (UnicodeEncodeError, LookupError) as exc:
        lines = [line.translate(ASCII) for line in lines]
        if isinstance(exc, LookupError):
            target = "ascii"
    return [line.encode(target, "replace").decode(target) for line in lines]


def run(ctx: Context, once: bool) -> None:
    """``helixctl top [--once] [--json]``."""
    if ctx.as_json and not once:
        fail("--json goes with --once (the full-screen view is for people)", 2)
    if not once and not (sys.stdin.isatty() and sys.stdout.isatty()):
        fail("helixctl top needs a terminal; use --once for one frame", 2)
    try:
        response = _open(ctx)
    except Unreachable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    except ProtocolError as exc:
        fail(str(exc), EXIT_FAILED)
    except _Refused as exc:
        if ctx.as_json and exc.document is not None:
            ctx.api_error(exc.document)
        fail(str(exc), EXIT_FAILED)
    if once:
        try:
            doc = _first_snapshot(response)
        finally:
            response.close()
        if ctx.as_json:
            echo(json.dumps(doc, indent=2))
            return
        columns, lines = shutil.get_terminal_size((80, 24))
        if sys.stdout.isatty():
            lines = max(1, lines - 1)  # and a line for the prompt after it
        elif not os.environ.get("LINES"):
            lines = ONCE_LINES  # to a file or a pipe: the whole picture, not a screenful
        frame = render(doc, list(doc.get("requests") or []), columns, lines, time.time())
        echo("\n".join(_printable(frame, sys.stdout.encoding)))
        return
    reader = _Reader(ctx, response)
    reader.start()
    try:
        _full_screen(reader)
    except KeyboardInterrupt:
        pass  # Ctrl-C quits like q; curses.wrapper has restored the terminal already
    finally:
        reader.stopping.set()


def _full_screen(reader: _Reader) -> None:
    import curses
    import locale

    # The block characters need the terminal's own encoding, not the C locale's ASCII.
    # A LANG naming a locale that is not installed leaves the C locale: ASCII it is.
    with contextlib.suppress(locale.Error):
        locale.setlocale(locale.LC_ALL, "")
    encoding = locale.getpreferredencoding(False)
    curses.wrapper(lambda screen: _Screen(screen, reader, encoding).loop())


class _Screen:
    """The full-screen loop: take what the reader sends, redraw, read keys."""

    def __init__(self, screen: curses.window, reader: _Reader, encoding: str) -> None:
        self.screen = screen
        self.reader = reader
        self.encoding = encoding
        self.doc: dict[str, Any] | None = None
        self.requests: list[dict[str, Any]] = []
        self.connected = False
        self.why: str | None = None  # why the stream was lost, while it is

    def take(self) -> bool:
        """Apply every waiting message; whether anything changed."""
        changed = False
        while True:
            try:
                kind, data = self.reader.messages.get_nowait()
            except queue.Empty:
                return changed
            changed = True
            if kind == "snapshot":
                self.doc = data
                self.requests = merge_requests(self.requests, data.get("requests") or [])
            elif kind == "request":
                self.requests = merge_requests(self.requests, [data])
            elif kind == "up":
                self.connected, self.why = True, None
            elif kind == "down":
                self.connected, self.why = False, str(data)

    def loop(self) -> None:
        import curses

        # A terminal without an invisible cursor just shows it.
        with contextlib.suppress(curses.error):
            curses.curs_set(0)
        with contextlib.suppress(curses.error):
            curses.use_default_colors()  # a terminal without colours has no defaults
        self.screen.timeout(int(REDRAW_S * 1000))
        drawn, dirty = 0.0, True
        while True:
            key = self.screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            if key == curses.KEY_RESIZE:
                dirty = True
            dirty = self.take() or dirty
            moment = time.monotonic()
            # Countdowns and uptimes move every second even when helixd has nothing new.
            if (dirty and moment - drawn >= REDRAW_S) or moment - drawn >= 1.0:
                self.draw()
                drawn, dirty = moment, False

    def draw(self) -> None:
        import curses

        height, width = self.screen.getmaxyx()
        self.screen.erase()
        lines: list[str] = []
        now = time.time()
        footer = "q quit   " + ("connected" if self.connected else "connecting to helixd")
        if self.why is not None:
            footer = "q quit   disconnected"
            if self.doc is not None:
                # The picture stays as helixd last sent it: no countdown runs on meanwhile.
                now = float(self.doc.get("time") or now)
                footer += f" (showing {time.strftime('%H:%M:%S', time.localtime(now))})"
            footer += f"; retrying: {self.why}"
        if self.doc is not None:
            lines = render(self.doc, self.requests, width, max(0, height - 1), now)
        for y, line in enumerate(_printable(lines, self.encoding)):
            bold = y == 0 or line.startswith(HEADINGS)
            self._put(y, line, curses.A_BOLD if bold else curses.A_NORMAL)
        [footer] = _printable([footer], self.encoding)
        self._put(height - 1, footer, curses.A_REVERSE if not self.connected else curses.A_DIM)
        self.screen.refresh()

    def _put(self, y: int, text: str, attr: int) -> None:
        import curses

        height, width = self.screen.getmaxyx()
        if not 0 <= y < height or width <= 0:
            return
        # One short of the last column on the last line: writing the bottom-right cell
        # moves the cursor past the screen, which curses reports as an error. An error
        # still possible is a resize between getmaxyx and here: the next draw is right.
        with contextlib.suppress(curses.error):
            self.screen.addnstr(y, 0, text, width - 1 if y == height - 1 else width, attr)

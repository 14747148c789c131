"""The daemon: builds the components from config, runs them, reloads, shuts down.

Start order: lock the state dir → clean up leftovers of an earlier instance → bind the
control socket → spawn autostart processes → READY=1. Stop order is the reverse. Signal
handlers only queue events; the main task acts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
from typing import Any

from aiohttp import web

from helixd import __version__
from helixd.config import ConfigError, DaemonPaths, LoadedConfig, load_config
from helixd.control.api import ControlAPI
from helixd.control.jobs_api import add_jobs_routes
from helixd.control.models_api import add_model_routes
from helixd.control.quiet import quiet_client_errors
from helixd.control.sockets import bind_control_socket
from helixd.errors import ReloadRefused, StartupError
from helixd.jobs.alerts import AlertBook
from helixd.jobs.service import Operations
from helixd.notify import Notifier
from helixd.overview import Overview
from helixd.providers.base import ModelAdapter
from helixd.providers.specs import provider_specs
from helixd.proxy.server import ProxyServer
from helixd.resources.gpu import GpuSelectionError
from helixd.resources.monitor import ResourceMonitor
from helixd.scheduler import (
    Catalog,
    Changed,
    Event,
    LoadEnded,
    Measured,
    Residency,
    build_adapters,
    build_entries,
)
from helixd.state import OperatorStops, ResidencyRecord
from helixd.supervisor.arbiter import Supervisor
from helixd.supervisor.process import ManagedProcess
from helixd.supervisor.registry import ChildRegistry
from helixd.supervisor.spec import SpecError
from helixd.ui.feed import LiveFeed
from helixd.ui.redact import Redactor, config_secrets
from helixd.ui.routes import LiveView, is_page, ui_off

log = logging.getLogger("helixd")


class Daemon:
    """One helixd instance."""

    def __init__(self, loaded: LoadedConfig, paths: DaemonPaths, notifier: Notifier) -> None:
        self.loaded = loaded
        self.paths = paths
        self.notifier = notifier
        self.registry = ChildRegistry(paths.state_dir)
        self.operator_stops: OperatorStops | None = None  # read once the state dir is ours
        self.supervisor = Supervisor(self.registry)
        self.supervisor.events.subscribe(self._process_changed)
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._reload_lock = asyncio.Lock()
        self._lock_fd: int | None = None
        self._runner: web.AppRunner | None = None
        self._status_dirty = asyncio.Event()
        self.stopping = False
        resources = loaded.config.resources
        self.monitor = ResourceMonitor(resources.gpus)
        self.residency = Residency(resources, loaded.config.scheduler, self.monitor)
        self.record: ResidencyRecord | None = None  # read once the state dir is ours
        self.proxy = ProxyServer(loaded.config.proxy, self.residency, paths.state_dir)
        self.proxy.configure(_aliases(loaded), dict(loaded.config.routes), loaded.config.providers)
        self._adapters: dict[str, ModelAdapter] = {}
        self.alerts = AlertBook(paths.state_dir / "alerts.json")
        self.ops = Operations(
            self, self.alerts, budgets=self.budgets_exceeded, on_state_restored=self._state_restored
        )
        self.jobs = self.ops.jobs
        self.backups = self.ops.backups
        self.residency.events.subscribe(self._residency_event)
        self.overview = Overview(
            lambda: self.loaded,
            paths,
            self.supervisor,
            self.residency,
            self.proxy,
            self.ops,
            self.alerts,
            lambda: self.live_view is not None and self.live_view.actions,
        )
        self.live_feed = LiveFeed(self.overview.live_inputs, refresh=self.refresh)
        self.live_view = self._open_live_view(loaded)
        self.residency.events.subscribe(self.live_feed.changed)
        self.proxy.finished.subscribe(self.live_feed.request_finished)

    # -- life cycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT; raise :class:`StartupError` if it cannot start."""
        self._lock_state_dir()
        cleaned = await asyncio.to_thread(self.registry.clean_up_leftovers)
        if cleaned:
            log.warning("cleaned up after an earlier helixd: %s", "; ".join(cleaned))
        specs = provider_specs(self.loaded.config, self.paths)
        for spec in specs.values():
            self.supervisor.add(spec)
        await self._start_residency()
        await self._start_control()
        await self._start_proxy()
        self.live_feed.start()
        loop = asyncio.get_running_loop()
        for sig, event in (
            (signal.SIGTERM, "stop"),
            (signal.SIGINT, "stop"),
            (signal.SIGHUP, "reload"),
        ):
            loop.add_signal_handler(sig, self._events.put_nowait, event)
        self.operator_stops = OperatorStops(self.paths.state_dir)
        self.operator_stops.keep_only(set(self.supervisor.processes))
        for name in sorted(self.operator_stops.stopped):
            log.info("%s stays stopped: stopped with 'helixctl stop' before helixd restarted", name)
            self.supervisor.get(name).keep_stopped("stopped on request; start it to run it")
        await self.supervisor.start_autostart(skip=self.operator_stops.stopped)
        self.notifier.ready(self.summary())
        log.info(
            "helixd %s ready (%s mode): control socket %s; %s",
            __version__,
            self.paths.mode,
            self.paths.socket,
            self.summary(),
        )
        self.ops.start()
        tasks = [
            asyncio.create_task(self._publish_status(), name="status"),
            asyncio.create_task(self.residency.run(), name="residency"),
        ]
        if self.notifier.watchdog_interval_s:
            tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        try:
            while True:
                event = await self._events.get()
                if event == "stop":
                    break
                if event == "reload":
                    try:
                        await self.reload()
                    except ReloadRefused:
                        pass  # logged by reload(); the running config stays
                    except Exception:
                        # A failed SIGHUP must never take every provider down with it.
                        log.exception("reload failed; the running config stays")
        finally:
            self.stopping = True
            self.notifier.stopping()
            what = self.summary()
            self.notifier.status(f"stopping {what}")
            log.info("stopping: %s", what)
            for task in tasks:
                task.cancel()
            await self.ops.stop()
            await self.live_feed.close()  # ends the page's streams, so the endpoint stops now
            await self.proxy.stop()
            await self.residency.close()
            await self.monitor.close()
            async with self.supervisor.lock:
                await self.supervisor.stop_all()
            await self._stop_control()
            await self.ops.close()
            self._unlock_state_dir()
            log.info("stopped")

    def _lock_state_dir(self) -> None:
        """One daemon per state dir: two would fight over the same children."""
        state_dir = self.paths.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            fd = os.open(state_dir / "helixd.pid", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            hint = ""
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                hint = (
                    "; under systemd only /var/lib/helixd, /var/log/helixd and /run/helixd are "
                    "writable: add the folder with ReadWritePaths= in a drop-in "
                    "(systemctl edit helixd)"
                )
            raise StartupError(f"cannot use state dir {state_dir}: {exc.strerror}{hint}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StartupError(
                f"another helixd (pid {other}) is already running with state dir {state_dir}; "
                "stop it first, or give this one another [daemon] state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock_state_dir(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _start_residency(self) -> None:
        """Open NVML (or settle for RAM-only), size the models, track them."""
        try:
            await self.monitor.open()
        except GpuSelectionError as exc:
            raise StartupError(str(exc)) from None
        if self.monitor.mode != "nvml":
            log.info("RAM-only mode: %s", self.monitor.note)
        self.record = ResidencyRecord(self.paths.state_dir)
        self.residency.adopt(await self._model_entries(self.loaded, previous=None))
        # Pinned models start loading with the first maintenance pass, once all is bound.

    async def _model_entries(
        self, loaded: LoadedConfig, previous: dict[str, ModelAdapter] | None
    ) -> Catalog:
        assert self.record is not None
        adapters = build_adapters(
            loaded.config, self.paths, self.registry, self.supervisor.processes.get, previous
        )
        self._adapters = adapters
        return await build_entries(
            loaded.config, adapters, self.record, gpus_present=self.monitor.mode == "nvml"
        )

    def set_pin(self, name: str, pinned: bool) -> None:
        """Pin or unpin at run time, persisted so it outlives helixd restarts."""
        model = self.residency.set_pin(name, pinned)
        if self.record is not None:
            try:
                # A runtime pin equal to the config's is no override: the config decides again.
                override = None if pinned == model.pinned_by_config else pinned
                self.record.set_pin(model.name, override)
            except OSError as exc:
                log.warning("cannot persist the pin of %s: %s", name, exc)

    async def _start_proxy(self) -> None:
        try:
            await self.proxy.start()
        except OSError as exc:
            await self.proxy.stop()
            await self._stop_control()
            raise StartupError(
                f"proxy cannot listen on {self.loaded.config.proxy.listen}: "
                f"{exc.strerror or exc}; is another helixd or server using it? "
                "Change [proxy] listen"
            ) from None
        log.info("proxy listening on %s", self.proxy.info()["url"])

    async def _start_control(self) -> None:
        try:
            sock = bind_control_socket(
                self.paths.socket, self.paths.socket_mode, self.paths.socket_group
            )
        except (OSError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, ValueError) else exc.strerror or str(exc)
            raise StartupError(f"control socket {self.paths.socket}: {message}") from None
        api = ControlAPI(self)
        app = api.app()
        add_model_routes(api, app, self)
        add_jobs_routes(api, app, self)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        quiet_client_errors()
        await self._runner.setup()
        await web.SockSite(self._runner, sock, shutdown_timeout=1.0).start()

    async def _stop_control(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.paths.socket.unlink()

    # -- reload ------------------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file; apply the difference; refuse an invalid file whole."""
        async with self._reload_lock:
            if self.stopping:
                raise ReloadRefused("helixd is shutting down")
            self.notifier.reloading()
            try:
                try:
                    new = load_config(self.loaded.path)
                    running = {n: p.spec for n, p in self.supervisor.processes.items()}
                    specs = provider_specs(new.config, self.paths, previous=running)
                except (ConfigError, SpecError) as exc:
                    log.error("reload refused, keeping the running config:\n%s", exc)
                    raise ReloadRefused(str(exc)) from None
                warnings = self._restart_only_changes(new)
                logging.getLogger().setLevel(new.config.daemon.log_level.upper())
                self.loaded = new
                async with self.supervisor.lock:
                    if self.stopping:
                        raise ReloadRefused("helixd is shutting down")
                    held = self.operator_stops.stopped if self.operator_stops else set()
                    changes = await self.supervisor.apply(specs, keep_stopped=held)
                    if self.operator_stops is not None:
                        self.operator_stops.keep_only(set(specs))
                    entries = await self._model_entries(new, previous=self._adapters)
                    model_changes = self.residency.replace_config(
                        new.config.resources, new.config.scheduler, entries
                    )
                    self.proxy.configure(
                        _aliases(new), dict(new.config.routes), new.config.providers
                    )
                    self.ops.configure()
                    if self.live_view is not None:
                        self.live_view.configure(new.config.ui, self._redactor(new))
                    self.live_feed.changed()
            finally:
                self.notifier.ready(self.summary())
        return {
            "reloaded": True,
            "changes": changes.as_json() | model_changes,
            "warnings": warnings,
        }

    def _restart_only_changes(self, new: LoadedConfig) -> list[str]:
        """Keys that only take effect when helixd restarts (where it listens, keeps state)."""
        messages = []
        if new.paths(self.paths.mode) != self.paths:
            messages.append("[daemon] paths changed; they take effect when helixd restarts")
        if new.config.resources.gpus != self.loaded.config.resources.gpus:
            messages.append("resources.gpus changed; it takes effect when helixd restarts")
        if new.config.proxy != self.loaded.config.proxy:
            messages.append("[proxy] changed; it takes effect when helixd restarts")
        if new.config.ui.serves(new.config.proxy) != (self.live_view is not None):
            messages.append("[ui] enabled changed; it takes effect when helixd restarts")
        for message in messages:
            log.warning(message)
        return messages

    # -- the live view -----------------------------------------------------------------

    def _open_live_view(self, loaded: LoadedConfig) -> LiveView | None:
        """The page on the endpoint when ``[ui]`` serves it, else a note where it would be."""
        config = loaded.config
        if not config.ui.serves(config.proxy):
            self.proxy.mount(ui_off)
            return None
        redact = self._redactor(loaded)
        view = LiveView(self.live_feed, self, config.proxy, lambda: self.proxy.port, redact)
        view.configure(config.ui, redact)
        self.proxy.mount(view.add_routes, public=is_page)
        return view

    @staticmethod
    def _redactor(loaded: LoadedConfig) -> Redactor:
        return Redactor(config_secrets(loaded.config, os.environ))

    # -- what jobs need ----------------------------------------------------------------

    def budgets_exceeded(self) -> dict[str, str]:
        """Remote providers past their daily budget, with the reason."""
        blocked = {name: self.proxy.spend.blocked(name) for name in self.proxy.spend.providers}
        return {name: why for name, why in blocked.items() if why is not None}

    def _state_restored(self) -> None:
        """A restore replaced the state files: take up their pins and learned sizes."""
        self.record = ResidencyRecord(self.paths.state_dir)
        self.residency.restore_pins(self.record.pins)
        self._status_dirty.set()

    def _residency_event(self, event: Event) -> None:
        """Residency changed: refresh STATUS=, raise or clear alerts, keep learned sizes."""
        if isinstance(event, Changed):
            self._status_dirty.set()
        elif isinstance(event, LoadEnded):
            self.ops.load_outcome(event.model, event.error, event.out_of_memory)
        elif isinstance(event, Measured) and self.record is not None:
            try:
                self.record.remember(event.size_key, event.vram_bytes, event.ram_bytes)
            except OSError as exc:
                log.warning("cannot remember the size of %s: %s", event.model, exc)

    # -- status ------------------------------------------------------------------------

    def summary(self) -> str:
        """The one-line STATUS= text (see :func:`helixd.overview.summary_line`)."""
        return self.overview.summary()

    def status(self) -> dict[str, Any]:
        """The ``GET /v1/status`` document."""
        return self.overview.status()

    async def refresh(self) -> None:
        """Fresh GPU/RAM figures for a status read (at most one NVML read a second)."""
        try:
            await self.residency.refresh()
        except Exception:
            log.exception("reading GPU/RAM figures failed; status shows the last ones")

    def operator_stopped(self, name: str, stopped: bool) -> None:
        """Keep an operator's stop across helixd restarts (see :class:`OperatorStops`)."""
        if self.operator_stops is None:
            return
        try:
            self.operator_stops.mark(name, stopped)
        except OSError as exc:
            log.warning(
                "cannot record that %s was %s: %s", name, "stopped" if stopped else "started", exc
            )

    def provider_process(self, name: str) -> ManagedProcess:
        """Provider ``name``'s own process; a configured one without a process says why."""
        return self.overview.provider_process(name)

    def log_source(self, name: str) -> ManagedProcess:
        """A provider's process, else a model's (by model name or ``provider:model``)."""
        return self.overview.log_source(name)

    def _process_changed(self, process: ManagedProcess) -> None:
        self._status_dirty.set()
        self.live_feed.changed()
        self.ops.changed()
        adapter = self._adapters.get(process.spec.name)
        if adapter is not None:
            adapter.server_changed(process)  # a one-server provider's models go with it

    async def _publish_status(self) -> None:
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            self.ops.changed()  # a model changed state (or a provider did)
            self.notifier.status(self.summary())

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        assert interval is not None
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)


def _aliases(loaded: LoadedConfig) -> dict[str, str]:
    """Alias → model, from ``[models.NAME] aliases`` (unique: config checks it)."""
    return {alias: name for name, model in loaded.config.models.items() for alias in model.aliases}

"""The control protocol, defined once: every command of the Unix-socket API.

Each command is a small class, as circus's are: its ``method`` and ``path`` (with
``{parameters}``), the query parameters it accepts, the ``group`` of the API that serves
it, and a docstring. The docstring is the command's documentation for both ends: its
first part, up to the ``Wire:`` paragraph, is the help of the ``helixctl`` command that
sends it; the whole of it, after the request line, is the wire documentation
(:meth:`Command.wire_doc`).

The server (``helixd.control``) registers a handler per command, looked up by the
command's ``name``; ``helixctl`` builds every request it sends with
:meth:`Command.target`. So this module must stay cheap to import: ``helixctl status``
imports it on its fast path, and it imports nothing from helixd, aiohttp or pydantic.

Answers are JSON; errors are ``{"error": {"code", "message", "details"?}}`` with a
fitting HTTP status (DESIGN.md). The API accepts only names from the config.
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing, which costs ``helixctl status`` (it imports
# this) some 3 ms of its start-up (the idiom PEP 781 names; mypy reads it the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import ClassVar

GET, POST = "GET", "POST"


class Command:
    """One control command. Subclasses set the class attributes and write the docstring."""

    name: ClassVar[str]
    """The command's name: the server's handler for it has this name."""
    group: ClassVar[str]
    """The part of the API that serves it: daemon, providers, models, jobs, backups, alerts."""
    method: ClassVar[str]
    path: ClassVar[str]
    """The path, ``{parameter}`` where a name goes (one path segment each)."""
    query: ClassVar[tuple[str, ...]] = ()
    """The query parameters it accepts."""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if not cls.__doc__ or cls.method not in (GET, POST) or not cls.path.startswith("/v1/"):
            raise TypeError(f"{cls.__name__}: a command needs a docstring, GET/POST and /v1/")

    @classmethod
    def parameters(cls) -> list[str]:
        """The names of the path's ``{parameters}``, in order."""
        return [part[1:-1] for part in cls.path.split("/") if part.startswith("{")]

    @classmethod
    def target(cls, query: Mapping[str, str] | None = None, **params: str) -> str:
        """The request target: the path with ``params`` filled in, then ``query``.

        Values are percent-encoded, slashes included, so a name stays one path segment;
        query parameters keep the order given.
        """
        if sorted(params) != sorted(cls.parameters()):
            raise TypeError(f"{cls.__name__} takes {cls.parameters()}, got {sorted(params)}")
        unknown = set(query or ()) - set(cls.query)
        if unknown:
            raise TypeError(f"{cls.__name__} accepts the query {cls.query}, not {sorted(unknown)}")
        if not params and not query:
            return cls.path  # the common case; skips importing urllib on the fast path
        from urllib.parse import quote

        path = cls.path.format(**{k: quote(v, safe="") for k, v in params.items()})
        if query:
            path += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return path

    @classmethod
    def help(cls) -> str:
        """The docstring up to its ``Wire:`` paragraph: helixctl's help for the command."""
        return _doc(cls).split("\n\nWire:", 1)[0]

    @classmethod
    def wire_doc(cls) -> str:
        """The request line (with its query parameters) and the whole docstring."""
        query = f"[?{'&'.join(f'{q}=…' for q in cls.query)}]" if cls.query else ""
        return f"{cls.method} {cls.path}{query}\n\n{_doc(cls)}"


def _doc(command: type[Command]) -> str:
    import inspect  # only help and docs need it; the fast path must not pay for it

    return inspect.cleandoc(command.__doc__ or "")


# -- daemon ----------------------------------------------------------------------------


class Status(Command):
    """Show the daemon and its providers.

    Wire: version, mode, pid, uptime, config file, endpoint, a one-line summary,
    providers, devices, models, and the jobs and alerts summary. Live figures (GPU and
    RAM) are brought up to date first.
    """

    name = "get_status"
    group = "daemon"
    method = GET
    path = "/v1/status"


class Reload(Command):
    """Re-read the config and apply it; a broken config is refused (exit 1).

    Wire: 200 with ``changes`` (added, removed, changed, unchanged, …) and ``warnings``;
    422 ``invalid_config`` naming what is wrong, the old config staying in force.
    """

    name = "reload"
    group = "daemon"
    method = POST
    path = "/v1/reload"


class Events(Command):
    """Watch helixd live: memory per GPU, models, providers, requests, alerts (q quits).

    Wire: NDJSON, each line ``{"type", "data"}``: first a ``snapshot`` (the live
    document: host, devices with each model's share, models, providers, recent requests,
    alerts, jobs, spend), then a ``snapshot`` whenever something changes (at most 4 a
    second) and at least every 5 s, and a ``request`` for each finished request of the
    endpoint. Ends with an ``end`` line (``{"reason"}``) when helixd stops or the reader
    falls 64 records behind. 503 ``stopping`` while helixd shuts down.
    """

    name = "events"
    group = "daemon"
    method = GET
    path = "/v1/events"


# -- providers -------------------------------------------------------------------------


class ListProviders(Command):
    """List the providers and their processes.

    Wire: ``{"providers": [INFO, ...]}``, each with name, kind, state, pid, message.
    """

    name = "list_providers"
    group = "providers"
    method = GET
    path = "/v1/providers"


class GetProvider(Command):
    """Show one provider.

    Wire: ``{"provider": INFO}``; 404 ``unknown_provider``.
    """

    name = "get_provider"
    group = "providers"
    method = GET
    path = "/v1/providers/{name}"


class StartProvider(Command):
    """Start PROVIDER.

    Wire: ``{"provider": INFO}``. With ``wait=1`` the answer comes once it is ready:
    500 ``start_failed`` when it exits instead, 504 ``timeout`` after ``timeout``
    seconds (0 to 86400, default 120). 503 ``stopping`` while helixd shuts down.
    """

    name = "provider_start"
    group = "providers"
    method = POST
    path = "/v1/providers/{name}/start"
    query = ("wait", "timeout")


class StopProvider(Command):
    """Stop PROVIDER and its whole process group (stopping always waits).

    Wire: ``{"provider": INFO}`` once stopped; 503 ``stopping`` while helixd shuts down.
    ``wait`` and ``timeout`` are accepted as for start (a stop always waits).
    """

    name = "provider_stop"
    group = "providers"
    method = POST
    path = "/v1/providers/{name}/stop"
    query = ("wait", "timeout")


class RestartProvider(Command):
    """Restart PROVIDER.

    Wire: as start: ``{"provider": INFO}``, waiting with ``wait=1`` (and ``timeout``).
    """

    name = "provider_restart"
    group = "providers"
    method = POST
    path = "/v1/providers/{name}/restart"
    query = ("wait", "timeout")


class ProviderLogs(Command):
    """Print PROVIDER's recent output (stdout, stderr and helixd's notes).

    Wire: ``{"name", "lines": [{"ts", "stream", "text"}, ...]}``, the last ``lines``
    (default 100, at most 10000) of a provider's (or a model's own process's) log. With
    ``follow=1``: the same lines as NDJSON, then each new one as it comes, until the
    process is replaced or helixd stops.
    """

    name = "provider_logs"
    group = "providers"
    method = GET
    path = "/v1/providers/{name}/logs"
    query = ("lines", "follow")


class PullModel(Command):
    """Download MODEL into an Ollama provider, showing its progress.

    Wire: the query's ``model`` is an Ollama model name. Ollama's own progress as NDJSON
    (``{status, digest, total, completed}``; an ``{"error"}`` line on failure). 400
    ``cannot_pull`` for a provider that is not Ollama, 503 ``not_ready`` when it is not
    running, 502 ``upstream_failed`` when it does not answer.
    """

    name = "provider_pull"
    group = "providers"
    method = POST
    path = "/v1/providers/{name}/pull"
    query = ("model",)


# -- models ----------------------------------------------------------------------------


class ListModels(Command):
    """Show every model: state, device, memory (and where the figure came from), use.

    Wire: ``{"models": [INFO, ...], "devices": {...}}``.
    """

    name = "list_models"
    group = "models"
    method = GET
    path = "/v1/models"


class GetModel(Command):
    """Show one model.

    Wire: ``{"model": INFO}``; 404 ``unknown_model``.
    """

    name = "get_model"
    group = "models"
    method = GET
    path = "/v1/models/{name}"


class LoadModel(Command):
    """Load MODEL now, evicting idle unpinned models if it needs the room.

    Wire: ``{"model": INFO}`` once loaded, within ``timeout`` seconds (above 0, at most
    86400; default: the scheduler's load timeout). A refusal keeps the residency
    error's code and status, with the model's INFO in ``details``.
    """

    name = "model_load"
    group = "models"
    method = POST
    path = "/v1/models/{name}/load"
    query = ("timeout",)


class UnloadModel(Command):
    """Unload MODEL (refused while it is pinned or busy).

    Wire: ``{"model": INFO}`` once unloaded (or asleep, for vLLM's sleep mode).
    ``timeout`` is accepted as for load.
    """

    name = "model_unload"
    group = "models"
    method = POST
    path = "/v1/models/{name}/unload"
    query = ("timeout",)


class PinModel(Command):
    """Pin MODEL: load it and never evict it (kept across restarts).

    Wire: ``{"model": INFO}`` once it is loaded, within ``timeout`` as for load; the pin
    stays even when the load fails (the error says so).
    """

    name = "model_pin"
    group = "models"
    method = POST
    path = "/v1/models/{name}/pin"
    query = ("timeout",)


class UnpinModel(Command):
    """Unpin MODEL: it may be evicted and unloaded when idle again.

    Wire: ``{"model": INFO}``; ``timeout`` is accepted as for load.
    """

    name = "model_unpin"
    group = "models"
    method = POST
    path = "/v1/models/{name}/unpin"
    query = ("timeout",)


# -- jobs, backups, alerts -------------------------------------------------------------


class ListJobs(Command):
    """Show the scheduled jobs: schedule, next run, last run and its result.

    Wire: ``{"jobs": [{"name", "kind", "schedule", "enabled", "next_run", ...}]}``.
    """

    name = "list_jobs"
    group = "jobs"
    method = GET
    path = "/v1/jobs"


class RunJob(Command):
    """Run JOB now and wait for its result (exit 1 when it fails).

    Wire: ``{"run": {"job", "result", "duration_s", "message", ...}}`` once it has run:
    200 whatever the run's result (the run's ``result`` says ``ok`` or ``failed``);
    404 ``unknown_job``.
    """

    name = "run_job"
    group = "jobs"
    method = POST
    path = "/v1/jobs/{name}/run"


class ListBackups(Command):
    """List the backups, newest first.

    Wire: ``{"dir", "backups": [{"id", "created", "size", "label"}, ...]}``.
    """

    name = "list_backups"
    group = "backups"
    method = GET
    path = "/v1/backups"


class CreateBackup(Command):
    """Back up the config, the state and the backup job's paths now.

    Wire: ``{"backup": {"id", "path", "size", ...}}``; retention is left to the backup
    job. 500 ``backup_failed``.
    """

    name = "create_backup"
    group = "backups"
    method = POST
    path = "/v1/backups"


class RestoreBackup(Command):
    """Restore backup ID: checked first, the current files kept in a safety backup.

    Wire: ``{"restored", "files", "skipped", "notes", "safety_backup"}`` after the swap
    and a reload; 404 ``unknown_backup``, 422 ``refused`` (it did not check out), 500
    ``restore_failed``.
    """

    name = "restore_backup"
    group = "backups"
    method = POST
    path = "/v1/backups/{id}/restore"


class ListAlerts(Command):
    """Show active alerts (and, with --all, the recently resolved ones).

    Wire: ``{"active": [...], "resolved": [...]}``; resolved ones only with ``all=1``.
    """

    name = "list_alerts"
    group = "alerts"
    method = GET
    path = "/v1/alerts"
    query = ("all",)


COMMANDS: tuple[type[Command], ...] = (
    Status,
    Events,
    ListProviders,
    GetProvider,
    PullModel,
    StartProvider,
    StopProvider,
    RestartProvider,
    ProviderLogs,
    Reload,
    ListModels,
    GetModel,
    LoadModel,
    UnloadModel,
    PinModel,
    UnpinModel,
    ListJobs,
    RunJob,
    ListBackups,
    CreateBackup,
    RestoreBackup,
    ListAlerts,
)
"""Every command, in the order the server registers them."""

"""Every error helixd raises, in one tree, each with a stable ``code``.

The tree (name, code, what it means); a class defined elsewhere inherits its branch here
and is listed all the same::

    * HelixError  internal  anything not named below: a bug; the log has the traceback
      * ConfigError  bad_config  a config file that cannot be used; names the key and the fix
        * ReloadRefused  invalid_config  a reload refused; the running config stays
      * StartupError  cannot_start  helixd cannot start; says why and what to do
      * SupervisionError  supervision  a supervised process and its specification
        * SpecError  bad_spec  a provider that cannot become a runnable process
        * SpawnError  spawn_failed  a process that could not be started at all
        * ProcessClosed  replaced  a process replaced or removed by a reload
        * UnknownProcess  unknown_provider  a provider name that is not configured
      * DeviceError  device  reading the GPUs and the host's memory
        * GpuSelectionError  no_such_gpu  resources.gpus names a GPU this host lacks
        * GpuReadError  gpu_read_failed  NVML failed while reading one device
        * _NoSuchError  nvml_stand_in  stands in for an NVML error an old binding lacks
      * ResidencyError  residency  a model that cannot be served now; never raised itself
        * UnknownModel  unknown_model  no such model (or it left the config while waiting)
        * ShuttingDown  stopping  helixd is stopping
        * QueueFull  queue_full  the model's queue is full; try again later
        * WaitTimeout  timeout  gave up waiting for a load or a free slot
        * ModelFailed  model_failed  the model failed to load and is cooling down
        * DoesNotFit  does_not_fit  the model cannot fit even with every idle model evicted
        * ModelPinned  pinned  an unload of a pinned model
        * ModelBusy  busy  an unload of a model with requests in flight or queued
      * ProviderError  provider  an inference server's adapter
        * LoadError  load_failed  a load that did not succeed (maybe out of memory)
        * EstimateError  cannot_estimate  a model file whose memory cannot be estimated
        * EchoError  echo_error  the built-in echo server's refusal of a request
      * EndpointError  endpoint  the local endpoint, in its OpenAI and Ollama dialects
        * Refused  request_refused  a request refused before any model was tried
        * Failed  attempt_failed  one attempt failed before anything reached the client
        * UpstreamUnreachable  upstream_unreachable  nothing came back from the upstream
        * UpstreamRejected  upstream_failed  the upstream answered with an error status
        * BadOllamaRequest  bad_request  a request that is not valid Ollama
        * BodyTooLarge  body_too_large  a request body past ``[proxy] max_body_mib``
        * BodyTimeout  body_timeout  a request body not all in within ``read_timeout_s``
        * MalformedRequest  malformed_request  HTTP the endpoint cannot parse or accept
        * UpstreamIOError  upstream_io  the exchange with a model's server broke
          * ConnectFailed  connect_failed  no connection: nothing listens, no such name
          * ClosedEarly  closed_early  closed before any answer (may be sent again)
          * AnswerCut  answer_cut  an answer that stopped part way
      * JobError  job  scheduled jobs, backups and restores
        * JobFailed  job_failed  a job could not do its work; says what to do
          * BackupError  backup_failed  a backup or restore refused or failed
            * UnknownBackup  unknown_backup  no backup of that id
            * _Oversize  archive_too_large  an archive that inflates past its cap
        * RestoreFailed  restore_failed  files restored, but the daemon could not take them
        * UnknownJob  unknown_job  a job name that is not configured
        * RefreshError  refresh_failed  a re-pull that did not happen
      * ControlError  control  the control socket
        * SocketInUse  socket_in_use  another live helixd serves the control socket
      * FeedRefused  feed_refused  no live-view stream now: helixd stops, or too many are open

Codes are public (the control API's and the endpoint's error bodies carry them); the
classes a request can meet use the code the wire shows. Some refusals carry the wire code
of each instance instead of their class's (``Refused``, ``FeedRefused``,
``MalformedRequest``). HTTP statuses
are not decided here: each edge maps codes to statuses in one table
(``helixd.control.errors``, ``helixd.proxy.errors``, ``helixd.proxy.ollama``). The
residency refusals' ``status`` is the one source those tables read: the status helixd's
own API answers with.

A class that is also a built-in exception (``UnknownProcess`` is a ``KeyError``,
``SocketInUse`` a ``ValueError``, …) keeps that base: callers catch it as such.

``helixctl`` keeps its own few exceptions (a socket it cannot reach, an answer it cannot
read): its fast path imports only ``helixd`` and ``helixd.protocol``, the wire protocol
both sides share, so ``helixctl status`` starts in tens of milliseconds.

This module imports nothing but the standard library's typing: everything may import it.
"""

from __future__ import annotations

from typing import ClassVar


class HelixError(Exception):
    """The root of every error helixd raises."""

    # A class attribute; a refusal that carries its wire code may set its own (Refused).
    code: str = "internal"


# -- config --------------------------------------------------------------------------------


class ConfigError(HelixError):
    """A config that cannot be used; the message names the file, the key and the fix."""

    code = "bad_config"


class ReloadRefused(ConfigError):
    """The new config is invalid; the message says why and the old config stays."""

    code = "invalid_config"


class StartupError(HelixError):
    """helixd cannot start; the message says why and what to do."""

    code = "cannot_start"


# -- branches whose classes live next to the code that raises them ------------------------


class SupervisionError(HelixError):
    """Supervised processes: their specs, spawning them, and naming them."""

    code = "supervision"


class DeviceError(HelixError):
    """The GPUs and the host's memory."""

    code = "device"


class ProviderError(HelixError):
    """An inference server's adapter: loads, estimates, the built-in echo server."""

    code = "provider"


class EndpointError(HelixError):
    """The local endpoint (OpenAI and Ollama dialects)."""

    code = "endpoint"


class JobError(HelixError):
    """Scheduled jobs, backups and restores."""

    code = "job"


class ControlError(HelixError):
    """The control socket."""

    code = "control"


# -- residency -----------------------------------------------------------------------------


class ResidencyError(HelixError):
    """A request for a model that cannot be served; raised only as one of its subclasses.

    ``status``: the HTTP status helixd's own API answers with, the one source of the edge
    tables' statuses for these codes (a dialect may differ, and says why).
    """

    code = "residency"
    status: ClassVar[int] = 503

    def __init__(self, message: str) -> None:
        super().__init__(message)


class UnknownModel(ResidencyError):
    """No model of that name (or it was removed from the config while the request waited)."""

    code = "unknown_model"
    status = 404


class ShuttingDown(ResidencyError):
    """helixd is stopping: nothing more is loaded."""

    code = "stopping"
    status = 503


class QueueFull(ResidencyError):
    """Every slot is busy and the model's queue is full."""

    code = "queue_full"
    status = 503


class WaitTimeout(ResidencyError):
    """Gave up waiting for a load or a free slot."""

    code = "timeout"
    status = 504


class ModelFailed(ResidencyError):
    """The model failed to load and is cooling down before the next try."""

    code = "model_failed"
    status = 503


class DoesNotFit(ResidencyError):
    """The model cannot fit, even with every idle model evicted."""

    code = "does_not_fit"
    status = 507


class ModelPinned(ResidencyError):
    """An unload asked of a pinned model."""

    code = "pinned"
    status = 409


class ModelBusy(ResidencyError):
    """An unload asked of a model with requests in flight or queued."""

    code = "busy"
    status = 409


# Every residency refusal a request can meet.
RESIDENCY_REFUSALS: tuple[type[ResidencyError], ...] = (
    UnknownModel,
    ShuttingDown,
    QueueFull,
    WaitTimeout,
    ModelFailed,
    DoesNotFit,
    ModelPinned,
    ModelBusy,
)
_REFUSAL_OF = {refusal.code: refusal for refusal in RESIDENCY_REFUSALS}


def refusal(code: str, message: str) -> ResidencyError:
    """The residency refusal with ``code`` (a decision core's ``Refuse`` names one)."""
    return _REFUSAL_OF[code](message)

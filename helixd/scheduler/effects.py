"""Effects: what a residency decision asks the executor to do, as plain data.

The pure policies (:mod:`helixd.scheduler.core` for placement, :mod:`.policy` for the
periodic pass and the requests that unload, :mod:`.room` for sleep or stop and the
re-plan after an out-of-memory load) return these; the executor
(:class:`helixd.scheduler.residency.Residency`) carries them out through the adapters.
Each names its model, so a recording sink can check a decision without any I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- answers to a load request (placement) --------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The model is loaded: use it."""

    model: str


@dataclass(frozen=True)
class Join:
    """The model is loading already: wait for that load rather than starting another."""

    model: str


@dataclass(frozen=True)
class Load:
    """Evict ``evict`` (in this order), then load ``model`` on ``device`` (``ram``: no GPU).

    A sleeping model's load wakes it where it sleeps.
    """

    model: str
    device: str
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wait:
    """Room can be made only once something in progress ends; try again when it does.

    ``busy``: it waits for requests to finish (bounded by ``busy_wait_s``); otherwise for
    a load or unload under way, which takes as long as it takes (``load_timeout_s``).
    """

    model: str
    reason: str
    waiting_for: tuple[str, ...] = ()
    busy: bool = False


@dataclass(frozen=True)
class Refuse:
    """The model cannot be served as things are; ``reason`` says why, with the numbers.

    ``code`` is the stable error code the executor raises it with.
    """

    model: str
    reason: str
    code: str = "does_not_fit"


# -- what the periodic pass and the unloading requests ask for ------------------------


@dataclass(frozen=True)
class Unload:
    """Book ``model`` unloading with ``why`` as its message, then stop it in a task.

    ``sleep``: a model that can sleep (vLLM's sleep mode) sleeps instead of stopping.
    ``process_gone``: its process has ended by itself (its memory is free already).
    An unload the periodic pass asks for also settles a changed config (``stale``).
    """

    model: str
    why: str
    sleep: bool = False
    process_gone: bool = False


@dataclass(frozen=True)
class Forget:
    """A failed model whose config changed: drop the failure and book it unloaded."""

    model: str


@dataclass(frozen=True)
class BringBack:
    """A pinned model is not resident: load it (one such load per model at a time)."""

    model: str


@dataclass(frozen=True)
class Sleep:
    """Put ``model`` to sleep, booking ``ram_bytes`` more host RAM for its weights first."""

    model: str
    ram_bytes: int


@dataclass(frozen=True)
class Stop:
    """Stop ``model`` rather than put it to sleep; ``reason`` says why it stays awake."""

    model: str
    reason: str


TickEffect = Forget | Unload | BringBack


@dataclass(frozen=True)
class TickPlan:
    """One maintenance pass: its effects in order, when the next is due, whether to sample."""

    effects: tuple[TickEffect, ...]
    due_s: float
    sample: bool

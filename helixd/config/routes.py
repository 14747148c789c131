"""``[routes.NAME]``: a virtual model name that resolves to an ordered list of models."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from helixd.config.types import Seconds, Strict

FailureClass = Literal["error", "timeout", "overloaded"]
FAILURE_CLASSES: tuple[FailureClass, ...] = ("error", "timeout", "overloaded")


class RuleConfig(Strict):
    """Task routing: when ``match`` finds the last user message, ``model`` goes first."""

    match: str
    model: str

    @field_validator("match")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"expected a regular expression; {exc} in {value!r}") from None
        return value


class ClassifierConfig(Strict):
    """Task routing by asking a small model for a label from a fixed set."""

    model: str
    # label → model (or alias) that serves requests with that label.
    labels: dict[str, str] = Field(min_length=1)
    # Served when the label is unknown, or the classifier fails or is slow.
    default: str
    timeout_s: Seconds = 10.0
    # The system prompt; ``{labels}`` in it becomes the comma-separated label list.
    prompt: str = (
        "Classify the user's request. Answer with exactly one word from this list: {labels}."
    )


class RouteConfig(Strict):
    """Candidates in order, how to pick among them, and when to give up."""

    candidates: list[str] = Field(min_length=1)
    strategy: Literal["fallback", "least-busy", "prefer-loaded"] = "fallback"
    # Extra tries on the same candidate before the next one (failures before a byte).
    retries: int = Field(default=0, ge=0, le=10)
    # Which failures move on to the next candidate; others are answered as they are.
    escalate_on: list[FailureClass] = Field(default_factory=lambda: list(FAILURE_CLASSES))
    # Stop after this many attempts in all (the seeds: two failures escalate, three stop).
    max_attempts: int = Field(default=3, ge=1, le=50)
    rules: list[RuleConfig] = Field(default_factory=list)
    # Asked when no rule matched: its label picks the model to try first.
    classifier: ClassifierConfig | None = None

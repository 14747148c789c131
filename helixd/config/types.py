"""Value types shared by the config sections: durations, sizes, names, strict tables."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def parse_duration_s(value: Any) -> Any:
    """Accept ``30``, ``"30s"``, ``"10m"``, ``"1h"``, ``"7d"``; leave anything else to pydantic."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", value)
        if not match:
            raise ValueError(
                f"expected a duration such as 30, '30s', '10m', '1h' or '7d'; got {value!r}"
            )
        number, unit = float(match.group(1)), match.group(2) or "s"
        return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[unit]
    return value


def parse_size_bytes(value: Any) -> Any:
    """Accept ``1048576``, ``"10MiB"``, ``"1 GiB"``, ``"500KiB"``."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*", value)
        if not match:
            raise ValueError(f"expected a size such as '10MiB' or a number of bytes; got {value!r}")
        scale = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[match.group(2) or "B"]
        return int(match.group(1)) * scale
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration_s), Field(gt=0)]
ByteSize = Annotated[int, BeforeValidator(parse_size_bytes), Field(ge=0)]


class Strict(BaseModel):
    """A table whose unknown keys are refused and whose values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

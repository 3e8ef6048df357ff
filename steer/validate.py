"""Input checks shared by the engine and the methods: a bad value gets an error naming it and the fix."""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an ``int``: integral numbers (``int``, ``numpy.int64`` ...) pass, bools and floats do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def real(name: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a finite ``float`` in ``[minimum, maximum]``; bools, NaN and ±inf are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def multiple(name: str, value: Any, m: int, why: str) -> int:
    """An integer >= 1 divisible by ``m``; the error names the two nearest valid values."""
    value = integer(name, value, 1)
    if value % m:
        raise ValueError(f"{name}={value} is not divisible by {m} ({why}): use {max(value // m * m, m)} or {(value // m + 1) * m}")
    return value


def prompts(name: str, value: Any) -> list[str]:
    """A prompt or a non-empty list of prompts, every one a string."""
    if isinstance(value, str):
        return [value]
    if value is None or not isinstance(value, Sequence) or len(value) == 0:
        raise TypeError(f"{name} must be a string or a non-empty list of strings, got {value!r}")
    for i, p in enumerate(value):
        if not isinstance(p, str):
            raise TypeError(f"{name}[{i}] must be a string, got {p!r} ({type(p).__name__})")
    return list(value)

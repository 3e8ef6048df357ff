"""Adapter discovery: :func:`get_adapter` picks the adapter whose :meth:`~ModelAdapter.matches` accepts a pipeline."""

from __future__ import annotations

from .base import ModelAdapter
from .flow import FluxAdapter, SD3Adapter
from .sd import StableDiffusionAdapter, StableDiffusionXLAdapter

#: checked in order; more specific families first (SDXL before SD)
ADAPTERS: list[type[ModelAdapter]] = [StableDiffusionXLAdapter, StableDiffusionAdapter, SD3Adapter, FluxAdapter]


def register_adapter(cls: type[ModelAdapter], *, first: bool = True) -> type[ModelAdapter]:
    """Add an adapter class (usable as a decorator); ``first`` puts it ahead of the built-in ones."""
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
        raise TypeError(f"{cls!r} is not a ModelAdapter subclass")
    if cls not in ADAPTERS:
        ADAPTERS.insert(0, cls) if first else ADAPTERS.append(cls)
    return cls


def get_adapter(pipe, **kwargs) -> ModelAdapter:
    """The adapter for ``pipe`` (kwargs go to its constructor, e.g. ``eta=0`` for deterministic sampling)."""
    for cls in ADAPTERS:
        if cls.matches(pipe):
            return cls(pipe, **kwargs)
    families = ", ".join(f"{c.family} ({c.__name__})" for c in ADAPTERS)
    raise ValueError(
        f"no model adapter for pipeline {type(pipe).__name__}. Supported families: {families}. "
        "To add one, subclass steer.models.ModelAdapter (implement matches/encode/set_schedule/predict/"
        "transition/decode/...) and register it with steer.models.register_adapter(MyAdapter)."
    )

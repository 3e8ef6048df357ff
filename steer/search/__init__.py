"""Search methods, written once against :class:`steer.models.ModelAdapter`."""

import inspect

from .base import Method, Problem
from .best_of_n import BestOfN
from .doodl import DOODL
from .dts import DTS, DTSStar
from .fleming_viot import FlemingViot
from .prune import DEFAULT_SCHEDULE, Prune
from .reno import ReNO
from .resampling import RESAMPLERS, ess, get_resampler, multinomial, normalize, residual, stratified, systematic
from .smc import POTENTIALS, SMC
from .trace import Budget, BudgetExceeded, Trace

METHODS: dict[str, type[Method]] = {
    "best_of_n": BestOfN,
    "bon": BestOfN,
    "smc": SMC,
    "fk": SMC,
    "fk_steering": SMC,
    "fleming_viot": FlemingViot,
    "fv": FlemingViot,
    "prune": Prune,
    "ttsnap": Prune,
    "dts": DTS,
    "dts_star": DTSStar,
    "reno": ReNO,
    "doodl": DOODL,
}


def get_method(name: str, **options) -> Method:
    """Build a method by name; unknown names and options raise ``ValueError``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(set(METHODS)))}")
    try:
        inspect.signature(METHODS[name]).bind(**options)
    except TypeError as e:
        raise ValueError(f"bad option for method {name!r}: {e}") from None
    return METHODS[name](**options)


__all__ = [
    "BestOfN", "Budget", "DOODL", "DTS", "DTSStar", "ReNO", "DEFAULT_SCHEDULE", "Prune", "BudgetExceeded", "FlemingViot", "METHODS", "Method", "POTENTIALS", "Problem", "RESAMPLERS",
    "SMC", "Trace", "ess", "get_method", "get_resampler", "multinomial", "normalize", "residual", "stratified", "systematic",
]

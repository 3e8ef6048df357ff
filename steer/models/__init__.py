"""Model adapters: one interface over unmodified diffusers text-to-image pipelines."""

from .base import Conditioning, Counters, ModelAdapter, StepOutput
from .flow import FluxAdapter, SD3Adapter
from .registry import ADAPTERS, get_adapter, register_adapter
from .sampling import ddim_step, flow_step, to_x0_eps
from .sd import StableDiffusionAdapter, StableDiffusionXLAdapter

__all__ = [
    "ADAPTERS", "Conditioning", "Counters", "FluxAdapter", "ModelAdapter", "SD3Adapter", "StableDiffusionAdapter",
    "StableDiffusionXLAdapter", "StepOutput", "ddim_step", "flow_step", "get_adapter", "register_adapter", "to_x0_eps",
]

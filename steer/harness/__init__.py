"""Benchmark harness: GenEval and T2I-CompBench for any diffusers pipeline × any steer method, sharded and resumable.

``python -m steer.harness --help`` (or ``steer geneval`` / ``steer compbench``); the pieces are importable:
:mod:`.generation` (settings, jobs, atomic resumable generation), :mod:`.geneval`, :mod:`.compbench`, :mod:`.report`.
"""

from .generation import GenerationSettings, HarnessError, ImageMaker, Job, Shard, Slot, load_pipeline

__all__ = ["GenerationSettings", "HarnessError", "ImageMaker", "Job", "Shard", "Slot", "load_pipeline"]

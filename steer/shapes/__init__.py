"""The shapes proving ground: a compositional world, its exact GenEval-style evaluator, and
small trained models (an SD-family pipeline, a flow-matching twin, an open_clip reward)."""

from .detect import SHAPES_RULES, detect, evaluate_image, evaluate_images
from .models import load_flow_pipeline, load_noise_aware_reward, load_pipeline, load_reward
from .prompts import EVAL_PROMPTS, load_prompts, make_prompt_set, make_record, parse_prompt, sample_record
from .render import render, render_pil, to_uint8
from .world import COLORS, IMAGE_SIZE, SHAPES, Scene, ShapeObject, scene_for_record

__all__ = [
    "COLORS", "EVAL_PROMPTS", "IMAGE_SIZE", "SHAPES", "SHAPES_RULES", "Scene", "ShapeObject",
    "detect", "evaluate_image", "evaluate_images", "load_flow_pipeline", "load_noise_aware_reward", "load_pipeline", "load_prompts",
    "load_reward", "make_prompt_set", "make_record", "parse_prompt", "render", "render_pil", "sample_record",
    "scene_for_record", "to_uint8",
]

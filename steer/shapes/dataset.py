"""Training data for the shapes world: rendered scenes paired with template captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .prompts import sample_record
from .render import render
from .world import scene_for_record


def make_dataset(n: int, seed: int = 0) -> dict:
    """``n`` (image, caption, record) triples; tasks uniform, scenes satisfy their captions."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    records = []
    for i in range(n):
        rec = sample_record(rng)
        images[i] = render(scene_for_record(rec, rng))
        records.append(rec)
    return {"images": images, "prompts": [r["prompt"] for r in records], "records": records}


def load_or_make(path: str | Path, n: int, seed: int = 0) -> dict:
    """Cached :func:`make_dataset` (``.npz`` at ``path``)."""
    import json

    path = Path(path)
    if path.exists():
        z = np.load(path, allow_pickle=False)
        if len(z["images"]) == n:
            return {"images": z["images"], "prompts": list(z["prompts"]), "records": [json.loads(r) for r in z["records"]]}
    data = make_dataset(n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=data["images"], prompts=np.array(data["prompts"]), records=np.array([json.dumps(r) for r in data["records"]]))
    tmp.replace(path)
    return data

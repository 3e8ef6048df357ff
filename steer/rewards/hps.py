"""Human Preference Score v2 / v2.1 (Wu et al. 2023): an open_clip ViT-H/14 fine-tuned on HPD v2."""

from __future__ import annotations

from pathlib import Path

import torch

from .clip import OpenCLIPScore, load_open_clip
from .weights import hub_file, weights_not_found

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


def _version(version: str) -> str:
    """``"v2"``, ``"2.0"``, ``"hpsv2"`` -> ``"v2.0"``; ``"v2.1"``, ``"hpsv2.1"`` -> ``"v2.1"``."""
    v = str(version).lower().replace("hps", "").strip("v_-. ")
    v = {"2": "2.0"}.get(v, v)
    if f"v{v}" not in HPS_FILES:
        raise ValueError(f"unknown HPS version {version!r}; known: {sorted(HPS_FILES)}")
    return f"v{v}"


class HPSv2(OpenCLIPScore):
    """HPSv2 score: cosine of open_clip image and text embeddings (about 0.2-0.35), times ``scale``.

    Args:
        version: ``"v2.0"`` or ``"v2.1"``.
        checkpoint_path: the HPS checkpoint (a torch state dict, possibly under ``"state_dict"``);
            default: ``HPS_v2[.1]_compressed.pt`` from the hub repo ``xswu/HPSv2`` (HF cache).
        model_name: the open_clip architecture the checkpoint fits (``ViT-H-14``, built without
            pretrained weights); any open_clip name or ``local-dir`` folder, e.g. a tiny one for tests.
        scale: multiplier of the cosine (1, as HPSv2 reports it).
        resize_mode: how non-square images become square: ``"pad"`` (resize the longer side and pad,
            as HPSv2's evaluation transform) or ``"crop"``. Square images are only resized.
    """

    name = "hpsv2.1"

    def __init__(
        self,
        version: str = "v2.1",
        checkpoint_path: str | Path | None = None,
        model_name: str | Path = "ViT-H-14",
        scale: float = 1.0,
        resize_mode: str = "pad",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ):
        import open_clip

        torch.nn.Module.__init__(self)  # not OpenCLIPScore.__init__: the weights come from the HPS file
        self.version = _version(version)
        filename = HPS_FILES[self.version]
        if checkpoint_path is None:  # resolve before building the (large) architecture
            checkpoint_path = hub_file(HPS_REPO, filename, what=f"the HPS {self.version} checkpoint {filename!r} (hub repo {HPS_REPO!r})")
        elif not Path(checkpoint_path).is_file():
            raise weights_not_found(f"the HPS {self.version} checkpoint {str(checkpoint_path)!r}", FileNotFoundError(checkpoint_path))
        model, tokenizer, cfg = load_open_clip(model_name, None, device)
        open_clip.load_checkpoint(model, str(checkpoint_path), strict=True, device=device)
        model.eval().requires_grad_(False)
        self._setup(model, tokenizer, cfg, scale=scale, device=device, dtype=dtype)
        self.name = f"hps{self.version.replace('v2.0', 'v2')}"
        self.resize_mode = resize_mode

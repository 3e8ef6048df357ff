"""The neural GenEval evaluator: Mask2Former instances + CLIP zero-shot colours, scored by :mod:`steer.eval.geneval`.

GenEval (Ghosh et al. 2023) detects objects with mmdetection's Mask2Former Swin-S (COCO instance
segmentation) and names colours with CLIP ViT-L-14 (OpenAI weights) on the instance's masked crop.
Here the detector is the transformers port of the same model family
(``facebook/mask2former-swin-small-coco-instance`` by default) with mmdetection's instance
post-processing (top-100 query/class pairs, score = class probability x mean mask probability,
overlapping per-instance masks, boxes tight around the masks); colours use open_clip.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .geneval import Detection, RuleConfig, Verdict, evaluate_detections, validate_metadata

#: the 80 COCO classes in GenEval's spelling (``object_names.txt``), in COCO order
GENEVAL_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

#: GenEval's 10 colour names
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")

#: GenEval's zero-shot colour prompts (``{c}`` colour, ``{cls}`` class name)
COLOR_TEMPLATES: tuple[str, ...] = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")

#: other spellings of GenEval's class names (HF/detectron2/mmdet/VOC label sets), after :func:`_norm_label`
LABEL_ALIASES: dict[str, str] = {
    "tvmonitor": "tv", "tv monitor": "tv", "television": "tv",
    "sofa": "couch",
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "mouse": "computer mouse",
    "remote": "tv remote", "remote control": "tv remote",
    "keyboard": "computer keyboard",
    "cellphone": "cell phone", "mobile phone": "cell phone",
    "hair dryer": "hair drier", "hairdrier": "hair drier", "hairdryer": "hair drier",
    "doughnut": "donut",
    "sportsball": "sports ball", "ball": "sports ball",
    "wineglass": "wine glass",
    "hotdog": "hot dog",
    "teddybear": "teddy bear",
    "racket": "tennis racket",
    "ski": "skis",
    "fridge": "refrigerator",
}

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DEFAULT_CLIP, DEFAULT_CLIP_PRETRAINED = "ViT-L-14", "openai"
BACKGROUND = "#999999"

_CLASS_SET = frozenset(GENEVAL_CLASSES)
_COMPACT = {c.replace(" ", ""): c for c in GENEVAL_CLASSES}


# ----------------------------------------------------------------------------- small pure functions


def _norm_label(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def geneval_label(name: str) -> str:
    """``name`` in GenEval's spelling (``"tvmonitor"`` -> ``"tv"``, ``"sofa"`` -> ``"couch"``); unknown names come back normalised."""
    key = _norm_label(name)
    if key in _CLASS_SET:
        return key
    if key in LABEL_ALIASES:
        return LABEL_ALIASES[key]
    compact = key.replace(" ", "")
    return _COMPACT.get(compact) or LABEL_ALIASES.get(compact) or key


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight box ``(x0, y0, x1, y1)`` of a boolean ``(H, W)`` mask, ``x1``/``y1`` exclusive (mmdet's ``mask2bbox``); ``None`` if empty."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    if cols.size == 0:
        return None
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def instance_predictions(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    input_size: tuple[int, int],
    valid_size: tuple[int, int],
    image_size: tuple[int, int],
    max_per_image: int = 100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdetection's Mask2Former instance post-processing for one image: ``(scores, label ids, bool masks (N, H, W))``.

    ``class_logits`` ``(Q, C + 1)`` (last = no object), ``mask_logits`` ``(Q, h, w)``; ``input_size`` is the padded
    network input ``(H_in, W_in)``, ``valid_size`` its unpadded part, ``image_size`` the original ``(H, W)``.
    The top ``max_per_image`` (query, class) pairs by class probability are kept; masks are upsampled to the
    input, unpadded, resized to the image and thresholded at logit 0; score = class prob x mean mask prob inside.
    """
    class_logits, mask_logits = class_logits.float(), mask_logits.float()
    num_classes = class_logits.shape[-1] - 1
    probs = class_logits.softmax(-1)[:, :-1].flatten()
    top, idx = probs.topk(min(max_per_image, probs.numel()))
    labels, queries = idx % num_classes, idx // num_classes
    used, inverse = torch.unique(queries, return_inverse=True)
    logits = F.interpolate(mask_logits[used][None], size=tuple(input_size), mode="bilinear", align_corners=False)
    logits = logits[:, :, : valid_size[0], : valid_size[1]]
    logits = F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)[0]
    binary = logits > 0
    mask_scores = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return top * mask_scores[inverse], labels, binary[inverse]


def masked_crop(image: Image.Image, detection: Detection, background: str = BACKGROUND) -> Image.Image:
    """The detection as GenEval shows it to CLIP: pixels outside its mask set to ``background``, cropped to its box."""
    image = image.convert("RGB")
    if detection.mask is not None:
        mask = np.asarray(detection.mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"detection mask has shape {mask.shape} but the image is {image.height}x{image.width}: masks must be (H, W) of the image")
        image = Image.composite(image, Image.new("RGB", image.size, background), Image.fromarray(mask.astype(np.uint8) * 255, "L"))
    x0, y0, x1, y1 = detection.box
    x0, y0 = min(max(int(np.floor(x0)), 0), image.width - 1), min(max(int(np.floor(y0)), 0), image.height - 1)
    x1, y1 = min(max(int(np.ceil(x1)), x0 + 1), image.width), min(max(int(np.ceil(y1)), y0 + 1), image.height)
    return image.crop((x0, y0, x1, y1))


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") != 1 or Path(name).exists()


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


# ----------------------------------------------------------------------------- detector


class Mask2FormerDetector:
    """COCO instance detector: a transformers ``Mask2FormerForUniversalSegmentation`` + its image processor.

    Args:
        model: hub id (default: the Swin-S COCO-instance checkpoint, GenEval's detector family) or a local
            folder with ``config.json``, weights and ``preprocessor_config.json``.
        device, dtype: where and in which precision the network runs (post-processing is float32).
        min_score: lowest score kept (the GenEval rules apply 0.3 / 0.9 themselves).
        max_per_image: (query, class) pairs considered per image (mmdet: 100).
        batch_size: images per forward pass.
        postprocess: ``"mmdet"`` (:func:`instance_predictions`, handles padding of mixed-size batches) or
            ``"hf"`` (the processor's ``post_process_instance_segmentation`` with binary maps; it assumes
            square inputs).
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_DETECTOR,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        min_score: float = 0.3,
        max_per_image: int = 100,
        batch_size: int = 8,
        postprocess: str = "mmdet",
    ):
        if postprocess not in ("mmdet", "hf"):
            raise ValueError(f"postprocess={postprocess!r}: use 'mmdet' or 'hf'")
        self.model_id, self.device, self.dtype = str(model), torch.device(device), dtype
        self.min_score, self.max_per_image, self.batch_size, self.postprocess = float(min_score), int(max_per_image), int(batch_size), postprocess
        self.processor, self.model = self._load(self.model_id)
        self.model.to(self.device, dtype=dtype).eval().requires_grad_(False)
        self.labels = {int(k): geneval_label(v) for k, v in self.model.config.id2label.items()}

    @staticmethod
    def _load(model: str):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        from ..rewards.weights import hub_access, weights_not_found

        local = Path(model).expanduser()
        if _looks_like_path(model):
            if not local.is_dir():
                raise FileNotFoundError(
                    f"Mask2Former folder {str(local)!r} does not exist: pass a folder with config.json, model weights and "
                    f"preprocessor_config.json (e.g. `hf download {DEFAULT_DETECTOR} --local-dir FOLDER`) or a hub id such as {DEFAULT_DETECTOR!r}"
                )
            try:
                return AutoImageProcessor.from_pretrained(local), Mask2FormerForUniversalSegmentation.from_pretrained(local)
            except (OSError, ValueError) as e:
                raise FileNotFoundError(
                    f"Mask2Former folder {str(local)!r} is incomplete ({type(e).__name__}: {e}): it needs config.json, model weights and "
                    f"preprocessor_config.json, as written by `hf download {DEFAULT_DETECTOR} --local-dir FOLDER`"
                ) from e
        with hub_access():
            try:
                return AutoImageProcessor.from_pretrained(model), Mask2FormerForUniversalSegmentation.from_pretrained(model)
            except (OSError, ValueError) as e:
                raise weights_not_found(f"Mask2Former detector {model!r} (no local folder of that name, so tried as a hub id)", e, repo_id=model) from e

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """Detections of each image, highest score first (labels in GenEval's spelling, masks ``(H, W)`` bool)."""
        images = [im.convert("RGB") for im in images]
        out: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            out.extend(self._detect(images[start : start + self.batch_size]))
        return out

    def _detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        inputs = self.processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype or torch.float32)
        pixel_mask = inputs.get("pixel_mask")
        outputs = self.model(pixel_values=pixels, pixel_mask=None if pixel_mask is None else pixel_mask.to(self.device))
        sizes = [(im.height, im.width) for im in images]
        if self.postprocess == "hf":
            return self._hf_detections(outputs, sizes)
        results = []
        for i, size in enumerate(sizes):
            if pixel_mask is None:
                valid = tuple(pixels.shape[-2:])
            else:
                pm = pixel_mask[i].bool()
                valid = (int(pm.any(1).sum()), int(pm.any(0).sum()))
            scores, labels, masks = instance_predictions(
                outputs.class_queries_logits[i], outputs.masks_queries_logits[i], tuple(pixels.shape[-2:]), valid, size, self.max_per_image
            )
            results.append(self._detections(scores.tolist(), labels.tolist(), masks.cpu().numpy()))
        return results

    def _hf_detections(self, outputs, sizes: list[tuple[int, int]]) -> list[list[Detection]]:
        outputs.class_queries_logits = outputs.class_queries_logits.float()
        outputs.masks_queries_logits = outputs.masks_queries_logits.float()
        post = self.processor.post_process_instance_segmentation(outputs, threshold=self.min_score, target_sizes=sizes, return_binary_maps=True)
        results = []
        for res, (h, w) in zip(post, sizes):
            info = res["segments_info"]
            masks = res["segmentation"].cpu().numpy().astype(bool) if info else np.zeros((0, h, w), bool)
            results.append(self._detections([s["score"] for s in info], [s["label_id"] for s in info], masks))
        return results

    def _detections(self, scores: list[float], labels: list[int], masks: np.ndarray) -> list[Detection]:
        dets = []
        for score, label, mask in zip(scores, labels, masks):
            box = mask_to_box(mask) if score >= self.min_score else None
            if box is not None:
                dets.append(Detection(label=self.labels.get(int(label), str(label)), score=float(score), box=box, mask=mask))
        dets.sort(key=lambda d: -d.score)
        return dets[: self.max_per_image]

    def info(self) -> dict[str, Any]:
        """What produced the detections (for result files)."""
        return {
            "detector": type(self.model).__name__, "model": self.model_id, "processor": type(self.processor).__name__,
            "transformers": _transformers_version(), "min_score": self.min_score, "max_per_image": self.max_per_image,
            "postprocess": self.postprocess, "dtype": str(self.dtype or torch.float32),
        }


# ----------------------------------------------------------------------------- colour classifier


class ClipColorClassifier:
    """GenEval's colour namer: open_clip zero-shot classification of the masked, cropped instance among ``colors``.

    Per colour, the normalised text embeddings of :data:`COLOR_TEMPLATES` are averaged and re-normalised
    (cached per class); the colour with the highest cosine to the crop's image embedding wins.

    Args:
        model, pretrained: as for :func:`steer.rewards.clip.load_open_clip` (an open_clip name + tag,
            ``"hf-hub:org/repo"`` or a local open_clip folder with ``pretrained=None``).
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_CLIP,
        pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        colors: Sequence[str] = COLORS,
        background: str = BACKGROUND,
        batch_size: int = 16,
    ):
        from ..rewards.clip import load_open_clip, pil_transform

        name = str(model)
        as_path = "/" in name or name.startswith((".", "~"))
        if as_path and not name.startswith(("hf-hub:", "local-dir:")) and not Path(name).expanduser().is_dir():
            raise FileNotFoundError(
                f"open_clip folder {name!r} does not exist: pass a folder with open_clip_config.json, weights and tokenizer, "
                f"an open_clip name with a pretrained tag (e.g. {DEFAULT_CLIP!r}, {DEFAULT_CLIP_PRETRAINED!r}) or 'hf-hub:org/repo'"
            )
        self.model_id, self.pretrained = name, pretrained
        self.device, self.dtype = torch.device(device), dtype
        self.colors, self.background, self.batch_size = tuple(colors), background, int(batch_size)
        self.model, self.tokenizer, cfg = load_open_clip(str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name, pretrained, self.device)
        if dtype is not None:
            self.model.to(dtype)
        self.transform = pil_transform(self.model, cfg)
        self._text: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def class_embeddings(self, cls: str) -> torch.Tensor:
        """``(len(colors), D)`` unit text embeddings of the colours of ``cls`` (template average), cached."""
        if cls not in self._text:
            prompts = [t.format(c=c, cls=cls) for c in self.colors for t in COLOR_TEMPLATES]
            feats = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True).float()
            emb = feats.view(len(self.colors), len(COLOR_TEMPLATES), -1).mean(1)
            self._text[cls] = emb / emb.norm(dim=-1, keepdim=True)
        return self._text[cls]

    @torch.inference_mode()
    def classify(self, image: Image.Image, detections: Sequence[Detection], cls: str | None = None) -> list[str]:
        """Colour name of each detection of ``image`` (``cls`` defaults to each detection's label)."""
        out: list[str] = []
        dets = list(detections)
        for start in range(0, len(dets), self.batch_size):
            chunk = dets[start : start + self.batch_size]
            crops = torch.stack([self.transform(masked_crop(image, d, self.background)) for d in chunk])
            feats = self.model.encode_image(crops.to(self.device, self.dtype or torch.float32), normalize=True).float()
            for det, feat in zip(chunk, feats):
                out.append(self.colors[int((self.class_embeddings(cls or det.label) @ feat).argmax())])
        return out

    def __call__(self, image: Image.Image, detection: Detection, cls: str | None = None) -> str:
        """Colour name of one detection."""
        return self.classify(image, [detection], cls)[0]

    def info(self) -> dict[str, Any]:
        import open_clip

        return {
            "model": self.model_id, "pretrained": self.pretrained, "open_clip": open_clip.__version__,
            "colors": list(self.colors), "templates": list(COLOR_TEMPLATES), "background": self.background,
        }


# ----------------------------------------------------------------------------- evaluator


class GenEvalEvaluator:
    """GenEval scoring of images: detector -> (lazy) colour classification -> :func:`evaluate_detections`.

    ``detector(images) -> list[list[Detection]]``; ``color_classifier(image, detection, cls) -> str`` is
    only called for records that ask a colour (it may be ``None`` when none do).
    """

    def __init__(
        self,
        detector: Callable[[Sequence[Image.Image]], list[list[Detection]]],
        color_classifier: Callable[[Image.Image, Detection, str], str] | None = None,
        rules: RuleConfig | None = None,
    ):
        self.detector, self.color_classifier, self.rules = detector, color_classifier, rules or RuleConfig()

    @classmethod
    def from_pretrained(
        cls,
        detector: str | Path = DEFAULT_DETECTOR,
        clip: str | Path = DEFAULT_CLIP,
        clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        rules: RuleConfig | None = None,
        **detector_kwargs: Any,
    ) -> "GenEvalEvaluator":
        """Mask2Former ``detector`` + open_clip colour classifier ``clip``/``clip_pretrained`` (hub ids or folders)."""
        return cls(
            Mask2FormerDetector(detector, device=device, dtype=dtype, **detector_kwargs),
            ClipColorClassifier(clip, clip_pretrained, device=device, dtype=dtype),
            rules,
        )

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        dets = self.detector(images)
        if len(dets) != len(images):
            raise ValueError(f"the detector returned {len(dets)} detection lists for {len(images)} images")
        return dets

    def __call__(self, images: Sequence[Image.Image], records: Sequence[Mapping]) -> list[Verdict]:
        """One :class:`Verdict` per (image, GenEval metadata record) pair."""
        if len(images) != len(records):
            raise ValueError(f"got {len(images)} images but {len(records)} records: pass one GenEval record per image")
        records = [validate_metadata(r, where=f"records[{i}]") for i, r in enumerate(records)]
        return [self.score(image, record, dets) for image, record, dets in zip(images, records, self.detect(images))]

    def score(self, image: Image.Image, record: Mapping, detections: Sequence[Detection]) -> Verdict:
        """The verdict for one image whose detections are known (colours classified on demand, once each)."""
        asks_color = any("color" in clause for clause in record["include"])
        if asks_color and self.color_classifier is None:
            raise ValueError(f"record {record.get('prompt')!r} asks a colour but the evaluator has no color_classifier: pass one (e.g. ClipColorClassifier())")
        memo: dict[int, str] = {}

        def color_of(det: Detection) -> str:
            if id(det) not in memo:
                memo[id(det)] = self.color_classifier(image, det, det.label)
            return memo[id(det)]

        return evaluate_detections(record, detections, color_of=color_of if asks_color else None, config=self.rules)

    def info(self) -> dict[str, Any]:
        def part(obj):
            return obj.info() if hasattr(obj, "info") else {"callable": type(obj).__name__}

        return {
            "evaluator": "geneval", "detector": part(self.detector),
            "color_classifier": None if self.color_classifier is None else part(self.color_classifier),
            "rules": asdict(self.rules),
        }


def load_geneval_evaluator(
    detector: str | Path = DEFAULT_DETECTOR,
    clip: str | Path = DEFAULT_CLIP,
    clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    rules: RuleConfig | None = None,
    **detector_kwargs: Any,
) -> GenEvalEvaluator:
    """Same as :meth:`GenEvalEvaluator.from_pretrained`."""
    return GenEvalEvaluator.from_pretrained(detector, clip, clip_pretrained, device=device, dtype=dtype, rules=rules, **detector_kwargs)

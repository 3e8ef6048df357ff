"""Finding reward weights: local paths first, then the Hugging Face hub/cache, with clear offline errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch


class RewardWeightsNotFound(RuntimeError):
    """The weights of a reward model are neither a local path nor in the Hugging Face cache."""


def weights_not_found(what: str, err: BaseException | None = None, repo_id: str | None = None, filename: str | None = None) -> RewardWeightsNotFound:
    """A :class:`RewardWeightsNotFound` naming ``what``, the cause, and how to fix it."""
    cause = f" ({type(err).__name__}: {err})" if err is not None else ""
    cmd = f"`hf download {repo_id}{' ' + filename if filename else ''}`" if repo_id else "`hf download REPO`"
    return RewardWeightsNotFound(
        f"could not load {what}: the weights are not available offline{cause}. Download them once where the "
        f"Hugging Face hub is reachable (they land in the Hugging Face cache, e.g. {cmd}), or pass a local path "
        "to the files. Without network, set HF_HUB_OFFLINE=1 to fail fast."
    )


def hub_file(repo_id: str, filename: str, what: str | None = None) -> str:
    """Local path of ``filename`` from hub repo ``repo_id`` (cache first); :class:`RewardWeightsNotFound` if unavailable."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename)
    except Exception as e:  # offline, not cached, network down, gated, ...
        raise weights_not_found(what or f"{filename!r} from the hub repo {repo_id!r}", e, repo_id, filename) from e


def from_pretrained(loader: Callable[..., Any], name_or_path: str | Path, what: str, **kwargs: Any) -> Any:
    """``loader(name_or_path, **kwargs)`` (a transformers ``from_pretrained``) with a clear offline error."""
    try:
        return loader(str(name_or_path), **kwargs)
    except (OSError, ValueError) as e:
        if Path(name_or_path).exists():
            raise  # a local folder that is broken: not a download problem
        looks_like_repo = str(name_or_path).count("/") <= 1 and not str(name_or_path).startswith((".", "/", "~"))
        raise weights_not_found(f"{what} {str(name_or_path)!r}", e, repo_id=str(name_or_path) if looks_like_repo else None) from e


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file, unwrapping a ``"state_dict"`` key and ``module.`` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise weights_not_found(f"checkpoint {str(path)!r}", FileNotFoundError(f"no such file: {path}"))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)

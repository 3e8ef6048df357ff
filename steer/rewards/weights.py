"""Finding reward weights: local paths first, then the Hugging Face hub/cache, with clear offline errors."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import torch

#: seconds to wait for the Hugging Face hub before searching only the local cache (env STEER_HUB_TIMEOUT)
HUB_TIMEOUT = 3.0


class RewardWeightsNotFound(RuntimeError):
    """The weights of a reward model are neither a local path nor in the Hugging Face cache."""


def hub_offline() -> bool:
    """Whether hub downloads are off: ``HF_HUB_OFFLINE`` is set, or the hub did not answer within ``HUB_TIMEOUT`` s.

    The probe (one TCP connection to the hub's endpoint) runs once per process.
    """
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or not _hub_reachable(constants.ENDPOINT)


@lru_cache(maxsize=None)
def _hub_reachable(endpoint: str) -> bool:
    url = urlparse(endpoint)
    timeout = float(os.environ.get("STEER_HUB_TIMEOUT", HUB_TIMEOUT))
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def hub_access() -> Iterator[bool]:
    """Loads inside use only the local cache when the hub is unreachable (no minute of retries); yields whether offline."""
    from huggingface_hub import constants

    offline = hub_offline()
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        yield offline
    finally:
        constants.HF_HUB_OFFLINE = old


def weights_not_found(what: str, err: BaseException | None = None, repo_id: str | None = None, filename: str | None = None) -> RewardWeightsNotFound:
    """A :class:`RewardWeightsNotFound` naming ``what``, the cause, and how to fix it."""
    from huggingface_hub import constants

    cause = f" ({type(err).__name__}: {err})" if err is not None else ""
    cmd = f"`hf download {repo_id}{' ' + filename if filename else ''}`" if repo_id else "`hf download REPO`"
    if constants.HF_HUB_OFFLINE and not os.environ.get("HF_HUB_OFFLINE"):
        where = f"the Hugging Face hub ({constants.ENDPOINT}) did not answer within {os.environ.get('STEER_HUB_TIMEOUT', HUB_TIMEOUT)} s, so only the local cache was searched"
    elif constants.HF_HUB_OFFLINE:
        where = "HF_HUB_OFFLINE is set, so only the local cache was searched"
    else:
        where = "they could not be downloaded or found in the local cache"
    return RewardWeightsNotFound(
        f"could not load {what}: the weights are not available offline ({where}){cause}. Download them once where the Hugging Face hub is reachable "
        f"(they land in the Hugging Face cache, e.g. {cmd}), or pass a local path to the files."
    )


def hub_file(repo_id: str, filename: str, what: str | None = None) -> str:
    """Local path of ``filename`` from hub repo ``repo_id`` (cache first); :class:`RewardWeightsNotFound` if unavailable."""
    from huggingface_hub import hf_hub_download

    with hub_access():
        try:
            return hf_hub_download(repo_id, filename)
        except Exception as e:  # offline, not cached, network down, gated, ...
            raise weights_not_found(what or f"{filename!r} from the hub repo {repo_id!r}", e, repo_id, filename) from e


def from_pretrained(loader: Callable[..., Any], name_or_path: str | Path, what: str, **kwargs: Any) -> Any:
    """``loader(name_or_path, **kwargs)`` (a transformers ``from_pretrained``) with a clear offline error."""
    if Path(name_or_path).exists():
        return loader(str(name_or_path), **kwargs)  # a local folder: errors are not download problems
    with hub_access():
        try:
            return loader(str(name_or_path), **kwargs)
        except (OSError, ValueError) as e:
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

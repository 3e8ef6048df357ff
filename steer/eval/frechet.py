"""Fréchet distance between two feature sets (FID's formula) and a shapes-world feature network.

``d² = |μ₁ - μ₂|² + tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^{1/2})`` with unbiased sample covariances, computed in
float64 with :func:`scipy.linalg.sqrtm`; a tiny diagonal offset is added when the product is singular
(few samples relative to the feature dimension), and the imaginary round-off of ``sqrtm`` is dropped
(refused when it is not round-off).

Features: :func:`shapes_features` embeds images with the image tower of the shapes reward
(``steer.shapes.load_reward()``, an open_clip ViT; 128-d projected embedding, *not* L2-normalised),
so distances are in that model's feature space — comparable within this project, not to Inception FID.
"""

from __future__ import annotations

import numpy as np
import torch


def statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of ``(N, D)`` features, N >= 2."""
    f = np.asarray(features.detach().cpu() if torch.is_tensor(features) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance of N(μ₁, Σ₁) and N(μ₂, Σ₂) (the squared 2-Wasserstein distance of the Gaussians)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: means {mu1.shape} / {mu2.shape}, covariances {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        if imag > 1e-3 * max(1.0, np.abs(covmean.real).max()):
            raise ValueError(f"sqrtm(Σ₁Σ₂) has an imaginary part {imag:.3g}: the covariances are not valid (not PSD?)")
        covmean = covmean.real
    d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    return max(d, 0.0)


def frechet_distance(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between two feature sets ``(N₁, D)`` and ``(N₂, D)``."""
    mu1, s1 = statistics(features1)
    mu2, s2 = statistics(features2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.size} vs {mu2.size}")
    return frechet_from_statistics(mu1, s1, mu2, s2)


@torch.no_grad()
def shapes_features(images: np.ndarray | torch.Tensor, reward=None, batch: int = 256) -> torch.Tensor:
    """Image-tower embeddings ``(N, 128)`` of the shapes reward's open_clip model (unnormalised, float32, CPU).

    ``images``: uint8 ``(N, H, W, 3)`` or float ``(N, 3, H, W)`` in [0, 1]; ``reward`` defaults to
    ``steer.shapes.load_reward()`` (any :class:`steer.rewards.clip.OpenCLIPScore` works).
    """
    if reward is None:
        from ..shapes import load_reward

        reward = load_reward()
    x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 255
    elif x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"float images must be (N, 3, H, W) in [0, 1], got {tuple(x.shape)}")
    dev = reward.mean.device
    out = [reward.model.encode_image(reward.preprocess(x[s : s + batch].to(dev).float()), normalize=False).float().cpu()
           for s in range(0, len(x), batch)]
    return torch.cat(out)

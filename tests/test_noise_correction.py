"""Inverse noise correction (steer.train.noise_correction) and the Fréchet distance (steer.eval.frechet), on tiny sizes."""

import json

import numpy as np
import pytest
import torch

from steer.eval.frechet import frechet_distance, frechet_from_statistics
from steer.train import noise_correction as nc

SMALL = nc.CorrectorConfig(channels=4, height=8, width=8, layers=4, hidden=8)


@pytest.fixture(scope="module")
def flow_pipe():
    from steer.shapes import load_flow_pipeline

    torch.set_num_threads(1)
    pipe = load_flow_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _perturbed(cfg=SMALL, seed=0) -> nc.NoiseCorrector:
    """A corrector that is not the identity (random final layers and element-wise affine)."""
    torch.manual_seed(seed)
    model = nc.NoiseCorrector(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_noise_correction_round_trip_inversion(flow_pipe):
    """Invert then sample forward on the same schedule: 50 steps with 2 fixed-point iterations reconstruct to 2 % (rel. L2)."""
    from steer.shapes.dataset import make_dataset

    data = make_dataset(3, seed=7)
    x0 = nc.encode_images(flow_pipe, data["images"])
    assert x0.shape == (3, 4, 16, 16)
    z = nc.invert(flow_pipe, x0, data["prompts"], 50, 1.0, refine=2)
    x = nc.sample_latents(flow_pipe, z, data["prompts"], 50, 1.0)
    rel = float((x - x0).norm() / x0.norm())
    assert rel < 0.02, rel
    assert float((x - x0).abs().max()) < 0.25
    assert 0.3 < float(z.std()) < 1.5  # noise-like, not the latent


def test_noise_correction_identity_at_init_and_invertible():
    model = nc.NoiseCorrector(SMALL)
    u = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.correct(u), u)
    model = _perturbed()
    with torch.no_grad():
        z = model.correct(u)
        back, logdet = model.to_base(z)
    assert not torch.allclose(z, u)
    assert torch.allclose(back, u, atol=1e-5)
    assert logdet.shape == (5,)


def test_noise_correction_sample_deterministic_and_save_round_trip(tmp_path):
    model = _perturbed()
    a = model.sample(6, generator=torch.Generator().manual_seed(3))
    b = model.sample(6, generator=torch.Generator().manual_seed(3))
    assert a.shape == (6, 4, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, model.sample(6, generator=torch.Generator().manual_seed(4)))
    model.save_pretrained(tmp_path / "c")
    assert json.loads((tmp_path / "c" / "config.json").read_text())["layers"] == 4
    loaded = nc.NoiseCorrector.from_pretrained(tmp_path / "c")
    assert torch.equal(loaded.sample(6, generator=torch.Generator().manual_seed(3)), a)
    flops = model.flops_per_sample()
    assert flops > 0 and loaded.flops_per_sample() == flops


def _noise(n=96):
    g = torch.Generator().manual_seed(1)
    return 0.6 * torch.randn(n, 4, 8, 8, generator=g) + 0.2


def test_noise_correction_training_resumes_to_same_result(tmp_path):
    cfg = nc.TrainConfig(steps=6, batch=16, save_every=2, lr=1e-2)
    full = nc.train_corrector(_noise(), tmp_path / "full", cfg, SMALL, progress=False)
    assert nc.train_corrector(_noise(), tmp_path / "cut", cfg, SMALL, stop_after=3, progress=False) is None
    assert not (tmp_path / "cut" / "final").exists()
    assert json.loads((tmp_path / "cut" / "log.json").read_text())["log"][-1]["step"] == 3
    resumed = nc.train_corrector(_noise(), tmp_path / "cut", cfg, SMALL, progress=False)
    for (k, v), (_, w) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(v, w), k
    log_full = json.loads((tmp_path / "full" / "log.json").read_text())["log"]
    log_cut = json.loads((tmp_path / "cut" / "log.json").read_text())["log"]
    assert [r["loss"] for r in log_full] == [r["loss"] for r in log_cut] and len(log_full) == 6
    assert (tmp_path / "full" / "loss.png").is_file()
    loaded = nc.NoiseCorrector.from_pretrained(tmp_path / "full" / "final")
    g = torch.Generator().manual_seed(0)
    assert torch.equal(loaded.sample(2, generator=g), full.sample(2, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="another run"):
        nc.train_corrector(_noise(), tmp_path / "full", nc.TrainConfig(steps=7, batch=16, save_every=2), SMALL, progress=False)


def test_noise_correction_training_fits_shrunken_noise(tmp_path):
    """A short fit moves the NLL of noise with std 0.6 below the identity's (N(0, I))."""
    noise = _noise(256)
    model = nc.train_corrector(noise, tmp_path, nc.TrainConfig(steps=40, batch=64, lr=2e-2, save_every=40), SMALL, progress=False)
    with torch.no_grad():
        nll = float(-model.log_prob(noise).mean() / noise[0].numel())
    assert nll < nc.standard_normal_nll(noise) - 0.05


def test_noise_correction_frechet_known_gaussians():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 6))
    assert abs(frechet_distance(f, f)) < 1e-6
    # closed form: Σ₁ = I, Σ₂ = Q diag(λ) Qᵀ → |Δμ|² + Σ (1 - √λ)²
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    lam = np.array([0.25, 1.0, 2.0, 4.0])
    s2 = q @ np.diag(lam) @ q.T
    mu1, mu2 = np.zeros(4), np.array([1.0, -2.0, 0.0, 0.5])
    exact = float(mu2 @ mu2 + ((1 - np.sqrt(lam)) ** 2).sum())
    assert frechet_from_statistics(mu1, np.eye(4), mu2, s2) == pytest.approx(exact, rel=1e-9)
    # from samples: close to the closed form
    a = rng.multivariate_normal(mu1, np.eye(4), size=40000)
    b = rng.multivariate_normal(mu2, s2, size=40000)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.03)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(frechet_distance(a, b))
    # singular covariances (fewer samples than dimensions) stay finite and non-negative
    few = rng.normal(size=(5, 20))
    assert np.isfinite(frechet_distance(few, few + 1.0)) and frechet_distance(few, few + 1.0) == pytest.approx(20.0, rel=1e-3)


def test_noise_correction_bad_inputs(flow_pipe):
    from steer.shapes import load_pipeline

    x = torch.zeros(2, 4, 16, 16)
    with pytest.raises(ValueError, match="flow-matching"):
        nc.invert(load_pipeline(), torch.zeros(2, 4, 4, 4), ["a", "b"], 4)
    with pytest.raises(ValueError, match="num_steps"):
        nc.invert(flow_pipe, x, ["a photo of a circle"] * 2, 0)
    with pytest.raises(ValueError, match="one prompt per latent"):
        nc.invert(flow_pipe, x, ["a photo of a circle"], 4)
    with pytest.raises(ValueError, match="shape"):
        nc.invert(flow_pipe, torch.zeros(2, 4, 8, 8), ["a photo of a circle"] * 2, 4)
    with pytest.raises(ValueError, match="guidance_scale"):
        nc.invert(flow_pipe, x, ["a photo of a circle"] * 2, 4, guidance_scale=0.5)
    with pytest.raises(ValueError, match="shape"):
        nc.NoiseCorrector(SMALL).correct(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="steps"):
        nc.TrainConfig(steps=0)
    with pytest.raises(ValueError, match="noise must be"):
        nc.train_corrector(torch.zeros(4, 16), "unused", progress=False)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        nc.NoiseCorrector.from_pretrained("/nonexistent/corrector")
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))
    assert "--invert-steps" in nc.build_parser().format_help()

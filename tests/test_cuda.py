"""``--device cuda`` end to end: skipped on a machine without a CUDA device.

These run on a GPU machine (``benchmarks/gpu_check.sh`` runs them there, with the GPU
benchmarks, in one go): training, evaluation, the pictures, the posterior check and the
estimator study on ``cuda`` and ``cuda:0``, resuming, and the pieces whose arithmetic differs
between devices (the Bernoulli log-density, the importance sampler's float64 sums).
"""

import json
import math

import pyro
import pytest
import torch
from test_cli import QUICK, QUICK_STUDY, assert_png, run_cli

from pyro_vae import VAE
from pyro_vae.evaluate import importance_sampled_log_likelihood
from pyro_vae.model import bernoulli_log_density

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cuda") / "run"
    proc = run_cli("train", "--dataset", "mnist-sample", "--epochs", "2", "--device", "cuda",
                   "--out", run_dir, *QUICK)  # fmt: skip
    assert "test ELBO" in proc.stdout
    return run_dir


def test_a_cuda_run_writes_a_complete_run_folder(cuda_run):
    for name in ("samples.png", "reconstructions.png", "latent_scatter.png", "interpolation.png",
                 "training_curves.png"):  # fmt: skip
        assert_png(cuda_run / name)
    evaluation = json.loads((cuda_run / "evaluation.json").read_text())
    assert all(math.isfinite(v) for v in evaluation.values() if isinstance(v, float))
    config = json.loads((cuda_run / "config.json").read_text())
    assert config["device"] == "cuda"


def test_evaluation_on_cuda_agrees_with_the_cpu(cuda_run):
    """The same run scored on each device, 300 images at K = 200: different random draws, the
    same mean log p(x) to well within 1 nat (its Monte Carlo error here is a few hundredths;
    an error in a device's arithmetic shows as many nats)."""
    results = {}
    for device in ("cuda", "cuda:0", "cpu"):
        run_cli("evaluate", cuda_run, "--device", device, "-K", "200", "--num-images", "300")
        results[device] = json.loads((cuda_run / "evaluation.json").read_text())
        assert results[device]["num_images"] == 300 and results[device]["num_particles"] == 200
    for device in ("cuda", "cuda:0"):
        for key in ("log_likelihood", "test_elbo"):
            assert abs(results[device][key] - results["cpu"][key]) < 1.0, (device, key)


def test_pictures_posterior_and_resume_of_a_cuda_run(cuda_run, tmp_path):
    run_cli("plot", cuda_run, "--out", tmp_path / "plots")
    assert_png(tmp_path / "plots" / "samples.png")
    run_cli("posterior", cuda_run, "--num-samples", "50", "--warmup", "50", "--chains", "1",
            "-K", "500", "--out", tmp_path / "posterior")  # fmt: skip
    assert json.loads((tmp_path / "posterior" / "posterior.json").read_text())
    proc = run_cli("train", "--resume", cuda_run, "--epochs", "3", "--device", "cuda",
                   "--no-progress")  # fmt: skip
    assert "test ELBO" in proc.stdout
    lines = (cuda_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_compare_estimators_on_cuda(tmp_path):
    out = tmp_path / "study"
    proc = run_cli("compare-estimators", *QUICK_STUDY, "--device", "cuda", "--out", out)
    assert "reinforce-nn-baseline" in proc.stdout
    assert_png(out / "variance.png", 100, 100)


def test_the_bernoulli_density_on_cuda_is_the_cpus():
    torch.manual_seed(0)
    logits = 5 * torch.randn(3, 4, 784, dtype=torch.float64)
    x = torch.bernoulli(torch.rand(4, 784, dtype=torch.float64)).expand(3, 4, 784)
    cpu = bernoulli_log_density(logits, x, 1)
    gpu = bernoulli_log_density(logits.cuda(), x.cuda(), 1)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-9)


def test_the_importance_sampler_on_cuda_matches_the_cpu():
    """One untrained VAE on both devices, K = 2000: the log-likelihood estimates agree to
    their Monte Carlo error, and the sampler returns float64 sums on the GPU too."""
    torch.manual_seed(0)
    vae = VAE(784, hidden_sizes=(64,), latent_dim=4)
    x = torch.bernoulli(torch.rand(8, 784))
    estimates = {}
    for device in ("cpu", "cuda"):
        pyro.set_rng_seed(1)
        model = vae.to(device)
        ll, _ = importance_sampled_log_likelihood(model.model, model.guide, x.to(device), 2000)
        estimates[device] = ll.cpu().double()
    assert torch.isfinite(estimates["cuda"]).all()
    difference = (estimates["cuda"] - estimates["cpu"]).abs()
    assert (difference < 0.5).all(), difference  # each is within ~0.1 nats of log p(x) at K = 2000

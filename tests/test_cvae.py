"""The conditional VAE: the quadrants against Pyro's MaskImages, the bound and the baseline's
zero-valued term against traces written out, the importance-sampled log p(x|c) against
quadrature over a one-dimensional z, and training, resuming, sampling and evaluating runs,
with their one-line errors."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import write_class_folders
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_vae import TrainConfig, evaluate, fit, load_run
from pyro_vae.cvae import CONDITIONS, ConditionalVAE, visible_pixels
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluate import importance_sampled_log_likelihood, log_importance_weights
from pyro_vae.model import bernoulli_log_density


def _pyro_mask_images(image: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pyro's examples/cvae/mnist.py MaskImages, as written there: (input, output), -1 where
    a pixel is not part of it."""
    out = image.clone()
    h, w = image.shape
    out[h // 2 :, : w // 2] = -1
    if num == 2:
        out[:, : w // 2] = -1
    if num == 3:
        out[: h // 2, :] = -1
    inp = image.clone()
    inp[out != -1] = -1
    return inp, out


@pytest.mark.parametrize("num", [1, 2, 3])
@pytest.mark.parametrize("shape", [(28, 28), (7, 5)])
def test_the_visible_quadrants_are_pyro_s(num, shape):
    image = torch.rand(*shape) + 1  # no pixel is -1
    inp, out = _pyro_mask_images(image, num)
    seen = visible_pixels((1, *shape), num)
    assert torch.equal(seen[0], inp != -1) and torch.equal(~seen[0], out != -1)
    assert torch.equal(visible_pixels((3, *shape), num), seen.expand(3, *shape))
    for bad in (0, 4):
        with pytest.raises(ConfigError, match="1, 2 or 3"):
            visible_pixels((1, *shape), bad)
    with pytest.raises(ConfigError, match="at least 2 x 2"):
        visible_pixels((1, 1, 9), 1)


def _small(condition, arch="mlp", latent=3, seed=0):
    pyro.clear_param_store()
    torch.manual_seed(seed)
    conv = dict(arch="conv", conv_channels=(2,)) if arch == "conv" else {}
    vae = ConditionalVAE(latent, (8,), "tanh", condition=condition, image_shape=(1, 4, 4),
                         classes=3 if condition == "label" else None, **conv)  # fmt: skip
    vae.init_output_bias(torch.full((16,) if arch == "mlp" else (1, 4, 4), 0.3))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, *vae.event_shape, generator=g).bernoulli(generator=g)
    y = torch.tensor([0, 2, 1, 1, 0]) if condition == "label" else None
    return vae, x, y


def _by_hand(vae, x, y):
    """The ELBO's terms from traces of the guide and the model replayed on it: log p(x|z, c)
    of the pixels the model scores, log p(z|c) from the prior net, log q(z|x, c)."""
    args = (x,) if y is None else (x, y)
    guide = poutine.trace(vae.guide).get_trace(*args)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(*args)
    z = guide.nodes["z"]["value"]
    c = None if y is None else torch.eye(3)[y]
    if y is None:
        flat = x.reshape(len(x), -1)
        guess = torch.sigmoid(vae.baseline_net(torch.where(vae.visible, flat, -1.0))[0])
        loc, scale = vae.prior_net(torch.where(vae.visible, flat, guess).reshape(x.shape))
        logits = vae.decoder(z)[0].reshape(len(x), -1)[:, ~vae.visible]
        target = flat[:, ~vae.visible]
    else:
        loc, scale = vae.prior_net(c)
        logits = vae.decoder(torch.cat([z, c], -1))[0]
        target = x
    log_lik = dist.Bernoulli(logits=logits).log_prob(target).sum(-1)
    log_p = dist.Normal(loc, scale).log_prob(z).sum(-1)
    q_loc, q_scale = vae.encoder(x, c) if y is not None else vae.encoder(x)
    log_q = dist.Normal(q_loc, q_scale).log_prob(z).sum(-1)
    return guide, model, log_lik + log_p - log_q


@pytest.mark.numerics
@pytest.mark.parametrize("condition", CONDITIONS)
def test_the_bound_is_the_terms_written_out_and_the_baseline_adds_nothing_to_it(condition):
    vae, x, y = _small(condition)
    guide, model, bound = _by_hand(vae, x, y)
    model.compute_log_prob()
    guide.compute_log_prob()
    traced = sum(model.nodes[n]["log_prob"] for n in ("x", "z")) - guide.nodes["z"]["log_prob"]
    # float32 sums of a few dozen terms of size ~10: within 1e-5 relative of each other
    torch.testing.assert_close(traced, bound, rtol=1e-5, atol=1e-5)
    if condition == "label":
        assert "baseline" not in model.nodes
        return
    # the baseline's factor is zero, and the hidden pixels alone are scored
    assert torch.equal(model.nodes["baseline"]["log_prob"], torch.zeros(len(x)))
    assert model.nodes["x"]["value"].shape == (len(x), int((~vae.visible).sum()))


@pytest.mark.numerics
def test_the_baseline_learns_its_cross_entropy_and_nothing_else():
    """Its gradient in the ELBO's is its own loss's, exactly: the prior net's use of its guess
    sends none back (the guess is held fixed)."""
    vae, x, _ = _small("quadrants-1")
    Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).backward()
    from_elbo = [p.grad.clone() for p in vae.baseline_net.parameters()]
    vae.zero_grad()
    flat = x.reshape(len(x), -1)
    logits = vae.baseline_net(torch.where(vae.visible, flat, -1.0))[0]
    (-bernoulli_log_density(logits[:, ~vae.visible], flat[:, ~vae.visible], 1).sum()).backward()
    for a, p in zip(from_elbo, vae.baseline_net.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-6, atol=1e-7)
    assert any(a.abs().sum() > 0 for a in from_elbo)
    # and the other networks' gradients do not depend on the baseline's loss
    assert vae.baseline_nll(x).shape == (len(x),)


def _quadrature(vae, x, y, points=4001):
    """log p(x|c) = log int p(z|c) p(x|z, c) dz for a one-dimensional z, by the trapezoid rule
    over 12 prior standard deviations about the prior's mean, in float64 where it sums."""
    c = None if y is None else torch.eye(3)[y]
    with torch.no_grad():
        loc, scale = (t.double() for t in vae.prior_params(x, c))  # (B, 1) each
        t = torch.linspace(-6, 6, points, dtype=torch.float64)
        z = loc + scale * t  # (B, P)
        joint = c if c is None else c.expand(points, *c.shape)
        p_x = vae._likelihood(z.T[..., None].float(), joint)  # batch (P, B)
        target = x if vae.labelled else vae.hidden(x)
        integrand = dist.Normal(loc, scale).log_prob(z) + p_x.log_prob(target).double().T
        weights = torch.ones(points, dtype=torch.float64)
        weights[[0, -1]] = 0.5
        log_dz = (scale * (t[1] - t[0])).log()  # (B, 1)
        return torch.logsumexp(integrand + weights.log() + log_dz, -1)


@pytest.mark.numerics
@pytest.mark.parametrize("condition", ["label", "quadrants-2"])
def test_the_importance_sampled_log_likelihood_is_the_integral(condition):
    vae, x, y = _small(condition, latent=1)
    exact = _quadrature(vae, x, y)
    k = 20000
    torch.manual_seed(3)
    log_px, elbo = importance_sampled_log_likelihood(vae.model, vae.guide, x, k, conditions=y)
    # the estimate's standard error, from the effective sample size of another K draws:
    # sd(mean w) / mean w = sqrt(1 / ESS - 1 / K), to first order in log
    log_w = log_importance_weights(vae.model, vae.guide, x, k, conditions=y).detach().double()
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
    stderr = (1 / ess - 1 / k).sqrt()
    assert (stderr < 0.05).all()  # the test can tell a wrong integral: 0.05 nats is loose
    assert ((log_px - exact).abs() < 4.5 * stderr + 1e-4).all(), (log_px - exact, stderr)
    assert (elbo <= log_px + 1e-9).all()


def test_settings_a_cvae_cannot_take_are_refused_in_one_line():
    for settings, words in (
        (dict(condition="label"), "add --model cvae"),
        (dict(model="cvae"), "needs --condition"),
        (dict(model="cvae", condition="halves"), "condition"),
        (dict(model="cvae", condition="quadrants-1", likelihood="gaussian"), "not likelihood"),
        (dict(model="cvae", condition="label", estimator="reinforce"), "estimator 'reparam'"),
        (dict(model="cvae", condition="label", objective="iwae", num_particles=2), "takes"),
        (dict(model="cvae", condition="label", kl_weight=0.5), "kl_weight"),
        (dict(model="cvae", condition="label", labels=10), "add --model m2"),
        (dict(model="cvae", condition="label", arch="custom"), "its own networks"),
    ):
        with pytest.raises(ConfigError, match=words) as caught:
            TrainConfig(**settings).validate()
        assert "\n" not in str(caught.value)


def test_conditions_handed_to_the_model_and_evaluate_are_checked():
    vae, x, y = _small("label")
    for bad, words in ((None, "give labels"), (y.float(), "whole class indices"),
                       (y[:3], "one label an image"), (y + 1, "must be 0..2")):  # fmt: skip
        with pytest.raises(DataError, match=words):
            Trace_ELBO().loss(vae.model, vae.guide, x, bad)
    with pytest.raises(ConfigError, match="give labels"):
        evaluate(vae, x, 2)
    quadrants, x, _ = _small("quadrants-1")
    with pytest.raises(ConfigError, match="takes none"):
        evaluate(quadrants, x, 2, labels=torch.zeros(len(x), dtype=torch.long))
    with pytest.raises(ConfigError, match="use complete"):
        quadrants.sample(3)
    with pytest.raises(ConfigError, match="use sample"):
        vae.complete(x)
    with pytest.raises(ConfigError, match="2 or more classes"):
        ConditionalVAE(condition="label", image_shape=(1, 4, 4), classes=1)


def test_completions_keep_the_visible_pixels_and_samples_their_class_s_prior():
    vae, x, _ = _small("quadrants-3")
    g = torch.Generator().manual_seed(0)
    done = vae.complete(x, 4, g).reshape(4, len(x), -1)
    flat = x.reshape(len(x), -1)
    assert torch.equal(done[:, :, vae.visible], flat[None, :, vae.visible].expand(4, -1, -1))
    assert not torch.equal(done[0], done[1])  # each draw its own z
    labelled, _, _ = _small("label")
    a = labelled.sample(6, torch.Generator().manual_seed(0), torch.full((6,), 2))
    b = labelled.sample(6, torch.Generator().manual_seed(0), torch.full((6,), 1))
    assert a.shape == (6, 16) and not torch.allclose(a, b)


# -- runs --------------------------------------------------------------------------------------

TINY = dict(model="cvae", dataset="mnist-sample", train_size=300, latent_dim=2,
            hidden_sizes=(16,), batch_size=50, epochs=2, seed=1)  # fmt: skip


@pytest.mark.numerics
@pytest.mark.parametrize("condition, arch", [("label", "mlp"), ("quadrants-2", "conv")])
def test_a_cvae_run_resumes_bit_for_bit_loads_and_evaluates(tmp_path, condition, arch):
    config = TrainConfig(**TINY, condition=condition, arch=arch, conv_channels=(4,))
    whole = fit(config, tmp_path / "whole")
    fit(TrainConfig(**{**config.to_dict(), "epochs": 1}), tmp_path / "half")
    resumed = fit(config, tmp_path / "half", resume=True)
    for a, b in zip(
        whole.vae.state_dict().values(), resumed.vae.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    loaded = load_run(tmp_path / "whole")
    assert isinstance(loaded.vae, ConditionalVAE) and loaded.vae.condition == condition
    labels = whole.test_labels[:40] if condition == "label" else None
    scores = evaluate(loaded.vae, whole.test_images[:40], 10, labels=labels)
    assert scores.test_elbo <= scores.log_likelihood
    assert (scores.baseline_nll is None) == (condition == "label")
    assert math.isfinite(scores.log_likelihood) and scores.accuracy is None


def _cli(*args):
    env = {**os.environ, "PYRO_VAE_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pyro_vae", *map(str, args)],
                          capture_output=True, text=True, env=env)  # fmt: skip


QUICK = ["--dataset", "mnist-sample", "--train-size", "300", "--epochs", "1", "--hidden-sizes",
         "16", "--latent-dim", "2", "--eval-images", "20", "--eval-particles", "2",
         "--no-progress", "--model", "cvae"]  # fmt: skip


def test_the_cli_trains_evaluates_and_draws_a_completion_cvae(tmp_path):
    out = tmp_path / "run"
    done = _cli("train", *QUICK, "--condition", "quadrants-1", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "log p(x|c) (IS)" in done.stdout and "baseline NN" in done.stdout
    assert json.loads((out / "evaluation.json").read_text())["baseline_nll"] > 0
    assert (out / "samples.png").exists() and (out / "training_curves.png").exists()
    drawn = _cli("sample", out, "--num", "3", "--out", tmp_path / "c.png")
    assert drawn.returncode == 0 and (tmp_path / "c.png").exists(), drawn.stderr
    for args, words in ((("sample", out, "--condition", "1"), "has no classes"),
                        (("reconstruct", out), "does not reconstruct"),
                        (("sample", out, "--num", "33"), "at most 32 test images"),
                        (("posterior", out), "p(z|x, c)"),
                        (("train", "--resume", out, "--epochs", "2", "--condition", "label"),
                         "is a run of condition 'quadrants-1'")):  # fmt: skip
        failed = _cli(*args)
        assert failed.returncode != 0 and words in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr


def test_the_cli_draws_a_class_of_a_label_cvae_and_refuses_others(tmp_path):
    out = tmp_path / "run"
    done = _cli("train", *QUICK, "--condition", "label", "--no-plots", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "baseline NN" not in done.stdout
    drawn = _cli("sample", out, "--condition", "7", "--num", "4", "--out", tmp_path / "7.png")
    assert drawn.returncode == 0 and (tmp_path / "7.png").exists(), drawn.stderr
    failed = _cli("sample", out, "--condition", "10")
    assert failed.returncode != 0 and "0..9, not 10" in failed.stderr


def test_a_label_cvae_on_data_without_labels_is_one_line_and_writes_nothing(tmp_path):
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 2, (60, 6, 6)).astype(np.uint8) * 255)
    out = tmp_path / "run"
    flags = [f for f in QUICK if f not in ("mnist-sample", "--dataset", "--train-size", "300")]
    done = _cli("train", *flags, "--dataset", images, "--condition", "label", "--out", out)
    assert done.returncode != 0 and "has no labels" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_an_image_folder_s_classes_condition_a_cvae_and_its_test_images_complete(tmp_path):
    shapes = write_class_folders(tmp_path)
    flags = [f for f in QUICK if f not in ("mnist-sample", "--dataset", "--train-size", "300")]
    for condition in ("label", "quadrants-3"):
        out = tmp_path / condition
        done = _cli("train", *flags, "--dataset", shapes, "--condition", condition,
                    "--batch-size", "8", "--likelihood", "continuous-bernoulli",
                    "--out", out)  # fmt: skip
        assert done.returncode == 0, done.stderr
        vae = load_run(out).vae
        assert vae.condition == condition and vae.classes == (3 if condition == "label" else None)
        assert math.isfinite(json.loads((out / "evaluation.json").read_text())["nll"])


@pytest.mark.parametrize("condition", ["label", "quadrants-1"])
def test_a_cvae_run_logs_to_tensorboard(tmp_path, condition):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = TrainConfig(**{**TINY, "epochs": 1}, condition=condition)
    fit(config, tmp_path / "run", tensorboard=tmp_path / "log")
    events = EventAccumulator(str(tmp_path / "log"), size_guidance={"images": 0}).Reload()
    want = ["samples"] if condition == "label" else ["completions"]
    assert sorted(events.Tags()["images"]) == want

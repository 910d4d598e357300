"""The semi-supervised VAE (M2): its bound against the sum over labels written out, the
label's estimators against the exact gradient, the relaxed bound and the auxiliary loss term by
term, the class-balanced draw of labels, and training, resuming and evaluating a run."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from conftest import write_class_folders

from pyro_vae import VAE, TrainConfig, evaluate, fit, load_dataset, load_run
from pyro_vae.errors import CheckpointError, ConfigError, DataError
from pyro_vae.labels import draw_labelled
from pyro_vae.m2 import LABEL_ESTIMATORS, SemiSupervisedVAE, aux_scale, label_elbo

D, Z, C = 12, 3, 3


def _setup(estimator="enumerate", aux=0.0, batch=6, label_weight=1.0, arch="mlp"):
    """A small M2 and a batch of ``batch`` images, the first ones labelled. The images are drawn
    apart from the networks (an nn baseline draws weights too), the same for every estimator;
    ``label_weight`` scales the decoder's weights of the label, to make the label matter."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    shape = dict(image_shape=(1, 4, 3), arch="conv", conv_channels=(2,)) if arch == "conv" else {}
    vae = SemiSupervisedVAE(None if shape else D, Z, (8,), "tanh", classes=C,
                            estimator=estimator, aux_scale=aux, **shape)  # fmt: skip
    with torch.no_grad():
        vae.decoder.body[0].weight[:, Z:] *= label_weight
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *vae.event_shape, generator=generator).bernoulli(generator=generator)
    y = torch.full((batch,), -1)
    y[: batch // 6 + 1] = torch.arange(batch // 6 + 1) % C
    if batch == 6:
        y = torch.tensor([1, -1, 0, -1, -1, 2])
    return vae, x, y


def _bound(vae, x, label, z, loc, scale):
    """``log p(x|y, z) + log p(y) + log p(z) - log q(z|x, y)`` for one-hot ``label``."""
    log_lik = vae.likelihood_distribution(torch.cat([z, label], -1)).log_prob(x)
    log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = dist.Normal(loc, scale).log_prob(z).sum(-1)
    return log_lik - math.log(C) + log_pz - log_qz


def _enumerated_by_hand(vae, x, y):
    """The batch's ELBO as Kingma et al. write it: ``sum_l L(x, y) + sum_u [sum_y q(y|x)
    L(x, y) + H(q(y|x))]``, with ``z`` drawn as the guide draws it, for every label at once."""
    labels = torch.eye(C)[:, None, :].expand(C, len(x), C)  # (C, B, C)
    loc, scale = vae.encoder(x, labels)
    z = dist.Normal(loc, scale).rsample()  # (C, B, Z): the guide's one draw
    bounds = _bound(vae, x, labels, z, loc, scale)  # (C, B)
    log_q = F.log_softmax(vae.classifier(x)[0], -1)  # (B, C)
    unlabelled = (log_q.exp() * (bounds.T - log_q)).sum(-1)
    labelled = bounds.T.gather(1, y.clamp(min=0)[:, None])[:, 0]
    return torch.where(y >= 0, labelled, unlabelled).sum()


@pytest.mark.numerics
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_the_enumerated_bound_is_the_sum_over_labels_written_out(arch):
    vae, x, y = _setup(arch=arch)
    pyro.set_rng_seed(3)
    loss = label_elbo("enumerate").loss(vae.model, vae.guide, x, y)
    with torch.no_grad():
        pyro.set_rng_seed(3)
        expected = _enumerated_by_hand(vae, x, y).item()
    # the same float32 terms summed in another order: about 40 terms of at most ~10 nats, each
    # sum off by at most n u sum|terms| = 40 * 6e-8 * 400 = 1e-3 nats (Higham 2002, eq. 3.5)
    # in the worst case, of a total near 60 nats: 2e-5 relative
    assert loss == pytest.approx(-expected, rel=2e-5)
    # a labelled image's bound is its label's alone: changing the label changes the loss
    pyro.set_rng_seed(3)
    other = label_elbo("enumerate").loss(
        vae.model, vae.guide, x, torch.tensor([2, -1, 0, -1, -1, 2])
    )
    assert other != pytest.approx(loss, rel=1e-6)


@pytest.mark.numerics
def test_the_auxiliary_loss_adds_the_weighted_log_q_of_the_labelled_images():
    vae, x, y = _setup(aux=7.0)
    pyro.set_rng_seed(5)
    with_aux = label_elbo("enumerate").loss(vae.model, vae.guide, x, y)
    vae.aux_scale = 0.0
    pyro.set_rng_seed(5)
    without = label_elbo("enumerate").loss(vae.model, vae.guide, x, y)
    with torch.no_grad():
        log_q = F.log_softmax(vae.classifier(x)[0], -1)
        labelled = (y >= 0).nonzero()[:, 0]
        term = log_q[labelled, y[labelled]].sum().item()
    # two totals near 60 nats, each within 1e-3 nats (as above), differ by 7 |sum log q| ~ 20
    assert with_aux - without == pytest.approx(-7.0 * term, abs=2e-3)
    assert aux_scale(0.1, 50_000, 100) == pytest.approx(50.0)  # Kingma et al.'s alpha = 0.1 N
    assert aux_scale(2.76, 50_000, 3000) == pytest.approx(46.0)  # Pyro's tutorial's scale


@pytest.mark.numerics
@pytest.mark.parametrize("straight_through", [False, True])
def test_the_relaxed_bound_is_the_relaxed_draw_and_the_closed_form_kl(straight_through):
    estimator = "straight-through" if straight_through else "gumbel"
    vae, x, y = _setup(estimator)
    elbo = label_elbo(estimator, temperature=0.7)
    pyro.set_rng_seed(11)
    loss = elbo.loss(vae.model, vae.guide, x, y)
    with torch.no_grad():
        pyro.set_rng_seed(11)
        logits = vae.label_logits(x, y)  # the point mass at an observed label
        cls = (dist.RelaxedOneHotCategoricalStraightThrough if straight_through
               else dist.RelaxedOneHotCategorical)  # fmt: skip
        label = cls(torch.tensor(0.7), logits=logits).rsample()
        loc, scale = vae.encoder(x, label)
        z = dist.Normal(loc, scale).rsample()
        log_q = F.log_softmax(logits, -1)
        kl = (log_q.exp() * (log_q + math.log(C))).sum(-1)  # KL(q(y|x) || uniform)
        expected = (_bound(vae, x, label, z, loc, scale) + math.log(C) - kl).sum().item()
    assert loss == pytest.approx(-expected, rel=2e-5)  # the sum's rounding, as above
    # an observed label's relaxation is its one-hot vector: exp(-1e4) is zero in float32
    assert torch.equal(label[y >= 0], F.one_hot(y[y >= 0], C).float())


def _classifier_gradients(estimator, draws, seed=0):
    vae, x, y = _setup(estimator, batch=48, label_weight=10.0)
    elbo = label_elbo(estimator)
    pyro.set_rng_seed(seed)
    grads = []
    for _ in range(draws):
        elbo.loss_and_grads(vae.model, vae.guide, x, y)
        grads.append(vae.classifier.loc.bias.grad.clone())
        for p in vae.parameters():
            p.grad = None
    return torch.stack(grads).double()  # (draws, C): of minus the ELBO


@pytest.mark.parametrize("estimator", ["reinforce", "reinforce-baseline", "reinforce-nn-baseline"])
def test_the_score_function_estimators_of_the_label_are_unbiased(estimator):
    # the classifier's output bias: its gradient comes through the 40 unlabelled images' label
    # alone (a decoder that heeds the label makes it large); the exact sum over labels, noisy
    # in z only, is the reference
    exact = _classifier_gradients("enumerate", 200, seed=1)
    sampled = _classifier_gradients(estimator, 1000, seed=2)
    diff = sampled.mean(0) - exact.mean(0)
    se = (sampled.var(0) / len(sampled) + exact.var(0) / len(exact)).sqrt()
    assert (diff.abs() < 5 * se).all(), (diff, se)
    # the power to see a bias: an estimator that lost its score term (whose mean would be 0)
    # would be far outside 5 standard errors
    assert (exact.mean(0).abs() > 5 * se).any(), (exact.mean(0), se)


def test_draw_labelled_is_class_balanced_seeded_and_refuses_what_it_cannot_draw():
    labels = torch.arange(10).repeat(30)  # 30 images a class
    drawn = draw_labelled(labels, 25, seed=4, classes=10)
    kept = drawn[drawn >= 0]
    assert len(kept) == 25 and torch.equal(kept, labels[drawn >= 0])
    counts = torch.bincount(kept, minlength=10)
    assert counts.min() == 2 and counts.max() == 3
    assert torch.equal(drawn, draw_labelled(labels, 25, seed=4, classes=10))
    assert not torch.equal(drawn, draw_labelled(labels, 25, seed=5, classes=10))
    with pytest.raises(DataError, match="more than the 300 training images"):
        draw_labelled(labels, 301, 0, 10)
    with pytest.raises(DataError, match="without a labelled image"):
        draw_labelled(labels, 9, 0, 10)
    with pytest.raises(DataError, match="class '3' has 0"):
        draw_labelled(labels[labels != 3], 20, 0, 10)


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(model="m2"), "needs --labels"),
        (dict(labels=100), "add --model m2"),
        (dict(aux_loss=0.1), "add --model m2"),
        (dict(model="m2", labels=100, estimator="disarm"), "not one for M2's label"),
        (dict(model="m2", labels=100, arch="custom"), "its own networks"),
        (dict(model="m2", labels=100, aux_loss=float("nan")), "alpha must be"),
        (dict(model="m2", labels=100, kl_weight=2.0), "kl_weight"),
        (dict(model="m2", labels=100, temperature=0.5), "relaxed estimators"),
    ],
)
def test_settings_that_m2_cannot_take_are_refused_in_one_line(settings, words):
    with pytest.raises(ConfigError, match=words) as caught:
        TrainConfig(**settings).validate()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_every_label_estimator_takes_a_training_step(arch):
    for estimator in LABEL_ESTIMATORS:
        vae, x, y = _setup(estimator, arch=arch)
        loss = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
                              label_elbo(estimator)).step(x, y)  # fmt: skip
        assert math.isfinite(loss)


M2_RUN = dict(model="m2", dataset="mnist-sample", labels=100, aux_loss=0.1, train_size=2000,
              latent_dim=10, hidden_sizes=(200,), batch_size=100, epochs=2, seed=3)  # fmt: skip


@pytest.mark.numerics
def test_an_m2_run_learns_to_classify_resumes_bit_for_bit_and_loads(tmp_path):
    config = TrainConfig(**M2_RUN)
    whole = fit(config, tmp_path / "whole")
    assert all("valid_accuracy" in row for row in whole.history)
    fit(TrainConfig(**{**M2_RUN, "epochs": 1}), tmp_path / "half")
    resumed = fit(config, tmp_path / "half", resume=True)
    for a, b in zip(
        whole.vae.state_dict().values(), resumed.vae.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    loaded = load_run(tmp_path / "whole")
    assert isinstance(loaded.vae, SemiSupervisedVAE) and loaded.vae.classes == 10
    scores = evaluate(loaded.vae, whole.test_images[:500], 5, labels=whole.test_labels[:500])
    # 100 labels, 2 epochs of 2000 images: well above chance (0.1) already
    assert scores.accuracy > 0.4
    assert scores.label_kl > 0 and scores.kl > scores.label_kl
    plain = evaluate(loaded.vae, whole.test_images[:50], 5)
    assert plain.accuracy is None


def _cli(*args):
    env = {**os.environ, "PYRO_VAE_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pyro_vae", *map(str, args)],
                          capture_output=True, text=True, env=env)  # fmt: skip


QUICK = ["--epochs", "1", "--hidden-sizes", "16", "--latent-dim", "2", "--no-plots",
         "--eval-images", "20", "--eval-particles", "2", "--no-progress"]  # fmt: skip


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--dataset", "mnist-sample", "--train-size", "300", "--labels", "301"],
         "--labels 301 is more than the 300 training images"),
        (["--dataset", "mnist-sample", "--labels", "5"], "leaves a class without a labelled"),
        (["--dataset", "frey-faces", "--labels", "10"], "has no labels"),
    ],
)  # fmt: skip
def test_labels_the_data_cannot_give_are_one_line_and_write_nothing(tmp_path, flags, words):
    if (
        "frey-faces" in flags
        and not (Path(os.environ.get("PYRO_VAE_DATA_DIR", "")) / "FreyFace").exists()
    ):
        pytest.skip("Frey Face is not here")
    out = tmp_path / "run"
    done = _cli("train", "--model", "m2", *flags, *QUICK, "--out", out)
    assert done.returncode != 0
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists()


def test_an_image_folder_s_classes_are_m2_s_labels(tmp_path):
    shapes = write_class_folders(tmp_path)
    out = tmp_path / "run"
    done = _cli("train", "--model", "m2", "--dataset", shapes, "--labels", "6",
                "--batch-size", "8", "--likelihood", "continuous-bernoulli", *QUICK,
                "--out", out)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "evaluation.json").read_text())
    assert 0 <= result["accuracy"] <= 1 and load_run(out).vae.classes == 3


def _sample_with(**changes):
    data = load_dataset("mnist-sample")
    return dataclasses.replace(data, **changes)


TINY = dict(model="m2", dataset="mnist-sample", labels=20, train_size=300, latent_dim=2,
            hidden_sizes=(16,), batch_size=50, epochs=1)  # fmt: skip


def test_an_annealed_temperature_trains_m2():
    config = TrainConfig(**TINY, estimator="gumbel", temperature=1.0, temperature_anneal=0.1)
    assert math.isfinite(fit(config).history[-1]["train_elbo"])


def test_a_resume_on_other_labels_of_the_same_images_is_refused(tmp_path):
    data = load_dataset("mnist-sample")
    fit(TrainConfig(**TINY), tmp_path / "run", data=data)
    other = dataclasses.replace(data, train_labels=(data.train_labels + 1) % 10)
    with pytest.raises(CheckpointError, match="other labels") as caught:
        fit(TrainConfig(**{**TINY, "epochs": 2}), tmp_path / "run", data=other, resume=True)
    assert "\n" not in str(caught.value)
    fit(TrainConfig(**{**TINY, "epochs": 2}), tmp_path / "run", data=data, resume=True)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.train_labels.float(), "whole class indices"),
        (lambda d: d.train_labels[:-1], "one label an image"),
        (lambda d: torch.zeros_like(d.train_labels), "one class"),
        (lambda d: d.train_labels * 2, "have none"),  # the odd classes are empty
        (lambda d: d.train_labels - 1, "class indices are 0 or more"),
    ],
)
def test_training_labels_from_python_are_checked_in_one_line(change, words):
    data = load_dataset("mnist-sample")
    bad = dataclasses.replace(data, train_labels=change(data))
    with pytest.raises(DataError, match=words) as caught:
        fit(TrainConfig(**TINY), data=bad)
    assert "\n" not in str(caught.value)


def test_labels_handed_to_the_model_evaluate_and_label_elbo_are_checked():
    vae, x, y = _setup()
    for bad, words in ((torch.tensor([1, -2, 0, -1, -1, 2]), "-1 \\(unlabelled\\) or 0..2"),
                       (torch.tensor([1, 3, 0, -1, -1, 2]), "or 0..2"),
                       (y.float(), "whole class indices"),
                       (y[:3], "one label an image")):  # fmt: skip
        with pytest.raises(DataError, match=words):
            label_elbo("enumerate").loss(vae.model, vae.guide, x, bad)
    with pytest.raises(DataError, match="the model has 3 classes"):
        evaluate(vae, x, 2, labels=torch.tensor([0, 1, 2, 3, 0, 1]))
    with pytest.raises(ConfigError, match="this VAE takes none"):
        evaluate(VAE(D, 2), x, 2, labels=y.clamp(min=0))
    for t in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="temperature must be a positive"):
            label_elbo("gumbel", t)
    with pytest.raises(ConfigError, match="add --model m2"):
        TrainConfig(label_seed=3).validate()


def test_resuming_a_run_as_another_model_says_so(tmp_path):
    out = tmp_path / "run"
    assert _cli("train", "--dataset", "mnist-sample", "--train-size", "200", *QUICK,
                "--out", out).returncode == 0  # fmt: skip
    done = _cli("train", "--resume", out, "--epochs", "2", "--model", "m2", "--labels", "20")
    assert done.returncode != 0 and "is a run of model 'vae'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_m2_run_samples_a_chosen_class(tmp_path):
    out = tmp_path / "run"
    assert _cli("train", "--model", "m2", "--labels", "20", "--dataset", "mnist-sample",
                "--train-size", "200", *QUICK, "--out", out).returncode == 0  # fmt: skip
    done = _cli("sample", out, "--condition", "3", "--num", "4", "--out", tmp_path / "3.png")
    assert done.returncode == 0 and (tmp_path / "3.png").exists(), done.stderr
    vae = load_run(out).vae
    g = torch.Generator().manual_seed(0)
    threes = vae.sample(4, g, torch.full((4,), 3))
    z = vae.prior.sample(4, torch.Generator().manual_seed(0), vae.encoder)
    torch.testing.assert_close(threes, vae.decode(z, torch.full((4,), 3)))  # the same z, y = 3

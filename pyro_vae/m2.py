r"""The semi-supervised VAE, M2 of Kingma, Rezende, Mohamed & Welling (2014).

Generative model, for images ``x`` with a class ``y`` (one of ``C``) and a style ``z``::

    y ~ p(y) = Categorical(1/C, ..., 1/C)
    z ~ p(z) = N(0, I)
    x | y, z ~ p(x | decoder([z, onehot(y)]))

Guide::

    y | x ~ q(y|x) = Categorical(softmax(classifier(x)))     # the classifier: what M2 is for
    z | x, y ~ q(z|x, y) = N(mu, diag sigma^2),  mu, sigma = encoder([x, onehot(y)])

A batch holds labelled and unlabelled images together: ``y`` is a tensor of class indices,
``-1`` where the label is not observed. One sample site ``y`` covers the whole batch. For a
labelled image the guide's ``q(y|x)`` is the point mass at its label (logits ``0`` there and
``-10^4`` elsewhere, whose probability is exactly zero in float32), so its term of the ELBO is
Kingma et al.'s labelled bound ``L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) -
log q(z|x,y)]``; for an unlabelled one it is ``U(x) = E_q(y|x)[L(x, y)] + H(q(y|x))``. The
batch's ELBO is their sum. Why one site and not Pyro's ``obs_mask`` or two passes (labelled
batches and unlabelled batches, as Pyro's tutorial does):

- every estimator sees batches of one size (the running-average baseline keeps one average
  a position in the batch) and the optimizer one step a batch;
- enumeration stays exact: a masked guide site would weight each of a labelled image's ``C``
  enumerated values by ``exp(0) = 1``, counting its bound ``C`` times; the point mass weights
  the other labels by zero;
- the labelled images come at their share of every batch, each once an epoch, as in the
  tutorial (whose supervised batches are spread through the epoch).

The label's gradient, ``--estimator`` (the style ``z`` is always reparameterized):

``enumerate``
    Pyro's ``TraceEnum_ELBO``, the guide's ``y`` enumerated: ``U(x)`` summed exactly over the
    ``C`` labels, each weighted by ``q(y|x)`` (Kingma et al.'s own computation).
``reinforce``, ``reinforce-baseline``, ``reinforce-nn-baseline``
    Pyro's ``TraceGraph_ELBO``: the score function of the sampled label, its learning signal
    the image's own downstream terms, without a baseline, with a running average, or with the
    average plus a learned ``b(x)`` (NVIL).
``gumbel``, ``straight-through``
    :class:`RelaxedLabelELBO`: the decoder and ``q(z|x, y)`` see a Concrete relaxation of the
    label (straight-through: the hard label with the relaxation's gradient), and the label's
    KL is the discrete one in closed form (Jang, Gu & Poole 2017, Sec. 4.2).

Without labels the classifier learns only through ``U(x)``, which does not ask it to agree
with the labels it never sees; Kingma et al. add ``alpha`` times the labelled images' mean
``log q(y|x)`` to the objective (their eq. 9, with ``alpha = 0.1 N``). Here that is
``--aux-loss ALPHA`` with the paper's ``alpha = ALPHA * N``, the same as their code does: each
labelled image's ``log q(y|x)`` is weighted by ``ALPHA * N / N_l`` (``N`` training images, ``N_l``
of them labelled) beside the ELBO's sum over images, :func:`aux_scale`. Pyro's tutorial scales
by 46 at 3000 labels of 50,000: ``ALPHA = 46 * 3000 / 50000 = 2.76``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import pyro.infer as infer
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer.util import torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import is_validation_enabled
from torch import nn
from torch.distributions import kl_divergence

from pyro_vae.checks import is_real, require_choice, require_whole
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import RELAXED, baseline_options
from pyro_vae.isolation import check_seed
from pyro_vae.labels import check_batch_labels, check_classes
from pyro_vae.model import VAE
from pyro_vae.networks import (
    MIN_ENCODER_SCALE,
    Baseline,
    ConvDecoder,
    ConvEncoder,
    Decoder,
    Encoder,
    mlp,
)
from pyro_vae.traces import sample_sites

__all__ = [
    "LABEL_ESTIMATORS",
    "MODELS",
    "RelaxedLabelELBO",
    "SemiSupervisedVAE",
    "aux_scale",
    "check_aux_loss",
    "label_elbo",
]

#: the estimators of M2's label, which is a categorical latent where it is not observed
LABEL_ESTIMATORS = (
    "enumerate", "reinforce", "reinforce-baseline", "reinforce-nn-baseline", "gumbel",
    "straight-through",
)  # fmt: skip
#: the models ``--model`` chooses: the VAE, M2, and the conditional VAE (:mod:`pyro_vae.cvae`)
MODELS = ("vae", "m2", "cvae")
# the logits of the point mass at an observed label, at the other labels: exp(-1e4) is 0 in
# float32 (and float64), so they weigh nothing, while the logits stay finite (no 0 * inf)
_ELSEWHERE = -1e4


def _joined(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[a, b]`` along the last dimension, the leading ones broadcast (an enumerated or
    particle dimension on either side)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*shape, a.shape[-1]), b.expand(*shape, b.shape[-1])], dim=-1)


class LabelledEncoder(Encoder):
    """``q(z|x, y)`` for flat images: the MLP of :class:`pyro_vae.networks.Encoder` on
    ``[x, onehot(y)]``."""

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return super().forward(_joined(x, label))


class LabelledConvEncoder(ConvEncoder):
    """``q(z|x, y)`` for images ``(B, C, H, W)``: :class:`pyro_vae.networks.ConvEncoder`'s
    convolutions see ``x`` alone, once; the label joins their features before the dense
    layers (so an enumerated label costs the dense layers ``C`` times, not the convolutions)."""

    def __init__(self, image_shape, latent_dim, classes, conv_channels, hidden_sizes, activation):
        super().__init__(image_shape, latent_dim, conv_channels, hidden_sizes, activation)
        flat = self.body[0].in_features if hidden_sizes else self.loc.in_features
        self.body = mlp([flat + classes, *hidden_sizes], activation)
        width = hidden_sizes[-1] if hidden_sizes else flat + classes
        self.loc = nn.Linear(width, latent_dim)
        self.raw_scale = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.body(_joined(self.convs(x).flatten(1), label))  # (..., B, H')
        return self.loc(h), F.softplus(self.raw_scale(h)) + MIN_ENCODER_SCALE


class SemiSupervisedVAE(VAE):
    """M2: the model ``p(y) p(z) p(x|y, z)`` and guide ``q(y|x) q(z|x, y)`` (see the module
    docstring), with MLP or conv networks: the classifier ``x -> logits``, the encoder
    ``(x, onehot(y)) -> (loc, scale)`` and the decoder ``[z, onehot(y)] ->`` the likelihood's
    parameters, each with ``hidden_sizes`` (the decoder's mirrored); for conv, stride-2
    convolutions of ``conv_channels`` before the dense layers (the label joins the encoder's
    after its convolutions) and transposed ones after the decoder's.

    :param classes: ``C``, the number of classes.
    :param estimator: the label's gradient estimator, one of :data:`LABEL_ESTIMATORS`.
    :param aux_scale: the weight of each labelled image's ``log q(y|x)`` in the training
        objective (:func:`aux_scale`; 0: none).

    ``model(x, y=None)`` and ``guide(x, y=None)`` take images ``(B, D)`` and class indices
    ``(B,)``, ``-1`` for an unlabelled image; without ``y`` every image is unlabelled (the
    test ELBO and log-likelihood are of ``x`` alone). The networks are registered with Pyro as
    ``"encoder"``, ``"decoder"`` and ``"classifier"``.
    """

    def __init__(
        self,
        data_dim: int | None = None,
        latent_dim: int = 50,
        hidden_sizes: Sequence[int] = (500,),
        activation: str = "softplus",
        likelihood: str = "bernoulli",
        estimator: str = "enumerate",
        baseline_beta: float = 0.9,
        *,
        classes: int = 10,
        image_shape: Sequence[int] | None = None,
        arch: str = "mlp",
        conv_channels: Sequence[int] = (32, 64),
        aux_scale: float = 0.0,
        checked: bool = False,
    ) -> None:
        if not checked:
            check_classes(classes)
            check_label_estimator(estimator)
            if not (is_real(aux_scale) and math.isfinite(aux_scale) and aux_scale >= 0):
                raise ConfigError(f"aux_scale must be a number >= 0, got {aux_scale!r}")
        self.classes = int(classes)  # read by _built_in, which VAE.__init__ calls
        if arch not in ("mlp", "conv"):
            raise ConfigError(f"an M2 model has mlp or conv networks, not {arch!r}")
        super().__init__(data_dim, latent_dim, hidden_sizes, activation, likelihood, "reparam",
                         baseline_beta, image_shape=image_shape, arch=arch,
                         conv_channels=conv_channels, checked=checked)  # fmt: skip
        self.estimator = estimator  # the label's; z is reparameterized
        self.aux_scale = float(aux_scale)
        if arch == "conv":
            self.classifier = ConvEncoder(self.image_shape, self.classes, conv_channels,
                                          hidden_sizes, activation, 0)  # fmt: skip
        else:
            self.classifier = Encoder(self.data_dim, self.classes, hidden_sizes, activation, 0)
        if estimator == "reinforce-nn-baseline":
            self.baseline = Baseline(self.data_dim, event_dims=len(self.event_shape))

    def _built_in(self, arch, hidden_sizes, conv_channels, activation):
        c, z = self.classes, self.latent_dim
        if arch == "conv":
            return (
                LabelledConvEncoder(
                    self.image_shape, z, c, conv_channels, hidden_sizes, activation
                ),  # fmt: skip
                ConvDecoder(
                    self.image_shape,
                    z + c,
                    conv_channels,
                    hidden_sizes,
                    activation,
                    self.likelihood,
                ),  # fmt: skip
            )
        return (
            LabelledEncoder(self.data_dim + c, z, hidden_sizes, activation),
            Decoder(self.data_dim, z + c, hidden_sizes, activation, self.likelihood),
        )

    # -- the Pyro model and guide ------------------------------------------------------------

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """``p(y) p(z) p(x|y, z)`` for images ``x`` ``(B, D)``; with labels ``y`` and an
        auxiliary loss, also the labelled images' weighted ``log q(y|x)``."""
        pyro.module("decoder", self.decoder)
        batch = x.shape[0]
        self._check_batch_labels(x, y)
        with pyro.plate("data", batch):
            z = pyro.sample("z", self.prior.batch_distribution((batch,), self.encoder))
            uniform = x.new_zeros(batch, self.classes)
            label = pyro.sample("y", dist.OneHotCategorical(logits=uniform))
            pyro.sample("x", self.likelihood_distribution(_joined(z, label)), obs=x)
            if y is not None and self.aux_scale:
                pyro.module("classifier", self.classifier)
                log_q = F.log_softmax(self._run("classifier", x)[0], -1)
                observed = log_q.gather(-1, y.clamp(min=0)[:, None])[:, 0]
                pyro.factor("classification", self.aux_scale * observed * (y >= 0))

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """``q(y|x) q(z|x, y)``; ``q(y|x)`` is the point mass at the label where ``y`` has
        one."""
        pyro.module("encoder", self.encoder)
        pyro.module("classifier", self.classifier)
        self._check_batch_labels(x, y)
        if self.baseline is not None:
            pyro.module("baseline", self.baseline)
        with pyro.plate("data", x.shape[0]):
            logits = self.label_logits(x, y)
            label = pyro.sample("y", dist.OneHotCategorical(logits=logits),
                                infer=self._label_options(x))  # fmt: skip
            loc, scale = self.encoder(x, label)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _check_batch_labels(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """While Pyro validates (not in training, where it is off): ``y`` holds a class index
        or ``-1`` for each image."""
        if y is not None and is_validation_enabled():
            check_batch_labels(y, x.shape[0], self.classes, "M2", unlabelled=True)

    def _label_options(self, x: torch.Tensor) -> dict:
        if self.estimator == "enumerate":
            return {"enumerate": "parallel"}
        return baseline_options(self.estimator, x, self.baseline, self.baseline_beta)

    def label_logits(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The guide's logits of ``y``, ``(B, C)``: the classifier's, or where ``y`` holds a
        label the point mass at it."""
        logits = self._run("classifier", x)[0]
        if y is None:
            return logits
        point = (F.one_hot(y.clamp(min=0), self.classes).to(logits.dtype) - 1) * -_ELSEWHERE
        return torch.where((y >= 0)[:, None], point, logits)

    # -- using it ----------------------------------------------------------------------------

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under ``q(y|x)``, ``(B,)``."""
        return self._run("classifier", x)[0].argmax(-1)

    def _onehot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.classes).to(like.dtype)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """``q(z|x, y)``'s ``(loc, scale)``, at the classifier's class where ``y`` is not
        given."""
        y = self.classify(x) if y is None else y
        return self.encoder(x, self._onehot(y, x))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean image ``E[x|y, z]`` for styles ``z`` ``(..., Z)`` and classes ``y``."""
        if y is None:
            raise ConfigError("an M2 model decodes a style z with a class y: give both")
        return self.likelihood_distribution(_joined(z, self._onehot(y, z))).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``E[x | y, z = mu(x, y)]`` at the classifier's class ``y``."""
        y = self.classify(x)
        return self.decode(self.encode(x, y)[0], y)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               y: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Mean images for ``num_samples`` draws of ``z ~ p(z)``, of classes ``y`` ``(N,)``
        (default: drawn from ``p(y)``)."""
        z = self.prior.sample(num_samples, generator, self.encoder)
        if y is None:
            y = torch.randint(self.classes, (num_samples,), generator=generator, device=z.device)
        return self.decode(z, y)

    @torch.no_grad()
    def class_by_style(self, styles: torch.Tensor) -> torch.Tensor:
        """``E[x|y, z]`` for every class (rows) and each style ``z`` of ``styles`` ``(S, Z)``
        (columns): ``(C, S, D)``, Kingma et al.'s Figure 1."""
        y = torch.arange(self.classes, device=styles.device)[:, None].expand(-1, len(styles))
        return self.decode(styles.expand(self.classes, *styles.shape), y)

    def hmc_refusal(self, what: str) -> str | None:
        return (f"{what} samples continuous latents, and M2's label is discrete: the posterior "
                "check is for the VAE")  # fmt: skip

    def network_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every network's outputs on ``x`` at the classifier's class (for the divergence
        check)."""
        logits = self._run("classifier", x)[0]
        y = self._onehot(logits.argmax(-1), x)
        loc, scale = self.encoder(x, y)
        return [logits, loc, scale, *self._run("decoder", _joined(loc, y))]

    @torch.no_grad()
    def evaluation_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """From one draw ``y ~ q(y|x)``, ``z ~ q(z|x, y)`` an image: ``E_q[z|x, y]``,
        ``log p(x|y, z)``, the KL of ``z`` by dimension and the KL of ``y``, ``(B, ...)``."""
        logits = self._run("classifier", x)[0]
        q_y = dist.OneHotCategorical(logits=logits)
        y = q_y.sample()
        loc, scale = self.encoder(x, y)
        z = loc + scale * torch.randn_like(scale)
        recon = self.likelihood_distribution(_joined(z, y)).log_prob(x)
        kl_z = 0.5 * (loc.square() + scale.square() - 1) - scale.log()
        uniform = dist.OneHotCategorical(logits=torch.zeros_like(logits))
        return loc, recon, kl_z, kl_divergence(q_y, uniform)


def check_label_estimator(estimator) -> None:
    """:class:`ConfigError` unless ``estimator`` is one of :data:`LABEL_ESTIMATORS`."""
    if estimator not in LABEL_ESTIMATORS:
        raise ConfigError(
            f"estimator {estimator!r} is not one for M2's label; choose one of "
            f"{', '.join(LABEL_ESTIMATORS)}"
        )


def check_aux_loss(alpha) -> None:
    """:class:`ConfigError` unless ``alpha`` is a finite number >= 0."""
    if isinstance(alpha, bool) or not is_real(alpha) or not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"the auxiliary loss's alpha must be a number >= 0, got {alpha!r}")


def check_m2_settings(config) -> None:
    """:class:`ConfigError` for a resolved config's M2 settings (``labels``, ``aux_loss``, the
    label's estimator) that are wrong, or that clash: settings M2 does not take, or M2's
    given to the plain VAE."""
    require_choice(config.model, "model", MODELS)
    if config.model != "m2":
        for name, flag, unset in (("labels", "--labels", None), ("aux_loss", "--aux-loss", 0),
                                  ("label_seed", "--label-seed", 0)):  # fmt: skip
            if getattr(config, name) != unset:
                raise ConfigError(f"{flag} is for the semi-supervised model: add --model m2")
        return
    check_label_estimator(config.estimator)
    if config.arch == "custom":
        raise ConfigError("model m2 builds its own networks (--arch mlp or conv), not "
                          "hand-written ones")  # fmt: skip
    if config.labels is None:
        raise ConfigError("model m2 needs --labels N: how many training images keep their label")
    require_whole(config.labels, "labels")
    check_seed(config.label_seed, "label_seed")
    check_aux_loss(config.aux_loss)
    clashes = {
        "latent": (config.latent, "gaussian"),
        "prior": (config.prior, "normal"), "objective": (config.objective, "elbo"),
        "num_particles": (config.num_particles, 1), "kl_weight": (config.kl_weight, 1.0),
        "kl_warmup": (config.kl_warmup, 0), "jit": (config.jit, False),
    }  # fmt: skip
    for name, (value, own) in clashes.items():
        if value != own:
            raise ConfigError(
                f"model m2 takes {name} {own!r} (its Gaussian style z and one draw a step), "
                f"not {value!r}"
            )


def aux_scale(alpha: float, num_train: int, num_labelled: int) -> float:
    """The weight of each labelled image's ``log q(y|x)``: Kingma et al.'s ``alpha = ALPHA N``
    times the mean over the ``N_l`` labelled images, ``ALPHA * N / N_l``, beside the ELBO's sum
    over the ``N`` training images (their code's ``beta = alpha * n_tot / n_labeled``)."""
    return float(alpha) * num_train / num_labelled if alpha else 0.0


# -- the objectives ------------------------------------------------------------------------


class _Relaxed(Messenger):
    """The guide's sites ``names`` drawn from the Concrete relaxation of their one-hot
    categorical at ``temperature`` (or its straight-through form); the discrete distribution
    is kept in the site's ``infer["discrete"]``."""

    def __init__(self, names: Sequence[str], temperature: float, straight_through: bool):
        super().__init__()
        self.names = set(names)
        self.temperature = float(temperature)
        self.straight_through = straight_through

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] not in self.names or msg["is_observed"]:
            return
        fn = msg["fn"]
        cls = (dist.RelaxedOneHotCategoricalStraightThrough if self.straight_through
               else dist.RelaxedOneHotCategorical)  # fmt: skip
        t = torch.tensor(self.temperature, dtype=fn.logits.dtype, device=fn.logits.device)
        msg["infer"] = {**msg["infer"], "discrete": fn}
        msg["fn"] = cls(t, logits=fn.logits)


def _log_prob_sum(site: dict) -> torch.Tensor:
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return _scaled_sum(log_prob, site)


def _scaled_sum(term: torch.Tensor, site: dict) -> torch.Tensor:
    if site["mask"] is not None:
        term = term.masked_fill(~site["mask"], 0.0)
    if site["scale"] is not None:
        term = term * site["scale"]
    return term.sum()


class RelaxedLabelELBO(infer.ELBO):
    """The ELBO with the guide's label ``y`` relaxed (``gumbel``) or straight-through: the
    guide draws a Concrete relaxation of ``q(y|x)`` at :attr:`temperature`, which ``q(z|x, y)``
    and the decoder see; every other site's log density counts as in ``Trace_ELBO``, and the
    label's ``log p(y) - log q(y|x)`` is replaced by minus the discrete KL in closed form (Jang,
    Gu & Poole 2017). Its gradient is biased for the discrete ELBO; the loss is minus this
    relaxed bound."""

    def __init__(self, temperature: float = 1.0, straight_through: bool = False,
                 site: str = "y") -> None:  # fmt: skip
        super().__init__(num_particles=1, max_plate_nesting=1)
        self.temperature = float(temperature)
        self.straight_through = bool(straight_through)
        self.site = site

    def _bound(self, model, guide, args, kwargs) -> torch.Tensor:
        relaxed = _Relaxed([self.site], self.temperature, self.straight_through)
        guide_trace = poutine.trace(relaxed(guide)).get_trace(*args, **kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
        bound = 0.0
        for site in sample_sites(model_trace):
            if site["name"] == self.site:
                q = guide_trace.nodes[self.site]
                kl = kl_divergence(q["infer"]["discrete"], site["fn"])
                bound = bound - _scaled_sum(kl, q)
            else:
                bound = bound + _log_prob_sum(site)
        for site in sample_sites(guide_trace):
            if site["name"] != self.site and not site["is_observed"]:
                bound = bound - _log_prob_sum(site)
        return bound

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return -torch_item(self._bound(model, guide, args, kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        bound = self._bound(model, guide, args, kwargs)
        if bound.requires_grad:
            (-bound).backward()
        return -torch_item(bound)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return -self._bound(model, guide, args, kwargs)

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("RelaxedLabelELBO draws its own traces")


def label_elbo(estimator: str, temperature: float | None = None) -> infer.ELBO:
    """The ELBO object that trains M2 with the label's ``estimator``."""
    check_label_estimator(estimator)
    if estimator == "enumerate":
        return infer.TraceEnum_ELBO(max_plate_nesting=1)
    if estimator in RELAXED:
        t = 1.0 if temperature is None else temperature
        if isinstance(t, bool) or not is_real(t) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"the temperature must be a positive number, got {t!r}")
        return RelaxedLabelELBO(t, straight_through=estimator == "straight-through")
    return infer.TraceGraph_ELBO(max_plate_nesting=1)

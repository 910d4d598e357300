"""Training objectives: which Pyro ELBO class estimates which bound.

``elbo``
    ``Trace_ELBO``: ``E_q[log p(x, z) - log q(z|x)]`` by Monte Carlo, KL term included.
``elbo-analytic-kl``
    ``TraceMeanField_ELBO``: ``E_q[log p(x|z)] - KL(q(z|x) || p(z))`` with the closed-form
    Gaussian KL ``-1/2 sum(1 + log sigma^2 - mu^2 - sigma^2)`` (Kingma & Welling 2013, App. B).
    The same bound with less variance; the default.
``iwae``
    ``RenyiELBO(alpha=0)`` with ``K`` particles: ``E[log 1/K sum_k p(x, z_k) / q(z_k|x)]``, the
    importance-weighted bound of Burda et al. (2015), tighter than the ELBO for ``K > 1``.
``wake-sleep``
    The wake-sleep algorithm (Hinton et al. 1995), :class:`WakeSleep`: not a bound's gradient,
    but two phases a step, the decoder climbing ``log p(x, z)`` at ``z ~ q(z|x)`` and the
    encoder climbing ``log q(z|x)`` on dreams ``(z, x) ~ p(z) p(x|z)``. The loss it reports is
    the ELBO at the wake sample, so its training curve reads like the others'.
``rws``
    Reweighted wake-sleep (Bornschein & Bengio 2015), :class:`ReweightedWakeSleep`, with
    ``K >= 2`` particles: the decoder climbs each image's importance-weighted bound, the
    encoder the self-normalized ``sum_k w~_k log q(z_k|x)``, with one set of weights per image.
    The loss it reports is minus the importance-weighted bound.
``mcem``
    Monte Carlo EM (:class:`MonteCarloEM`): the decoder climbs ``log p(x, z)`` at the
    encoder's draws moved toward the exact posterior ``p(z|x)`` by a short HMC chain (exact
    only as the chain grows long); the encoder, fitted alongside by the ELBO with the decoder
    held fixed, starts the chains and reports the bound. For small training sets,
    as in Kingma & Welling's comparison: every step runs the decoder about 33 times over.

Particles are vectorized (one batched pass for ``K > 1`` samples). Only ``elbo`` supports the
score-function estimators and ``stl``: Pyro's ``TraceMeanField_ELBO`` assumes a
reparameterized guide and uses the closed-form KL (which would bypass ``stl``'s stop-gradient
density), and its ``RenyiELBO`` has no score-function gradient for a guide site. With a
baseline estimator, ``elbo`` is estimated by ``TraceGraph_ELBO``, which implements baselines.
"""

from __future__ import annotations

import math

import pyro
import pyro.infer as infer
import torch
from pyro import poutine
from pyro.infer.util import torch_item
from pyro.ops.integrator import potential_grad, velocity_verlet
from pyro.poutine.util import site_is_subsample

from pyro_vae.checks import is_whole, require_flag, require_positive
from pyro_vae.discrete import check_discrete_estimator, discrete_elbo
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import DRAWS, RELAXED, is_reparameterized, uses_baseline
from pyro_vae.meanfield import MeanFieldELBO
from pyro_vae.traces import masked_log_prob, observed_sites, sample_sites

__all__ = [
    "OBJECTIVES",
    "MeanFieldELBO",
    "MonteCarloEM",
    "ReweightedWakeSleep",
    "WakeSleep",
    "check_kl_weight",
    "check_objective",
    "kl_weight_at",
    "make_elbo",
]

OBJECTIVES = ("elbo", "elbo-analytic-kl", "iwae", "wake-sleep", "rws", "mcem")


class WakeSleep(infer.ELBO):
    """The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995), for continuous latents, on
    Pyro's traces of the model and guide.

    Each call of :meth:`loss_and_grads` runs both phases and leaves their gradients on the
    parameters, for one optimizer step:

    - *wake*: ``z ~ q(z|x)`` from a trace of the guide, its values detached (no gradient flows
      through the sample), and the model replayed on them; the gradient of ``-log p(x, z)``
      reaches the decoder (and a learned prior) only.
    - *sleep*: a dream ``(z', x') ~ p(z) p(x|z)`` from a trace of
      ``poutine.uncondition(model)``, detached, and the guide run on ``x'`` conditioned on
      ``z'``; the gradient of ``-log q(z'|x')`` reaches the encoder only.

    The model and the guide take the observations as their first argument, the value of the
    model's one observed site (the VAE's ``model(x)`` and ``guide(x)``): the sleep phase calls
    the guide on the dreamed ``x'`` in its place. Plates scale both phases as they scale an ELBO.

    The returned loss is ``-(log p(x, z) - log q(z|x))`` at the wake sample: minus a one-sample
    ELBO estimate, which is what wake-sleep's training curve reports (the gradients are not
    this quantity's).
    """

    def __init__(self) -> None:
        super().__init__(num_particles=1, max_plate_nesting=1)

    def _wake(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not site["is_observed"]:
                site["value"] = site["value"].detach()
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        log_q = guide_trace.log_prob_sum(lambda name, site: not site_is_subsample(site))
        log_joint = model_trace.log_prob_sum(lambda name, site: not site_is_subsample(site))
        return model_trace, log_joint, log_q

    @staticmethod
    def sleep_log_q(model, guide, args, kwargs) -> torch.Tensor:
        """``log q(z'|x')`` at a detached dream ``(z', x') ~ p(z) p(x|z)``, differentiable in
        the guide's parameters: the sleep phase's objective."""
        with torch.no_grad():
            dream = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
        observed = [name for name, site in dream.nodes.items()
                    if site["type"] == "sample" and site["infer"].get("was_observed")]  # fmt: skip
        if len(observed) != 1:
            raise ConfigError(
                f"wake-sleep needs a model with one observed site (the images), found {observed}"
            )
        latents = {name: site["value"].detach() for name, site in dream.nodes.items()
                   if site["type"] == "sample" and name not in observed
                   and not site_is_subsample(site)}  # fmt: skip
        x_dream = dream.nodes[observed[0]]["value"].detach()
        guide_trace = poutine.trace(poutine.condition(guide, data=latents)).get_trace(
            x_dream, *args[1:], **kwargs
        )
        return guide_trace.log_prob_sum(
            lambda name, site: name in latents and not site_is_subsample(site)
        )

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            _, log_joint, log_q = self._wake(model, guide, args, kwargs)
        return -torch_item(log_joint - log_q)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        _, log_joint, log_q = self._wake(model, guide, args, kwargs)
        log_q_dream = self.sleep_log_q(model, guide, args, kwargs)
        surrogate = -(log_joint + log_q_dream)
        if surrogate.requires_grad:
            surrogate.backward()
        return -torch_item(log_joint - log_q)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        raise NotImplementedError("wake-sleep follows two gradients, not one loss's")

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("wake-sleep runs its own phases (loss_and_grads)")


class ReweightedWakeSleep(infer.ELBO):
    """Reweighted wake-sleep (Bornschein & Bengio 2015) with one set of importance weights per
    image, on Pyro's traces of the model and guide.

    For each image ``x_b`` of the batch, ``K`` particles ``z_kb ~ q(z|x_b)`` (detached, drawn in
    one vectorized pass), log weights ``log w_kb = log p(x_b, z_kb) - log q(z_kb|x_b)`` and
    their self-normalized weights ``w~_kb = w_kb / sum_j w_jb``:

    - *wake-theta* (the model): ascend the importance-weighted bound of each image,
      ``log 1/K sum_k w_kb`` (Burda et al.'s IWAE bound, with ``q``'s density held fixed);
    - *wake-phi* (the guide): ascend ``sum_k w~_kb log q(z_kb|x_b)``, a self-normalized
      estimate of ``-KL(p(z|x_b) || q(z|x_b))``'s gradient;
    - *sleep-phi*, weighted by ``1 - insomnia``: the wake-sleep dream's ``log q(z'|x')``
      (:class:`WakeSleep`).

    Pyro's ``ReweightedWakeSleep`` sums the log weights over the whole batch before
    normalizing (one weight per particle for all images together, and its docstring says that
    minibatches are not supported); this class keeps one weight per particle and image, which
    is what a minibatch of independent images needs. With one image the two agree (tested).
    Each image's terms are multiplied by the scale of the observed site (a subsampling plate's
    ``N / B``). The reported loss is minus the summed importance-weighted bound.

    :param num_particles: ``K >= 2`` (with one particle the normalized weight is 1 and the
        guide's update has expectation zero).
    :param insomnia: the wake-phi share of the guide's update, in ``[0, 1]``.
    """

    def __init__(self, num_particles: int = 5, insomnia: float = 1.0) -> None:
        if not is_whole(num_particles) or num_particles < 2:
            raise ConfigError(f"reweighted wake-sleep needs K >= 2 particles, got {num_particles}")
        if not (isinstance(insomnia, (int, float)) and 0.0 <= insomnia <= 1.0):
            raise ConfigError(f"insomnia is a share in [0, 1], got {insomnia!r}")
        super().__init__(num_particles=int(num_particles), vectorize_particles=True,
                         max_plate_nesting=1)  # fmt: skip
        self.insomnia = float(insomnia)

    def log_weights(self, model, guide, *args, **kwargs):
        """``(log p(x, z), log q(z|x), scale)``: the first two ``(K, B)``, per particle and
        image, at detached draws of the guide; ``scale`` the observed site's."""
        guide_trace = poutine.trace(self._vectorized_num_particles(guide)).get_trace(
            *args, **kwargs
        )
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not site["is_observed"]:
                site["value"] = site["value"].detach()
        model_trace = poutine.trace(
            poutine.replay(self._vectorized_num_particles(model), trace=guide_trace)
        ).get_trace(*args, **kwargs)
        observed = observed_sites(model_trace)
        log_p = sum(masked_log_prob(site) for site in sample_sites(model_trace))
        log_q = sum(masked_log_prob(site) for site in sample_sites(guide_trace))
        shape = (self.num_particles, -1)
        return log_p.reshape(shape), log_q.reshape(shape), model_trace.nodes[observed[0]]["scale"]

    def _losses(self, model, guide, args, kwargs):
        log_p, log_q, scale = self.log_weights(model, guide, *args, **kwargs)
        log_w = log_p - log_q.detach()  # (K, B)
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)  # (B,)
        theta_loss = -(scale * bound).sum()
        phi_loss = 0.0
        if self.insomnia > 0:
            normalized = torch.softmax(log_w.detach(), dim=0)  # over the particles of each image
            phi_loss = -self.insomnia * (scale * (normalized * log_q).sum(0)).sum()
        if self.insomnia < 1:
            phi_loss = phi_loss - (1.0 - self.insomnia) * WakeSleep.sleep_log_q(model, guide, args,
                                                                               kwargs)  # fmt: skip
        return theta_loss, phi_loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            log_p, log_q, scale = self.log_weights(model, guide, *args, **kwargs)
            bound = torch.logsumexp(log_p - log_q, dim=0) - math.log(self.num_particles)
        return -torch_item((scale * bound).sum())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        theta_loss, phi_loss = self._losses(model, guide, args, kwargs)
        surrogate = theta_loss + phi_loss
        if surrogate.requires_grad:
            surrogate.backward()
        return torch_item(theta_loss)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        raise NotImplementedError("reweighted wake-sleep follows two gradients, not one loss's")

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("reweighted wake-sleep draws its own traces (loss_and_grads)")


class MonteCarloEM(infer.ELBO):
    """Monte Carlo EM with Hamiltonian Monte Carlo, the third method of Kingma & Welling's
    (2013) comparison, on Pyro's traces of the model and guide.

    Each call of :meth:`loss_and_grads` leaves on the parameters the gradients of one step:

    - *E-step*: a short HMC chain for each image on the potential ``-log p(x, z)``, started at
      a draw of the guide: ``num_transitions`` transitions of ``num_leapfrog`` leapfrog steps
      (Pyro's ``velocity_verlet``), each image accepted or rejected on its own energy. One
      step size for all images, fixed within the E-step, adapted after it (Robbins-Monro on
      its logarithm) toward ``target_accept`` of the proposals accepted, and jittered by up to
      25% per image and transition.
    - *M-step*: the gradient of ``-log p(x, z)`` at the E-step's samples, for the model's
      parameters (the decoder, a learned prior) only.
    - *the encoder*: fitted alongside, not used by the M-step's gradient: the gradient of minus
      the ELBO (one reparameterized sample) for the guide's parameters only, the decoder held
      fixed. It starts the chains, and it is the encoder with which the ELBO and the
      importance-sampled log-likelihood of an MCEM model are reported.

    The E-step's samples are exact only in the limit. With ``K`` the HMC kernel (which leaves
    ``p(z|x)`` invariant) and ``T`` = ``num_transitions``, they are draws of
    ``q_T = q(z|x) K^T``, so

    .. math::

        \\mathrm{KL}(q_T \\,\\Vert\\, p(z|x)) \\le \\mathrm{KL}(q(z|x) \\,\\Vert\\, p(z|x)),
        \\qquad q_T \\to p(z|x) \\text{ as } T \\to \\infty,

    and exact at every ``T`` where the guide is the posterior. The M-step follows
    ``grad_theta E_{q_T}[log p_theta(x, z)]``, which is EM's gradient only where
    ``q_T = p(z|x)``: each step is a stochastic-gradient step of EM with an approximate
    E-step, as in Hoffman (2017), whose error shrinks as the chain lengthens or as the guide
    improves. On the linear-Gaussian model of ``tests/test_mcem.py``, from a guide
    ``N(0, 1.5^2 I)`` (the posterior's standard deviations are 0.44 and 0.41), the default
    E-step (3 transitions of 10 leapfrog steps of 0.1) leaves the variances at 0.52 and 0.69
    against the exact 0.20 and 0.17 (74 and 135 standard errors off); 30 transitions agree
    within 2 standard errors. A chain continued by another E-step from its last state is the
    same chain as one E-step of twice the transitions (on the same random stream, the step
    size held).

    The adapted step size is state a resumed run needs: it lives in Pyro's param store as
    ``__mcem_log_step_size``, a parameter without a gradient (so no optimizer steps it), and
    is checkpointed with the baselines' averages. The update after each E-step is

    .. math::

        \\log h \\leftarrow \\log h + \\rho\\,(\\bar a - a^*),

    with ``rho`` = ``adaptation_rate``, ``a*`` = ``target_accept`` and ``a-bar`` the E-step's
    mean acceptance probability over images and transitions. It moves ``log h`` by at most
    ``rho (1 - a*)`` up and ``rho a*`` down per E-step: at the defaults 0.005 up (an e-fold
    in at least 200 E-steps; 0.1 to 0.133 in 60 at 0.99 acceptance) and 0.045 down. On the
    model of the tests the step that gives 0.9 acceptance is about 0.4, reached from 0.1 in
    about 600 E-steps (a time constant of about 90 near it). A training run adapts once a
    step, thousands of times (2,500 in the comparison on 1,000 images); a short chain run on
    its own should start near its step (``initial_step_size``) or adapt faster.

    The returned loss is minus the one-sample ELBO at the guide's draw, as for
    :class:`WakeSleep`.

    :param num_leapfrog: leapfrog steps per HMC transition (the paper: 10).
    :param num_transitions: HMC transitions per E-step, the chain's length: longer chains
        from a poor guide come nearer the posterior, each transition costing ``num_leapfrog``
        passes of the decoder.
    :param target_accept: the acceptance rate the step size is tuned toward (the paper: 0.9).
    :param initial_step_size: the leapfrog step size before any adaptation.
    :param adaptation_rate: ``rho``, the gain of the step size's update above.

    References:

    D. P. Kingma, M. Welling (2013), "Auto-Encoding Variational Bayes", arXiv:1312.6114.
    M. D. Hoffman (2017), "Learning Deep Latent Gaussian Models with Markov Chain Monte Carlo",
    ICML. R. M. Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of Markov Chain Monte
    Carlo.
    """

    STEP_SIZE = "__mcem_log_step_size"

    def __init__(
        self, num_leapfrog: int = 10, num_transitions: int = 3, target_accept: float = 0.9,
        initial_step_size: float = 0.1, adaptation_rate: float = 0.05,
    ) -> None:  # fmt: skip
        for name, value in (("num_leapfrog", num_leapfrog), ("num_transitions", num_transitions)):
            if not is_whole(value) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if not (isinstance(target_accept, float) and 0.0 < target_accept < 1.0):
            raise ConfigError(f"target_accept must be in (0, 1), got {target_accept!r}")
        require_positive(initial_step_size, "initial_step_size")
        require_positive(adaptation_rate, "adaptation_rate")
        super().__init__(num_particles=1, max_plate_nesting=1)
        self.num_leapfrog, self.num_transitions = int(num_leapfrog), int(num_transitions)
        self.target_accept, self.adaptation_rate = target_accept, float(adaptation_rate)
        self.initial_step_size = float(initial_step_size)

    def log_joint(self, model, z: dict, *args, **kwargs) -> tuple[torch.Tensor, float]:
        """``(log p(x_b, z_b) for each image b, scale)``: the model run with its latent sites
        set to ``z``; the sum over the sites of each image's log densities."""
        trace = poutine.trace(poutine.condition(model, data=z)).get_trace(*args, **kwargs)
        observed = observed_sites(trace, conditioned=z)
        total = sum(masked_log_prob(site) for site in sample_sites(trace))
        return total, trace.nodes[observed[0]]["scale"]

    def _log_step_size(self) -> torch.Tensor:
        # a param with no gradient, as Pyro keeps its baselines' averages: no optimizer steps it
        return pyro.param(self.STEP_SIZE, lambda: torch.tensor(math.log(self.initial_step_size)))

    def step_size(self) -> float:
        """The current step size of the leapfrog integrator."""
        return math.exp(self._log_step_size().item())

    def e_step(self, model, z: dict, *args, adapt: bool = True, **kwargs) -> tuple[dict, float]:
        """``num_transitions`` HMC transitions for each image from the latents ``z`` (each
        ``(B, Z)``): the new latents and the mean acceptance probability. With ``adapt``, the
        step size moves toward the target acceptance rate afterwards."""
        last = {}

        def potential(values: dict) -> torch.Tensor:
            log_p, _ = self.log_joint(model, values, *args, **kwargs)
            last["per_image"] = -log_p.detach()
            return -log_p.sum()

        z = {name: value.detach() for name, value in z.items()}
        step_size = self.step_size()
        accept = []
        z_grads, _ = potential_grad(potential, z)
        energy = last["per_image"]  # (B,): each image's -log p(x, z)
        for _ in range(self.num_transitions):
            r = {name: torch.randn_like(value) for name, value in z.items()}
            kinetic = 0.5 * sum((v**2).sum(-1) for v in r.values())
            # each image's step jittered by up to 25% (Neal 2011, sec. 5.4.2.2): a fixed
            # trajectory near a multiple of a Gaussian posterior's period barely moves
            some = next(iter(z.values()))
            jitter = 1.0 + 0.5 * (torch.rand(some.shape[:-1] + (1,), dtype=some.dtype,
                                             device=some.device) - 0.5)  # fmt: skip
            z_new, r_new, z_grads_new, _ = velocity_verlet(
                z, r, potential, _kinetic_grad, step_size * jitter, self.num_leapfrog, z_grads
            )
            energy_new = last["per_image"]
            kinetic_new = 0.5 * sum((v**2).sum(-1) for v in r_new.values())
            log_accept = (energy + kinetic) - (energy_new + kinetic_new)
            log_accept = torch.nan_to_num(log_accept, nan=-math.inf).clamp(max=0.0)
            accepted = torch.rand_like(log_accept).log() < log_accept  # (B,)
            z = {name: torch.where(accepted.unsqueeze(-1), z_new[name], z[name]) for name in z}
            z_grads = {name: torch.where(accepted.unsqueeze(-1), z_grads_new[name], z_grads[name])
                       for name in z}  # fmt: skip
            energy = torch.where(accepted, energy_new, energy)
            accept.append(log_accept.exp().mean().item())
        rate = sum(accept) / len(accept)
        if adapt:
            log_step = math.log(step_size) + self.adaptation_rate * (rate - self.target_accept)
            self._log_step_size().unconstrained().data.fill_(log_step)
        return z, rate

    def _latents(self, guide_trace) -> dict:
        return {name: site["value"] for name, site in guide_trace.nodes.items()
                if site["type"] == "sample" and not site["is_observed"]
                and not site_is_subsample(site)}  # fmt: skip

    def _elbo(self, model, guide, args, kwargs):
        """The one-sample ELBO at a (reparameterized) draw of the guide, the guide's trace and
        the draw's latents."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        draw = self._latents(guide_trace)
        log_p, scale = self.log_joint(model, draw, *args, **kwargs)
        log_q = sum(masked_log_prob(site) for site in sample_sites(guide_trace))
        return (scale * (log_p - log_q)).sum(), guide_trace, draw

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            elbo, _, _ = self._elbo(model, guide, args, kwargs)
        return -torch_item(elbo)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        # the encoder: minus the ELBO at a reparameterized draw, for the guide's parameters only
        elbo, guide_trace, draw = self._elbo(model, guide, args, kwargs)
        guide_params = [site["value"].unconstrained() for site in guide_trace.nodes.values()
                        if site["type"] == "param"]  # fmt: skip
        _add_gradients(guide_params, torch.autograd.grad(-elbo, guide_params, allow_unused=True))
        # E-step from the guide's draw, then the M-step at its samples
        z, _ = self.e_step(model, draw, *args, **kwargs)
        log_p, scale = self.log_joint(model, z, *args, **kwargs)
        m_loss = -(scale * log_p).sum()
        if m_loss.requires_grad:
            m_loss.backward()
        return -torch_item(elbo)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        raise NotImplementedError("Monte Carlo EM follows two gradients, not one loss's")

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("Monte Carlo EM draws its own traces (loss_and_grads)")


def _kinetic_grad(r: dict) -> dict:
    return r  # unit mass matrix: d/dr of |r|^2 / 2


def _add_gradients(params: list, grads) -> None:
    for param, grad in zip(params, grads, strict=True):
        if grad is not None:
            param.grad = grad if param.grad is None else param.grad + grad


def check_objective(
    objective: str, estimator: str = "reparam", num_particles: int = 1, jit: bool = False
) -> None:
    """Raise :class:`ConfigError` unless the combination can train."""
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if not is_whole(num_particles):
        raise ConfigError(f"num_particles must be a whole number, got {num_particles!r}")
    if num_particles < 1:
        raise ConfigError(f"the number of particles K must be at least 1, got {num_particles}")
    require_flag(jit, "jit")
    if estimator in DRAWS and objective not in ("wake-sleep", "rws", "mcem"):
        check_discrete_estimator(objective, estimator, num_particles, jit)
        return
    if objective in ("wake-sleep", "rws", "mcem"):
        if estimator != "reparam":
            raise ConfigError(
                f"objective {objective!r} takes no estimator (leave the default 'reparam'): its "
                f"gradients are its wake and sleep phases', not a gradient of the ELBO that "
                f"{estimator!r} would estimate"
            )
        if objective in ("wake-sleep", "mcem") and int(num_particles) != 1:
            raise ConfigError(f"objective {objective!r} draws one sample a step (K = 1)")
        if objective == "rws" and int(num_particles) < 2:
            raise ConfigError(
                "objective 'rws' needs K >= 2 particles (-K): with one, the normalized weight "
                "is 1 and the guide learns nothing"
            )
        if jit:
            raise ConfigError(f"Pyro has no JIT-compiled {objective}; drop --jit")
        return
    if estimator != "reparam" and objective != "elbo":
        why = (
            "its density must not be replaced by the closed-form KL or the IWAE weights"
            if is_reparameterized(estimator)
            else "Pyro's TraceMeanField_ELBO and RenyiELBO assume a reparameterized guide"
        )
        raise ConfigError(f"estimator {estimator!r} needs objective 'elbo' ({why})")
    if uses_baseline(estimator) and int(num_particles) != 1:
        raise ConfigError(f"estimator {estimator!r} takes one particle (K = 1)")
    if jit and uses_baseline(estimator):
        raise ConfigError(
            f"Pyro's JitTraceGraph_ELBO cannot trace the running-average baseline of estimator "
            f"{estimator!r}; drop --jit"
        )
    if jit and objective == "iwae":
        raise ConfigError("Pyro has no JIT-compiled RenyiELBO; drop --jit for objective 'iwae'")


def check_kl_weight(
    kl_weight: float, kl_warmup: int = 0, objective: str = "elbo-analytic-kl",
    estimator: str = "reparam",
) -> None:  # fmt: skip
    """Raise :class:`ConfigError` unless the KL weight (beta) and its warm-up can train.

    A weight other than 1 (a beta-VAE, or a warm-up's ramp) scales the latent site in the model
    and the guide (``poutine.scale``). The objective is then exactly
    ``E_q[log p(x|z)] - beta KL(q(z|x) || p(z))`` for ``elbo-analytic-kl`` (Pyro scales the
    closed-form KL by the guide site's scale) and for ``elbo`` with ``reparam`` or ``stl`` (both
    log densities are scaled). Refused: ``iwae``, whose log weights would become
    ``log p(x|z) + beta log p(z)/q(z|x)`` inside the log-mean-exp, a different bound rather
    than a weighted KL; and the score-function estimators, whose Pyro surrogate scales the
    score term ``log q(z|x)`` by beta as well, so the reconstruction's learning signal would be
    scaled by beta too.
    """
    require_positive(kl_weight, "kl_weight")
    if not is_whole(kl_warmup) or kl_warmup < 0:
        raise ConfigError(f"kl_warmup must be a whole number of epochs >= 0, got {kl_warmup!r}")
    if kl_weight == 1.0 and kl_warmup == 0:
        return
    what = "--kl-weight other than 1" if kl_warmup == 0 else "--kl-warmup"
    if objective in ("wake-sleep", "rws", "mcem"):
        raise ConfigError(f"{what} does not apply to {objective}, which has no KL term to weight")
    if objective == "iwae":
        raise ConfigError(
            f"{what} needs objective 'elbo-analytic-kl' or 'elbo': the importance-weighted "
            "bound has no KL term to weight"
        )
    if not is_reparameterized(estimator) and estimator not in RELAXED:
        raise ConfigError(
            f"{what} needs estimator 'reparam', 'stl', 'gumbel' or 'straight-through': the "
            f"score-function surrogate would scale the whole learning signal of estimator "
            f"{estimator!r} by the weight"
        )


def kl_weight_at(kl_weight: float, warmup_steps: int, step: int) -> float:
    """The KL weight of training step ``step`` (from 1): ``kl_weight`` after a linear ramp
    over the first ``warmup_steps`` steps (Bowman et al. 2016; Sonderby et al. 2016), from
    ``kl_weight / warmup_steps`` at step 1 (Pyro's ``poutine.scale`` wants a positive scale)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(kl_weight)
    return float(kl_weight) * step / warmup_steps


def make_elbo(
    objective: str = "elbo-analytic-kl",
    estimator: str = "reparam",
    num_particles: int = 1,
    jit: bool = False,
    mcem_transitions: int = 3,
    checked: bool = False,
    temperature: float = 1.0,
) -> infer.ELBO:
    """The Pyro ELBO object for an objective.

    :param objective: one of :data:`OBJECTIVES`.
    :param estimator: the guide's estimator, checked for compatibility.
    :param num_particles: ``K``, samples per image (vectorized).
    :param jit: use Pyro's JIT-compiled variant (``JitTrace_ELBO``, ``JitTraceMeanField_ELBO``).
    :param mcem_transitions: for ``mcem``, HMC transitions an E-step (:class:`MonteCarloEM`).
    :param checked: the settings were checked already (:meth:`pyro_vae.TrainConfig.validate`).
    :param temperature: of the ``gumbel`` and ``straight-through`` relaxations.
    """
    if not checked:
        check_objective(objective, estimator, num_particles, jit)
    if objective == "wake-sleep":
        return WakeSleep()
    if objective == "rws":
        return ReweightedWakeSleep(num_particles)
    if objective == "mcem":
        return MonteCarloEM(num_transitions=mcem_transitions)
    if estimator in DRAWS:
        return discrete_elbo(estimator, num_particles, temperature)
    # One particle needs no particle plate: without it every site skips a broadcast.
    vectorize = int(num_particles) > 1
    kwargs = dict(
        num_particles=int(num_particles), vectorize_particles=vectorize, max_plate_nesting=1
    )
    if objective == "iwae":
        return infer.RenyiELBO(alpha=0.0, **kwargs)
    if uses_baseline(estimator):
        return infer.TraceGraph_ELBO(**kwargs)
    if jit:
        kwargs["ignore_jit_warnings"] = True
        cls = infer.JitTrace_ELBO if objective == "elbo" else infer.JitTraceMeanField_ELBO
    else:
        cls = infer.Trace_ELBO if objective == "elbo" else MeanFieldELBO
    return cls(**kwargs)

"""Pictures of a trained VAE. Each function returns a matplotlib Figure; the caller saves it.

Figures are built with :class:`matplotlib.figure.Figure` directly, not ``pyplot``, so they work
without a display and leave no global figure state behind.
"""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure

from pyro_vae.errors import ConfigError
from pyro_vae.model import VAE
from pyro_vae.runfolder import held_out_elbo

__all__ = [
    "gradient_variance_figure",
    "image_grid",
    "interpolation_figure",
    "codes_figure",
    "completions_figure",
    "latent_scatter_figure",
    "manifold_figure",
    "metrics_figure",
    "reconstructions_figure",
    "samples_figure",
    "training_curves_figure",
]


def _chw(image_shape) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    return (1, *shape) if len(shape) == 2 else shape


def _filled(images: torch.Tensor, ncols: int, value: float) -> torch.Tensor:
    """``images`` and blank ones up to a first row of ``ncols`` (``make_grid`` would make the
    grid only as wide as the images are many)."""
    if len(images) >= ncols:
        return images
    blank = images.new_full((ncols - len(images), *images.shape[1:]), value)
    return torch.cat([images, blank])


def _tile(images: torch.Tensor, image_shape, ncols: int, pad: int = 1) -> torch.Tensor:
    """``(N, ...)`` images of ``(H, W)`` or ``(C, H, W)`` -> one ``(C, H', W')`` mosaic,
    ``ncols`` a row, ``pad`` pixels of 0.15 between them (thin light-grey lines when drawn
    inverted, ink on paper; dark-grey ones otherwise): torchvision's ``make_grid`` without its
    outer border."""
    from torchvision.utils import make_grid  # torchvision takes a second to import

    c, h, w = _chw(image_shape)
    images = _filled(images.detach().float().cpu().reshape(-1, c, h, w), ncols, 0.15)
    if len(images) == 1:  # make_grid returns one image as it is, without padding
        return images[0]
    grid = make_grid(images, nrow=ncols, padding=pad, pad_value=0.15)[:c]  # grey comes as RGB
    return grid[:, pad : grid.shape[1] - pad, pad : grid.shape[2] - pad]


def image_grid(
    images: torch.Tensor,
    image_shape: tuple[int, ...],
    ncols: int | None = None,
    title: str | None = None,
    invert: bool | None = None,
) -> Figure:
    """A grid of images in ``[0, 1]``, ``(N, ...)`` of ``image_shape`` pixels each: ``(H, W)``
    grey or ``(C, H, W)`` with one (grey) or three (RGB) channels.

    ``invert`` draws grey value 1 as black (ink on paper, for digits); by default it is chosen
    from the images: inverted when they are mostly dark (MNIST), as they are (faces) otherwise.
    Colour images are drawn as they are.
    """
    n = images.shape[0]
    ncols = ncols or math.ceil(math.sqrt(n))
    canvas = _tile(images.clamp(0, 1), image_shape, ncols)  # (C, H', W')
    scale = 6.0 / max(canvas.shape[1:])
    fig = Figure(figsize=(canvas.shape[2] * scale + 0.2, canvas.shape[1] * scale + 0.6))
    ax = fig.add_subplot()
    if canvas.shape[0] == 1:
        if invert is None:
            invert = images.float().mean().item() < 0.5
        shown = 1 - canvas[0].numpy() if invert else canvas[0].numpy()
        ax.imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")  # (H', W', 3)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _generator(vae: VAE, seed: int) -> torch.Generator:
    return torch.Generator(device=next(vae.parameters()).device).manual_seed(seed)


def samples_figure(
    vae: VAE, image_shape: tuple[int, ...], num_samples: int = 64, seed: int = 0, label=None
) -> Figure:
    """Mean images ``E[x|z]`` for ``z ~ p(z)``; for a model of classes (M2, a CVAE on the
    label), of class ``label``, or (a CVAE) a column a class."""
    generator = _generator(vae, seed)
    if label is not None:
        y = torch.full((num_samples,), int(label), device=generator.device)
        images = vae.sample(num_samples, generator, y)
        return image_grid(images, image_shape, title=f"{num_samples} samples of class {label}")
    images = vae.sample(num_samples, generator=generator)
    if getattr(vae, "needs_labels", False):  # a CVAE's draws take the classes in turn
        return image_grid(images, image_shape, vae.classes,
                          title=f"{num_samples} samples of p(x|c), a column a class c")  # fmt: skip
    return image_grid(images, image_shape, title=f"{num_samples} samples from the prior (means)")


def completions_figure(
    vae, images: torch.Tensor, image_shape: tuple[int, ...], num_samples: int = 5, seed: int = 0
) -> Figure:
    """A quadrant-completion CVAE's draws, as Pyro's CVAE tutorial shows them: a column an
    image; rows the input (its hidden part grey), the truth, the baseline network's guess and
    ``num_samples`` completions, the hidden part drawn from ``z ~ p(z|c)``."""
    x = images.to(next(vae.parameters()).device)
    completed = vae.complete(x, num_samples, _generator(vae, seed))
    rows = [vae.with_hidden(x, 0.5), x, vae.baseline_completion(x), *completed]
    title = f"input, truth, baseline NN, {num_samples} CVAE completions"
    return image_grid(torch.cat(rows), image_shape, len(x), title=title)


def class_by_style_figure(
    vae, images: torch.Tensor, image_shape: tuple[int, ...], rows: int = 8
) -> Figure:
    """An M2 model's styles drawn as every class (Kingma et al. 2014, Figure 1 and 5): each
    row one test image (left) and ``E[x|y, z]`` for ``y = 0, 1, ...`` at its style ``z``, the
    mean of ``q(z|x, y)`` at the classifier's class."""
    x = images[:rows]
    grid = vae.class_by_style(vae.encode(x)[0])  # (C, S, D)
    cells = torch.cat([x[None].to(grid), grid]).transpose(0, 1).reshape(-1, *grid.shape[2:])
    return image_grid(cells, image_shape, vae.classes + 1,
                      title="a test image's style z (left) drawn as each class y")  # fmt: skip


def reconstructions_figure(
    originals: torch.Tensor, reconstructions: torch.Tensor, image_shape: tuple[int, ...]
) -> Figure:
    """Originals (top row of each pair) over their reconstructions ``E[x | z = mu(x)]``."""
    n = originals.shape[0]
    ncols = min(n, 16)
    rows = []
    for start in range(0, n, ncols):
        for images in (originals, reconstructions):
            row = images[start : start + ncols].detach().cpu()
            blank = row.new_zeros(ncols - row.shape[0], *row.shape[1:])  # pad a short last row
            rows.append(torch.cat([row, blank]))
    return image_grid(
        torch.cat(rows), image_shape, ncols, title="originals (above) and reconstructions (below)"
    )


def manifold_figure(vae: VAE, image_shape: tuple[int, ...], num_per_axis: int = 20) -> Figure:
    """The learned 2-D manifold: decoded means over a grid of ``z`` (Kingma & Welling, Fig. 4).

    Grid points are evenly spaced on the unit square and mapped through the inverse Gaussian
    CDF, so they cover the prior's mass evenly: ``z = (Phi^-1(u_1), Phi^-1(u_2))``. For a
    hyperspherical latent the manifold is the circle: ``3 * num_per_axis`` evenly spaced
    angles, row by row.
    """
    if vae.latent_dim != 2:
        raise ConfigError(f"the manifold plot needs a 2-D latent space, not {vae.latent_dim}-D")
    manifold = vae.latent.manifold(num_per_axis)
    if manifold is None:
        raise ConfigError(f"a {vae.latent.name} latent takes finitely many values: no manifold")
    device = next(vae.parameters()).device
    z, columns, title = manifold
    return image_grid(vae.decode(z.to(device)), image_shape, columns, title=title)


def latent_scatter_figure(
    vae: VAE,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    class_names: tuple[str, ...] | None = None,
) -> Figure:
    """Guide means ``E_q[z|x]`` of test images, coloured by class (named by ``class_names``,
    where the data set has them, e.g. Fashion-MNIST's "Trouser", else by label).

    A 2-D latent space is drawn as it is; a larger one through its first two principal
    components, as the axis labels and title say. On the sphere, the mean direction's angle
    (for ``Z = 2``) against the guide's concentration, or its longitude and latitude (for
    ``Z = 3``).
    """
    pairs = [vae.encode(x) for x in images.split(1000)]
    loc = torch.cat([p[0] for p in pairs]).cpu()  # (N, Z)
    second = None if pairs[0][1] is None else torch.cat([p[1] for p in pairs]).cpu()
    own = vae.latent.scatter(loc, second)
    loc = vae.latent.point(loc)  # a discrete latent's probabilities
    dim = loc.shape[-1]
    if own is not None:  # the latent space's own coordinates (angles on the sphere)
        points, xlabel, ylabel, title = own.points, own.xlabel, own.ylabel, own.title
    elif dim == 2:
        points, xlabel, ylabel, title = loc, "z1", "z2", "guide means, 2-D latent space"
    elif dim == 1:  # a strip a class (or one strip), spread a little to be seen
        row = labels.cpu().double() if labels is not None else torch.zeros(len(loc))
        spread = torch.rand(len(loc), generator=torch.Generator().manual_seed(0)) - 0.5
        points = torch.stack([loc[:, 0].double(), row + 0.6 * spread], dim=-1)
        xlabel = "z"
        ylabel = "class (spread within its row)" if labels is not None else "(spread)"
        title = "guide means, 1-D latent space"
    else:
        centred = loc - loc.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        points = centred @ v[:2].T
        xlabel, ylabel = "principal component 1", "principal component 2"
        title = f"guide means, PCA of the {dim}-D latent space"
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    else:
        labels = labels.cpu()
        for c in labels.unique().tolist():
            keep = labels == c
            name = class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
            ax.scatter(points[keep, 0], points[keep, 1], s=4, alpha=0.6, label=name)
        ax.legend(title="class", markerscale=3, loc="best", fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def codes_figure(
    vae: VAE,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    class_names: tuple[str, ...] | None = None,
    per_class: int = 10,
) -> Figure:
    """The codes of test images, for a discrete latent: one row an image, one column a unit (or
    a class of a group), the guide's probability ``q(z_u = 1 | x)`` as a grey level, the rows
    grouped by class (``per_class`` images of each, the first of each class in ``images``).

    A unit that is the same in every row carries nothing about the image; columns that differ
    between the blocks of rows are what the code says about the class."""
    if labels is None:
        chosen, blocks = torch.arange(min(len(images), 10 * per_class)), []
    else:
        chosen, blocks = [], []
        for c in labels.unique().tolist():
            rows = (labels == c).nonzero().flatten()[:per_class]
            blocks.append((len(chosen), c))
            chosen += rows.tolist()
        chosen = torch.tensor(chosen)
    probs = vae.latent.point(vae.encode(images[chosen])[0]).cpu().numpy()  # (N, code)
    fig = Figure(figsize=(min(14, 3 + probs.shape[1] / 20), 1.5 + len(chosen) / 16))
    ax = fig.add_subplot()
    shown = ax.imshow(probs, cmap="gray_r", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for start, c in blocks:
        if start:
            ax.axhline(start - 0.5, color="tab:red", linewidth=0.8)
        name = class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
        ax.text(-0.01, start + 0.5, name, transform=ax.get_yaxis_transform(), ha="right",
                va="top", fontsize="small")  # fmt: skip
    ax.set_yticks([])
    groups = f"group x class ({vae.latent_dim} groups of {vae.latent.categories})"
    ax.set_xlabel("latent unit" if vae.latent.categories is None else groups)
    ax.set_title(f"codes of test images by class: q(z = 1 | x), {vae.latent.name} latent")
    fig.colorbar(shown, ax=ax, fraction=0.03, pad=0.01)
    fig.tight_layout()
    return fig


def interpolation_figure(
    vae: VAE, pairs: torch.Tensor, image_shape: tuple[int, ...], steps: int = 10
) -> Figure:
    """Decoded means along straight lines between the guide means of pairs of test images
    (along great circles, for a hyperspherical latent; for a discrete one, between the guide's
    probabilities, points inside the cube of codes rather than codes).

    ``pairs`` is ``(P, 2, *vae.event_shape)``; each row of the figure goes from the first image
    of a pair (left, original) to the second (right, original) through ``steps`` latent points.
    """
    rows = []
    for a, b in pairs:
        loc = vae.latent.point(vae.encode(torch.stack([a, b]))[0])  # (2, Z): the guide's means
        t = torch.linspace(0, 1, steps, device=loc.device).unsqueeze(1)
        z = vae.latent.interpolate((1 - t) * loc[0] + t * loc[1])  # great circles on a sphere
        decoded = vae.decode(z)  # (steps, D)
        rows.append(torch.cat([a[None], decoded, b[None]]).cpu())
    path = "between the guide's probabilities" if vae.latent.discrete else "in latent space"
    return image_grid(
        torch.cat(rows), image_shape, steps + 2,
        title=f"interpolation {path} (originals at both ends)",
    )  # fmt: skip


def metrics_figure(history: list[dict]) -> Figure:
    """Train and validation ELBO per epoch of a run (``metrics.jsonl``; the test ELBO for a run
    without a validation split)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    epochs = [row["epoch"] for row in history]
    ax.plot(
        epochs,
        [row["train_elbo"] for row in history],
        marker="o",
        label="train ELBO (mean over the epoch's steps)",
    )
    label = held_out_elbo(history[0])[0] if history else "validation"
    scores = [held_out_elbo(row)[1] for row in history]
    ax.plot(epochs, scores, marker="o", label=f"{label} ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.grid(alpha=0.3)
    ax.legend()
    accuracy = [key for key in ("valid_accuracy", "test_accuracy") if history and key in history[0]]
    if accuracy:  # an M2 run's classifier, on a second axis
        right = ax.twinx()
        right.plot(epochs, [row[accuracy[0]] for row in history], marker="s", color="C2",
                   label=accuracy[0].replace("_", " "))  # fmt: skip
        right.set_ylabel("accuracy")
        right.set_ylim(0, 1)
        right.legend(loc="center right")
    fig.tight_layout()
    return fig


def gradient_variance_figure(rows: list[dict]) -> Figure:
    """Total gradient variance per estimator (log scale), encoder and decoder side by side.

    ``rows`` are :func:`pyro_vae.compare.compare_estimators`'s gradient rows: one per
    ``stage`` (``init``, ``epoch N``), ``estimator`` and ``network``.
    """
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    fig = Figure(figsize=(11, 4))
    width = 0.8 / len(stages)
    for i, network in enumerate(("encoder", "decoder")):
        ax = fig.add_subplot(1, 2, i + 1)
        plotted: list[float] = []
        for j, stage in enumerate(stages):
            values = {
                r["estimator"]: r["total_variance"]
                for r in rows
                if r["stage"] == stage and r["network"] == network
            }
            xs = [k + (j - (len(stages) - 1) / 2) * width for k in range(len(estimators))]
            ax.bar(xs, [values.get(e, float("nan")) for e in estimators], width, label=stage)
            plotted += values.values()
        if max(plotted) > 10 * min(plotted):  # a log scale only where the spread needs one
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.4 * max(plotted))  # room for the legend
        ax.set_xticks(range(len(estimators)), estimators, rotation=20, ha="right")
        ax.set_ylabel("total variance (sum over parameters)")
        ax.set_title(f"{network} gradient, one minibatch")
        ax.legend(title="parameters at", loc="best", framealpha=0.9)
    fig.tight_layout()
    return fig


def training_curves_figure(histories: dict[str, list[dict]]) -> Figure:
    """Held-out ELBO against optimizer steps and against training seconds, one line a run.

    ``histories`` maps a label to a run's metrics (``step``, ``seconds``, and ``valid_elbo``
    or ``test_elbo``).
    """
    fig = Figure(figsize=(11, 4))
    # A diverging run would flatten every other curve: the y range follows the first epoch's
    # worst value, and a run that leaves it says so in the legend.
    firsts = [held_out_elbo(h[0])[1] for h in histories.values() if h]
    best = max(held_out_elbo(row)[1] for h in histories.values() for row in h)
    low = min(firsts) - 0.1 * (best - min(firsts)) - 1
    which = next((held_out_elbo(h[0])[0] for h in histories.values() if h), "validation")
    axes = (("step", "optimizer steps"), ("seconds", "training seconds"))
    for i, (key, label) in enumerate(axes):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, history in histories.items():
            ys = [held_out_elbo(row)[1] for row in history]
            note = f" (leaves the chart: down to {min(ys):.0f})" if min(ys) < low else ""
            ax.plot([row[key] for row in history], ys, marker="o", label=name + note)
        ax.set_ylim(low, best + 0.05 * (best - low))
        ax.set_xlabel(label)
        ax.set_ylabel(f"{which} ELBO (nats per image)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig

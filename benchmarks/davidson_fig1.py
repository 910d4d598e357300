"""Figure 1 of Davidson et al. (2018), Hyperspherical variational auto-encoders: latent circles.

Data on a circle, seen through a noisy non-linear map into 100 dimensions, and the 2-D latent
spaces five ways, in one row of panels coloured by mixture component:

- (a) Original: the points on the circle S^1, three von Mises-Fisher components with equal
  weights, mean angles 0, 2 pi/3 and 4 pi/3 and concentration ``--concentration`` (on S^1 the
  vMF is the von Mises distribution);
- (b) Autoencoder: a plain, deterministic autoencoder with a 2-D code, written below in plain
  PyTorch with the VAEs' layer sizes and trained on the squared error;
- (c) N-VAE: ``pyro_vae.fit`` with the N(0, I) prior on R^2, Gaussian guide; its guide means;
- (d) N-VAE, beta = 0.1: the same with the KL weighted by 0.1 in training;
- (e) S-VAE: ``prior="hyperspherical"``, uniform prior on the circle, Power Spherical guide
  (De Cao & Aziz 2020; the paper used a von Mises-Fisher guide); its mean directions.

The map into R^100 is fixed by the seed: ``x = sigmoid(B tanh(A u + a) + b + noise * e)`` for
the point ``u = (cos t, sin t)``, with ``A`` (100 x 2) of standard deviation 2 (so that the tanh
bends), ``a`` of 1, ``B`` (100 x 100) of 0.2, ``b`` of 0.5, all normal, and fresh standard
normal ``e`` for each point (``--noise`` 0.3), so every value lies in (0, 1), where the VAEs'
Gaussian likelihood (a sigmoid mean and a learned scale per dimension) puts its mean. The
points are saved as ``(N, 10, 10)`` float32 "images" in a temporary ``.npy`` file (pyro_vae
reads an array as ``(N, H, W)`` images, not ``(N, 100)``), which ``TrainConfig(dataset=...)``
reads; ``pyro_vae`` holds out a fixed random 10% as the test set, and every model, the
autoencoder included, trains on the rest with the same networks (100-128-64-2 and back, ReLU),
Adam at 1e-3, batch 64, 200 epochs.

Each panel gets two cluster-separation figures over all N points, from the codes and the true
components: the silhouette score (Euclidean distances; 1 is tight, separated clusters, near 0
or below is mixed) and the accuracy of the nearest-centroid rule (each code to the nearest
mean code of a component; 1/3 is chance). Each VAE gets its test ELBO and importance-sampled
log p(x), nats per point (Gaussian densities, so they can be positive), with K samples; the
beta = 0.1 model is scored on the true ELBO, beta = 1. The autoencoder gets its test squared
error per point::

    python benchmarks/davidson_fig1.py --out /tmp/fig1

writes ``davidson_fig1.png`` and ``davidson_fig1.json`` there in about 70 s on two CPU cores
(measured: 9 s for the autoencoder, 17 s for each N-VAE, 22 s for the S-VAE, the rest scoring),
and prints the table of docs/priors.md. The JSON holds the settings, the machine, every panel's
figures and its codes (float16, enough to redraw the figure), so ::

    python benchmarks/davidson_fig1.py --from-json benchmarks/results/davidson_fig1.json \
        --out docs/images

redraws the figure and prints the table from the run in ``benchmarks/results/`` without
training. ``--quick`` (300 points, 15 epochs, one hidden layer of 32) takes a few seconds, for
the test suite.

What it showed (seed 0, default settings; seeds 1 and 2 alike): every model separates the
three components (nearest-centroid accuracy 0.99-1.00 in every panel), and every one keeps
the loop: the autoencoder and both N-VAEs draw a closed curve around the origin, the N-VAE's
a triangle of three straight arms. The silhouettes, truth 0.76, autoencoder 0.72, N-VAE 0.60,
N-VAE beta = 0.1 0.71, S-VAE 0.67, put the N-VAE last but do not show the collapse toward the
origin the paper describes. The S-VAE's circle spreads the components over arcs of unequal
length (its prior is uniform on the circle), in the right cyclic order. With
``--concentration 4 --noise 1`` the components overlap and the N-VAE's codes fill in toward
the centre (silhouette 0.43, against 0.51 for the autoencoder and 0.53 for the S-VAE).

Reference: Davidson, Falorsi, De Cao, Kipf & Tomczak (2018), Hyperspherical variational
auto-encoders, UAI, Figure 1. The paper does not give its concentrations, map or network sizes;
those here are this script's choices.
"""

import argparse
import base64
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.figure import Figure
from measure import machine
from torch import nn

from pyro_vae import PyroVAEError, TrainConfig, evaluate, fit, run_images
from pyro_vae.networks import mlp

COMPONENT_ANGLES = (0.0, 2 * math.pi / 3, 4 * math.pi / 3)  # the vMF mean directions, radians
DATA_DIM = 100
IMAGE_SHAPE = (10, 10)  # how the points are stored: pyro_vae reads arrays as (N, H, W) images
PANELS = {
    "a": "(a) Original",
    "b": "(b) Autoencoder",
    "c": "(c) N-VAE",
    "d": "(d) N-VAE, β = 0.1",
    "e": "(e) S-VAE",
}
COLOURS = ("tab:red", "tab:green", "tab:blue")
# (a) and (e): points of component k are drawn at radius 1 + k * RADIAL_STEP, so that where
# components overlap on the circle each one stays visible.
RADIAL_STEP = 0.06
# The table's row names, as docs/priors.md prints them
TABLE_ROWS = {
    "a": "(a) original points",
    "b": "(b) autoencoder",
    "c": "(c) N-VAE",
    "d": "(d) N-VAE, beta = 0.1",
    "e": "(e) S-VAE",
}
# Settings that --quick changes; a flag given on the command line wins over either.
FULL = {"points": 3000, "epochs": 200, "hidden_sizes": [128, 64], "num_particles": 500}
QUICK = {"points": 300, "epochs": 15, "hidden_sizes": [32], "num_particles": 10}


class Data(NamedTuple):
    """The synthetic data set: true angles ``(N,)``, components ``(N,)``, points ``(N, 100)``."""

    angles: torch.Tensor
    labels: torch.Tensor
    points: torch.Tensor


class Result(NamedTuple):
    """What :func:`main` made: the JSON report, each panel's codes ``(N, 2)`` and the data."""

    report: dict
    codes: dict[str, torch.Tensor]
    data: Data


def make_data(points: int, concentration: float, noise: float, seed: int) -> Data:
    """``points`` draws from the equal mixture of von Mises distributions at
    :data:`COMPONENT_ANGLES`, mapped into ``(0, 1)^100`` by the fixed noisy map of the module
    docstring. Everything is drawn from ``seed``; the global RNG is left as it was."""
    g = torch.Generator().manual_seed(seed)
    inner = torch.randn(2, DATA_DIM, generator=g) * 2  # (2, 100): A, scaled so tanh bends
    inner_bias = torch.randn(DATA_DIM, generator=g)
    outer = torch.randn(DATA_DIM, DATA_DIM, generator=g) / math.sqrt(DATA_DIM) * 2  # B
    outer_bias = torch.randn(DATA_DIM, generator=g) * 0.5
    labels = torch.randint(len(COMPONENT_ANGLES), (points,), generator=g)
    means = torch.tensor(COMPONENT_ANGLES)[labels]
    # VonMises draws by rejection from the global RNG, which takes no generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        angles = torch.distributions.VonMises(means, torch.tensor(concentration)).sample()
    angles = torch.remainder(angles, 2 * math.pi)  # (N,) in [0, 2 pi)
    u = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (N, 2)
    hidden = torch.tanh(u @ inner + inner_bias)  # (N, 100)
    pre = hidden @ outer + outer_bias + noise * torch.randn(points, DATA_DIM, generator=g)
    return Data(angles, labels, torch.sigmoid(pre))


def circular_means(angles: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """The mean direction of each component's angles, radians in ``[0, 2 pi)``."""
    means = []
    for k in range(len(COMPONENT_ANGLES)):
        a = angles[labels == k]
        means.append(math.atan2(a.sin().mean().item(), a.cos().mean().item()) % (2 * math.pi))
    return means


# ---------------------------------------------------------------------------------------------
# (b): the plain autoencoder, not a pyro_vae model


class Autoencoder(nn.Module):
    """A deterministic autoencoder with the VAEs' layer sizes: ``100 -> hidden -> 2`` and
    ``2 -> reversed(hidden) -> 100``, the output squashed into (0, 1) by a sigmoid like the
    Gaussian decoder's mean. No prior, no noise: the code is ``encoder(x)``."""

    def __init__(self, hidden_sizes, activation: str) -> None:
        super().__init__()
        hidden = list(hidden_sizes)
        self.encoder = nn.Sequential(mlp([DATA_DIM, *hidden], activation), nn.Linear(hidden[-1], 2))
        self.decoder = nn.Sequential(
            mlp([2, *reversed(hidden)], activation), nn.Linear(hidden[0], DATA_DIM), nn.Sigmoid()
        )

    def squared_error(self, x: torch.Tensor) -> torch.Tensor:
        """``|x - decoder(encoder(x))|^2`` per point, ``(B,)``."""
        return (x - self.decoder(self.encoder(x))).pow(2).sum(-1)


def train_autoencoder(config: TrainConfig, train: torch.Tensor) -> tuple[Autoencoder, float]:
    """Adam on the mean squared error per point, with the config's networks, learning rate,
    batch size, epochs and seed; the trained autoencoder and its training seconds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Autoencoder(config.hidden_sizes, config.activation)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    g = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    for _ in range(config.epochs):
        for batch in torch.randperm(train.shape[0], generator=g).split(config.batch_size):
            loss = model.squared_error(train[batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Cluster separation of a panel's codes


def silhouette(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette ``(b - a) / max(a, b)`` (Rousseeuw 1987): ``a`` the mean distance of a
    point to the others of its component, ``b`` the least mean distance to another one's."""
    codes = codes.double()
    onehot = nn.functional.one_hot(labels, len(COMPONENT_ANGLES)).double()  # (N, K)
    # (N, K): each point's summed distances to each component, 2000 rows of distances at a time
    sums = torch.cat([torch.cdist(rows, codes) @ onehot for rows in codes.split(2000)])
    counts = onehot.sum(0)  # (K,)
    own = onehot.bool()
    a = sums[own] / (counts[labels] - 1).clamp(min=1)  # excluding the point itself
    other = (sums / counts).masked_fill(own, math.inf).min(-1).values
    s = (other - a) / torch.maximum(a, other).clamp(min=1e-12)
    s[counts[labels] == 1] = 0.0  # Rousseeuw's convention for a component of one point
    return s.mean().item()


def nearest_centroid_accuracy(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of codes nearer to their own component's mean code than to any other."""
    centroids = torch.stack([codes[labels == k].mean(0) for k in range(len(COMPONENT_ANGLES))])
    guess = torch.cdist(codes, centroids).argmin(-1)
    return (guess == labels).double().mean().item()


def separation(codes: torch.Tensor, labels: torch.Tensor) -> dict:
    return {
        "silhouette": silhouette(codes, labels),
        "nearest_centroid_accuracy": nearest_centroid_accuracy(codes, labels),
    }


# ---------------------------------------------------------------------------------------------
# The figure


def figure(codes: dict[str, torch.Tensor], labels: torch.Tensor) -> Figure:
    """One row of five panels, equal aspect, points coloured by component."""
    fig = Figure(figsize=(20, 4.6))
    axes = fig.subplots(1, len(PANELS))
    circle = torch.linspace(0, 2 * math.pi, 200)
    for ax, (key, title) in zip(axes, PANELS.items(), strict=True):
        points = codes[key]
        on_circle = key in ("a", "e")
        if on_circle:
            ax.plot(circle.cos(), circle.sin(), color="0.6", lw=0.8, zorder=0)
        for k, colour in enumerate(COLOURS):
            mine = points[labels == k]
            if on_circle:
                mine = mine * (1 + k * RADIAL_STEP)
            ax.scatter(
                mine[:, 0], mine[:, 1], s=4, alpha=0.5, color=colour, label=f"component {k + 1}"
            )
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(title)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, names, loc="lower left", ncols=3, markerscale=3, fontsize="small", frameon=False
    )
    fig.text(
        0.99,
        0.015,
        "(a), (e): points on the unit circle (grey) drawn at radius 1, "
        f"{1 + RADIAL_STEP:g}, {1 + 2 * RADIAL_STEP:g} by component, so that overlaps stay "
        "visible. (b): 2-D codes; (c), (d): guide means in R²; (e): guide mean directions.",
        ha="right",
        fontsize="small",
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def table(report: dict) -> str:
    """The markdown table of docs/priors.md: each panel's separation scores and, for the VAEs,
    the test log p(x) with its standard error over test points."""
    k = report["settings"]["num_particles"]
    lines = [
        f"| panel | silhouette | nearest-centroid accuracy | test log p(x) (K = {k}) |",
        "|---|---|---|---|",
    ]
    for key, name in TABLE_ROWS.items():
        panel = report["panels"][key]
        log_px = ""
        if "test_log_likelihood" in panel:
            log_px = (
                f"{panel['test_log_likelihood']:.2f} ± {panel['test_log_likelihood_stderr']:.2f}"
            )
        lines.append(
            f"| {name} | {panel['silhouette']:.3f} | {panel['nearest_centroid_accuracy']:.3f} "
            f"|{' ' + log_px if log_px else ''} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The codes in the JSON: float16 is ample for a scatter plot, and keeps the file small


def pack_codes(codes: dict[str, torch.Tensor], labels: torch.Tensor) -> dict:
    """Every panel's codes ``(N, 2)`` as base64 of little-endian float16, row after row, and
    the components as a string of digits."""
    packed = {
        "encoding": "base64 of little-endian float16, (N, 2) row-major",
        "labels": "".join(str(k) for k in labels.tolist()),
    }
    for key, points in codes.items():
        raw = points.detach().cpu().numpy().astype("<f2").tobytes()
        packed[key] = base64.b64encode(raw).decode("ascii")
    return packed


def unpack_codes(packed: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The inverse of :func:`pack_codes`: each panel's codes ``(N, 2)`` float32, and labels."""
    labels = torch.tensor([int(k) for k in packed["labels"]])
    codes = {}
    for key in PANELS:
        raw = np.frombuffer(base64.b64decode(packed[key]), dtype="<f2")
        codes[key] = torch.from_numpy(raw.astype(np.float32)).reshape(-1, 2)
        if codes[key].shape[0] != labels.shape[0]:
            raise ValueError(
                f"panel {key} has {codes[key].shape[0]} codes for {len(labels)} points"
            )
    return codes, labels


def redraw(path: Path, out: Path) -> dict:
    """Draw the figure of a run's JSON into ``out`` and print its table; train nothing."""
    try:
        report = json.loads(path.read_text())
        codes, labels = unpack_codes(report["codes"])
        folder = _output_folder(str(out))
        png = folder / "davidson_fig1.png"
        figure(codes, labels).savefig(png, dpi=120)
        text = table(report)
    except (IndexError, KeyError, TypeError, ValueError) as e:  # JSONDecodeError: ValueError
        raise ValueError(f"cannot redraw {path}: {type(e).__name__}: {e}") from None
    print(text)
    print(f"wrote {png}")
    return report


# ---------------------------------------------------------------------------------------------
# The run


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the PNG and the JSON")
    parser.add_argument("--quick", action="store_true", help="seconds, small (the test)")
    parser.add_argument("--seed", type=int, default=0, help="of the data and every model")
    parser.add_argument("--epochs", type=_positive_int, help="per model (200; quick 15)")
    parser.add_argument("--points", type=_positive_int, help="data points (3000; quick 300)")
    parser.add_argument(
        "--hidden-sizes",
        type=_positive_int,
        nargs="+",
        help="encoder layers, decoder mirrored (128 64; quick 32)",
    )
    parser.add_argument(
        "--concentration",
        type=_positive_float,
        default=10.0,
        help="kappa of each von Mises component (10)",
    )
    parser.add_argument(
        "--noise",
        type=_positive_float,
        default=0.3,
        help="standard deviation of the noise before the sigmoid (0.3)",
    )
    parser.add_argument("--learning-rate", type=_positive_float, default=1e-3)
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument(
        "--num-particles",
        type=_positive_int,
        help="K for the test ELBO and log p(x) (500; quick 10)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="JSON",
        help="redraw an earlier run's figure into --out and print its table; train nothing",
    )
    return parser


def _output_folder(out: str) -> Path:
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create --out folder {out}: {e.strerror or e}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"cannot write to --out folder {out}: permission denied")
    return folder


def _vae_configs(path: Path, args) -> dict[str, TrainConfig]:
    common = dict(
        dataset=str(path),
        valid_fraction=0.0,  # score each epoch on the held-out 10%; train on all the rest
        latent_dim=2,
        hidden_sizes=tuple(args.hidden_sizes),
        activation="relu",
        likelihood="gaussian",
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    return {
        "c": TrainConfig(**common),
        "d": TrainConfig(**common, kl_weight=0.1),
        "e": TrainConfig(**common, prior="hyperspherical"),
    }


def run(args) -> Result:
    """Make the data, train the four models, and return the report and every panel's codes."""
    data = make_data(args.points, args.concentration, args.noise, args.seed)
    x = data.points  # (N, 100)
    codes = {"a": torch.stack([data.angles.cos(), data.angles.sin()], dim=-1)}
    panels = {
        "a": {
            "title": PANELS["a"],
            "model": "truth",
            "component_mean_angles": circular_means(data.angles, data.labels),
        }
    }
    with tempfile.TemporaryDirectory(prefix="davidson_fig1_") as tmp:
        path = Path(tmp) / "circle.npy"
        np.save(path, x.reshape(-1, *IMAGE_SHAPE).numpy().astype(np.float32))
        configs = _vae_configs(path, args)
        images = run_images(configs["c"])  # the train and held-out test points every model uses

        autoencoder, seconds = train_autoencoder(configs["c"], images.train)
        with torch.no_grad():
            codes["b"] = autoencoder.encoder(x)
            test_error = autoencoder.squared_error(images.test).mean().item()
        panels["b"] = {
            "title": PANELS["b"],
            "model": "autoencoder (plain PyTorch)",
            "train_seconds": seconds,
            "test_squared_error": test_error,
        }
        print(
            f"{PANELS['b']}: {args.epochs} epochs in {seconds:.0f} s, test squared error "
            f"{test_error:.3f} per point",
            flush=True,
        )

        for key, config in configs.items():
            result = fit(config)
            loc = torch.cat([result.vae.encode(batch)[0] for batch in x.split(1000)])
            codes[key] = loc  # (N, 2): guide means, or unit mean directions for the S-VAE
            scores = evaluate(
                result.vae, result.test_images, num_particles=args.num_particles, seed=args.seed
            )
            seconds = result.history[-1]["seconds"]
            panels[key] = {
                "title": PANELS[key],
                "model": f"pyro_vae, prior {config.prior}, kl_weight {config.kl_weight:g}",
                "train_seconds": seconds,
                "test_elbo": scores.test_elbo,
                "test_elbo_stderr": scores.test_elbo_stderr,
                "test_log_likelihood": scores.log_likelihood,
                "test_log_likelihood_stderr": scores.log_likelihood_stderr,
                "kl": scores.kl,
            }
            print(
                f"{PANELS[key]}: {args.epochs} epochs in {seconds:.0f} s, test ELBO "
                f"{scores.test_elbo:.2f}, log p(x) {scores.log_likelihood:.2f} nats per "
                f"point (K = {args.num_particles})",
                flush=True,
            )
        num_test = images.test.shape[0]
    for key in PANELS:
        panels[key].update(separation(codes[key], data.labels))
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "from_json")}
    report = {
        "paper": "Davidson et al. (2018), Hyperspherical variational auto-encoders, Figure 1",
        "machine": machine(),
        "settings": {
            **settings,
            "component_angles": list(COMPONENT_ANGLES),
            "data_dim": DATA_DIM,
            "test_points": num_test,
            "likelihood": "gaussian",
            "activation": "relu",
        },
        "panels": panels,
        "codes": pack_codes(codes, data.labels),
    }
    return Result(report, codes, data)


def main(argv=None) -> Result | None:
    """Train and draw, or with ``--from-json`` only redraw (and return None)."""
    parser = _parser()
    args = parser.parse_args(argv)
    name = Path(sys.argv[0]).name if argv is None else "davidson_fig1.py"
    if args.from_json is not None:
        try:
            redraw(args.from_json, Path(args.out))
        except (OSError, ValueError) as e:
            print(f"{name}: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        return None
    if args.points is not None and args.points < 30:
        parser.error(
            f"--points must be at least 30 (three components and a test set), got {args.points}"
        )
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    threads = torch.get_num_threads()
    # The networks are tiny: a second thread only adds synchronisation, and on a busy 2-core
    # machine it made the steps ten times slower (measured)
    torch.set_num_threads(1)
    try:
        folder = _output_folder(args.out)
        started = time.perf_counter()
        result = run(args)
        result.report["seconds"] = time.perf_counter() - started
        png, report = folder / "davidson_fig1.png", folder / "davidson_fig1.json"
        figure(result.codes, result.data.labels).savefig(png, dpi=120)
        report.write_text(json.dumps(result.report, indent=2) + "\n")
    except (OSError, PyroVAEError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        torch.set_num_threads(threads)
    print(table(result.report))
    print(f"wrote {png}\nwrote {report}  ({result.report['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()

"""The KL weight and the prior on MNIST: three short-budget studies, each beside its paper.

``--study beta``
    beta-VAE (Higgins et al. 2017) with and without KL warm-up (Bowman et al. 2016; Sonderby
    et al. 2016): ``--kl-weight`` beta in {0.1, 0.5, 1, 2, 4}, each with no warm-up and with a
    linear ramp over the first ``--warmup`` epochs. pyro_vae's default VAE otherwise (784-400-20
    MLP, ReLU, dynamically binarized MNIST, Adam 1e-3, batch 128). Each model is scored as the
    model it is (beta = 1): test ELBO, importance-sampled log p(x), the KL, and the active units
    (Burda et al. 2015: Cov_x E_q[z_u] > 0.01), and its reconstructions are drawn.
``--study sphere``
    N-VAE against S-VAE (Davidson et al. 2018, Table 1): the Gaussian prior and guide against
    the uniform prior on the sphere S^(d-1) with a Power Spherical guide (pyro_vae's
    hyperspherical latent; the paper's guide is von Mises-Fisher), for latent sizes d in
    {2, 5, 10, 20, 40}, with the paper's networks (encoder 784-256-128, decoder mirrored, ReLU).
``--study vamp``
    The VampPrior (Tomczak & Welling 2018) against the standard prior: their one-layer MLP VAE
    (784-300-300-40, 500 pseudo-inputs), with a KL warm-up as in the paper.

Every model trains ``--epochs`` epochs on the 54,000 training images that pyro_vae keeps after
its 10% validation split (the papers train for hundreds to thousands of epochs with early
stopping: these are short-budget figures, and the tables say so), and is scored on the first
``--test-images`` test images with ``-K`` importance samples each. Writes ``DIR/priors_STUDY.json``
(the settings, the machine, every model's scores, and for ``beta`` the reconstructed images) and
the figures ``DIR/priors_STUDY.png`` (and ``DIR/priors_beta_reconstructions.png``), and prints
the study's table as docs/priors.md shows it::

    python benchmarks/priors_mnist.py --study beta --data-dir ../shared/data --out DIR
    python benchmarks/priors_mnist.py --study sphere --data-dir ../shared/data --out DIR
    python benchmarks/priors_mnist.py --study vamp --data-dir ../shared/data --out DIR

``--from-json benchmarks/results/priors_STUDY.json --out DIR`` redraws a run's figures into
``DIR`` and prints its table, training nothing (``benchmarks/results/`` holds the runs in the
docs).

``--quick`` runs a study with small networks for one epoch on the bundled ``mnist-sample``
(what the test suite checks).

Published figures (test log p(x) in nats per image on dynamically binarized MNIST):

- Davidson et al. (2018), Table 1, mean ± standard deviation over 10 runs, log-likelihood by
  importance sampling with 500 samples; N-VAE / S-VAE: d = 2: -135.73 ± .83 / -132.50 ± .73;
  d = 5: -110.21 ± .21 / -108.43 ± .09; d = 10: -93.84 ± .30 / -93.16 ± .31; d = 20:
  -88.90 ± .26 / -89.02 ± .31; d = 40: -88.93 ± .30 / -90.87 ± .34 (:data:`DAVIDSON`).
- Tomczak & Welling (2018), Table 2: the one-layer VAE with the standard prior and with the
  VampPrior. Their numbers could not be read in any source available where this script was
  written, so none is quoted; their code (github.com/jmtomczak/vae_vampprior) trains up to 2000
  epochs with early stopping, 100 epochs of warm-up, Adam 5e-4, batch 100, and estimates
  log p(x) with 5000 samples.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from measure import machine

from pyro_vae import PyroVAEError, TrainConfig, evaluate, fit

STUDIES = ("beta", "sphere", "vamp")
BETAS = (0.1, 0.5, 1.0, 2.0, 4.0)
SPHERE_DIMS = (2, 5, 10, 20, 40)
# Davidson et al. (2018), Table 1: d -> (log-likelihood, its standard deviation over 10 runs)
DAVIDSON = {
    "normal": {2: (-135.73, 0.83), 5: (-110.21, 0.21), 10: (-93.84, 0.30), 20: (-88.90, 0.26),
               40: (-88.93, 0.30)},
    "hyperspherical": {2: (-132.50, 0.73), 5: (-108.43, 0.09), 10: (-93.16, 0.31),
                       20: (-89.02, 0.31), 40: (-90.87, 0.34)},
}  # fmt: skip


def _runs(study: str, args) -> list[tuple[str, TrainConfig]]:
    """``(label, config)`` of each model a study trains."""
    base = TrainConfig(dataset="mnist", data_dir=args.data_dir, epochs=args.epochs,
                       seed=args.seed)  # fmt: skip
    if args.quick:
        base = replace(base, dataset="mnist-sample", hidden_sizes=(64,), latent_dim=4,
                       train_size=512)  # fmt: skip
    if study == "beta":
        return [
            (f"beta={beta:g}" + (f", warm-up {warmup}" if warmup else ""),
             replace(base, kl_weight=beta, kl_warmup=warmup))
            for warmup in (0, args.warmup)
            for beta in BETAS
        ]  # fmt: skip
    if study == "sphere":
        hidden = (64,) if args.quick else (256, 128)
        dims = SPHERE_DIMS[:2] if args.quick else SPHERE_DIMS
        return [
            (f"{prior} d={d}", replace(base, prior=prior, latent_dim=d, hidden_sizes=hidden))
            for d in dims
            for prior in ("normal", "hyperspherical")
        ]
    hidden = (64,) if args.quick else (300, 300)
    latent = 4 if args.quick else 40
    return [
        (prior, replace(base, prior=prior, hidden_sizes=hidden, latent_dim=latent,
                        kl_warmup=args.warmup,
                        prior_components=(20 if args.quick else 500) if prior == "vamp" else None))
        for prior in ("normal", "vamp")
    ]  # fmt: skip


def run_study(study: str, args) -> list[dict]:
    rows = []
    for label, config in _runs(study, args):
        started = time.perf_counter()
        result = fit(config)
        trained = time.perf_counter() - started
        images = result.test_images[: args.test_images]
        scores = evaluate(result.vae, images, args.num_particles, seed=args.seed)
        row = {
            "label": label,
            "prior": config.prior,
            "latent_dim": config.latent_dim,
            "kl_weight": config.kl_weight,
            "kl_warmup": config.kl_warmup,
            "prior_components": config.prior_components,
            "epochs": config.epochs,
            "train_seconds": round(trained, 1),
            "final_train_objective": result.history[-1]["train_elbo"],
            **{k: getattr(scores, k) for k in ("test_elbo", "test_elbo_stderr", "log_likelihood",
                                               "log_likelihood_stderr", "reconstruction_nll",
                                               "kl", "active_units", "num_images",
                                               "num_particles")},
        }  # fmt: skip
        if study == "beta":
            originals = images[:8]
            row["_reconstructions"] = (originals, result.vae.reconstruct(originals))
            row["_image_shape"] = result.image_shape
        rows.append(row)
        print(f"{label:>26}: test ELBO {scores.test_elbo:8.2f}  log p(x) "
              f"{scores.log_likelihood:8.2f}  KL {scores.kl:6.2f}  active units "
              f"{scores.active_units:2d}  ({trained:.0f} s)", flush=True)  # fmt: skip
    return rows


def _pack_images(images: torch.Tensor) -> str:
    """Images with values in [0, 1] as base64 of their uint8 pixels, ``round(255 * value)``."""
    pixels = (images.detach().cpu().double().clamp(0, 1) * 255).round().to(torch.uint8)
    return base64.b64encode(pixels.numpy().tobytes()).decode("ascii")


def _unpack_images(text: str, shape: list[int]) -> np.ndarray:
    """The inverse of :func:`_pack_images`: ``(n, *shape)`` float32 in [0, 1]."""
    pixels = np.frombuffer(base64.b64decode(text), dtype=np.uint8).astype(np.float32) / 255
    return pixels.reshape(-1, *shape)


def _reconstruction_record(rows: list[dict]) -> dict:
    """The JSON block behind :func:`_reconstructions`: the test images and, for each beta
    without warm-up, their reconstructions, 8-bit (enough for the figure, and a small file)."""
    sel = [r for r in rows if not r["kl_warmup"]]
    return {
        "encoding": "base64 of uint8 pixels, round(255 * value), image after image",
        "image_shape": list(sel[0]["_image_shape"][-2:]),
        "epochs": sel[0]["epochs"],
        "test_images": _pack_images(sel[0]["_reconstructions"][0]),
        "by_kl_weight": {
            f"{r['kl_weight']:g}": _pack_images(r["_reconstructions"][1]) for r in sel
        },
    }


def _beta_figure(rows: list[dict]) -> Figure:
    fig = Figure(figsize=(12, 3.4))
    panels = [("test_elbo", "test ELBO (beta = 1)"), ("log_likelihood", "log p(x), IS"),
              ("kl", "KL(q || p)"), ("active_units", "active units")]  # fmt: skip
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 4, i + 1)
        for warm, style in ((False, "o-"), (True, "s--")):
            sel = [r for r in rows if bool(r["kl_warmup"]) == warm]
            label = f"warm-up {sel[0]['kl_warmup']} epochs" if warm else "no warm-up"
            ax.plot([r["kl_weight"] for r in sel], [r[key] for r in sel], style, label=label)
        ax.set_xscale("log")
        ax.set_xticks(BETAS, [f"{b:g}" for b in BETAS])
        ax.minorticks_off()
        if key == "active_units":
            ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("KL weight beta")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel("nats per image")
    fig.axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def _reconstructions(record: dict) -> Figure:
    """Eight test images (top row) and, in each row below, their reconstructions
    ``E[x | z = mu(x)]`` by the model of one beta (no warm-up), from
    :func:`_reconstruction_record`."""
    shape = record["image_shape"]
    originals = _unpack_images(record["test_images"], shape)
    lines = [("test images", originals)]
    lines += [(f"beta = {beta}", _unpack_images(text, shape))
              for beta, text in record["by_kl_weight"].items()]  # fmt: skip
    cols = len(originals)
    fig = Figure(figsize=(1.0 * cols + 1.4, 1.0 * len(lines) + 0.4))
    for i, (name, images) in enumerate(lines):
        for j in range(cols):
            ax = fig.add_subplot(len(lines), cols, i * cols + j + 1)
            ax.imshow(images[j], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize="small")
    fig.suptitle(
        f"reconstructions by the KL weight ({record['epochs']} epochs, no warm-up)",
        fontsize="medium",
    )
    fig.subplots_adjust(left=0.16, right=0.99, top=0.92, bottom=0.01, wspace=0.05, hspace=0.05)
    return fig


def _sphere_figure(rows: list[dict]) -> Figure:
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    for prior, colour, name in (("normal", "C0", "N-VAE"), ("hyperspherical", "C1", "S-VAE")):
        sel = [r for r in rows if r["prior"] == prior]
        ax.errorbar([r["latent_dim"] for r in sel], [r["log_likelihood"] for r in sel],
                    [r["log_likelihood_stderr"] or 0 for r in sel], fmt="o-", color=colour,
                    label=f"{name}, here ({sel[0]['epochs']} epochs)")  # fmt: skip
        paper = DAVIDSON[prior]
        ax.errorbar(
            list(paper),
            [v[0] for v in paper.values()],
            [v[1] for v in paper.values()],
            fmt="x--",
            color=colour,
            alpha=0.6,
            label=f"{name}, Davidson et al. Table 1",
        )
    ax.set_xscale("log")
    ax.set_xticks(SPHERE_DIMS, [str(d) for d in SPHERE_DIMS])
    ax.minorticks_off()
    ax.set_xlabel("latent dimension d")
    ax.set_ylabel("test log p(x), nats per image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _paper(value: list[float]) -> str:
    """Davidson et al.'s ``mean ± sd`` as their Table 1 writes it: ``-135.73 ± .83``."""
    return f"{value[0]:.2f} ± {value[1]:.2f}".replace(" 0.", " .")


def table(report: dict) -> str:
    """The study's markdown table as docs/priors.md shows it, from a report (its JSON)."""
    runs = report["runs"]
    if report["study"] == "beta":
        lines = [
            f"| beta | warm-up | test ELBO | log p(x) | KL | active units "
            f"(of {runs[0]['latent_dim']}) |",
            "|---|---|---|---|---|---|",
        ]
        for r in runs:
            warm = (
                f"{r['kl_warmup']} epoch{'s' * (r['kl_warmup'] != 1)}" if r["kl_warmup"] else "none"
            )
            lines.append(
                f"| {r['kl_weight']:g} | {warm} | {r['test_elbo']:.2f} | "
                f"{r['log_likelihood']:.2f} | {r['kl']:.2f} | {r['active_units']} |"
            )
    elif report["study"] == "sphere":
        lines = [
            "| d | N-VAE log p(x), here | S-VAE log p(x), here | N-VAE, paper | S-VAE, paper |",
            "|---|---|---|---|---|",
        ]
        paper = report["davidson_table_1"]
        for d in sorted({r["latent_dim"] for r in runs}):
            here = {r["prior"]: r["log_likelihood"] for r in runs if r["latent_dim"] == d}
            lines.append(
                f"| {d} | {here['normal']:.2f} | {here['hyperspherical']:.2f} | "
                f"{_paper(paper['normal'][str(d)])} | "
                f"{_paper(paper['hyperspherical'][str(d)])} |"
            )
    else:
        lines = [
            f"| prior | test ELBO | log p(x) | KL | active units (of "
            f"{runs[0]['latent_dim']}) | training |",
            "|---|---|---|---|---|---|",
        ]
        for r in runs:
            name = (
                "standard, N(0, I)"
                if r["prior"] == "normal"
                else f"VampPrior, K = {r['prior_components']}"
            )
            lines.append(
                f"| {name} | {r['test_elbo']:.2f} | {r['log_likelihood']:.2f} ± "
                f"{r['log_likelihood_stderr']:.2f} | {r['kl']:.2f} | "
                f"{r['active_units']} | {r['train_seconds']:.0f} s |"
            )
    return "\n".join(lines)


def draw(report: dict, out: Path) -> list[Path]:
    """Save the study's figures (none for ``vamp``) into ``out``; their paths."""
    figures = {}
    if report["study"] == "beta":
        figures["priors_beta.png"] = _beta_figure(report["runs"])
        figures["priors_beta_reconstructions.png"] = _reconstructions(report["reconstructions"])
    elif report["study"] == "sphere":
        figures["priors_sphere.png"] = _sphere_figure(report["runs"])
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=110)
    return [out / name for name in figures]


def redraw(path: Path, out: Path) -> int:
    """``--from-json``: draw a run's figures into ``out`` and print its table; train nothing."""
    try:
        report = json.loads(path.read_text())
        text = table(report)
        written = draw(report, out)
    except (IndexError, KeyError, TypeError, ValueError) as e:  # JSONDecodeError: ValueError
        print(f"priors_mnist: cannot redraw {path}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"priors_mnist: {e.strerror or e}: {e.filename or path}", file=sys.stderr)
        return 1
    print(text)
    for name in written:
        print(f"wrote {name}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=STUDIES, help="required unless --from-json")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw")
    parser.add_argument("--out", required=True, help="folder for the JSON and the figures")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5, help="epochs of KL warm-up")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("-K", "--num-particles", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="JSON",
        help="redraw an earlier run's figures into --out and print its table; train nothing",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return redraw(args.from_json, Path(args.out))
    if args.study is None:
        parser.error("--study is required (or --from-json)")
    if args.quick:
        args.epochs, args.warmup, args.test_images, args.num_particles = 1, 1, 50, 10
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        rows = run_study(args.study, args)
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        settings = {k: v for k, v in vars(args).items() if k != "from_json"}
        report = {"study": args.study, "settings": settings, "machine": machine(),
                  "runs": clean}  # fmt: skip
        if args.study == "beta":
            report["reconstructions"] = _reconstruction_record(rows)
        if args.study == "sphere":
            report["davidson_table_1"] = {p: {str(d): list(v) for d, v in t.items()}
                                          for p, t in DAVIDSON.items()}  # fmt: skip
        # the figures are drawn from the report, as --from-json draws them
        for name in draw(report, out):
            print(f"wrote {name}")
        (out / f"priors_{args.study}.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {out / f'priors_{args.study}.json'}")
        print(table(report))
    except PyroVAEError as e:
        print(f"priors_mnist: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"priors_mnist: cannot write to {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmarks' references and machinery: what their comparisons rest on, at a tiny size.

The benchmarks themselves take minutes to hours and are not run here; these tests check that
the hand-written references compute what pyro_vae computes, so the tables compare like with like.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae import VAE, fit
from pyro_vae.data import ImageData
from pyro_vae.evaluate import importance_sampled_log_likelihood

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import iwae_mnist  # noqa: E402
import log_likelihood  # noqa: E402
import measure  # noqa: E402


def _tiny_mnist(n_train=120, n_test=30) -> ImageData:
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(n_train + n_test, 784, generator=g) ** 3  # mostly dark, like MNIST
    return ImageData("mnist", grey[:n_train], None, grey[n_train:], None, (28, 28), "synthetic")


@pytest.mark.parametrize("k, tolerance", [(1, 1e-5), (5, 1e-4)], ids=["vae", "iwae-k5"])
def test_hand_written_iwae_reference_trains_like_pyro_vae(k, tolerance):
    """Same start, batches, bound and Adam: after a pass of twelve steps the two trainings hold
    the same parameters, to float32 rounding (they draw the same random numbers too; after the
    first pass they no longer do, as fit's per-epoch test ELBO draws some)."""
    data = _tiny_mnist(n_train=240)
    config = iwae_mnist.paper_config(k, passes=1, seed=3, device="cpu")
    mine = fit(config, data=data).vae
    train = data.train_images
    reference, _ = iwae_mnist.train_reference(config, train)
    start = iwae_mnist.initial_vae(config, train)
    for a, b, s in zip(mine.parameters(), reference.parameters(), start.parameters(), strict=True):
        assert not torch.equal(a, s)  # both trained
        assert torch.allclose(a, b, rtol=tolerance, atol=tolerance), (a - b).abs().max()


# 600 rows: one draw of 1000 particles, decoded 100 at a time; 60 rows: draws of 160 particles
# (16 chunks of 10), the last one short
@pytest.mark.parametrize("max_rows", [600, 60])
def test_plain_log_likelihood_loop_is_pyro_vaes_estimate(float64, max_rows):
    """With the same seed both draw the same particles, chunk by chunk, so the plain loop must
    give pyro_vae's estimate to rounding."""
    vae = VAE(784, latent_dim=4, hidden_sizes=(16,)).eval()
    x = torch.bernoulli(torch.rand(6, 784) ** 3)
    torch.manual_seed(1)
    mine, _ = importance_sampled_log_likelihood(vae.model, vae.guide, x, 1000, max_rows=max_rows)
    torch.manual_seed(1)
    plain = log_likelihood.plain_log_likelihood(vae, x, 1000, max_rows=max_rows)
    assert torch.allclose(mine, plain, rtol=1e-12, atol=1e-10), mine - plain
    torch.manual_seed(2)
    other = log_likelihood.plain_log_likelihood(vae, x, 1000, max_rows=max_rows)
    assert not torch.allclose(mine, other, atol=1e-3)  # other draws: other estimates


def test_peak_memory_sees_an_allocation():
    # a fresh process: in this one the allocator may hand back memory it already holds
    code = (
        f"import json, sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import torch, measure\n"
        "with measure.peak_memory() as peak:\n"
        "    block = torch.ones(64 * 2**20 // 4)\n"
        "    del block\n"
        "print(json.dumps(peak))"
    )
    assert 60 < measure.peak_mib_in_fresh_process(["-c", code]) < 100


def test_alternate_timing_rotates_the_order():
    calls = []
    steps = {name: (lambda x, name=name: calls.append(name)) for name in "abc"}
    times = measure.time_alternately(steps, list(range(5)), warmup=2)
    assert calls[:9] == list("abcbcacab")
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_conv_vs_mlp_quick_run_gives_sane_rows(capsys, tmp_path):
    """Both networks train past the budget (the last epoch may overshoot it) and are scored:
    finite figures, log p(x) at or above the ELBO from the same samples, a Markdown table.
    Training stops at the first epoch that reaches the budget."""
    import math

    import conv_vs_mlp

    from pyro_vae import TrainConfig

    rows = conv_vs_mlp.main(["--quick", "--budget", "0.5"])
    assert [(r["dataset"], r["arch"]) for r in rows] == [
        ("mnist-sample", "mlp"),
        ("mnist-sample", "conv"),
    ]
    mlp, conv = rows
    assert conv["parameters"] != mlp["parameters"]  # two different networks
    for row in rows:
        assert row["epochs"] >= 1 and row["train_seconds"] >= 0.5
        assert row["seconds_per_epoch"] > 0 and row["eval_seconds"] > 0
        assert (row["num_images"], row["num_particles"]) == (100, 10)
        figures = ("valid_elbo", "test_elbo", "test_elbo_stderr", "log_likelihood",
                   "log_likelihood_stderr")  # fmt: skip
        assert all(math.isfinite(row[name]) for name in figures), row
        assert row["test_elbo"] < 0  # log densities of binary images
        # the importance-sampled estimate is log-mean-exp of the weights whose mean is the ELBO
        assert row["log_likelihood"] >= row["test_elbo"] - 1e-3  # (float32 rounding)
        assert 0 <= row["active_units"] <= 20
    out = capsys.readouterr().out
    assert out.splitlines()[0] == measure.machine()
    assert "| mnist-sample | conv |" in out and "| mnist-sample | mlp |" in out

    tiny = TrainConfig(dataset="mnist-sample", hidden_sizes=(8,), train_size=256)
    # after main(): the one-time imports of the first training are behind us
    (first,) = conv_vs_mlp.train_for(tiny, 0.0, tmp_path / "one", None).history
    budget = 3 * first["seconds"]  # a few epochs, however fast this machine is
    history = conv_vs_mlp.train_for(tiny, budget, tmp_path / "run", None).history
    # stops at the first epoch that reaches the budget (on a busy machine that may be the first)
    assert history[-1]["seconds"] >= budget
    assert all(h["seconds"] < budget for h in history[:-1])


def test_train_memory_quick_run_measures_both_programs(capsys):
    import train_memory
    from conftest import find_data_dir

    data_dir = find_data_dir()
    if data_dir is None or not (data_dir / "MNIST" / "raw").is_dir():
        pytest.skip("the reference reads MNIST through torchvision: set PYRO_VAE_DATA_DIR")
    rows = train_memory.main(["--quick", "--repeats", "1", "--data-dir", str(data_dir)])
    labels = [row["label"] for row in rows]
    assert any("pyro-vae train" in label for label in labels)
    assert any("pytorch/examples" in label for label in labels)
    # every program imports torch: a few hundred MiB at least, and a finite figure
    assert all(200 < row["median_mib"] < 20_000 for row in rows), rows


@pytest.mark.parametrize("study", ["beta", "sphere", "vamp"])
def test_priors_quick_runs_write_their_reports(study, tmp_path, capsys):
    import json
    import math

    import priors_mnist

    assert priors_mnist.main(["--study", study, "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / f"priors_{study}.json").read_text())
    runs = report["runs"]
    expected = {"beta": 10, "sphere": 4, "vamp": 2}[study]
    assert len(runs) == expected and len({r["label"] for r in runs}) == expected
    for r in runs:
        assert math.isfinite(r["log_likelihood"]) and r["log_likelihood"] <= 0
        # log p(x) is a log-mean-exp of weights whose mean is the ELBO
        assert r["log_likelihood"] >= r["test_elbo"] - 1e-6
        assert r["kl"] >= -1e-6 or r["prior"] != "normal"
    if study == "beta":
        assert [r["kl_weight"] for r in runs] == [0.1, 0.5, 1.0, 2.0, 4.0] * 2
        assert [r["kl_warmup"] for r in runs] == [0] * 5 + [1] * 5
        assert (tmp_path / "priors_beta_reconstructions.png").stat().st_size > 1000
    if study == "sphere":
        assert {r["prior"] for r in runs} == {"normal", "hyperspherical"}
        assert report["davidson_table_1"]["hyperspherical"]["2"] == [-132.5, 0.73]
    if study != "vamp":
        assert (tmp_path / f"priors_{study}.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert out.count(": test ELBO") == expected  # a line per model as it is scored
    # the run draws its figures from its report, so --from-json redraws them pixel for pixel
    again = tmp_path / "again"
    assert priors_mnist.main(["--from-json", str(tmp_path / f"priors_{study}.json"),
                              "--out", str(again)]) == 0  # fmt: skip
    redrawn = sorted(p.name for p in again.iterdir())
    assert redrawn == {"beta": ["priors_beta.png", "priors_beta_reconstructions.png"],
                       "sphere": ["priors_sphere.png"], "vamp": []}[study]  # fmt: skip
    for name in redrawn:
        assert (again / name).read_bytes() == (tmp_path / name).read_bytes(), name


RESULTS = BENCHMARKS / "results"
PRIORS_DOC = BENCHMARKS.parent / "docs" / "priors.md"


def markdown_rows(text: str) -> list[list[str]]:
    """The body cells of the markdown table in ``text``: header and rule left out."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def _number_and_stderr(cell: str) -> tuple[float, float]:
    value, stderr = cell.split(" ± ")
    return float(value), float(stderr)


# the settings of docs/priors.md's command for each study
PRIORS_COMMANDS = {
    "beta": {"epochs": 3, "warmup": 2, "test_images": 1000, "num_particles": 500},
    "sphere": {"epochs": 5, "test_images": 1000, "num_particles": 500},
    "vamp": {"epochs": 5, "warmup": 2, "test_images": 1000, "num_particles": 500},
}


@pytest.mark.parametrize("study", ["beta", "sphere", "vamp"])
def test_priors_tables_in_the_docs_are_the_committed_runs(study, tmp_path, capsys):
    """``--from-json`` on each run in benchmarks/results/ trains nothing, prints a table whose
    numbers are the JSON's (to the two decimals shown), draws its figures, and that table is
    the one docs/priors.md shows."""
    import json

    import priors_mnist

    path = RESULTS / f"priors_{study}.json"
    report = json.loads(path.read_text())
    assert report["study"] == study and report["machine"]
    settings = {k: report["settings"][k] for k in PRIORS_COMMANDS[study]}
    assert settings == PRIORS_COMMANDS[study] and not report["settings"]["quick"]
    assert priors_mnist.main(["--from-json", str(path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows, runs = markdown_rows(out), report["runs"]
    near = {"abs": 0.005 + 1e-9}  # the table rounds to two decimals
    if study == "beta":
        assert len(rows) == len(runs) == 10
        for cells, r in zip(rows, runs, strict=True):
            assert float(cells[0]) == r["kl_weight"]
            assert cells[1] == (f"{r['kl_warmup']} epochs" if r["kl_warmup"] else "none")
            numbers = [float(c) for c in cells[2:5]]
            assert numbers == pytest.approx([r["test_elbo"], r["log_likelihood"], r["kl"]], **near)
            assert int(cells[5]) == r["active_units"]
        figures = ["priors_beta.png", "priors_beta_reconstructions.png"]
    elif study == "sphere":
        assert len(rows) == 5 and len(runs) == 10
        for cells in rows:
            d = int(cells[0])
            here = {r["prior"]: r["log_likelihood"] for r in runs if r["latent_dim"] == d}
            assert float(cells[1]) == pytest.approx(here["normal"], **near)
            assert float(cells[2]) == pytest.approx(here["hyperspherical"], **near)
            for cell, prior in zip(cells[3:], ("normal", "hyperspherical"), strict=True):
                paper = priors_mnist.DAVIDSON[prior][d]
                mean, sd = cell.split(" ± ")
                assert (float(mean), float(sd)) == paper
        figures = ["priors_sphere.png"]
    else:
        assert len(rows) == len(runs) == 2
        for cells, r in zip(rows, runs, strict=True):
            assert float(cells[1]) == pytest.approx(r["test_elbo"], **near)
            log_px = _number_and_stderr(cells[2])
            expected = (r["log_likelihood"], r["log_likelihood_stderr"])
            assert log_px == pytest.approx(expected, **near)
            assert float(cells[3]) == pytest.approx(r["kl"], **near)
            assert int(cells[4]) == r["active_units"]
            assert float(cells[5].removesuffix(" s")) == pytest.approx(r["train_seconds"], abs=0.5)
        figures = []
    assert sorted(p.name for p in tmp_path.iterdir()) == figures
    for name in figures:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    table = "\n".join(line for line in out.splitlines() if line.startswith("|"))
    assert table in PRIORS_DOC.read_text(), f"docs/priors.md does not show this table:\n{table}"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="missing file"),
        pytest.param("not json", id="not JSON"),
        pytest.param('{"study": "beta", "runs": []}', id="no runs"),
    ],
)
def test_priors_from_a_bad_json_is_one_line(content, tmp_path, capsys):
    import priors_mnist

    path = tmp_path / "priors_beta.json"
    if content is not None:
        path.write_text(content)
    assert priors_mnist.main(["--from-json", str(path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "priors_beta.json" in err, err


@pytest.mark.parametrize("figure", [2, 3])
def test_aevb_wake_sleep_quick_runs_draw_their_curves(figure, tmp_path):
    """Kingma & Welling's Figures 2 and 3 at a tiny size: every method's curve, at growing
    numbers of training images seen, with the same bound for every method."""
    import json
    import math

    import aevb_wake_sleep

    assert aevb_wake_sleep.checkpoints(13) == [1, 2, 3, 4, 7, 10, 13]
    assert aevb_wake_sleep.main(["--figure", str(figure), "--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / f"aevb_fig{figure}.json").read_text())["rows"]
    methods = [r["method"] for r in rows]
    if figure == 2:
        assert methods == ["AEVB", "wake-sleep"]
    else:  # MCEM on the small sets only; every set trains for the same number of images
        assert methods == ["AEVB", "wake-sleep", "MCEM"] * 2
        assert {r["points"][-1]["images_seen"] for r in rows} == {1200}
    for row in rows:
        seen = [p["images_seen"] for p in row["points"]]
        assert seen == sorted(seen) and len(set(seen)) == len(seen) > 1
        for p in row["points"]:
            assert math.isfinite(p["train_elbo"]) and math.isfinite(p["test_elbo"])
            if figure == 3:  # log p(x) is a log-mean-exp of weights whose mean is the ELBO
                assert p["test_log_px"] >= p["test_elbo"] - 1e-4
    assert (tmp_path / f"aevb_fig{figure}.png").stat().st_size > 1000


def test_speed_kernels_times_the_four_kernels(capsys):
    """``speed.py --kernels`` (the source of the log1p figures in docs/benchmarks.md) runs and
    reports each kernel and both ratios."""
    import speed

    speed.kernels(batch_size=4, steps=3, device="cpu")
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "µs" not in line]
    assert [row.split(" | ")[0][2:] for row in rows] == [
        "log1p", "log", "binary_cross_entropy_with_logits, forward and backward",
        "bernoulli_log_density, forward and backward",
    ]  # fmt: skip
    assert all(float(row.split(" | ")[1].rstrip(" |")) >= 0 for row in rows)
    assert "log1p / log: " in out and "bernoulli_log_density / binary_cross_entropy" in out


def test_the_discrete_estimator_study_quick_run_writes_its_report(tmp_path, capsys):
    import discrete_estimators

    assert discrete_estimators.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "discrete_estimators.json").read_text())
    for latent, estimators in discrete_estimators.ESTIMATORS.items():
        rows = report["latents"][latent]["stages"]["trained"]["rows"]
        assert list(rows) == estimators
        assert all(math.isfinite(r["total_variance"]) and r["total_variance"] > 0
                   for r in rows.values())  # fmt: skip
        # the score function without a control variate is the noisiest of them
        assert max(rows, key=lambda e: rows[e]["total_variance"]) == "reinforce"
    assert (tmp_path / "discrete_estimators.png").read_bytes()[:4] == b"\x89PNG"
    assert "| `disarm` |" in capsys.readouterr().out


def test_the_discrete_speed_benchmark_times_every_side(capsys):
    import discrete_speed

    assert discrete_speed.main(["--quick", "--steps", "3", "--estimators", "reinforce",
                                "disarm", "vimco"]) == 0  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["reinforce", "disarm", "vimco"]
    for row in rows:  # milliseconds and ratios, all positive numbers
        assert all(float(cell) > 0 for cell in row.split("|")[2:-1])


def test_the_docs_show_the_discrete_estimator_study_of_its_json(tmp_path, capsys):
    """docs/discrete.md's table is what ``--from-json`` prints for the recorded run."""
    import discrete_estimators

    recorded = BENCHMARKS / "results" / "discrete_estimators.json"
    assert discrete_estimators.main(["--from-json", str(recorded), "--out", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    docs = (BENCHMARKS.parent / "docs" / "discrete.md").read_text()
    assert len(rows) == 16 and all(row in docs for row in rows)


def test_the_discrete_table_quick_run_trains_scores_and_times_its_runs(tmp_path, capsys):
    import discrete_table

    names = ["categorical-linear-gumbel", "bernoulli-linear-reinforce"]  # the table's order
    assert discrete_table.main(["--quick", "--out", str(tmp_path), "--only", *names]) == 0
    report = json.loads((tmp_path / "discrete_table.json").read_text())
    assert [run["name"] for run in report["runs"]] == names
    for run in report["runs"]:
        test = run["test"]
        assert [h["step"] for h in run["history"]] == [10, 20] and run["step_ms"] > 0
        # the K-sample estimate is log mean exp of the weights whose mean of logs is the ELBO
        assert test["num_particles"] == 10 and test["log_likelihood"] >= test["test_elbo"]
    assert (tmp_path / "discrete_table.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["gumbel", "reinforce"]  # by group
    assert "(2 runs), " in printed  # the budget, of the two runs timed alone
    assert f"  {names[0]}: " in printed  # its curve at a quarter, half, ... of its steps
    # a second call keeps the finished runs: nothing is trained again
    metrics = tmp_path / "runs" / names[0] / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    assert discrete_table.main(["--quick", "--out", str(tmp_path), "--only", names[0],
                                "--no-timing"]) == 0  # fmt: skip
    assert metrics.stat().st_mtime_ns == before


def test_the_discrete_tables_runs_are_the_published_settings():
    """Every full-size run's flags make a valid config of the paper's model."""
    import discrete_table

    from pyro_vae.cli import build_parser
    from pyro_vae.config import TrainConfig, given_settings

    runs = discrete_table.runs(quick=False)
    assert len(runs) == 2 * 8 + 3 and len({run["name"] for run in runs}) == len(runs)
    for run in runs:
        args = build_parser().parse_args(["train", *run["flags"], "--out", "x"])
        config = TrainConfig(**given_settings(args)).resolved()
        config.validate(here=False)
        assert (config.dataset, config.batch_size, config.learning_rate) == (
            "binarized-mnist", 50, 1e-4)  # fmt: skip
        assert config.center_input and config.estimator == run["estimator"]
        linear = run["model"] == "linear"
        assert config.hidden_sizes == (() if linear else (200, 200))
        assert config.num_particles == (2 if run["estimator"] in ("reinforce-loo", "vimco") else 1)
        relaxed = run["estimator"] in ("gumbel", "straight-through")
        assert (config.temperature_anneal == 1e-5) == relaxed
        size = (200, None) if run["latent"] == "bernoulli" else (20, 10)
        assert (config.latent_dim, config.categories) == size


def test_the_docs_show_the_discrete_table_of_its_json(tmp_path, capsys):
    """docs/discrete.md's published table is what ``--from-json`` prints for the recorded runs."""
    import discrete_table

    recorded = BENCHMARKS / "results" / "discrete_table.json"
    assert discrete_table.main(["--from-json", str(recorded), "--out", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    docs = (BENCHMARKS.parent / "docs" / "discrete.md").read_text()
    assert len(rows) == 2 * 8 + 3 and all(row in docs for row in rows)
    report = json.loads(recorded.read_text())
    assert all(run["history"][-1]["step"] == 80000 for run in report["runs"])


def test_the_m2_table_quick_run_trains_every_row_and_keeps_finished_runs(tmp_path, capsys):
    import argparse

    import m2_table

    argv = ["--quick", "--out", str(tmp_path), "--labels", "100", "--draws", "1", "--epochs", "1",
            "--no-timing"]  # fmt: skip
    report = m2_table.main(argv)
    assert sorted(r["row"] for r in report["results"]) == sorted(r[0] for r in m2_table.ROWS)
    for result in report["results"]:
        assert 0 <= result["test_accuracy"] <= 1 and result["ms_per_step"] > 0
        # 1500 images, batches of 200: the baselines drop the last, smaller one
        steps = 7 if result["estimator"] == "reinforce-nn-baseline" else 8
        assert len(result["valid_accuracy"]) == 1 and result["steps"] == steps
    assert len(report["classifier"]["100"]) == 1
    assert (tmp_path / "m2_table.png").read_bytes()[:4] == b"\x89PNG"
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(m2_table.ROWS) + 1  # the head, the rows, the classifier
    metrics = tmp_path / "runs" / "sampled-100-0" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    m2_table.main(argv)
    assert metrics.stat().st_mtime_ns == before  # a finished run is not trained again
    args = argparse.Namespace(quick=True, epochs=1, data_dir=None)
    assert m2_table.step_time("sampled", args, tmp_path) > 0  # a second epoch, timed alone


def test_the_m2_tables_runs_are_the_tutorials_settings():
    """Every full-size run's flags make a valid config of the tutorial's model, its auxiliary
    loss the tutorial's scale of 46."""
    import argparse

    import m2_table

    from pyro_vae.cli import build_parser
    from pyro_vae.config import TrainConfig, given_settings
    from pyro_vae.m2 import aux_scale

    args = argparse.Namespace(quick=False, epochs=5, data_dir=None)
    runs = m2_table.runs(False, 2, m2_table.LABELS)
    assert len(runs) == 2 * 4 * len(m2_table.ROWS) == len({run["name"] for run in runs})
    for run in runs:
        command = m2_table.train_command(run, args, Path("out"))
        parsed = build_parser().parse_args(command[command.index("train") :])
        config = TrainConfig(**given_settings(parsed)).resolved()
        config.validate(here=False)
        assert (config.model, config.latent_dim, config.hidden_sizes, config.batch_size) == (
            "m2", 50, (500,), 200)  # fmt: skip
        assert config.estimator == run["estimator"] and config.labels == run["labels"]
        assert round(config.valid_fraction * 60_000) == 10_000
        scale = aux_scale(config.aux_loss, 50_000, config.labels)
        assert scale == (pytest.approx(46.0) if run["aux"] else 0.0)


def test_the_docs_show_the_m2_table_of_its_json():
    """docs/labels.md's table holds the recorded runs' mean test accuracies and step times."""
    import m2_table

    report = json.loads((BENCHMARKS / "results" / "m2_table.json").read_text())
    docs = (BENCHMARKS.parent / "docs" / "labels.md").read_text()
    assert report["epochs"] == 5 and report["draws"] == 2
    rows = {}  # the first table's row of each name (the step times' table comes after)
    for line in docs.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip(), line)
    words = {"sampled": "sampled (`reinforce`)", "enumerated": "summed out (`enumerate`)",
             "enumerated+aux": "summed out, auxiliary loss",
             "sampled+aux": "sampled, auxiliary loss",
             "nvil+aux": "sampled with NVIL's baselines, auxiliary loss",
             "gumbel+aux": "Gumbel-softmax ($\\tau = 0.5$), auxiliary loss",
             "straight-through+aux": "straight-through ($\\tau = 0.5$), auxiliary loss",
             }  # fmt: skip
    for name, *_ in m2_table.ROWS:
        cells = rows[words[name]].split("|")[2:6]
        for cell, count in zip(cells, report["labels"], strict=True):
            values = [r["test_accuracy"] for r in report["results"]
                      if r["row"] == name and r["labels"] == count]  # fmt: skip
            assert len(values) == 2 and cell.strip() == f"{sum(values) / 2:.4f}"
    cells = rows["the classifier alone (labelled images only)"].split("|")[2:6]
    for cell, count in zip(cells, report["labels"], strict=True):
        assert cell.strip() == f"{sum(report['classifier'][str(count)]) / 2:.4f}"
    for ms in report["ms_per_step_alone"].values():
        assert f"| {ms:.1f} |" in docs


def test_the_cvae_table_quick_run_trains_every_run_and_keeps_finished_ones(tmp_path, capsys):
    import cvae_table

    report = cvae_table.main(["--quick", "--out", str(tmp_path)])
    names = [r["name"] for r in report["results"]]
    assert names == ["quadrants-1", "quadrants-2", "quadrants-3", "label"]
    for result in report["results"]:
        assert result["negative_elbo"] >= result["nll"] > 0
        assert (result["baseline_nll"] is None) == (result["name"] == "label")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 5  # the head, three of ours and Pyro's two
    metrics = tmp_path / "runs" / "quadrants-2" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    cvae_table.main(["--quick", "--out", str(tmp_path)])
    assert metrics.stat().st_mtime_ns == before  # a finished run is not trained again


def test_the_cvae_tables_runs_are_pyros_settings():
    import argparse

    import cvae_table

    from pyro_vae.cli import build_parser
    from pyro_vae.config import TrainConfig, given_settings

    args = argparse.Namespace(quick=False, epochs=20, particles=1000, data_dir=None)
    for run in cvae_table.runs():
        command = cvae_table.train_command(run, args, Path("out"))
        parsed = build_parser().parse_args(command[command.index("train") :])
        config = TrainConfig(**given_settings(parsed)).resolved()
        config.validate(here=False)
        assert (config.model, config.condition, config.epochs) == ("cvae", run["condition"], 20)
        if run["quadrants"]:
            assert (config.latent_dim, config.hidden_sizes, config.activation) == (
                200, (500, 500), "relu")  # fmt: skip
            assert (config.batch_size, config.learning_rate) == (128, 1e-3)


def test_the_docs_show_the_cvae_table_of_its_json(capsys):
    import cvae_table

    cvae_table.main(["--out", str(BENCHMARKS / "results"), "--from-json",
                     str(BENCHMARKS / "results" / "cvae_table.json")])  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    docs = (BENCHMARKS.parent / "docs" / "cvae.md").read_text()
    assert len(rows) == 6 and all(row in docs for row in rows)

"""benchmarks/davidson_fig1.py (Davidson et al. 2018, Figure 1) in its quick mode: the files it
writes, the data it draws, and the S-VAE's codes on the circle."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import davidson_fig1  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig1")
    return out, davidson_fig1.main(["--out", str(out), "--quick", "--seed", "3"])


def _angle_gap(a: float, b: float) -> float:
    return abs(math.remainder(a - b, 2 * math.pi))


def test_quick_run_writes_the_figure_and_five_panels(quick):
    out, result = quick
    png, report = out / "davidson_fig1.png", out / "davidson_fig1.json"
    assert png.read_bytes().startswith(b"\x89PNG")
    saved = json.loads(report.read_text())
    assert list(saved["panels"]) == ["a", "b", "c", "d", "e"]
    assert saved["panels"]["e"]["title"] == "(e) S-VAE"
    for key in "cde":  # the VAEs have a test ELBO, the autoencoder and the truth do not
        assert math.isfinite(saved["panels"][key]["test_elbo"])
    assert "test_elbo" not in saved["panels"]["b"]
    for panel in saved["panels"].values():
        assert -1 <= panel["silhouette"] <= 1
        assert 0 <= panel["nearest_centroid_accuracy"] <= 1
    assert saved["settings"]["points"] == 300 and saved["settings"]["seed"] == 3


def test_svae_codes_lie_on_the_unit_circle_and_gaussian_ones_do_not(quick):
    _, result = quick
    n = result.data.points.shape[0]
    for key in "abcde":
        assert result.codes[key].shape == (n, 2)
    assert torch.allclose(result.codes["e"].norm(dim=-1), torch.ones(n), atol=1e-5)
    assert not torch.allclose(result.codes["c"].norm(dim=-1), torch.ones(n), atol=1e-2)


def test_true_components_sit_where_they_were_put(quick):
    _, result = quick
    measured = result.report["panels"]["a"]["component_mean_angles"]
    for mean, want in zip(measured, (0.0, 2 * math.pi / 3, 4 * math.pi / 3), strict=True):
        assert _angle_gap(mean, want) < 0.15  # about 100 points of kappa 10: sd ~0.03 rad
    angles, labels = result.data.angles, result.data.labels
    assert torch.bincount(labels, minlength=3).min() > 60  # an equal mixture of 300 points
    # the truth panel is the angles' points on the circle; the data lie in (0, 1)^100
    assert torch.allclose(result.codes["a"][:, 0], angles.cos())
    assert result.data.points.shape == (300, 100)
    assert 0 < result.data.points.min() and result.data.points.max() < 1


def test_data_are_fixed_by_the_seed_and_leave_the_global_rng_alone():
    before = torch.get_rng_state()
    first = davidson_fig1.make_data(60, 10.0, 0.3, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    again = davidson_fig1.make_data(60, 10.0, 0.3, seed=5)
    other = davidson_fig1.make_data(60, 10.0, 0.3, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first.points, other.points)


def test_separation_scores_tell_clusters_from_a_mix():
    labels = torch.arange(3).repeat_interleave(20)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    g = torch.Generator().manual_seed(0)
    separated = centres[labels] + 0.1 * torch.randn(60, 2, generator=g)
    mixed = torch.randn(60, 2, generator=g)
    assert davidson_fig1.silhouette(separated, labels) > 0.9
    assert abs(davidson_fig1.silhouette(mixed, labels)) < 0.2
    assert davidson_fig1.nearest_centroid_accuracy(separated, labels) == 1.0


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--quick"], id="no --out"),
        pytest.param(["--out", "x", "--epochs", "0"], id="epochs 0"),
        pytest.param(["--out", "x", "--points", "10"], id="too few points"),
        pytest.param(["--out", "x", "--concentration", "nan"], id="concentration nan"),
    ],
)
def test_bad_flags_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        davidson_fig1.main(argv)
    assert exit_.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_:
        davidson_fig1.main(["--out", str(blocker / "fig"), "--quick"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--out" in err, err


def test_the_json_holds_every_panels_codes_to_float16(quick):
    out, result = quick
    saved = json.loads((out / "davidson_fig1.json").read_text())
    codes, labels = davidson_fig1.unpack_codes(saved["codes"])
    assert torch.equal(labels, result.data.labels)
    for key in "abcde":
        # float16 keeps 11 significant bits: a relative error of at most 2^-11
        bound = result.codes[key].abs() * 2.0**-11 + 1e-7
        assert ((codes[key] - result.codes[key]).abs() <= bound).all(), key


RESULTS = BENCHMARKS / "results"
PRIORS_DOC = BENCHMARKS.parent / "docs" / "priors.md"


@pytest.mark.parametrize(
    "name, concentration, noise",
    [("davidson_fig1.json", 10.0, 0.3), ("davidson_fig1_noisy.json", 4.0, 1.0)],
)
def test_the_committed_run_redraws_and_the_docs_show_its_table(tmp_path, capsys, name,
                                                                concentration, noise):  # fmt: skip
    """``--from-json`` on a committed run (the default data, and the noisier data of
    ``--concentration 4 --noise 1``) trains nothing, draws the figure and prints a table whose
    numbers are the JSON's, the table docs/priors.md shows."""
    path = RESULTS / name
    report = json.loads(path.read_text())
    assert report["machine"] and report["settings"]["points"] == 3000
    assert report["settings"]["concentration"] == concentration
    assert report["settings"]["noise"] == noise
    assert report["settings"]["epochs"] == 200 and not report["settings"]["quick"]
    assert davidson_fig1.main(["--from-json", str(path), "--out", str(tmp_path)]) is None
    out = capsys.readouterr().out
    assert (tmp_path / "davidson_fig1.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["davidson_fig1.png"]
    lines = [line for line in out.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == 5
    near = {"abs": 0.0005 + 1e-9}  # the table rounds to three decimals
    for cells, key in zip(rows, "abcde", strict=True):
        panel = report["panels"][key]
        assert float(cells[1]) == pytest.approx(panel["silhouette"], **near)
        assert float(cells[2]) == pytest.approx(panel["nearest_centroid_accuracy"], **near)
        if key in "cde":
            value, stderr = (float(part) for part in cells[3].split(" ± "))
            assert value == pytest.approx(panel["test_log_likelihood"], abs=0.005 + 1e-9)
            assert stderr == pytest.approx(panel["test_log_likelihood_stderr"], abs=0.005 + 1e-9)
        else:
            assert cells[3] == ""
    table = "\n".join(lines)
    assert table in PRIORS_DOC.read_text(), f"docs/priors.md does not show this table:\n{table}"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="missing file"),
        pytest.param("not json", id="not JSON"),
        pytest.param('{"panels": {}}', id="no codes"),
    ],
)
def test_a_bad_from_json_is_one_line(content, tmp_path, capsys):
    path = tmp_path / "davidson_fig1.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        davidson_fig1.main(["--from-json", str(path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "davidson_fig1.json" in err, err

"""Every example runs, in its quick mode, and none is left out."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import find_data_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
COVERED = [
    "compare_estimators.py",
    "frey_faces.py",
    "image_files.py",
    "iwae_vs_elbo.py",
    "posterior_check.py",
    "quickstart.py",
    "train_mnist.py",
]
NEEDS_DATA = {"frey_faces.py"}  # no bundled sample of Frey Face


def _takes(name: str, flag: str) -> bool:
    return f'"{flag}"' in (EXAMPLES / name).read_text()


def _run(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYRO_VAE_OFFLINE": "1"},
        cwd=cwd,
        timeout=600,
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess, name: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"{name}: error: ")
    return line


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(COVERED)


@pytest.mark.parametrize("name", COVERED)
def test_example_runs_quick(name, tmp_path):
    env = {**os.environ, "PYRO_VAE_OFFLINE": "1"}
    args = []
    if name in NEEDS_DATA:
        data_dir = find_data_dir()
        if data_dir is None or not (data_dir / "FreyFace").is_dir():
            pytest.skip("Frey Face not found: set PYRO_VAE_DATA_DIR")
        args = ["--data-dir", str(data_dir)]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--quick", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ELBO" in proc.stdout


# Frey Face has no fallback: one line. The MNIST examples share load_dataset(fallback=True)
# (tested in test_data.py and test_cli.py); one of them stands for all, each run costs a training.
@pytest.mark.parametrize("name", [*sorted(NEEDS_DATA), "quickstart.py"])
def test_example_with_an_empty_data_dir(name, tmp_path):
    assert _takes(name, "--data-dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["--quick", "--data-dir", str(empty)]
    if name in NEEDS_DATA:
        line = _assert_one_line_error(_run(name, args, tmp_path), name)
        assert "not found" in line and str(empty) in line and "--data-dir" in line
        assert "cannot write" not in line  # the data error, not taken for an --out one
        return
    proc = _run(name, [*args, "--dataset", "mnist"], tmp_path)  # not the bundled sample
    assert proc.returncode == 0, proc.stderr
    # Python shows the DataFallbackWarning on stderr, at the example's own line
    assert "DataFallbackWarning: MNIST was not found" in proc.stderr, proc.stderr
    assert "quickstart.py" in proc.stderr and "ELBO" in proc.stdout


@pytest.mark.parametrize("name", [n for n in COVERED if _takes(n, "--out")])
def test_example_with_an_unwritable_out(name, tmp_path):
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "out"  # a folder inside a file: no one can create it
    line = _assert_one_line_error(_run(name, ["--quick", "--out", str(out)], tmp_path), name)
    assert str(out) in line

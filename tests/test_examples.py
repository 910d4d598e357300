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
    "iwae_vs_elbo.py",
    "posterior_check.py",
    "quickstart.py",
    "train_mnist.py",
]
NEEDS_DATA = {"frey_faces.py"}  # no bundled sample of Frey Face


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

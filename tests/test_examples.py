"""Every example runs, in its quick mode, and none is left out."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
COVERED = ["compare_estimators.py", "quickstart.py"]


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(COVERED)


@pytest.mark.parametrize("name", COVERED)
def test_example_runs_quick(name, tmp_path):
    env = {**os.environ, "PYRO_VAE_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test ELBO" in proc.stdout

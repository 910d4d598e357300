"""Every test starts seeded, with an empty param store, validation on and downloads off."""

import os
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def cli_fails(argv, capsys, code=1) -> str:
    """Run ``pyro-vae argv`` in-process; assert exit ``code`` and one line on stderr; return it."""
    from pyro_vae.cli import main

    try:
        result = main(argv)
    except SystemExit as e:  # argparse's usage errors
        result = e.code
    err = capsys.readouterr().err.strip()
    assert result == code, err
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def write_class_folders(root: Path) -> Path:
    """``root/shapes``: train/ and test/ folders of three classes of random 8 x 6 grey PNGs
    (12 and 4 a class), a user's labelled image folder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for c, name in enumerate(("circle", "square", "wave")):
            for i in range(count):
                pixels = rng.integers(0, 256, (8, 6), dtype=np.uint8) // (c + 1)
                path = root / "shapes" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root / "shapes"


def find_data_dir() -> Path | None:
    """The folder holding MNIST/raw: $PYRO_VAE_DATA_DIR, else ../shared/data beside the repo."""
    for candidate in (os.environ.get("PYRO_VAE_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "MNIST" / "raw").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(autouse=True)
def clean_pyro(monkeypatch):
    monkeypatch.setenv("PYRO_VAE_OFFLINE", "1")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def data_dir() -> Path:
    found = find_data_dir()
    if found is None:
        pytest.skip("MNIST not found: set PYRO_VAE_DATA_DIR to a folder holding MNIST/raw")
    return found


@pytest.fixture
def float64():
    """Float64 as the default dtype for one test, for closed-form comparisons."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)

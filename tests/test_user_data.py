"""Your own data through the whole library: folders and arrays from the command line, the
validation split, and images kept as compactly as they come."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from conftest import cli_fails
from PIL import Image

from pyro_vae import ConfigError, DataError, ImageData, TrainConfig, fit, load_dataset, load_run
from pyro_vae.cli import main
from pyro_vae.data import BatchLoader, as_float, split_validation
from pyro_vae.plots import latent_scatter_figure
from pyro_vae.train import run_images

QUICK = ["--batch-size", "32", "--hidden-sizes", "16", "--latent-dim", "2", "--epochs", "1",
         "--eval-particles", "5", "--eval-images", "20", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """300 real MNIST digits (uint8, (N, 28, 28)) and their labels."""
    data = load_dataset("mnist-sample")
    return data.train_images[:300].reshape(-1, 28, 28).numpy(), data.train_labels[:300].numpy()


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory, digits) -> str:
    """The digits as PNG files in class sub-folders."""
    root = tmp_path_factory.mktemp("pngs") / "digits"
    for i, (image, label) in enumerate(zip(*digits, strict=True)):
        (root / f"class-{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"class-{label}" / f"{i:04d}.png")
    return str(root)


def test_the_cli_trains_on_a_folder_of_pngs_with_class_labels(png_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", png_folder, "--out", str(run), *QUICK]) == 0
    out = capsys.readouterr().out
    assert "validation ELBO" in out and "test ELBO" in out
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == png_folder and config["valid_fraction"] == 0.1
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert set(metrics[0]) == {"epoch", "step", "train_elbo", "valid_elbo", "seconds"}
    for picture in ("samples", "reconstructions", "latent_scatter", "training_curves"):
        assert (run / f"{picture}.png").stat().st_size > 0
    assert main(["evaluate", str(run), "-K", "5", "--num-images", "10"]) == 0
    assert main(["plot", str(run)]) == 0


def test_the_cli_trains_a_conv_vae_on_a_resized_npy_array(digits, tmp_path, capsys):
    np.save(tmp_path / "digits.npy", digits[0].astype(np.float32) / 255)  # floats in [0, 1]
    run = tmp_path / "run"
    argv = ["train", "--dataset", str(tmp_path / "digits.npy"), "--image-size", "16", "--arch",
            "conv", "--conv-channels", "4", "--out", str(run), *QUICK]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    loaded = load_run(run)
    assert loaded.config.image_size == (16, 16) and loaded.image_shape == (16, 16)
    assert loaded.vae.event_shape == (1, 16, 16)


BAD_DATA = [
    pytest.param("empty", "no PNG or JPEG", id="empty folder"),
    pytest.param("broken.png", "broken", id="unreadable image"),
    pytest.param("mixed", "--image-size", id="mixed sizes"),
    pytest.param("big.npy", r"\[0, 1\]", id="values above one"),
    pytest.param("nan.npy", "NaN", id="NaN"),
]


def _bad(tmp_path, name: str):
    if name == "empty":
        (tmp_path / "empty").mkdir()
    elif name == "broken.png":
        (tmp_path / "broken").mkdir()
        Image.new("L", (8, 8)).save(tmp_path / "broken" / "a.png")
        (tmp_path / "broken" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return tmp_path / "broken"
    elif name == "mixed":
        (tmp_path / "mixed").mkdir()
        Image.new("L", (8, 8)).save(tmp_path / "mixed" / "a.png")
        Image.new("L", (9, 8)).save(tmp_path / "mixed" / "b.png")
    elif name == "big.npy":
        np.save(tmp_path / name, np.full((10, 8, 8), 2.0, dtype=np.float32))
    elif name == "nan.npy":
        np.save(tmp_path / name, np.full((10, 8, 8), np.nan, dtype=np.float32))
    return tmp_path / name


@pytest.mark.parametrize("name, message", BAD_DATA)
def test_bad_data_is_one_line_naming_the_file_and_writes_nothing(name, message, tmp_path, capsys):
    path = _bad(tmp_path, name)
    run = tmp_path / "run"
    err = cli_fails(["train", "--dataset", str(path), "--out", str(run), *QUICK], capsys)
    assert name.split(".")[0] in err  # the file or folder is named
    assert re.search(message, err), err
    assert not run.exists()


@pytest.mark.parametrize(
    "extra, code, message",
    [
        pytest.param(["--valid-fraction", "1"], 1, "valid_fraction", id="valid fraction 1"),
        pytest.param(["--valid-fraction", "-0.1"], 1, "valid_fraction", id="valid fraction <0"),
        pytest.param(["--valid-fraction", "nan"], 1, "valid_fraction", id="valid fraction nan"),
        pytest.param(["--split-seed", "-1"], 1, "split_seed", id="split seed -1"),
        pytest.param(["--image-size", "16"], 1, "your own images", id="image size for mnist"),
        pytest.param(["--arch", "transformer"], 2, "invalid choice", id="unknown arch"),
        pytest.param(["--conv-channels", "0"], 1, "conv channels", id="conv channels 0"),
        pytest.param(["--dataset", "no/such/folder"], 2, "invalid choice", id="missing path"),
    ],
)
def test_bad_settings_are_one_line_and_write_nothing(extra, code, message, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--dataset", "mnist-sample", *QUICK, *extra, "--out", str(run)]
    assert message in cli_fails(argv, capsys, code)
    assert not run.exists()


def test_an_image_size_that_is_not_n_or_h_w_is_refused(png_folder, tmp_path, capsys):
    argv = ["train", "--dataset", png_folder, "--image-size", "8", "8", "8", *QUICK,
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert "image_size" in cli_fails(argv, capsys)


def test_the_validation_split_is_disjoint_fixed_and_independent_of_the_seed():
    images = torch.arange(1000).unsqueeze(1)
    train, valid = split_validation(images, 0.1, seed=0)
    assert len(valid) == 100 and len(train) == 900
    assert sorted(torch.cat([train, valid]).squeeze(1).tolist()) == list(range(1000))
    assert torch.equal(valid, split_validation(images, 0.1, seed=0)[1])
    assert not torch.equal(valid, split_validation(images, 0.1, seed=1)[1])
    a = run_images(TrainConfig(dataset="mnist-sample", seed=0))
    b = run_images(TrainConfig(dataset="mnist-sample", seed=5))
    assert torch.equal(a.valid, b.valid)  # runs of any seed are chosen between on one set
    assert len(a.valid) == 500 and len(a.train) == 4500 and len(a.test) == 1000
    # binarized once, and none of them is a training image
    assert set(a.valid.unique().tolist()) == {0.0, 1.0}
    train_rows = {tuple(row.tolist()) for row in a.train[:, ::7]}
    full = load_dataset("mnist-sample").train_images
    _, held = split_validation(full, 0.1, 0)
    assert not any(tuple(row.tolist()) in train_rows for row in held[:, ::7])


def test_without_a_validation_split_each_epoch_is_scored_on_the_test_set():
    config = TrainConfig(dataset="mnist-sample", train_size=256, hidden_sizes=(16,),
                         latent_dim=2, epochs=1, valid_fraction=0.0)  # fmt: skip
    (row,) = fit(config).history
    assert set(row) == {"epoch", "step", "train_elbo", "test_elbo", "seconds"}


def test_a_run_from_before_the_validation_split_resumes_as_it_was_scored(tmp_path):
    config = TrainConfig(dataset="mnist-sample", train_size=256, hidden_sizes=(16,),
                         latent_dim=2, epochs=1, valid_fraction=0.0)  # fmt: skip
    fit(config, tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["valid_fraction"]  # as configs of earlier versions are
    assert TrainConfig.from_dict(stored).valid_fraction == 0.0


@pytest.mark.numerics
def test_eight_bit_images_stay_uint8_and_train_exactly_as_floats():
    data = load_dataset("mnist-sample")
    config = TrainConfig(dataset="mnist-sample", train_size=256, hidden_sizes=(16,),
                         latent_dim=2, epochs=1)  # fmt: skip
    images = run_images(config, data)
    assert images.train.dtype == torch.uint8  # 1 byte a pixel in memory
    batch = next(BatchLoader(images.train, 64, "none").epoch(0))
    assert batch.dtype == torch.float32 and 0 <= batch.min() and batch.max() <= 1
    as_floats = dataclasses.replace(data, train_images=data.train_images / 255.0,
                                    test_images=data.test_images / 255.0)  # fmt: skip
    a, b = fit(config, data=data), fit(config, data=as_floats)
    assert a.history[0]["valid_elbo"] == b.history[0]["valid_elbo"]
    for p, q in zip(a.vae.parameters(), b.vae.parameters(), strict=True):
        assert torch.equal(p, q)


def test_fashion_mnist_pictures_name_their_classes():
    data = ImageData("toy", torch.rand(6, 4), torch.arange(6) % 2, torch.rand(6, 4),
                     torch.arange(6) % 2, (2, 2), "test", ("Trouser", "Bag"))  # fmt: skip
    config = TrainConfig(dataset="mnist-sample", likelihood="continuous-bernoulli", epochs=1,
                         batch_size=2, hidden_sizes=(4,), latent_dim=2,
                         valid_fraction=0.0)  # fmt: skip
    result = fit(config, data=data)
    figure = latent_scatter_figure(result.vae, result.test_images, result.test_labels,
                                   result.class_names)  # fmt: skip
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == ["Trouser", "Bag"]


def test_image_size_belongs_to_your_own_images():
    with pytest.raises(ConfigError, match="your own images"):
        TrainConfig(dataset="mnist-sample", image_size=16).validate()


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda x: x, id="(N, H, W) uint8"),
        pytest.param(lambda x: x[:, None], id="(N, C, H, W)"),
        pytest.param(lambda x: x[..., None], id="(N, H, W, C)"),
        pytest.param(lambda x: x.float() / 255, id="float in [0, 1]"),
    ],
)
@pytest.mark.numerics
def test_tensors_from_python_train_like_the_same_images_from_a_file(layout, digits, tmp_path):
    from pyro_vae import images_from_tensors

    images = torch.from_numpy(digits[0])
    np.save(tmp_path / "digits.npy", digits[0])
    data = images_from_tensors(layout(images))
    from_file = load_dataset(str(tmp_path / "digits.npy"))
    assert data.image_shape == from_file.image_shape == (28, 28)
    assert torch.equal(as_float(data.test_images), as_float(from_file.test_images))
    config = TrainConfig(dataset="mnist-sample", hidden_sizes=(8,), latent_dim=2, epochs=1,
                         batch_size=32)  # fmt: skip
    assert fit(config, data=data).history[0]["valid_elbo"] < 0


def test_tensors_from_python_with_labels_and_a_test_set(digits):
    from pyro_vae import images_from_tensors

    images, labels = torch.from_numpy(digits[0]), torch.from_numpy(digits[1])
    data = images_from_tensors(images[:250], images[250:], labels[:250], labels[250:],
                               class_names=tuple("abcdefghij"))  # fmt: skip
    assert len(data.train_images) == 250 and torch.equal(data.test_labels, labels[250:].long())
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        images_from_tensors(images.float())  # 0..255 as floats
    with pytest.raises(DataError, match="both the train and the test"):
        images_from_tensors(images[:250], images[250:], labels[:250])
    with pytest.raises(DataError, match="torch.Tensor or a NumPy array"):
        images_from_tensors(images.tolist())


def test_a_run_refuses_data_that_changed_since_it_was_trained(digits, tmp_path, capsys):
    """Images added to a folder after a run was trained: a resume (and evaluate, plot) would
    use other splits of other images, and said nothing; now each refuses in one line. A run
    from before fingerprints (none recorded) is trusted as it was."""
    import shutil

    from pyro_vae.checkpoint import state_checksum

    folder = tmp_path / "digits"
    folder.mkdir()
    for i, image in enumerate(digits[0][:250]):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(folder), "--out", str(run), *QUICK]) == 0
    assert main(["evaluate", str(run), "-K", "2", "--num-images", "5"]) == 0  # unchanged: fine
    old = tmp_path / "old"  # the same run, as one written before fingerprints were
    shutil.copytree(run, old)
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    del state["data_fingerprint"], state["checksum"]
    state["checksum"] = state_checksum(state)
    torch.save(state, old / "checkpoint.pt")
    for i, image in enumerate(digits[0][250:], start=250):  # 50 images added
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    capsys.readouterr()
    argv = ["train", "--dataset", str(folder), *QUICK[:-3], "--epochs", "2"]
    for command in (
        [*argv, "--resume", str(run)],
        ["evaluate", str(run), "-K", "2", "--num-images", "5"],
        ["plot", str(run)],
    ):
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        assert main(command) == 1, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "are not those the run in" in err, err
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main([*argv, "--resume", str(old)]) == 0

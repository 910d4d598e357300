import pytest
import torch

from pyro_vae.data import (
    BatchLoader,
    ImageData,
    binarize_once,
    check_support,
    load_dataset,
    load_mnist_or_sample,
    mean_image,
    prepare_images,
    resolve_data_dir,
)
from pyro_vae.errors import DataError, DataNotFoundError


def test_bundled_sample_is_real_mnist():
    data = load_dataset("mnist-sample")
    assert data.train_images.shape == (5000, 784) and data.test_images.shape == (1000, 784)
    # 8-bit pixels kept as they come, a quarter of float32's memory (converted per batch)
    assert data.train_images.dtype == data.test_images.dtype == torch.uint8
    # every digit class present, in roughly MNIST's proportions
    counts = torch.bincount(data.train_labels, minlength=10)
    assert counts.min() > 350 and counts.max() < 650
    assert abs(mean_image(data.train_images).mean().item() - 0.1307) < 0.01  # MNIST's mean


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_VAE_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("PYRO_VAE_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir() == tmp_path / "cache" / "pyro_vae" / "data"


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "frey-faces"])
def test_missing_data_offline_says_where_it_looked(name, tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "--data-dir" in message and "PYRO_VAE_DATA_DIR" in message
    assert "\n" not in message


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_real_datasets_load(data_dir):
    mnist = load_dataset("mnist", data_dir)
    assert mnist.train_images.shape == (60000, 784) and mnist.test_images.shape == (10000, 784)
    assert abs(mean_image(mnist.train_images).mean().item() - 0.1307) < 1e-3
    assert torch.bincount(mnist.test_labels).tolist()[:3] == [980, 1135, 1032]
    fashion = load_dataset("fashion-mnist", data_dir)
    assert abs(mean_image(fashion.train_images).mean().item() - 0.2860) < 1e-3
    assert fashion.class_names[fashion.train_labels[0]] == "Ankle boot"  # Xiao et al.'s first
    frey = load_dataset("frey-faces", data_dir)
    assert frey.image_shape == (28, 20)
    assert frey.train_images.shape[0] + frey.test_images.shape[0] == 1965
    all_faces = torch.cat([frey.train_images, frey.test_images]) * 255
    assert abs(all_faces.mean().item() - 154.46) < 0.01


def _grey_data(n=200, d=16):
    images = torch.rand(n, d)
    return ImageData("toy", images, None, images[:50].clone(), None, (4, 4), "test")


def test_binarization_modes():
    data = _grey_data()
    train_dyn, test_dyn = prepare_images(data, "dynamic", "bernoulli", seed=1)
    train_stat, test_stat = prepare_images(data, "static", "bernoulli", seed=1)
    train_none, test_none = prepare_images(data, "none", "gaussian", seed=1)
    assert torch.equal(train_dyn, data.train_images)  # sampled per batch, not here
    assert set(train_stat.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(train_none, data.train_images) and torch.equal(test_none, data.test_images)
    # the test set is binarized once with a fixed seed, whatever the training seed
    assert torch.equal(test_dyn, test_stat)
    assert torch.equal(test_dyn, prepare_images(data, "dynamic", "bernoulli", seed=7)[1])
    assert not torch.equal(train_stat, prepare_images(data, "static", "bernoulli", seed=7)[0])


def test_binarize_once_is_a_bernoulli_sample():
    p = torch.full((200_000,), 0.3)
    x = binarize_once(p, seed=0)
    se = (0.3 * 0.7 / p.numel()) ** 0.5
    assert abs(x.mean().item() - 0.3) < 5 * se
    assert torch.equal(x, binarize_once(p, seed=0))


def test_batch_loader_dynamic_resamples_each_epoch_and_is_reproducible():
    images = torch.full((10, 1000), 0.5)
    loader = BatchLoader(images, batch_size=4, binarize="dynamic", seed=3)
    assert len(loader) == 3
    epoch0 = list(loader.epoch(0))
    assert [b.shape[0] for b in epoch0] == [4, 4, 2]
    assert all(set(b.unique().tolist()) == {0.0, 1.0} for b in epoch0)
    again = list(BatchLoader(images, 4, "dynamic", seed=3).epoch(0))
    assert all(torch.equal(a, b) for a, b in zip(epoch0, again, strict=True))
    epoch1 = list(loader.epoch(1))
    assert not torch.equal(epoch0[0], epoch1[0])


def test_batch_loader_covers_every_image_once():
    images = torch.arange(23.0).unsqueeze(1)
    seen = torch.cat(list(BatchLoader(images, 5, "none", seed=0).epoch(4)))
    assert sorted(seen.squeeze(1).tolist()) == list(range(23))
    assert seen.squeeze(1).tolist() != list(range(23))  # shuffled


def test_grey_levels_rejected_by_bernoulli_without_binarization():
    with pytest.raises(DataError, match="grey levels.*--binarize"):
        prepare_images(_grey_data(), "none", "bernoulli", seed=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_in_data_rejected(bad):
    data = _grey_data()
    data.train_images[3, 5] = bad
    with pytest.raises(DataError, match="NaN or infinite"):
        prepare_images(data, "dynamic", "bernoulli", seed=0)


def test_support_checks():
    check_support(torch.tensor([0.0, 1.0]), "bernoulli")
    check_support(torch.tensor([0.0, 0.5, 1.0]), "continuous-bernoulli")
    check_support(torch.tensor([-3.0, 7.0]), "gaussian")
    with pytest.raises(DataError, match="outside"):
        check_support(torch.tensor([0.5, 1.5]), "continuous-bernoulli")
    with pytest.raises(DataError, match="cannot binarize"):
        prepare_images(
            ImageData("t", torch.tensor([[2.0]]), None, torch.tensor([[0.0]]), None, (1, 1), ""),
            "dynamic",
            "bernoulli",
            0,
        )


def test_mnist_falls_back_to_the_sample_with_a_note(tmp_path):
    data, note = load_mnist_or_sample(tmp_path)
    assert data.name == "mnist-sample" and str(tmp_path) in note and "NOT comparable" in note


def test_mnist_without_fallback_when_present(data_dir):
    data, note = load_mnist_or_sample(data_dir)
    assert data.name == "mnist" and note is None

"""Damaged, unreadable, misplaced and missing data files: one clear line each, never a traceback.

The MNIST cases run on small synthetic IDX files written to ``tmp_path``, so they need no real
data; the last tests check the reader against torchvision on the real files when present.
"""

import gzip
import os
import urllib.error

import numpy as np
import pytest
import scipy.io
import torch

import pyro_vae.data as data_module
import pyro_vae.idx as idx_module
import pyro_vae.memory as memory
from pyro_vae.data import load_dataset, load_mnist_or_sample
from pyro_vae.errors import DataError, DataNotFoundError
from pyro_vae.memory import MemoryLimit

FILES = {
    "train images": "train-images-idx3-ubyte",
    "train labels": "train-labels-idx1-ubyte",
    "test images": "t10k-images-idx3-ubyte",
    "test labels": "t10k-labels-idx1-ubyte",
}
SIZES = {"train": 30, "test": 12}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """``array`` (uint8) as an IDX file: magic, big-endian uint32 sizes, then the bytes."""
    magic = magic if magic is not None else 0x800 + array.ndim
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return magic.to_bytes(4, "big") + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        n = SIZES[split]
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    return arrays


def write_mnist(folder, compress: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Four valid IDX files in ``folder``; the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_arrays(seed)
    for name, array in arrays.items():
        if compress:
            (folder / (name + ".gz")).write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return arrays


def assert_one_line(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message


# Each damage takes the raw folder and leaves one named file damaged.
def zero_bytes(raw, name):
    (raw / name).write_bytes(b"")


def random_bytes(raw, name):
    (raw / name).write_bytes(np.random.default_rng(1).bytes(5000))


def three_bytes(raw, name):
    (raw / name).write_bytes(b"\x00\x00\x08")


def swap_with(other):
    def damage(raw, name):
        (raw / name).write_bytes((raw / other).read_bytes())

    return damage


def truncate(keep):
    def damage(raw, name):
        (raw / name).write_bytes((raw / name).read_bytes()[:keep])

    return damage


def cut_tail(raw, name):
    (raw / name).write_bytes((raw / name).read_bytes()[:-5])


def append_bytes(raw, name):
    (raw / name).write_bytes((raw / name).read_bytes() + b"\x00" * 7)


def big_images(raw, name):
    (raw / name).write_bytes(idx_bytes(np.zeros((SIZES["train"], 32, 32), np.uint8)))


def no_images(raw, name):
    (raw / name).write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8)))


def label_out_of_range(raw, name):
    labels = np.zeros(SIZES["test"], np.uint8)
    labels[5] = 10
    (raw / name).write_bytes(idx_bytes(labels))


def one_label_short(raw, name):
    (raw / name).write_bytes(idx_bytes(np.zeros(SIZES["train"] - 1, np.uint8)))


def wrong_type(raw, name):  # signed bytes (0x09) instead of unsigned
    (raw / name).write_bytes(idx_bytes(np.zeros(SIZES["train"], np.uint8), magic=0x0901))


def folder_instead(raw, name):
    (raw / name).unlink()
    (raw / name).mkdir()


def broken_link(raw, name):
    (raw / name).unlink()
    (raw / name).symlink_to(raw / "nowhere")


def mode_000(raw, name):
    (raw / name).chmod(0)


def gzip_garbage(raw, name):
    (raw / name).unlink()
    (raw / (name + ".gz")).write_bytes(b"\x1f\x8b" + np.random.default_rng(2).bytes(500))


def gzip_empty(raw, name):
    (raw / name).unlink()
    (raw / (name + ".gz")).write_bytes(b"")


def gzip_cut(raw, name):
    packed = gzip.compress((raw / name).read_bytes())
    (raw / name).unlink()
    (raw / (name + ".gz")).write_bytes(packed[: len(packed) // 2])


def gzip_of_truncated(raw, name):
    packed = gzip.compress((raw / name).read_bytes()[:-28])
    (raw / name).unlink()
    (raw / (name + ".gz")).write_bytes(packed)


def gzip_with_trailing_bytes(raw, name):
    packed = gzip.compress((raw / name).read_bytes() + b"\x00" * 7)
    (raw / name).unlink()
    (raw / (name + ".gz")).write_bytes(packed)


def gzip_claiming(count):
    """A gzip file whose header declares ``count`` images but which holds 30."""

    def damage(raw, name):
        data = (raw / name).read_bytes()
        header = (0x803).to_bytes(4, "big") + np.array([count, 28, 28], ">u4").tobytes()
        (raw / name).unlink()
        (raw / (name + ".gz")).write_bytes(gzip.compress(header + data[16:]))

    return damage


IDX_DAMAGE = [
    pytest.param(zero_bytes, "train labels", "empty (0 bytes)", id="zero-byte train labels"),
    pytest.param(zero_bytes, "test images", "empty (0 bytes)", id="zero-byte test images"),
    pytest.param(random_bytes, "train images", "not an IDX images file", id="random bytes"),
    pytest.param(three_bytes, "test labels", "too short for an IDX header", id="three bytes"),
    pytest.param(
        swap_with(FILES["train images"]),
        "train labels",
        "looks like an images file where a labels file belongs",
        id="swapped labels",
    ),
    pytest.param(
        swap_with(FILES["test labels"]),
        "test images",
        "looks like a labels file where an images file belongs",
        id="swapped images",
    ),
    pytest.param(cut_tail, "train images", "truncated", id="truncated images"),
    pytest.param(cut_tail, "train labels", "truncated", id="truncated labels"),
    pytest.param(truncate(10), "test images", "truncated inside its header", id="truncated header"),
    pytest.param(append_bytes, "test labels", "7 bytes too many", id="trailing bytes"),
    pytest.param(big_images, "train images", "32x32 images; expected 28x28", id="32x32 images"),
    pytest.param(no_images, "train images", "holds no images", id="no images"),
    pytest.param(label_out_of_range, "test labels", "outside 0..9", id="labels out of range"),
    pytest.param(wrong_type, "train labels", "magic number 0x00000901", id="signed-byte labels"),
    pytest.param(folder_instead, "train images", "a folder, not a file", id="folder for a file"),
    pytest.param(broken_link, "test labels", "broken symbolic link", id="broken symlink"),
    pytest.param(
        mode_000,
        "train labels",
        "permission denied",
        id="unreadable (mode 000)",
        marks=pytest.mark.skipif(
            os.geteuid() == 0, reason="root reads mode-000 files; see the monkeypatched test"
        ),
    ),
    pytest.param(gzip_empty, "test labels", "empty (0 bytes)", id="zero-byte gzip"),
    pytest.param(gzip_garbage, "train labels", "not a valid gzip file", id="damaged gzip"),
    pytest.param(gzip_cut, "test images", "not a valid gzip file", id="truncated gzip"),
    pytest.param(gzip_of_truncated, "test images", "truncated", id="gzip of truncated images"),
    pytest.param(
        gzip_with_trailing_bytes, "test images", "7 bytes too many", id="gzip of trailing bytes"
    ),
    pytest.param(
        gzip_claiming(10**6),
        "train images",
        "truncated: 23520 bytes of data, not the 1000000 images",
        id="gzip header claims a million images",
    ),
]


@pytest.mark.parametrize("damage, which, problem", IDX_DAMAGE)
def test_damaged_mnist_file_is_one_line_naming_it(tmp_path, damage, which, problem):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw)
    damage(raw, FILES[which])
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert not isinstance(info.value, DataNotFoundError)
    assert str(raw / FILES[which]) in message and problem in message, message
    assert message.startswith(("damaged mnist file", "cannot read mnist file")), message
    assert_one_line(message)
    # A damaged MNIST is an error even when no data set was asked for: no silent fallback.
    with pytest.raises(DataError) as info:
        load_mnist_or_sample(tmp_path)
    assert not isinstance(info.value, DataNotFoundError)


@pytest.mark.parametrize(
    "damage, count",
    [
        pytest.param(None, SIZES["train"], id="plain file"),
        pytest.param(gzip_claiming(SIZES["train"]), SIZES["train"], id="gzip file"),
        pytest.param(gzip_claiming(4 * 10**9), 4 * 10**9, id="gzip claiming 4e9 images"),
    ],
)
def test_idx_beyond_memory_is_refused_before_it_is_read(tmp_path, monkeypatch, damage, count):
    """What the header declares is checked against the memory left before it is allocated (a
    gzip file's length is known only once it is unpacked: its header is all there is)."""
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw)
    name = FILES["train images"]
    if damage is not None:
        damage(raw, name)
        name += ".gz"
    limit = MemoryLimit("ulimit -v", 2**20, 10000)
    monkeypatch.setattr(memory, "memory_limits", lambda: [limit])
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert message.startswith(
        f"cannot read mnist file {raw / name}: its header says it holds {count:,} images ("
    ), message
    assert message.endswith("but the process's limit (ulimit -v) leaves 9.8 KiB of its 1.0 MiB")
    assert_one_line(message)


def test_count_mismatch_names_both_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw)
    one_label_short(raw, FILES["train labels"])
    with pytest.raises(DataError) as info:
        load_mnist_or_sample(tmp_path)
    message = str(info.value)
    assert str(raw / FILES["train images"]) in message
    assert str(raw / FILES["train labels"]) in message
    assert "holds 30 images but" in message and "holds 29 labels" in message
    assert_one_line(message)


def test_raw_folder_that_is_a_file(tmp_path):
    (tmp_path / "MNIST").mkdir()
    (tmp_path / "MNIST" / "raw").write_bytes(b"not a folder")
    with pytest.raises(DataError, match="expected a folder") as info:
        load_mnist_or_sample(tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)


def test_damage_wins_over_missing_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw)
    (raw / FILES["test images"]).unlink()
    zero_bytes(raw, FILES["train labels"])
    with pytest.raises(DataError, match="empty"):
        load_mnist_or_sample(tmp_path)


def test_permission_error_is_a_data_error(tmp_path, monkeypatch):
    """Mode 000 as a non-root user, imitated: the reader's ``open`` refuses."""
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw)
    refused = raw / FILES["train labels"]

    def fake_open(path, *args, **kwargs):
        if os.fspath(path) == str(refused):
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(idx_module, "open", fake_open, raising=False)  # the IDX reader's
    with pytest.raises(DataError) as info:
        load_mnist_or_sample(tmp_path)
    assert str(info.value) == f"cannot read mnist file {refused}: permission denied"


def test_damaged_fashion_mnist_names_its_data_set(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_mnist(raw)
    zero_bytes(raw, FILES["test labels"])
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", tmp_path)
    expected = f"damaged fashion-mnist file {raw / FILES['test labels']}: the file is empty"
    assert str(info.value).startswith(expected)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_synthetic_files_load_exactly(tmp_path, compress):
    arrays = write_mnist(tmp_path / "MNIST" / "raw", compress=compress)
    data, note = load_mnist_or_sample(tmp_path)
    assert data.name == "mnist" and note is None and data.image_shape == (28, 28)
    images = torch.from_numpy(arrays[FILES["train images"]]).reshape(SIZES["train"], -1)
    assert torch.equal(data.train_images, images)  # the bytes, as they come
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert data.test_labels.tolist() == arrays[FILES["test labels"]].tolist()
    assert data.source == str(tmp_path / "MNIST" / "raw")


def test_plain_file_wins_over_gzip(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    arrays = write_mnist(raw)
    (raw / (FILES["test labels"] + ".gz")).write_bytes(b"garbage, never read")
    data = load_dataset("mnist", tmp_path)
    assert data.test_labels.tolist() == arrays[FILES["test labels"]].tolist()


# Each layout puts the four files in a near miss of DATA_DIR/MNIST/raw; ``data_dir`` is what
# the user passed, relative to tmp_path.
MISPLACED = [
    pytest.param("MNIST", "", False, id="files in MNIST without raw"),
    pytest.param("", "", False, id="files in the data dir itself"),
    pytest.param("raw", "", False, id="raw folder without MNIST"),
    pytest.param("MNIST/raw", "MNIST/raw", False, id="misplaced raw folder: data dir is raw"),
    pytest.param("MNIST/raw", "MNIST", False, id="data dir is MNIST"),
    pytest.param("MNIST", "", True, id="gzip in MNIST without raw"),
]


@pytest.mark.parametrize("where, data_dir, compress", MISPLACED)
def test_misplaced_files_say_where_they_were_found(tmp_path, where, data_dir, compress):
    folder = tmp_path / where
    write_mnist(folder, compress=compress)
    root = tmp_path / data_dir
    suffix = ".gz" if compress else ""
    found = folder / (FILES["train images"] + suffix)
    expected = root / "MNIST" / "raw" / (FILES["train images"] + suffix)
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", root)
    message = str(info.value)
    assert f"found {found.name} at {found}; expected at {expected}" in message, message
    assert "and 3 more of the missing files beside it" in message
    assert_one_line(message)
    data, note = load_mnist_or_sample(root)  # absent where expected: fall back, and say why
    assert data.name == "mnist-sample" and f"found {found.name} at {found}" in note


@pytest.mark.parametrize(
    "removed",
    [
        pytest.param(list(FILES.values()), id="all files missing"),
        pytest.param([FILES["test labels"]], id="test labels missing"),
    ],
)
def test_missing_files_are_listed(tmp_path, removed):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw)
    for name in removed:
        (raw / name).unlink()
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert f"not found under {raw} (missing {', '.join(removed)}, plain or .gz)" in message
    assert "found " not in message.replace("not found", "")
    assert_one_line(message)
    data, note = load_mnist_or_sample(tmp_path)
    assert data.name == "mnist-sample" and note


def test_download_fetches_only_missing_files(tmp_path, monkeypatch):
    from torchvision.datasets import utils

    raw = tmp_path / "MNIST" / "raw"
    arrays = write_mnist(raw)
    (raw / FILES["train labels"]).unlink()
    fetched = []

    def fake_download(url, download_root, filename, md5):
        fetched.append(filename)
        name = filename.removesuffix(".gz")
        (raw / name).write_bytes(idx_bytes(arrays[name]))  # as torchvision extracts it

    monkeypatch.setattr(utils, "download_and_extract_archive", fake_download)
    data = load_dataset("mnist", tmp_path, download=True)
    assert fetched == [FILES["train labels"] + ".gz"]
    assert data.train_labels.tolist() == arrays[FILES["train labels"]].tolist()


def test_failed_download_is_not_found(tmp_path, monkeypatch):
    from torchvision.datasets import utils

    def no_network(url, download_root, filename, md5):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(utils, "download_and_extract_archive", no_network)
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", tmp_path, download=True)
    message = str(info.value)
    assert "could not download train-images-idx3-ubyte.gz" in message
    assert "no route to host" in message
    assert_one_line(message)


def frey_mat(ff) -> dict:
    return {"ff": ff}


def write_frey(root, contents=None, raw: bytes | None = None):
    path = root / "FreyFace" / "frey_rawface.mat"
    path.parent.mkdir(parents=True)
    if raw is not None:
        path.write_bytes(raw)
    else:
        scipy.io.savemat(str(path), contents)
    return path


FACES = np.random.default_rng(0).integers(0, 256, (560, 240), dtype=np.uint8)

FREY_DAMAGE = [
    pytest.param(None, b"", "the file is empty (0 bytes)", id="frey zero bytes"),
    pytest.param(
        None, np.random.default_rng(3).bytes(4000), "not a readable .mat file", id="frey random"
    ),
    pytest.param(None, "truncated", "not a readable .mat file", id="frey truncated"),
    pytest.param({"faces": FACES}, None, "no variable 'ff' (it holds faces)", id="frey no ff"),
    pytest.param({"ff": FACES[:, :150]}, None, "'ff' holds 150 faces", id="frey too few faces"),
    pytest.param(
        {"ff": FACES[:500]},
        None,
        "'ff' has shape (500, 240); expected (560, N)",
        id="frey ff wrong shape",
    ),
    pytest.param(
        {"ff": FACES.T},
        None,
        "'ff' has shape (240, 560); expected (560, N)",
        id="frey ff transposed",
    ),
    pytest.param(
        {"ff": FACES.reshape(560, 120, 2)}, None, "'ff' has shape (560, 120, 2)", id="frey ff 3-D"
    ),
    pytest.param(
        {"ff": FACES.astype(np.float64) * 2},
        None,
        "outside the grey levels 0..255",
        id="frey values above 255",
    ),
    pytest.param(
        {"ff": FACES.astype(np.int16) - 1},
        None,
        "outside the grey levels 0..255",
        id="frey negative values",
    ),
    pytest.param({"ff": FACES / 255.0}, None, "holds fractions", id="frey fractions"),
    pytest.param({"ff": "a face"}, None, "not a numeric matrix", id="frey ff text"),
]


@pytest.mark.parametrize("contents, raw, problem", FREY_DAMAGE)
def test_damaged_frey_file_is_one_line_naming_it(tmp_path, contents, raw, problem):
    if raw == "truncated":
        good = write_frey(tmp_path / "good", frey_mat(FACES))
        raw = good.read_bytes()[:3000]
    path = write_frey(tmp_path, contents, raw)
    with pytest.raises(DataError) as info:
        load_dataset("frey-faces", tmp_path)
    message = str(info.value)
    assert message.startswith(f"damaged frey-faces file {path}: "), message
    assert problem in message, message
    assert_one_line(message)


def test_frey_folder_for_a_file(tmp_path):
    path = tmp_path / "FreyFace" / "frey_rawface.mat"
    path.mkdir(parents=True)
    with pytest.raises(DataError) as info:
        load_dataset("frey-faces", tmp_path)
    assert str(info.value) == f"cannot read frey-faces file {path}: it is a folder, not a file"


def test_frey_permission_error_is_a_data_error(tmp_path, monkeypatch):
    path = write_frey(tmp_path, frey_mat(FACES))

    def refuse(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(data_module, "open", refuse, raising=False)
    with pytest.raises(DataError) as info:
        load_dataset("frey-faces", tmp_path)
    assert str(info.value) == f"cannot read frey-faces file {path}: permission denied"


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.float64, np.int32], ids=["frey uint8", "frey float", "frey int"]
)
def test_frey_grey_levels_of_any_numeric_type(tmp_path, dtype):
    write_frey(tmp_path, frey_mat(FACES.astype(dtype)))
    frey = load_dataset("frey-faces", tmp_path)
    faces = torch.from_numpy(FACES.T.reshape(-1, 28, 20).copy()).reshape(240, -1).float() / 255
    order = torch.randperm(240, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([frey.test_images, frey.train_images]), faces[order])


def test_reader_matches_torchvision_on_real_data(data_dir):
    import torchvision

    for name, cls in (
        ("mnist", torchvision.datasets.MNIST),
        ("fashion-mnist", torchvision.datasets.FashionMNIST),
    ):
        if not (data_dir / cls.__name__ / "raw").is_dir():
            continue
        data = load_dataset(name, data_dir)
        for train, images, labels in (
            (True, data.train_images, data.train_labels),
            (False, data.test_images, data.test_labels),
        ):
            reference = cls(str(data_dir), train=train, download=False)
            flat = reference.data.reshape(reference.data.shape[0], -1)
            assert torch.equal(images, flat), (name, train)
            assert torch.equal(labels, reference.targets.long()), (name, train)
            assert labels.dtype == reference.targets.dtype == torch.int64


def test_real_frey_loads_as_before(data_dir):
    path = data_dir / "FreyFace" / "frey_rawface.mat"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    faces = scipy.io.loadmat(str(path))["ff"]  # what the loader did before it checked the file
    faces = torch.from_numpy(np.ascontiguousarray(faces.T.reshape(-1, 28, 20)))
    order = torch.randperm(faces.shape[0], generator=torch.Generator().manual_seed(0))
    before = faces[order].reshape(faces.shape[0], -1).to(torch.float32) / 255.0
    frey = load_dataset("frey-faces", data_dir)
    assert torch.equal(frey.test_images, before[:200]) and torch.equal(
        frey.train_images, before[200:]
    )

"""A user's own images (pyro_vae.imagefiles): every layout read back pixel for pixel, the held-out
test set, resizing, and one clear line for each kind of bad input.

The files are written by the tests into ``tmp_path``: PNG and JPEG with Pillow, arrays with
NumPy. Images are 8 high and 6 wide, so that a swap of height and width shows.
"""

import io
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch
from conftest import REPO, cli_fails
from PIL import Image

import pyro_vae.arrayfiles as arrayfiles
import pyro_vae.memory as memory
from pyro_vae.errors import DataError, DataNotFoundError
from pyro_vae.imagefiles import HOLDOUT_SEED, load_image_files
from pyro_vae.memory import MemoryLimit

H, W = 8, 6


def grey(seed: int, shape=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def rgb(seed: int, shape=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def write_png(path, pixels: np.ndarray, mode: str | None = None):
    """``pixels`` ((H, W) or (H, W, C)) as a PNG; ``mode`` converts before saving."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def flat(pixels: np.ndarray) -> torch.Tensor:
    """What one image should read back as: channels first, then flattened."""
    if pixels.ndim == 3:
        pixels = pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.array(pixels).reshape(-1))  # a copy: writable


def rows_in(images: torch.Tensor, expected: list[np.ndarray]) -> list[int]:
    """The index in ``expected`` of each row of ``images`` (each row must be there)."""
    table = torch.stack([flat(p) for p in expected])
    found = []
    for row in images:
        matches = (table == row).all(1).nonzero().flatten().tolist()
        assert len(matches) == 1, "a row read back that was not written"
        found.append(matches[0])
    return found


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message


# --- folders --------------------------------------------------------------------------------


def test_flat_folder_reads_every_pixel_and_holds_out_ten_percent(tmp_path):
    pixels = [grey(i) for i in range(30)]
    for i, p in enumerate(pixels):
        write_png(tmp_path / f"{i:03d}.png", p)
    data = load_image_files(tmp_path)
    assert data.image_shape == (H, W)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (27, H * W)
    assert data.test_images.shape == (3, H * W)
    assert data.train_labels is None and data.test_labels is None and data.class_names is None
    train, test = rows_in(data.train_images, pixels), rows_in(data.test_images, pixels)
    assert sorted(train + test) == list(range(30))  # disjoint, and nothing lost
    assert train == sorted(train) and test == sorted(test)  # file order kept
    assert data.name == str(tmp_path)
    assert "held out" in data.source and str(HOLDOUT_SEED) in data.source


def test_rgb_png_is_flattened_channels_first(tmp_path):
    a, b = rgb(0), rgb(1)
    write_png(tmp_path / "train" / "a.png", a)
    write_png(tmp_path / "test" / "b.png", b)
    data = load_image_files(tmp_path)
    assert data.image_shape == (3, H, W)
    assert torch.equal(data.train_images[0], flat(a))
    assert torch.equal(data.test_images[0], flat(b))
    # the first H * W values are the red channel, row by row
    assert data.train_images[0, :W].tolist() == a[0, :, 0].tolist()


def test_class_folders_give_sorted_class_names_and_labels(tmp_path):
    pixels = {}
    for name, seed in (("dog", 0), ("cat", 10), ("ant", 20)):  # written out of order
        for i in range(4):
            pixels[name, i] = grey(seed + i)
            write_png(tmp_path / name / f"{i}.png", pixels[name, i])
    data = load_image_files(tmp_path)
    assert data.class_names == ("ant", "cat", "dog")
    keys = list(pixels)
    expected = [pixels[k] for k in keys]
    for images, labels in (
        (data.train_images, data.train_labels),
        (data.test_images, data.test_labels),
    ):
        assert labels.dtype == torch.int64
        for row, label in zip(rows_in(images, expected), labels.tolist(), strict=True):
            assert data.class_names[label] == keys[row][0]
    assert len(data.train_labels) + len(data.test_labels) == 12


def test_train_and_test_folders_are_the_given_split(tmp_path):
    written = {}
    for split, count in (("train", 5), ("test", 2)):
        for cls in ("0", "1"):
            for i in range(count):
                path = tmp_path / split / cls / f"{i}.png"
                written[split, cls, i] = write_png(path, grey(len(written)))
    data = load_image_files(tmp_path)
    assert data.class_names == ("0", "1")
    assert data.train_labels.tolist() == [0] * 5 + [1] * 5
    assert data.test_labels.tolist() == [0, 0, 1, 1]
    expected = np.asarray(Image.open(written["test", "1", 1]))
    assert torch.equal(data.test_images[3], flat(expected))
    assert "as given" in data.source


def test_flat_train_and_test_folders(tmp_path):
    write_png(tmp_path / "train" / "a.png", grey(0))
    write_png(tmp_path / "train" / "b.png", grey(1))
    write_png(tmp_path / "test" / "c.png", grey(2))
    data = load_image_files(tmp_path)
    assert data.class_names is None and data.train_labels is None
    assert torch.equal(data.train_images[1], flat(grey(1)))
    assert torch.equal(data.test_images[0], flat(grey(2)))


def test_one_colour_image_makes_them_all_rgb(tmp_path):
    g, c = grey(0), rgb(1)
    write_png(tmp_path / "train" / "grey.png", g)
    write_png(tmp_path / "test" / "colour.png", c)
    data = load_image_files(tmp_path)
    assert data.image_shape == (3, H, W)
    assert torch.equal(data.train_images[0], flat(np.stack([g, g, g], axis=2)))
    assert torch.equal(data.test_images[0], flat(c))


@pytest.mark.parametrize(
    "mode, expected",
    [
        pytest.param("L", lambda g: g, id="L"),
        pytest.param("LA", lambda g: g, id="LA (alpha dropped)"),
        pytest.param("1", lambda g: np.where(g >= 128, 255, 0).astype(np.uint8), id="1 (binary)"),
    ],
)
def test_grey_modes_stay_grey(tmp_path, mode, expected):
    g = grey(0)
    write_png(tmp_path / "train" / "a.png", g, mode)
    write_png(tmp_path / "test" / "b.png", g, mode)
    data = load_image_files(tmp_path)
    assert data.image_shape == (H, W)
    if mode != "1":  # Pillow dithers on the way to mode 1; only the 0/255 levels are checked
        assert torch.equal(data.train_images[0], flat(expected(g)))
    else:
        assert set(data.train_images.unique().tolist()) <= {0, 255}


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    levels = grey(0).astype(np.uint16) * 257  # 8-bit levels k as 16-bit 257 k
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        Image.fromarray(levels).save(tmp_path / split / "a.png")
        assert Image.open(tmp_path / split / "a.png").mode.startswith("I")
    data = load_image_files(tmp_path)
    assert data.image_shape == (H, W)
    assert torch.equal(data.train_images[0], flat(grey(0)))


def test_alpha_is_dropped_from_rgba(tmp_path):
    c = rgb(0)
    rgba = np.concatenate([c, grey(1)[..., None]], axis=2)
    write_png(tmp_path / "train" / "a.png", rgba)
    write_png(tmp_path / "test" / "b.png", rgba)
    data = load_image_files(tmp_path)
    assert data.image_shape == (3, H, W)
    assert torch.equal(data.train_images[0], flat(c))


def test_jpeg_any_case_extension(tmp_path):
    smooth = np.add.outer(np.arange(H) * 20, np.arange(W) * 10).astype(np.uint8)  # (H, W)
    Image.fromarray(smooth).save(tmp_path / "a.JPG", quality=95)
    Image.fromarray(smooth).save(tmp_path / "b.jpeg", quality=95)
    data = load_image_files(tmp_path)
    assert data.image_shape == (H, W)
    images = torch.cat([data.train_images, data.test_images]).int()
    assert (images - flat(smooth).int()).abs().max() <= 3  # JPEG is lossy


def test_exif_orientation_is_applied(tmp_path):
    """A camera's portrait photo: pixels stored sideways, and an EXIF tag that says to turn
    them 90 degrees clockwise (orientation 6)."""
    g = grey(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        Image.fromarray(g).save(tmp_path / split / "a.png", exif=exif)
    data = load_image_files(tmp_path)
    assert data.image_shape == (W, H)
    assert torch.equal(data.train_images[0], flat(np.rot90(g, k=-1)))


def test_hidden_and_other_files_are_skipped(tmp_path):
    write_png(tmp_path / "a.png", grey(0))
    write_png(tmp_path / "b.png", grey(1))
    (tmp_path / ".DS_Store").write_bytes(b"\x00junk")
    write_png(tmp_path / ".hidden.png", grey(2, (3, 3)))  # another size: it would be an error
    (tmp_path / "README.txt").write_text("my photos")
    data = load_image_files(tmp_path)
    assert len(data.train_images) + len(data.test_images) == 2


# --- arrays ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
@pytest.mark.parametrize(
    "layout, channels",
    [
        pytest.param(lambda x: x[:, 0], 1, id="N H W"),
        pytest.param(lambda x: x.transpose(0, 2, 3, 1), 1, id="N H W 1"),
        pytest.param(lambda x: x, 1, id="N 1 H W"),
        pytest.param(lambda x: x.transpose(0, 2, 3, 1), 3, id="N H W 3"),
        pytest.param(lambda x: x, 3, id="N 3 H W"),
    ],
)
def test_npy_layouts(tmp_path, layout, channels, dtype):
    images = np.random.default_rng(0).integers(0, 256, (20, channels, H, W), dtype=np.uint8)
    stored = images if dtype == "uint8" else (images / 255).astype(dtype)
    np.save(tmp_path / "x.npy", layout(stored))
    data = load_image_files(tmp_path / "x.npy")
    assert data.image_shape == ((H, W) if channels == 1 else (3, H, W))
    expected = torch.from_numpy(stored.reshape(20, -1))
    if dtype == "uint8":
        assert data.train_images.dtype == torch.uint8
    else:
        assert data.train_images.dtype == torch.float32
        expected = expected.float()
    assert data.train_images.shape == (18, channels * H * W) and data.test_images.shape[0] == 2
    every = torch.cat([data.train_images, data.test_images])
    for row in every:  # each image read back exactly, as (C, H, W) flattened
        assert (expected == row).all(1).any()


def test_npy_channels_last_wins_a_tie(tmp_path):
    """(N, 3, 5, 3): axis 1 and the last axis could both be channels; NumPy's (N, H, W, C)."""
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    data = load_image_files(tmp_path / "x.npy")
    assert data.image_shape == (3, 3, 5)
    every = torch.cat([data.train_images, data.test_images])
    expected = [flat(image) for image in x]
    assert all(any(torch.equal(row, e) for e in expected) for row in every)


@pytest.mark.parametrize("names", [("x_train", "x_test"), ("train", "test")])
def test_npz_with_train_test_and_labels(tmp_path, names):
    x_train, x_test = grey(0, (7, H, W)), grey(1, (3, H, W))
    y_train, y_test = np.arange(7) % 2, np.array([1, 0, 1], dtype=np.uint8)
    np.savez(
        tmp_path / "x.npz",
        **{names[0]: x_train, names[1]: x_test},
        y_train=y_train,
        y_test=y_test,
    )
    data = load_image_files(tmp_path / "x.npz")
    assert data.image_shape == (H, W)
    assert torch.equal(data.train_images, torch.from_numpy(x_train.reshape(7, -1)))
    assert torch.equal(data.test_images, torch.from_numpy(x_test.reshape(3, -1)))
    assert data.train_labels.tolist() == y_train.tolist()
    assert data.test_labels.dtype == torch.int64 and data.test_labels.tolist() == [1, 0, 1]
    assert "as given" in data.source


def test_npz_grey_and_colour_bytes_and_floats_are_made_alike(tmp_path):
    """Grey uint8 training images and RGB float test images: both RGB float, as for files."""
    x_train = grey(0, (2, H, W))
    x_test = rgb(1, (H, W))[None] / 255  # (1, H, W, 3) float64
    np.savez(tmp_path / "x.npz", x_train=x_train, x_test=x_test)
    data = load_image_files(tmp_path / "x.npz")
    assert data.image_shape == (3, H, W)
    assert data.train_images.dtype == data.test_images.dtype == torch.float32
    assert torch.equal(data.train_images[1], flat(np.stack([x_train[1]] * 3, axis=2)) / 255)
    assert torch.equal(data.test_images[0], flat(x_test[0].astype(np.float32)))


def test_npz_single_array_and_train_only_are_split(tmp_path):
    x = grey(0, (10, H, W))
    np.savez_compressed(tmp_path / "one.npz", faces=x)
    np.savez(tmp_path / "train.npz", x_train=x, y_train=np.arange(10))
    one = load_image_files(tmp_path / "one.npz")
    train_only = load_image_files(tmp_path / "train.npz")
    assert one.train_images.shape == (9, H * W) and "held out" in one.source
    assert torch.equal(one.test_images, train_only.test_images)
    # the labels travel with their images
    index = rows_in(train_only.test_images, list(x))
    assert train_only.test_labels.tolist() == index


# --- the held-out test set ------------------------------------------------------------------


@pytest.mark.parametrize("n, num_test", [(2, 1), (5, 1), (30, 3), (96, 10)])
def test_held_out_split_is_fixed_disjoint_and_ten_percent(tmp_path, n, num_test):
    x = grey(0, (n, H, W))
    np.save(tmp_path / "x.npy", x)
    before = torch.get_rng_state()
    first, second = (load_image_files(tmp_path / "x.npy") for _ in range(2))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global RNG is untouched
    assert torch.equal(first.test_images, second.test_images)
    assert torch.equal(first.train_images, second.train_images)
    train, test = rows_in(first.train_images, list(x)), rows_in(first.test_images, list(x))
    assert len(test) == num_test and sorted(train + test) == list(range(n))


def test_held_out_split_does_not_depend_on_the_global_seed(tmp_path):
    np.save(tmp_path / "x.npy", grey(0, (50, H, W)))
    torch.manual_seed(1)
    first = load_image_files(tmp_path / "x.npy")
    torch.manual_seed(2)
    second = load_image_files(tmp_path / "x.npy")
    assert torch.equal(first.test_images, second.test_images)


# --- resizing -------------------------------------------------------------------------------


def test_image_size_resizes_files_of_different_sizes(tmp_path):
    big, small = grey(0, (12, 9)), grey(1, (H, W))
    write_png(tmp_path / "train" / "big.png", big)
    write_png(tmp_path / "test" / "small.png", small)
    data = load_image_files(tmp_path, image_size=(4, 3))
    assert data.image_shape == (4, 3) and data.train_images.dtype == torch.uint8
    pil = Image.fromarray(big).resize((3, 4), Image.Resampling.BILINEAR)  # Pillow: (W, H)
    assert torch.equal(data.train_images[0], flat(np.asarray(pil)))
    square = load_image_files(tmp_path, image_size=5)
    assert square.image_shape == (5, 5)


def test_image_size_leaves_images_of_that_size_alone(tmp_path):
    write_png(tmp_path / "train" / "a.png", grey(0))
    write_png(tmp_path / "test" / "b.png", grey(1))
    data = load_image_files(tmp_path, image_size=(H, W))
    assert torch.equal(data.train_images[0], flat(grey(0)))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_image_size_resizes_arrays_as_pillow_does(tmp_path, dtype):
    x = grey(0, (10, 12, 9))
    np.save(tmp_path / "x.npy", x if dtype == "uint8" else (x / 255).astype(dtype))
    data = load_image_files(tmp_path / "x.npy", image_size=(4, 3))
    assert data.image_shape == (4, 3)
    every = torch.cat([data.train_images, data.test_images])
    assert every.dtype == (torch.uint8 if dtype == "uint8" else torch.float32)
    scale = 1 if dtype == "uint8" else 255
    pil = torch.stack(
        [flat(np.asarray(Image.fromarray(i).resize((3, 4), Image.Resampling.BILINEAR))) for i in x]
    )
    # each resized image is within a grey level of Pillow's resizing of the same image, and
    # rounded as Pillow rounds: no bias (truncating would be half a level low on average)
    differences = []
    for row in every:
        difference = row.double() * scale - pil.double()
        closest = difference.abs().amax(1).argmin()
        assert difference[closest].abs().max() <= 1.01
        differences.append(difference[closest])
    assert torch.cat(differences).mean().abs() < 0.15


def test_image_size_of_a_constant_image_is_exact(tmp_path):
    x = np.full((3, H, W, 3), 200, dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    data = load_image_files(tmp_path / "x.npy", image_size=(3, 2))
    assert data.image_shape == (3, 3, 2) and (data.train_images == 200).all()


# --- bad inputs -----------------------------------------------------------------------------


def file_at(tmp_path, name, content=b""):
    (tmp_path / name).write_bytes(content)
    return tmp_path / name


def npy(tmp_path, array, name="x.npy"):
    np.save(tmp_path / name, array)
    return tmp_path / name


def npz(tmp_path, name="x.npz", **arrays):
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


def folder(tmp_path, **files):
    """``files``: relative path (``__`` for ``/``) -> pixels or bytes."""
    for name, content in files.items():
        path = tmp_path / "images" / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            write_png(path, content)
    (tmp_path / "images").mkdir(exist_ok=True)
    return tmp_path / "images"


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_npz(tmp_path):
    whole = npz(tmp_path, x_train=grey(0, (4, H, W)), x_test=grey(1, (2, H, W))).read_bytes()
    return file_at(tmp_path, "x.npz", whole[: len(whole) // 2])


def broken_link(tmp_path):
    images = folder(tmp_path, **{"a.png": grey(0)})
    (images / "b.png").symlink_to(tmp_path / "gone.png")
    return images


def empty_class(tmp_path):
    write_png(tmp_path / "images" / "a" / "x.png", grey(0))
    (tmp_path / "images" / "b").mkdir()
    return tmp_path / "images"


def nan_images():
    x = np.random.default_rng(0).random((4, H, W))
    x[1, 2, 3] = np.nan
    return x


def inf_images():
    x = np.random.default_rng(0).random((4, H, W), dtype=np.float32)
    x[0, 0, 0] = np.inf
    return x


def two_images(tmp_path):
    return folder(tmp_path, **{"a.png": grey(0), "b.png": grey(1)})


def named_pipe(tmp_path):
    images = two_images(tmp_path)
    os.mkfifo(images / "zz.png")
    return images


def link_to_a_pipe(tmp_path):
    images = two_images(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    (images / "zz.png").symlink_to(tmp_path / "pipe")
    return images


def unix_socket(tmp_path):
    images = two_images(tmp_path)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(images / "zz.png"))  # the socket file stays once it is closed
    return images


def link_to_a_device(tmp_path):
    images = two_images(tmp_path)
    (images / "zz.png").symlink_to("/dev/null")
    return images


def link_to_its_own_folder(tmp_path):
    images = two_images(tmp_path)
    (images / "loop").symlink_to(images, target_is_directory=True)
    return images


def link_loop(tmp_path):
    images = two_images(tmp_path)
    (images / "x.png").symlink_to(images / "y.png")
    (images / "y.png").symlink_to(images / "x.png")
    return images


def pipe_npy(tmp_path):
    os.mkfifo(tmp_path / "x.npy")
    return tmp_path / "x.npy"


def png_claiming(height: int, width: int) -> bytes:
    """A PNG of a few bytes whose header says it is ``height`` x ``width``: enough for Pillow's
    pixel limit, which is checked on the header, before any decoding."""
    data = bytearray(png_bytes(grey(0, (1, 1))))
    # the 8-byte signature, then IHDR: length, b"IHDR", width and height, ..., its CRC
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def over_the_pixel_limit(tmp_path, side: int):
    """A folder of an image and the header of one ``side`` x ``side``, ``b.png``."""
    return folder(tmp_path, **{"a.png": grey(0), "b.png": png_claiming(side, side)})


def npy_claiming(tmp_path, shape, data: bytes = b"\0" * 100, name="x.npy"):
    """A .npy whose header declares ``shape`` (uint8) and which holds ``data``."""
    with open(tmp_path / name, "wb") as f:
        header = {"descr": "|u1", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(data)
    return tmp_path / name


def npz_claiming(tmp_path, shape):
    """A .npz whose 'x_train' declares ``shape`` (uint8) but holds 100 bytes."""
    member = npy_claiming(tmp_path, shape, name="x_train.npy").read_bytes()
    np.savez(tmp_path / "x.npz", x_test=grey(1, (2, H, W)))
    with zipfile.ZipFile(tmp_path / "x.npz", "a") as archive:
        archive.writestr("x_train.npy", member)
    return tmp_path / "x.npz"


def encrypted_npz(tmp_path):
    """A .npz whose 'x_train' is marked encrypted (flag bit 0 in the zip's directory)."""
    data = bytearray(npz(tmp_path, x_train=grey(0, (4, H, W))).read_bytes())
    entry = data.index(b"PK\x01\x02")  # the central directory's first file header
    data[entry + 8] |= 1
    return file_at(tmp_path, "x.npz", bytes(data))


PIXEL_LIMIT = f"{Image.MAX_IMAGE_PIXELS:,}"


# Each case: make(tmp_path) -> (path, kwargs, the file or folder under tmp_path that the message
# must name), the error, and a regular expression the message must match.
BAD_INPUTS = [
    pytest.param(
        lambda t: (t / "nowhere", {}, "nowhere"), DataNotFoundError, "no such", id="missing path"
    ),
    pytest.param(lambda t: (folder(t), {}, "images"), DataError, "no PNG", id="empty folder"),
    pytest.param(
        lambda t: (
            folder(t, **{"notes.txt": b"text", ".hidden.png": png_bytes(grey(0))}),
            {},
            "images",
        ),
        DataError,
        "no PNG",
        id="no images, only other files",
    ),
    pytest.param(
        lambda t: (empty_class(t), {}, "images/b"),
        DataError,
        "holds no PNG",
        id="empty class folder",
    ),
    pytest.param(
        lambda t: (
            folder(t, **{"a.png": grey(0), "b.png": png_bytes(grey(1))[:-40]}),
            {},
            "images/b.png",
        ),
        DataError,
        "cannot read image file",
        id="truncated png",
    ),
    pytest.param(
        lambda t: (broken_link(t), {}, "images/b.png"),
        DataError,
        "cannot read image file .*b.png: no such file or directory$",
        id="broken link",
    ),
    pytest.param(
        lambda t: (folder(t, **{"a.png": grey(0), "b.png": b"not an image"}), {}, "images/b.png"),
        DataError,
        "cannot identify",
        id="not an image",
    ),
    pytest.param(
        lambda t: (folder(t, **{"a.png": grey(0), "b.png": grey(1, (5, 7))}), {}, "images/b.png"),
        DataError,
        r"a\.png is 8x6 and .*b\.png is 5x7 .*--image-size",
        id="mixed sizes",
    ),
    pytest.param(
        lambda t: (
            folder(t, **{"a.png": grey(0), "b.png": grey(1), "c__d.png": grey(2)}),
            {},
            "images",
        ),
        DataError,
        r"both images \(a.png, ...\) and sub-folders \(c/, ...\)",
        id="images beside a sub-folder",
    ),
    pytest.param(
        lambda t: (folder(t, **{"train__a.png": grey(0)}), {}, "images"),
        DataError,
        "no test/",
        id="train without test",
    ),
    pytest.param(
        lambda t: (
            folder(t, **{"train__a.png": grey(0), "test__b.png": grey(1), "c.png": grey(2)}),
            {},
            "images",
        ),
        DataError,
        "also c.png",
        id="a stray image beside train and test",
    ),
    pytest.param(
        lambda t: (
            folder(t, **{"train__cat__a.png": grey(0), "test__dog__b.png": grey(1)}),
            {},
            "images",
        ),
        DataError,
        "different classes: cat in train/, dog in test/",
        id="train and test classes differ",
    ),
    pytest.param(
        lambda t: (
            folder(t, **{"train__a.png": grey(0), "test__b.png": grey(1, (4, 4))}),
            {},
            "images/test/b.png",
        ),
        DataError,
        "different sizes",
        id="train and test sizes differ (folders)",
    ),
    pytest.param(
        lambda t: (folder(t, **{"a.png": grey(0)}), {}, "images"),
        DataError,
        "holds 1 image",
        id="one image",
    ),
    pytest.param(
        lambda t: (file_at(t, "x.csv", b"1,2"), {}, "x.csv"),
        DataError,
        "unknown file type",
        id="unknown extension",
    ),
    pytest.param(
        lambda t: (write_png(t / "a.png", grey(0)), {}, "a.png"),
        DataError,
        "give the folder",
        id="a single image file",
    ),
    pytest.param(lambda t: (file_at(t, "x.npy"), {}, "x.npy"), DataError, "empty", id="empty .npy"),
    pytest.param(
        lambda t: (file_at(t, "x.npy", b"garbage bytes"), {}, "x.npy"),
        DataError,
        "not a NumPy",
        id="not a NumPy file",
    ),
    pytest.param(
        lambda t: (file_at(t, "x.npy", np.lib.format.MAGIC_PREFIX + b"\x01\x00"), {}, "x.npy"),
        DataError,
        "cannot read",
        id="truncated .npy",
    ),
    pytest.param(
        lambda t: (npy(t, np.array([{"a": 1}] * 3, dtype=object)), {}, "x.npy"),
        DataError,
        "cannot read",
        id="pickled objects",
    ),
    pytest.param(
        lambda t: (npy(t, grey(0, (4, 48))), {}, "x.npy"),
        DataError,
        "unsupported shape",
        id="2-D array",
    ),
    pytest.param(
        lambda t: (npy(t, grey(0, (4, H, W, 4))), {}, "x.npy"),
        DataError,
        "unsupported shape",
        id="4 channels",
    ),
    pytest.param(
        lambda t: (npy(t, grey(0, (0, H, W))), {}, "x.npy"),
        DataError,
        "no images",
        id="no images in the array",
    ),
    pytest.param(
        lambda t: (npy(t, grey(0, (4, H, W)).astype(np.int64)), {}, "x.npy"),
        DataError,
        "unsupported dtype int64",
        id="int64 array",
    ),
    pytest.param(
        lambda t: (npy(t, grey(0, (4, H, W)).astype(np.float32)), {}, "x.npy"),
        DataError,
        r"outside \[0, 1\]; divide",
        id="float 0..255",
    ),
    pytest.param(
        lambda t: (npy(t, np.full((4, H, W), -0.5)), {}, "x.npy"),
        DataError,
        r"outside \[0, 1\]",
        id="negative floats",
    ),
    pytest.param(
        lambda t: (npy(t, nan_images()), {}, "x.npy"), DataError, "1 NaN or infinite", id="NaN"
    ),
    pytest.param(
        lambda t: (npy(t, inf_images()), {}, "x.npy"), DataError, "NaN or infinite", id="inf"
    ),
    pytest.param(
        lambda t: (npz(t, a=grey(0, (4, H, W)), b=grey(1, (4, H, W))), {}, "x.npz"),
        DataError,
        "no images in .*it holds a, b",
        id=".npz of two unknown arrays",
    ),
    pytest.param(lambda t: (npz(t), {}, "x.npz"), DataError, "no arrays", id="empty .npz"),
    pytest.param(
        lambda t: (truncated_npz(t), {}, "x.npz"), DataError, "cannot read", id="truncated .npz"
    ),
    pytest.param(
        lambda t: (npz(t, y_train=np.arange(4)), {}, "x.npz"),
        DataError,
        "no images",
        id=".npz of labels only",
    ),
    pytest.param(
        lambda t: (npz(t, x_test=grey(0, (4, H, W))), {}, "x.npz"),
        DataError,
        "test images 'x_test' but no 'x_train'",
        id=".npz of test images only",
    ),
    pytest.param(
        lambda t: (
            npz(t, x_train=grey(0, (4, H, W)), x_test=grey(1, (4, W, H))),
            {},
            "x.npz",
        ),
        DataError,
        "'x_train' holds 8x6 images but 'x_test' holds 6x8 ones",
        id="train and test sizes differ (.npz)",
    ),
    pytest.param(
        lambda t: (
            npz(
                t,
                x_train=grey(0, (4, H, W)),
                y_train=np.arange(3),
                x_test=grey(1, (2, H, W)),
                y_test=np.arange(2),
            ),
            {},
            "x.npz",
        ),
        DataError,
        "'y_train': 3 labels for 4 images",
        id="labels count differs",
    ),
    pytest.param(
        lambda t: (
            npz(
                t,
                x_train=grey(0, (4, H, W)),
                y_train=np.arange(4.0),
                x_test=grey(1, (2, H, W)),
                y_test=np.arange(2.0),
            ),
            {},
            "x.npz",
        ),
        DataError,
        "labels must be integers",
        id="float labels",
    ),
    pytest.param(
        lambda t: (
            npz(t, x_train=grey(0, (4, H, W)), y_train=np.arange(4), x_test=grey(1, (2, H, W))),
            {},
            "x.npz",
        ),
        DataError,
        "'y_train' but not 'y_test'",
        id="train labels without test labels",
    ),
    pytest.param(
        lambda t: (named_pipe(t), {}, "images/zz.png"),
        DataError,
        r"zz\.png: a named pipe \(FIFO\), not a regular file; remove it, or move it out of",
        id="a named pipe with an image's name",
    ),
    pytest.param(
        lambda t: (link_to_a_pipe(t), {}, "images/zz.png"),
        DataError,
        r"a symbolic link to a named pipe \(FIFO\), not a regular file",
        id="a link to a named pipe",
    ),
    pytest.param(
        lambda t: (unix_socket(t), {}, "images/zz.png"),
        DataError,
        "a socket, not a regular file",
        id="a socket",
    ),
    pytest.param(
        lambda t: (link_to_a_device(t), {}, "images/zz.png"),
        DataError,
        "a symbolic link to a character device, not a regular file",
        id="a link to /dev/null",
    ),
    pytest.param(
        lambda t: (link_to_its_own_folder(t), {}, "images"),
        DataError,
        r"both images \(a.png, ...\) and sub-folders \(loop/, ...\)",
        id="a link to its own folder",
    ),
    pytest.param(
        lambda t: (link_loop(t), {}, "images/x.png"),
        DataError,
        "x.png: too many levels of symbolic links$",
        id="two links to each other",
    ),
    pytest.param(
        lambda t: (pipe_npy(t), {}, "x.npy"),
        DataError,
        r"x\.npy: a named pipe \(FIFO\), not a regular file",
        id="a named pipe named .npy",
    ),
    pytest.param(
        lambda t: (over_the_pixel_limit(t, 10000), {}, "images/b.png"),
        DataError,
        rf"b\.png: 10000x10000, 100,000,000 pixels, more than the {PIXEL_LIMIT} that pyro_vae",
        id="over Pillow's pixel limit",
    ),
    pytest.param(
        lambda t: (over_the_pixel_limit(t, 20000), {}, "images/b.png"),
        DataError,
        rf"b\.png: 400,000,000 pixels, more than the {PIXEL_LIMIT} that pyro_vae reads",
        id="over twice Pillow's pixel limit",
    ),
    pytest.param(
        lambda t: (npy_claiming(t, (10**11, H, W)), {}, "x.npy"),
        DataError,
        r"damaged: its header declares a uint8 array of shape \(100000000000, 8, 6\), 4.4 TiB, "
        "but 100 bytes of data follow$",
        id=".npy header claims 10^11 images",
    ),
    pytest.param(
        lambda t: (npy_claiming(t, (4, H, W), bytes(4 * H * W - 1)), {}, "x.npy"),
        DataError,
        "damaged: .* 192 bytes, but 191 bytes of data follow$",
        id=".npy one byte short",
    ),
    pytest.param(
        lambda t: (npy_claiming(t, (-1, H, W)), {}, "x.npy"),
        DataError,
        r"damaged: its header declares shape \(-1, 8, 6\)$",
        id=".npy of negative shape",
    ),
    pytest.param(
        lambda t: (npz_claiming(t, (10**11, H, W)), {}, "x.npz"),
        DataError,
        r"x\.npz, array 'x_train': damaged: its header declares .* 4.4 TiB, but 100 bytes",
        id=".npz member claims 10^11 images",
    ),
    pytest.param(
        lambda t: (encrypted_npz(t), {}, "x.npz"),
        DataError,
        r"x\.npz: File 'x_train\.npy' is encrypted, password required for extraction$",
        id=".npz of an encrypted member",
    ),
    *[
        pytest.param(
            lambda t, size=size: (npy(t, grey(0, (4, H, W))), {"image_size": size}, "image_size"),
            DataError,
            "image_size must be",
            id=f"image_size {size!r}",
        )
        for size in (0, -3, 2.5, True, (4,), (4, 0), "8", (4, 4, 4))
    ],
]


@pytest.fixture
def pipes_do_not_wait(tmp_path):
    """Opening a named pipe waits for a writer, for ever if none comes: a thread plays the
    writer to any pipe under ``tmp_path`` that a reader waits on, so that code that opens one
    fails its test instead of hanging it."""
    stop = threading.Event()

    def writer():
        while not stop.wait(0.1):
            for folder, _, names in os.walk(tmp_path):
                for name in names:
                    path = os.path.join(folder, name)
                    if stat.S_ISFIFO(os.lstat(path).st_mode):
                        try:  # fails (ENXIO) unless a reader waits
                            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                        except OSError:
                            pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


@pytest.mark.parametrize("make, error, match", BAD_INPUTS)
def test_bad_input_is_one_clear_line(tmp_path, make, error, match, pipes_do_not_wait):
    path, kwargs, named = make(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(error, match=match) as info:
            load_image_files(path, **kwargs)
    message = str(info.value)
    assert_one_line(message)
    assert ("image_size" if "image_size" in kwargs else str(tmp_path / named)) in message
    assert not [str(w.message) for w in caught]  # Pillow's warnings stay inside


def test_unreadable_file_is_a_data_error(tmp_path):
    path = write_png(tmp_path / "images" / "a.png", grey(0))
    write_png(tmp_path / "images" / "b.png", grey(1))
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(DataError, match="a.png") as info:
            load_image_files(tmp_path / "images")
        assert_one_line(str(info.value))
    finally:
        os.chmod(path, 0o644)


# --- Pillow's pixel limit and warnings --------------------------------------------------------


def test_the_pixel_limit_is_pillows(tmp_path, monkeypatch):
    """Pillow warns over ``MAX_IMAGE_PIXELS`` and fails over twice it; both are refused, in
    words of ours, and a user who changes the limit gets theirs."""
    images = folder(tmp_path, **{"a.png": grey(0), "b.png": grey(1, (10, 10))})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    with pytest.raises(DataError, match=r"a\.png: 8x6, 48 pixels, more than the 40 that"):
        load_image_files(images, image_size=4)
    (images / "a.png").unlink()
    write_png(images / "c.png", grey(2, (10, 10)))
    with pytest.raises(DataError, match=r"b\.png: 100 pixels, more than the 40 that"):
        load_image_files(images)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert load_image_files(images).image_shape == (10, 10)


def test_pillow_warnings_do_not_reach_the_user(tmp_path):
    """Damaged EXIF data: Pillow warns and reads the pixels; pyro_vae reads them, quietly."""
    broken_exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\x00\x00"
    for name, seed in (("a.png", 0), ("b.png", 1)):
        path = tmp_path / "images" / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(grey(seed)).save(path, exif=broken_exif)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_image_files(tmp_path / "images")
    assert not [str(w.message) for w in caught]
    assert sorted(rows_in(torch.cat([data.train_images, data.test_images]), [grey(0), grey(1)]))


# --- memory -----------------------------------------------------------------------------------


@pytest.fixture
def memory_left(monkeypatch):
    """``memory_left(n)``: from now on the process may allocate ``n`` more bytes, under a
    4 MiB ``ulimit -v``."""

    def leave(available: int) -> None:
        limit = MemoryLimit("ulimit -v", 4 * 2**20, available)
        monkeypatch.setattr(memory, "memory_limits", lambda: [limit])

    return leave


def some_in_colour(tmp_path, grey_count: int):
    """``grey_count`` grey images, then a colour one: all are read as RGB."""
    images = folder(tmp_path, **{f"{i:02d}.png": grey(i) for i in range(grey_count)})
    write_png(images / "zz.png", rgb(99))
    return images


LEAVES = r"but the process's limit \(ulimit -v\) leaves {} of its 4.0 MiB"

# Each case: make(tmp_path) -> (path, kwargs), the bytes left, and what the message must say.
BEYOND_MEMORY = [
    pytest.param(
        lambda t: (npy(t, grey(0, (40, H, W))), {}),
        1000,
        r"x\.npy: its uint8 array of shape \(40, 8, 6\) takes 1.9 KiB, "
        + LEAVES.format("1000 bytes"),
        id=".npy",
    ),
    pytest.param(
        lambda t: (npz(t, x_train=grey(0, (30, H, W)), x_test=grey(1, (10, H, W))), {}),
        1000,
        r"x\.npz: its arrays take 1.9 KiB",
        id=".npz",
    ),
    pytest.param(
        lambda t: (npy(t, grey(0, (4, H, W))), {"image_size": 100}),
        20000,
        r"cannot resize the images of .*x\.npy to 100x100 \(image_size, --image-size\): they "
        r"would take 39.1 KiB, " + LEAVES.format(r"19.5 KiB") + "; choose a smaller --image-size",
        id=".npy resized",
    ),
    pytest.param(
        lambda t: (npy(t, (grey(0, (4, H, W)) / 255).astype(np.float32)), {"image_size": 50}),
        20000,
        r"x\.npy to 50x50 \(image_size, --image-size\): they would take 39.1 KiB",
        id="float .npy resized (float32)",
    ),
    pytest.param(
        lambda t: (
            npz(t, x_train=grey(0, (3, H, W, 3)), x_test=grey(1, (1, H, W))),
            {"image_size": 50},
        ),
        20000,
        r"x\.npz to 50x50 .* they would take 24.4 KiB",
        id=".npz of colour and grey resized",
    ),
    pytest.param(
        lambda t: (folder(t, **{f"{i}.png": grey(i) for i in range(3)}), {"image_size": 100}),
        20000,
        r"cannot resize the 3 images of .*images to 100x100 \(image_size, --image-size\): they "
        r"would take at least 29.3 KiB, " + LEAVES.format(r"19.5 KiB"),
        id="folder resized",
    ),
    pytest.param(
        lambda t: (folder(t, **{f"{i}.png": rgb(i) for i in range(3)}), {"image_size": 50}),
        10000,
        r"cannot resize the 3 images .* to 50x50 \(image_size, --image-size\): they would "
        "take 22.0 KiB",
        id="colour folder resized",
    ),
    pytest.param(
        lambda t: (folder(t, **{f"{i:02d}.png": grey(i) for i in range(30)}), {}),
        1000,
        r"cannot read the 30 images of .*images: at 8x6 grey they would take 1.4 KiB, "
        + LEAVES.format("1000 bytes")
        + r"; shrink them with image_size \(--image-size\), or use fewer",
        id="folder",
    ),
    pytest.param(
        lambda t: (some_in_colour(t, 20), {}),
        2000,
        r"cannot read the 21 images of .*images: at 8x6 RGB they would take 3.0 KiB",
        id="folder turned colour by its last image",
    ),
]


@pytest.mark.parametrize("make, available, match", BEYOND_MEMORY)
def test_images_beyond_memory_are_refused_before_they_are_read(
    tmp_path, memory_left, monkeypatch, make, available, match
):
    path, kwargs = make(tmp_path)
    memory_left(available)
    with pytest.raises(DataError, match=match) as info:
        load_image_files(path, **kwargs)
    assert_one_line(str(info.value))
    memory_left(10**9)
    load_image_files(path, **kwargs)  # with the memory, the same images load


def test_running_out_of_memory_all_the_same_is_one_line(tmp_path, memory_left, monkeypatch):
    """The checks go by the set's size; a copy on the way that does not fit is still a
    DataError that names the file and the limit, not a MemoryError."""
    path = npy(tmp_path, grey(0, (4, H, W)))
    memory_left(2**20)

    def no_memory(images, size):
        raise MemoryError

    monkeypatch.setattr(arrayfiles, "_resize", no_memory)
    match = r"x\.npy: out of memory while reading its images \(the process's limit \(ulimit -v\)"
    with pytest.raises(DataError, match=match) as info:
        load_image_files(path, image_size=4)
    assert_one_line(str(info.value))


def test_grey_images_read_before_the_first_colour_one_become_rgb(tmp_path, memory_left):
    """A folder is read into one array, grey until a colour image comes: the grey images read
    by then are repeated into its three channels, with room for the RGB set and little more."""
    pixels = [grey(i) for i in range(20)] + [rgb(20)]
    for i, p in enumerate(pixels):
        write_png(tmp_path / "images" / f"{i:02d}.png", p)
    memory_left(2 * 21 * 3 * H * W)
    data = load_image_files(tmp_path / "images")
    expected = [np.stack([p] * 3, axis=2) if p.ndim == 2 else p for p in pixels]
    every = torch.cat([data.train_images, data.test_images])
    assert sorted(rows_in(every, expected)) == list(range(21))


# --- the command line -------------------------------------------------------------------------

QUICK = ["--batch-size", "8", "--hidden-sizes", "8", "--latent-dim", "2", "--epochs", "1",
         "--eval-particles", "2", "--eval-images", "2", "--no-progress", "--no-plots"]  # fmt: skip

CLI_CASES = [
    pytest.param(lambda t: (named_pipe(t), []), None, "zz.png: a named pipe", id="named pipe"),
    pytest.param(
        lambda t: (over_the_pixel_limit(t, 10000), []),
        None,
        "b.png: 10000x10000, 100,000,000 pixels",
        id="over Pillow's pixel limit",
    ),
    pytest.param(  # small enough to do no harm if the check were gone
        lambda t: (two_images(t), ["--image-size", "1000"]),
        2**20,
        r"cannot resize the 2 images of .* to 1000x1000 \(image_size, --image-size\): they "
        r"would take at least 1.9 MiB, but the process's limit \(ulimit -v\) leaves 1.0 MiB",
        id="--image-size beyond memory",
    ),
    pytest.param(
        lambda t: (npy_claiming(t, (10**11, H, W)), []),
        None,
        r"x\.npy: damaged: its header declares",
        id=".npy that claims 10^11 images",
    ),
]


@pytest.mark.parametrize("make, available, match", CLI_CASES)
def test_the_cli_says_one_line_and_writes_nothing(
    tmp_path, capsys, memory_left, pipes_do_not_wait, make, available, match
):
    path, extra = make(tmp_path)
    if available is not None:
        memory_left(available)
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        argv = ["train", "--dataset", str(path), *extra, "--out", str(run), *QUICK]
        err = cli_fails(argv, capsys)
    assert re.search(match, err), err
    assert not [str(w.message) for w in caught]
    assert not run.exists()


def test_an_image_over_the_pixel_limit_is_one_line_in_a_fresh_process(tmp_path):
    """The user's view: nothing of Pillow's on stderr before pyro_vae's line."""
    images = over_the_pixel_limit(tmp_path, 10000)
    argv = ["train", "--dataset", str(images), "--out", str(tmp_path / "run"), *QUICK]
    result = subprocess.run(
        [sys.executable, "-m", "pyro_vae", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("pyro-vae train: error: cannot read image file "), result.stderr
    assert "more than the" in result.stderr

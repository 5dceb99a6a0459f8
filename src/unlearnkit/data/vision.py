"""Image classification data sets: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100, CIFAR-20 and SVHN (specs/vision.md §1).

Files are read by our own parsers from the formats the data sets are published in:
- MNIST / Fashion-MNIST (LeCun et al. 1998; Xiao et al. 2017, arXiv 1708.07747): idx files
  `<root>/{MNIST,FashionMNIST}/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` (magic 2051 / 2049);
- CIFAR-10 / CIFAR-100 (Krizhevsky 2009): python pickles `<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,
  batches.meta}` and `<root>/cifar-100-python/{train,test,meta}` (bytes keys; rows of 3072 = 3x32x32 uint8);
- SVHN (Netzer et al. 2011), cropped digits: `<root>/{train,test}_32x32.mat`, X uint8 [32, 32, 3, N], y [N, 1]
  with 10 meaning the digit 0 (mapped to 0 as torchvision does).
torchvision is used ONLY to download missing files (`download=True`); its own loaders are not used because they
verify md5 sums of the whole files. Pickles are read with an unpickler that only builds numpy arrays.

CIFAR-20 is CIFAR-100's images with the 20 coarse superclass labels; the fine label of every image is kept in
`fine_train`/`fine_test` (sub-class forgetting, SSD/JiT). Images are kept as uint8 [N, C, H, W] with the standard
per-channel mean/std, applied per batch by `ArrayData.subset`. `root` defaults to `$UNLEARNKIT_DATA`, else
`cache_root()/data`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np

from .._registry import DATASETS
from .arrays import ArrayData

# Standard normalisation constants (mean, std) per channel of x/255.
NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "cifar20": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                       "Ankle boot")  # fmt: skip
DIGIT_NAMES = tuple(str(d) for d in range(10))

# CIFAR-100 class names in label order (the `meta` file's fine_label_names / coarse_label_names).
CIFAR100_FINE_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip
# CIFAR100_FINE_TO_COARSE[fine] = coarse superclass of fine class `fine` (20 superclasses x 5 fine classes).
CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip

CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
IDX_IMAGES, IDX_LABELS = 2051, 2049  # idx magic numbers: 0x0803 (ubyte, 3 dims), 0x0801 (ubyte, 1 dim)


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """`root`, else `$UNLEARNKIT_DATA` (if set and non-empty), else `cache_root()/data`; resolved."""
    if root is None:
        from ..cache import cache_root

        root = os.environ.get("UNLEARNKIT_DATA") or cache_root() / "data"
    return Path(root).expanduser().resolve()


# ----------------------------------------------------------------------------------------------- registered loaders


@DATASETS.register(
    "mnist", task="classifier", num_classes=10, input_shape=(1, 28, 28), fine_labels=False, download=True
)
def mnist(root: str | os.PathLike[str] | None = None, download: bool = True) -> ArrayData:
    """MNIST handwritten digits (LeCun et al. 1998): 60k train / 10k test grey 28x28 images, 10 classes."""
    return _load("mnist", root, download)


@DATASETS.register(
    "fashion_mnist", task="classifier", num_classes=10, input_shape=(1, 28, 28), fine_labels=False, download=True
)
def fashion_mnist(root: str | os.PathLike[str] | None = None, download: bool = True) -> ArrayData:
    """Fashion-MNIST (Xiao et al. 2017): 60k train / 10k test grey 28x28 images of clothing, 10 classes."""
    return _load("fashion_mnist", root, download)


@DATASETS.register(
    "cifar10", task="classifier", num_classes=10, input_shape=(3, 32, 32), fine_labels=False, download=True
)
def cifar10(root: str | os.PathLike[str] | None = None, download: bool = True) -> ArrayData:
    """CIFAR-10 (Krizhevsky 2009): 50k train / 10k test colour 32x32 images, 10 classes."""
    return _load("cifar10", root, download)


@DATASETS.register(
    "cifar100", task="classifier", num_classes=100, input_shape=(3, 32, 32), fine_labels=False, download=True
)
def cifar100(root: str | os.PathLike[str] | None = None, download: bool = True) -> ArrayData:
    """CIFAR-100 (Krizhevsky 2009): 50k train / 10k test colour 32x32 images, 100 fine classes."""
    return _load("cifar100", root, download)


@DATASETS.register(
    "cifar20", task="classifier", num_classes=20, input_shape=(3, 32, 32), fine_labels=True, download=True
)
def cifar20(root: str | os.PathLike[str] | None = None, download: bool = True) -> ArrayData:
    """CIFAR-20: CIFAR-100 images with their 20 coarse superclass labels; fine labels kept (sub-class forgetting)."""
    return _load("cifar20", root, download)


@DATASETS.register("svhn", task="classifier", num_classes=10, input_shape=(3, 32, 32), fine_labels=False, download=True)
def svhn(root: str | os.PathLike[str] | None = None, download: bool = True) -> ArrayData:
    """SVHN cropped digits (Netzer et al. 2011): 73,257 train / 26,032 test colour 32x32 images, 10 classes."""
    return _load("svhn", root, download)


def fine_class_index(data: ArrayData, name: str) -> int:
    """Index of fine class `name` ("rocket" -> 69): in `data.fine_names` (CIFAR-20), or in `data.class_names` when
    the classes are themselves the fine classes (CIFAR-100). Unknown names are an error that lists the valid ones."""
    names = data.fine_names or data.class_names
    return _index(names, name, f"fine class of {data.name}")


def class_index(data: ArrayData, name: str) -> int:
    """Index of class `name` in `data.class_names` (CIFAR-20: "vehicles_2" -> 19)."""
    return _index(data.class_names, name, f"class of {data.name}")


def _index(names: tuple[str, ...], name: str, what: str) -> int:
    if not names:
        raise ValueError(f"no {what} has a name (the data set defines no class names)")
    if name not in names:
        raise ValueError(f"unknown {what} {name!r}; valid names: {', '.join(names)}")
    return names.index(name)


# ----------------------------------------------------------------------------------------------- files and download


def expected_files(name: str, root: Path) -> list[Path]:
    """The files data set `name` is read from under `root` (MNIST: the uncompressed names; .gz is accepted too)."""
    if name in ("mnist", "fashion_mnist"):
        return [root / _mnist_folder(name) / "raw" / f for f in MNIST_FILES]
    if name == "cifar10":
        return [root / CIFAR10_DIR / f for f in CIFAR10_FILES]
    if name in ("cifar100", "cifar20"):
        return [root / CIFAR100_DIR / f for f in CIFAR100_FILES]
    if name == "svhn":
        return [root / f for f in SVHN_FILES]
    raise ValueError(f"unknown vision data set {name!r}; valid: {', '.join(NORMALISATION)}")


def _missing(name: str, root: Path) -> list[Path]:
    def present(p: Path) -> bool:
        return p.is_file() or (name in ("mnist", "fashion_mnist") and p.with_name(p.name + ".gz").is_file())

    return [p for p in expected_files(name, root) if not present(p)]


def _load(name: str, root: str | os.PathLike[str] | None, download: bool) -> ArrayData:
    path = data_root(root)
    missing = _missing(name, path)
    if missing:
        if not download:
            raise FileNotFoundError(
                f"{name}: data files not found under {path}: missing {', '.join(str(p) for p in missing)}. "
                f"Pass download=True to fetch them (needs torchvision and internet), or point root= (or "
                f"$UNLEARNKIT_DATA) at a folder that holds them."
            )
        _download(name, path)
        still = _missing(name, path)
        if still:
            raise FileNotFoundError(
                f"{name}: download finished but files are still missing: {', '.join(str(p) for p in still)}"
            )
    return _parse(name, str(path))


def _download(name: str, root: Path) -> None:
    """Fetch the published files with torchvision (the only use of torchvision's data set classes)."""
    try:
        from torchvision import datasets
    except ImportError as err:
        raise ImportError(f"downloading {name} needs torchvision: pip install 'unlearnkit[vision]'") from err
    root.mkdir(parents=True, exist_ok=True)
    cls = {
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
        "cifar20": datasets.CIFAR100,
        "svhn": datasets.SVHN,
    }[name]
    if name == "svhn":
        for split in ("train", "test"):
            cls(str(root), split=split, download=True)
    else:
        for train in (True, False):
            cls(str(root), train=train, download=True)


# ----------------------------------------------------------------------------------------------- parsers


@lru_cache(maxsize=8)
def _parse(name: str, root: str) -> ArrayData:
    """Parsed data set `name` under `root`, once per process."""
    path = Path(root)
    mean, std = NORMALISATION[name]
    fine_train = fine_test = None
    fine_names: tuple[str, ...] = ()
    if name in ("mnist", "fashion_mnist"):
        raw = path / _mnist_folder(name) / "raw"
        x_train, y_train = read_idx(raw / MNIST_FILES[0], IDX_IMAGES), read_idx(raw / MNIST_FILES[1], IDX_LABELS)
        x_test, y_test = read_idx(raw / MNIST_FILES[2], IDX_IMAGES), read_idx(raw / MNIST_FILES[3], IDX_LABELS)
        x_train, x_test = x_train[:, None], x_test[:, None]  # [N, 28, 28] -> [N, 1, 28, 28]
        names = DIGIT_NAMES if name == "mnist" else FASHION_MNIST_NAMES
    elif name == "cifar10":
        paths = [path / CIFAR10_DIR / f for f in CIFAR10_FILES]  # 5 train batches, test batch, meta
        batches = [read_pickle(p) for p in paths[:6]]
        x_train = np.concatenate([_cifar_images(b, p) for b, p in zip(batches[:5], paths, strict=False)])
        y_train = np.concatenate([_labels(b, b"labels", p) for b, p in zip(batches[:5], paths, strict=False)])
        x_test, y_test = _cifar_images(batches[5], paths[5]), _labels(batches[5], b"labels", paths[5])
        names = _names(read_pickle(paths[6]), b"label_names", paths[6])
    elif name in ("cifar100", "cifar20"):
        (x_train, fine_train, coarse_train), (x_test, fine_test, coarse_test), fine, coarse = _read_cifar100(path)
        if name == "cifar100":
            y_train, y_test, names = fine_train, fine_test, fine
            fine_train = fine_test = None
        else:
            y_train, y_test, names, fine_names = coarse_train, coarse_test, coarse, fine
    elif name == "svhn":
        x_train, y_train = read_svhn_mat(path / SVHN_FILES[0])
        x_test, y_test = read_svhn_mat(path / SVHN_FILES[1])
        names = DIGIT_NAMES
    else:
        raise ValueError(f"unknown vision data set {name!r}; valid: {', '.join(NORMALISATION)}")
    num_classes = len(names)
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name}: {split} labels outside 0..{num_classes - 1} (min {y.min()}, max {y.max()})")
    digest = array_hash(name, x_train, y_train, x_test, y_test, fine_train, fine_test)
    return ArrayData(
        name,
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes,
        digest,
        mean=mean,
        std=std,
        fine_train=fine_train,
        fine_test=fine_test,
        fine_names=fine_names,
        class_names=names,
    )


def array_hash(name: str, *arrays: np.ndarray | None) -> str:
    """sha256 over the name and each array's dtype, shape and raw bytes; 24 hex digits."""
    h = hashlib.sha256(name.encode())
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:24]


def _mnist_folder(name: str) -> str:
    return "MNIST" if name == "mnist" else "FashionMNIST"


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file (`path`, or `path.gz`) of unsigned bytes -> uint8 array of its dimensions (labels: int64 [N])."""
    if not path.is_file() and path.with_name(path.name + ".gz").is_file():
        path = path.with_name(path.name + ".gz")
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        raise ValueError(f"{path}: not an idx file of the expected kind (magic number {found}, expected {magic})")
    ndim = magic & 0xFF
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} = {int(np.prod(dims))} bytes but the file holds {body.size}")
    out = body.reshape(dims).copy()  # writable
    return out.astype(np.int64) if ndim == 1 else out


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists of numbers, bytes and numpy arrays only; any other global is refused (a pickle can
    run arbitrary code, and data folders are downloaded or shared)."""

    _reconstruct = np.ndarray((0,)).__reduce__()[0]
    _scalar = np.float64(0).__reduce__()[0]
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    }  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):  # how Python 3 protocol-2 pickles store bytes
            import _codecs

            return _codecs.encode
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a data file")


def read_pickle(path: Path) -> dict:
    """A CIFAR python batch: a dict with bytes keys."""
    with open(path, "rb") as fh:
        try:
            out = _ArrayUnpickler(fh, encoding="bytes").load()
        except Exception as err:
            raise ValueError(f"{path}: not a readable CIFAR python pickle ({err})") from err
    if not isinstance(out, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(out).__name__}")
    return out


def _field(batch: dict, key: bytes, path: Path):
    if key not in batch:
        raise ValueError(f"{path}: no key {key!r} (has {sorted(batch)})")
    return batch[key]


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    """Rows of 3072 bytes (1024 red, 1024 green, 1024 blue, row-major) -> uint8 [N, 3, 32, 32]."""
    data = np.asarray(_field(batch, b"data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32))


def _labels(batch: dict, key: bytes, path: Path) -> np.ndarray:
    y = np.asarray(_field(batch, key, path), dtype=np.int64)
    n = len(_field(batch, b"data", path))
    if y.shape != (n,):
        raise ValueError(f"{path}: {key!r} has shape {list(y.shape)}, expected [{n}] (one label per image)")
    return y


def _names(meta: dict, key: bytes, path: Path) -> tuple[str, ...]:
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _field(meta, key, path))


@lru_cache(maxsize=2)
def _read_cifar100(root: Path):
    """((x, fine, coarse) train, (x, fine, coarse) test, fine names, coarse names), checked against the standard
    fine -> coarse table. Cached, so `cifar100` and `cifar20` share one copy of the images."""
    folder = root / CIFAR100_DIR
    meta = read_pickle(folder / "meta")
    fine_names = _names(meta, b"fine_label_names", folder / "meta")
    coarse_names = _names(meta, b"coarse_label_names", folder / "meta")
    for got, want, what in ((fine_names, CIFAR100_FINE_NAMES, "fine"), (coarse_names, CIFAR100_COARSE_NAMES, "coarse")):
        if got != want:
            raise ValueError(
                f"{folder / 'meta'}: {what}_label_names differ from the standard CIFAR-100 names "
                f"(got {list(got)[:5]}...; expected {list(want)[:5]}...)"
            )
    table = np.asarray(CIFAR100_FINE_TO_COARSE, dtype=np.int64)
    splits = []
    for part in ("train", "test"):
        path = folder / part
        batch = read_pickle(path)
        x = _cifar_images(batch, path)
        fine, coarse = _labels(batch, b"fine_labels", path), _labels(batch, b"coarse_labels", path)
        if len(fine) and (fine.min() < 0 or fine.max() > 99):
            raise ValueError(f"{path}: fine labels outside 0..99 (min {fine.min()}, max {fine.max()})")
        bad = np.flatnonzero(table[fine] != coarse)
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"{path}: coarse label disagrees with the CIFAR-100 fine->coarse table at {len(bad)} image(s); first: "
                f"image {i} has fine {fine[i]} ({CIFAR100_FINE_NAMES[fine[i]]}) and coarse {coarse[i]}, expected "
                f"{table[fine[i]]} ({CIFAR100_COARSE_NAMES[table[fine[i]]]})"
            )
        splits.append((x, fine, coarse))
    return splits[0], splits[1], fine_names, coarse_names


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN cropped-digits .mat file -> (x uint8 [N, 3, 32, 32], y int64 [N], label 10 mapped to digit 0)."""
    from scipy.io import loadmat

    mat = loadmat(str(path))
    for key in ("X", "y"):
        if key not in mat:
            raise ValueError(f"{path}: no variable {key!r} (has {sorted(k for k in mat if not k.startswith('__'))})")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).astype(np.int64).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise ValueError(
            f"{path}: X must be uint8 [32, 32, 3, N] with N = len(y) = {len(y)}, got {x.dtype} {list(x.shape)}"
        )
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise ValueError(f"{path}: y must hold digits 1..10 (10 = digit 0), got min {y.min()}, max {y.max()}")
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y  # [H, W, C, N] -> [N, C, H, W]

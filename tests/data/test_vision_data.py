"""Image data sets: our parsers of the published on-disk formats (written tiny by unlearnkit.testing.vision_files),
lazy normalisation and augmentation of ArrayData subsets, and the CIFAR-100 fine -> coarse table."""

import gzip
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.io import loadmat
from torch.utils.data import DataLoader, TensorDataset

from unlearnkit._registry import DATASETS
from unlearnkit.data import ArrayData, ImageSubset
from unlearnkit.data.digits import digits
from unlearnkit.data.vision import (
    CIFAR10_NAMES,
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_NAMES,
    CIFAR100_FINE_TO_COARSE,
    NORMALISATION,
    cifar10,
    cifar20,
    cifar100,
    class_index,
    data_root,
    fashion_mnist,
    fine_class_index,
    mnist,
    svhn,
)
from unlearnkit.testing.vision_files import write_cifar10, write_cifar100, write_mnist, write_svhn

# The CIFAR-100 superclasses as listed on the data set's web page (independent of the numeric table under test).
SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}


def assert_same(data: ArrayData, written) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        got, want = getattr(data, field), getattr(written, field)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), field


def test_cifar10_files_are_parsed_exactly(tmp_path):
    written = write_cifar10(tmp_path, n_train=12, n_test=5, seed=1)
    data = cifar10(root=tmp_path, download=False)
    assert_same(data, written)
    assert data.x_train.dtype == np.uint8 and data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.class_names == CIFAR10_NAMES and (data.mean, data.std) == NORMALISATION["cifar10"]
    assert not data.has_fine_labels and len(data.hash) == 24 and int(data.hash, 16) >= 0
    assert cifar10(root=str(tmp_path), download=False) is data  # parsed once per (name, root)
    other = tmp_path / "other"
    write_cifar10(other, n_train=12, n_test=5, seed=2)
    assert cifar10(root=other, download=False).hash != data.hash


@pytest.mark.parametrize(("name", "gz"), [("MNIST", False), ("MNIST", True), ("FashionMNIST", True)])
def test_mnist_idx_files_plain_and_gzipped(tmp_path, name, gz):
    written = write_mnist(tmp_path, n_train=11, n_test=4, seed=0, name=name, gz=gz)
    raw = (written.files[0].read_bytes() if not gz else gzip.decompress(written.files[0].read_bytes()))[:16]
    assert [int.from_bytes(raw[i : i + 4], "big") for i in (0, 4, 8, 12)] == [2051, 11, 28, 28]  # the real header
    data = (mnist if name == "MNIST" else fashion_mnist)(root=tmp_path, download=False)
    assert_same(data, written)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.mean == ((0.1307,) if name == "MNIST" else (0.2860,))
    assert data.class_names[0] == ("0" if name == "MNIST" else "T-shirt/top")


def test_idx_file_with_wrong_magic_is_rejected(tmp_path):
    written = write_mnist(tmp_path, n_train=3, n_test=2, seed=0)
    labels = written.files[1]  # train-labels-idx1-ubyte
    labels.write_bytes((2051).to_bytes(4, "big") + labels.read_bytes()[4:])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: .*magic number 2051, expected 2049"):
        mnist(root=tmp_path, download=False)


def test_svhn_mat_files_map_label_10_to_digit_0(tmp_path):
    written = write_svhn(tmp_path, n_train=12, n_test=5, seed=3)
    stored = loadmat(str(tmp_path / "train_32x32.mat"))
    assert stored["X"].shape == (32, 32, 3, 12) and stored["y"].shape == (12, 1)
    assert 10 in stored["y"] and 0 not in stored["y"]  # the file uses 10 for the digit 0
    data = svhn(root=tmp_path, download=False)
    assert_same(data, written)
    assert set(data.y_train.tolist()) == set(range(10)) and data.mean == NORMALISATION["svhn"][0]


def test_cifar100_and_cifar20_share_images_and_keep_fine_labels(tmp_path):
    written = write_cifar100(tmp_path, n_train=120, n_test=30, seed=0)
    c100, c20 = cifar100(root=tmp_path, download=False), cifar20(root=tmp_path, download=False)
    assert_same(c100, written)
    assert c100.num_classes == 100 and c100.class_names == CIFAR100_FINE_NAMES and not c100.has_fine_labels
    assert c20.num_classes == 20 and c20.class_names == CIFAR100_COARSE_NAMES and c20.has_fine_labels
    assert c20.fine_names == CIFAR100_FINE_NAMES
    assert np.array_equal(c20.x_train, written.x_train) and np.array_equal(c20.x_test, written.x_test)
    assert np.array_equal(c20.fine_train, written.y_train) and np.array_equal(c20.fine_test, written.y_test)
    assert np.array_equal(c20.y_train, written.coarse_train) and np.array_equal(c20.y_test, written.coarse_test)
    table = np.asarray(CIFAR100_FINE_TO_COARSE)
    assert np.array_equal(c20.y_train, table[c20.fine_train]) and np.array_equal(c20.y_test, table[c20.fine_test])
    assert c20.hash != c100.hash and c20.mean == c100.mean == (0.5071, 0.4865, 0.4409)


def test_fine_to_coarse_table_matches_the_published_superclasses():
    table = CIFAR100_FINE_TO_COARSE
    assert len(table) == 100 and np.bincount(table).tolist() == [5] * 20  # 20 superclasses x 5 fine classes
    for coarse, fines in SUPERCLASSES.items():
        for fine in fines:
            assert CIFAR100_COARSE_NAMES[table[CIFAR100_FINE_NAMES.index(fine)]] == coarse, fine
    assert table[69] == 19 and CIFAR100_COARSE_NAMES[19] == "vehicles_2"  # rocket
    assert table[2] == 14 and CIFAR100_COARSE_NAMES[14] == "people"  # baby
    assert table[71] == 10 and CIFAR100_COARSE_NAMES[10] == "large_natural_outdoor_scenes"  # sea


def test_fine_and_coarse_class_names_to_indices(tmp_path):
    write_cifar100(tmp_path, n_train=5, n_test=2, seed=0)
    c20, c100 = cifar20(root=tmp_path, download=False), cifar100(root=tmp_path, download=False)
    names = ("rocket", "mushroom", "baby", "lamp", "sea")
    assert [fine_class_index(c20, n) for n in names] == [69, 51, 2, 40, 71]
    assert [fine_class_index(c100, n) for n in names] == [69, 51, 2, 40, 71]  # CIFAR-100: its own classes
    assert class_index(c20, "vehicles_2") == 19
    with pytest.raises(ValueError, match=r"unknown fine class of cifar20 'rockets'; valid names: apple, aquarium_fish"):
        fine_class_index(c20, "rockets")


def test_corrupted_coarse_label_is_caught(tmp_path):
    write_cifar100(tmp_path, n_train=20, n_test=5, seed=0)
    path = tmp_path / "cifar-100-python" / "test"
    with open(path, "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    fine = batch[b"fine_labels"][3]
    batch[b"coarse_labels"][3] = (CIFAR100_FINE_TO_COARSE[fine] + 1) % 20
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    with pytest.raises(
        ValueError, match=rf"test: coarse label disagrees .* 1 image\(s\); first: image 3 has fine {fine}"
    ):
        cifar20(root=tmp_path, download=False)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickles_may_only_build_arrays(tmp_path):
    write_cifar10(tmp_path, n_train=5, n_test=2, seed=0)
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": _Evil()}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"refusing to load global posix.getcwd|refusing to load global nt.getcwd"):
        cifar10(root=tmp_path, download=False)


@pytest.mark.parametrize(
    ("loader", "expected"),
    [(cifar10, "cifar-10-batches-py/data_batch_1"), (cifar20, "cifar-100-python/train"),
     (mnist, "MNIST/raw/train-images-idx3-ubyte"), (svhn, "train_32x32.mat")],
)  # fmt: skip
def test_missing_files_without_download_name_the_paths(tmp_path, loader, expected):
    with pytest.raises(FileNotFoundError) as err:
        loader(root=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / expected) in message and "download=True" in message


def test_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_DATA", str(tmp_path / "d"))
    assert data_root() == (tmp_path / "d").resolve()
    monkeypatch.setenv("UNLEARNKIT_DATA", "")
    monkeypatch.setenv("UNLEARNKIT_HOME", str(tmp_path / "home"))
    assert data_root() == (tmp_path / "home" / "data").resolve()
    assert data_root(tmp_path / "x") == (tmp_path / "x").resolve()


def test_loaders_are_registered_with_tags():
    names = {"mnist", "fashion_mnist", "cifar10", "cifar100", "cifar20", "svhn"}
    assert names <= set(DATASETS.list(task="classifier", download=True))
    with_fine = DATASETS.list(fine_labels=True)
    assert "cifar20" in with_fine and not {"cifar10", "cifar100", "mnist", "svhn"} & set(with_fine)
    assert DATASETS.get("cifar100").tags["num_classes"] == 100
    assert DATASETS.get("mnist").tags["input_shape"] == (1, 28, 28)


# ------------------------------------------------------------------------------------------ subsets: normalise, augment


@pytest.fixture
def cifar(tmp_path):
    write_cifar10(tmp_path, n_train=20, n_test=6, seed=5)
    return cifar10(root=tmp_path, download=False)


def test_subset_normalises_lazily_like_a_hand_computation(cifar):
    ds = cifar.subset("train", [7, 2, 11])
    assert isinstance(ds, ImageSubset) and len(ds) == 3
    x, y = ds[1]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert y.dtype == torch.int64 and y.item() == cifar.y_train[2]
    mean, std = NORMALISATION["cifar10"]
    for c, i, j in [(0, 0, 0), (1, 5, 17), (2, 31, 30)]:
        hand = (int(cifar.x_train[2, c, i, j]) / 255 - mean[c]) / std[c]
        assert x[c, i, j].item() == pytest.approx(hand, abs=1e-6)
    whole = (cifar.x_train[[7, 2, 11]] / 255 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
    xb, yb = next(iter(DataLoader(ds, batch_size=3, shuffle=False)))  # batched through __getitems__
    assert xb.shape == (3, 3, 32, 32) and np.allclose(xb.numpy(), whole, atol=1e-5)
    assert torch.equal(xb[1], x) and yb.tolist() == cifar.y_train[[7, 2, 11]].tolist()
    test_x = cifar.subset("test", np.arange(6))[4][0]
    assert np.allclose(
        test_x.numpy(),
        (cifar.x_test[4] / 255 - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1)),
        atol=1e-5,
    )


def _which_crop(augmented: np.ndarray, image: np.ndarray) -> tuple[int, int, bool] | None:
    """(row offset, column offset, flipped) of the 4-px zero-padded crop (+ flip) of `image` equal to `augmented`."""
    padded = np.pad(image.astype(np.float32), ((0, 0), (4, 4), (4, 4)))
    for i in range(9):
        for j in range(9):
            crop = padded[:, i : i + 32, j : j + 32]
            for flipped, candidate in ((False, crop), (True, crop[:, :, ::-1])):
                if np.abs(augmented - candidate).max() < 1e-3:
                    return i, j, flipped
    return None


def test_augmentation_is_a_seeded_crop_and_flip_and_off_by_default(cifar):
    idx = list(range(20))
    plain = cifar.subset("train", idx, augment=False).batch(idx)[0]
    aug = cifar.subset("train", idx, augment=True, augment_seed=3)
    first, second = aug.batch(idx)[0], aug.batch(idx)[0]
    assert first.shape == plain.shape == (20, 3, 32, 32) and not torch.equal(first, second)  # advances per call
    again = cifar.subset("train", idx, augment=True, augment_seed=3)
    assert torch.equal(again.batch(idx)[0], first) and torch.equal(again.batch(idx)[0], second)  # reproducible
    assert not torch.equal(cifar.subset("train", idx, augment=True, augment_seed=4).batch(idx)[0], first)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALISATION["cifar10"])
    raw = ((first * std + mean) * 255).numpy()  # back to pixels: the padding is black (0) before normalisation
    found = [_which_crop(raw[k], cifar.x_train[k]) for k in idx]
    assert None not in found
    assert {f[2] for f in found} == {False, True} and len({f[:2] for f in found}) > 5  # flips and varied offsets
    assert np.allclose(((plain * std + mean) * 255).numpy(), cifar.x_train[:20], atol=1e-3)  # augment=False: as is


def test_digits_subsets_are_unchanged_and_unlearn_data_carries_split_extras():
    data = digits()
    assert isinstance(data.subset("train", [0, 1]), TensorDataset) and data.x_train.dtype == np.float32
    assert data.mean is None and data.fine_train is None and data.class_names == () and not data.has_fine_labels
    split = SimpleNamespace(forget=np.array([5, 0, 9]), retain=np.arange(10, 30), test=np.arange(7), forget_classes=())
    udata = data.unlearn_data(split)
    assert len(udata.forget) == 3 and len(udata.retain) == 20 and len(udata.test) == 7
    assert udata.train_hash == data.hash and udata.test_forget is None  # a Split without test_forget
    assert torch.equal(udata.forget[0][0], torch.from_numpy(data.x_train[5]))
    split.test_forget = np.array([1, 4])
    assert data.unlearn_data(split).test_forget.tolist() == [1, 4]

"""The `vision` benchmark end to end on tiny files in the real CIFAR / MNIST formats (never downloading)."""

import numpy as np
import pytest

from unlearnkit.cli import main
from unlearnkit.pipelines import PRESET_DIR, list_presets, run
from unlearnkit.testing.vision_files import write_cifar100, write_mnist

TINY = ["model=cnn", "model_args={channels: [4], hidden: 8}", "train.epochs=1", "train.batch_size=32"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar100(root, n_train=300, n_test=100, seed=0)


def test_subclass_forgetting_on_cifar20_by_fine_class_name(home, tmp_path, cifar_root):
    root, written = cifar_root
    result = run("digits", ["benchmark=vision", "dataset=cifar20", f"dataset_args={{root: {root}, download: false}}",
                            "scenario=subclass", "forget_subclasses=[rocket]", "methods=[finetune]",
                            "method.finetune.epochs=1", *TINY, f"output_dir={tmp_path / 'run'}"])
    labels = {r["label"] for r in result.rows}
    assert labels == {"original", "retrain", "finetune"}
    split = result.rows[0]
    fine_train, fine_test = written.y_train, written.y_test  # CIFAR-100 files: y = fine labels
    from unlearnkit.data.vision import cifar20

    data = cifar20(root=root, download=False)
    assert np.array_equal(data.fine_train, fine_train) and data.fine_names[69] == "rocket"
    assert data.class_names[data.y_train[np.flatnonzero(fine_train == 69)[0]]] == "vehicles_2"
    for r in result.rows:
        assert r["scenario"] == "subclass" and r["split_hash"] == split["split_hash"]
        assert {"test_forget_acc", "test_retain_acc", "zrf", "mia_entropy_lr", "tow"} <= set(r["metrics"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| Df test acc | Dr test acc |" in report
    assert (fine_train == 69).sum() > 0 and (fine_test == 69).sum() > 0  # the fixture really has the class


@pytest.mark.parametrize("args, message", [
    (["dataset=cifar10"], "cifar10: data files not found under"),  # an empty root (see below)
    (["dataset=cifar100", "scenario=class", "forget_classes=[100]"], "class index 100 is out of range; allowed: 0..99"),
    (["dataset=cifar100", "scenario=class", "forget_classes=[rockets]"], "unknown class name 'rockets'"),
    (["dataset=cifar100", "scenario=subclass", "forget_subclasses=[rocket]"],
     "scenario=subclass needs a data set with fine labels; dataset='cifar100' has none"),
    (["dataset=cifar20", "scenario=subclass", "forget_subclasses=[lamps]"], "unknown class name 'lamps'"),
    (["dataset=cifar20", "model=vgg11"], None),  # 32 px is fine for VGG: validates
])
def test_bad_vision_input_fails_before_any_work(home, tmp_path, capsys, cifar_root, args, message):
    root, _ = cifar_root
    where = tmp_path / "empty" if args == ["dataset=cifar10"] else root
    code = main(["validate", "digits", "benchmark=vision", f"dataset_args={{root: {where}, download: false}}",
                 *args, f"output_dir={tmp_path / 'never'}"])
    err = capsys.readouterr().err.strip()
    if message is None:
        assert code == 0, err
        return
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    if args == ["dataset=cifar10"]:
        assert "Pass download=True to fetch them" in err
    assert not (tmp_path / "never").exists()


def test_an_image_size_the_model_cannot_take_is_named(home, tmp_path, capsys):
    write_mnist(tmp_path / "mnist", n_train=20, n_test=10, seed=0)
    code = main(["validate", "digits", "benchmark=vision", "dataset=mnist",
                 f"dataset_args={{root: {tmp_path / 'mnist'}, download: false}}", "model=vgg11"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "model='vgg11' on dataset 'mnist' (input (1, 28, 28)" in err and "32" in err


@pytest.mark.parametrize("preset", [p for p in list_presets() if p.startswith(("cifar", "rum_cifar"))])
def test_every_shipped_cifar_preset_validates_on_real_format_files(home, tmp_path, capsys, preset):
    """The GPU presets check their names, hyperparameters, forget classes and model sizes here, on tiny files in the
    real format (the pretrained ViT is built without its download for the check)."""
    from unlearnkit.testing.vision_files import write_cifar10

    root = tmp_path / "data"
    write_cifar100(root, n_train=300, n_test=100, seed=0)
    write_cifar10(root, n_train=200, n_test=50, seed=0)
    first = (PRESET_DIR / f"{preset}.yaml").read_text().splitlines()[0]
    assert first == f"# unlearnkit run {preset}" or first.startswith(f"# unlearnkit run {preset} ")
    # RUM's forget groups of 1000 do not fit in the tiny files: the check runs with groups of 20
    small = ["n_per_group=20"] if preset.startswith("rum_") else []
    if preset == "rum_cifar100":  # Feldman & Zhang's file is checked for existence while validating
        code = main(["validate", preset, f"dataset_args={{root: {root}, download: false}}", *small])
        assert code == 2 and "score.file: path 'cifar100_infl_matrix.npz' is not a file" in capsys.readouterr().err
        np.savez(tmp_path / "tr_mem.npz", tr_mem=np.zeros(300))
        small.append(f"score_args.file.path={tmp_path / 'tr_mem.npz'}")
    code = main(["validate", preset, f"dataset_args={{root: {root}, download: false}}", *small])
    out = capsys.readouterr()
    assert code == 0, out.err

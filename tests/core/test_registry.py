from dataclasses import dataclass

import pytest

from unlearnkit._registry import METHODS, Registry, RegistryError
from unlearnkit.config import ConfigError, param


def test_register_get_list_with_wildcards_and_tags():
    reg = Registry("widget")

    @reg.register("grad_a", color="red", tasks=("x", "y"))
    def a():
        """Alpha widget."""

    @reg.register("grad_b", color="blue", tasks=("y",))
    def b():
        pass

    @reg.register()
    def other():
        pass

    assert reg.list() == ["grad_a", "grad_b", "other"]
    assert reg.list("grad_*") == ["grad_a", "grad_b"]
    assert reg.list(color="red") == ["grad_a"]
    assert reg.list(tasks="y") == ["grad_a", "grad_b"]
    assert reg.get("grad_a").doc == "Alpha widget."
    assert a.registry_name == "grad_a" and "other" in reg


def test_unknown_name_is_one_line_with_suggestion():
    reg = Registry("method")
    reg.register("neggrad_plus")(lambda: None)
    with pytest.raises(RegistryError) as err:
        reg.get("neggrad_pls")
    assert str(err.value) == "unknown method 'neggrad_pls' (did you mean 'neggrad_plus'?); available: neggrad_plus"


def test_duplicate_name_from_another_object_is_an_error():
    reg = Registry("method")
    reg.register("x")(type("A", (), {}))
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("x")(type("B", (), {}))


def test_create_validates_dataclass_entries():
    reg = Registry("method")

    @reg.register("m")
    @dataclass
    class M:
        lr: float = param(0.1, gt=0)

    assert reg.create("m", lr=0.5).lr == 0.5
    with pytest.raises(ConfigError, match=r"method.m.lr = -1.*must be > 0"):
        reg.create("m", lr=-1)
    with pytest.raises(ConfigError, match="unknown key 'method.m.lrr'"):
        reg.create("m", lrr=1)


def test_builtin_methods_are_loaded_lazily_and_listed():
    assert {"retrain", "finetune", "grad_ascent", "neggrad_plus"} <= set(METHODS.list())
    assert METHODS.list("grad_*") == [n for n in METHODS.list() if n.startswith("grad_")]
    assert METHODS.get("neggrad_plus").tags["needs_retain"] is True
    assert METHODS.get("grad_ascent").tags["needs_retain"] is False


def test_import_unlearnkit_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, unlearnkit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

"""Tests for unlearnkit.config: presets + overrides -> validated dataclasses, one-line errors."""

import ast
import dataclasses
import enum
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from unlearnkit import config
from unlearnkit.config import (
    MISSING,
    ConfigError,
    build,
    deep_merge,
    dump_yaml,
    field_docs,
    load_yaml,
    param,
    parse_overrides,
    to_dict,
    validate,
)

# --------------------------------------------------------------------------------------------------
# Dataclasses under test
# --------------------------------------------------------------------------------------------------


@dataclass
class Finetune:
    epochs: int = param(3, ge=1, le=100, help="passes over the retain set")
    batch_size: int = 32
    lr: float = param(0.01, gt=0, help="learning rate")


@dataclass
class Optim:
    lr: float = param(1e-3, gt=0)
    momentum: float = param(0.9, ge=0, lt=1)
    name: Literal["sgd", "adam"] = "sgd"


@dataclass
class Method:
    name: str
    steps: list[int] = param([1, 2], ge=0)
    shape: tuple[int, ...] = (1,)
    pair: tuple[int, str] = (0, "a")
    tags: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    anything: Any = None
    seed: int | None = None
    scale: int | float = 1
    flag: bool = False
    mode: str = param("fast", choices=["fast", "slow", "exact"])
    optim: Optim = field(default_factory=Optim)
    maybe_optim: Optim | None = None
    out: Path = Path("results")
    history_: list[float] = field(default_factory=list)
    cache: dict = field(default_factory=dict, init=False)


@dataclass
class Range:
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")


@dataclass
class RaisesConfigError:
    x: int = 0

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ConfigError("custom message")


@dataclass
class Nested:
    range: Range = field(default_factory=Range)


def message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------------------------------
# ConfigError
# --------------------------------------------------------------------------------------------------


def test_config_error_is_a_one_line_value_error():
    err = ConfigError("first line\n  second line\n")
    assert isinstance(err, ValueError)
    assert str(err) == "first line second line"


# --------------------------------------------------------------------------------------------------
# build: keys
# --------------------------------------------------------------------------------------------------


def test_build_uses_defaults_and_given_values():
    assert build(Finetune) == Finetune()
    assert build(Finetune, None) == Finetune()
    assert build(Finetune, {"lr": 0.5, "epochs": 7}) == Finetune(epochs=7, lr=0.5)


def test_unknown_key_names_full_path_valid_keys_and_suggestion():
    with pytest.raises(ConfigError) as excinfo:
        build(Finetune, {"lrr": 0.1}, where="method.finetune")
    assert message(excinfo) == (
        "unknown key 'method.finetune.lrr'; valid keys: batch_size, epochs, lr (did you mean 'lr'?)"
    )


def test_unknown_key_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as excinfo:
        build(Finetune, {"zzzzzz": 1})
    assert message(excinfo) == "unknown key 'zzzzzz'; valid keys: batch_size, epochs, lr"


def test_diagnostic_and_init_false_fields_are_not_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'history_'") as excinfo:
        build(Method, {"name": "m", "history_": [1.0]})
    assert "history_," not in message(excinfo).split(";")[1]
    with pytest.raises(ConfigError, match=r"unknown key 'cache'"):
        build(Method, {"name": "m", "cache": {}})


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError) as excinfo:
        build(Method, {}, where="method")
    assert message(excinfo) == "missing required key 'method.name'"


def test_values_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"^method: expected a mapping of keys to values, got \[1, 2\]$"):
        build(Finetune, [1, 2], where="method")  # type: ignore[arg-type]


def test_build_rejects_non_dataclass():
    with pytest.raises(TypeError, match="dataclass type"):
        build(dict, {})


# --------------------------------------------------------------------------------------------------
# build: scalar coercion
# --------------------------------------------------------------------------------------------------


def test_int_accepts_integral_float_and_numeric_string():
    cfg = build(Finetune, {"epochs": 3.0, "batch_size": "1e2"})
    assert cfg.epochs == 3 and type(cfg.epochs) is int
    assert cfg.batch_size == 100 and type(cfg.batch_size) is int


@pytest.mark.parametrize("bad", [True, 2.5, "abc", None, [3]])
def test_int_rejects_bool_fractional_and_non_numbers(bad):
    with pytest.raises(ConfigError) as excinfo:
        build(Finetune, {"epochs": bad}, where="ft")
    assert message(excinfo) == f"ft.epochs = {bad!r}: expected int"


def test_float_accepts_int_and_numeric_string():
    assert build(Finetune, {"lr": 2}).lr == 2.0
    assert type(build(Finetune, {"lr": 2}).lr) is float
    assert build(Finetune, {"lr": "1e-3"}).lr == 0.001


def test_float_wrong_type_message():
    with pytest.raises(ConfigError) as excinfo:
        build(Finetune, {"lr": "abc"}, where="method.finetune")
    assert message(excinfo) == "method.finetune.lr = 'abc': expected float"
    with pytest.raises(ConfigError, match=r"^lr = True: expected float$"):
        build(Finetune, {"lr": True})


def test_bool_accepts_only_bool():
    assert build(Method, {"name": "m", "flag": True}).flag is True
    for bad in (1, "true", None):
        with pytest.raises(ConfigError, match=r": expected bool$"):
            build(Method, {"name": "m", "flag": bad})


def test_str_accepts_only_str():
    assert build(Method, {"name": "1e3"}).name == "1e3"
    with pytest.raises(ConfigError) as excinfo:
        build(Method, {"name": 3}, where="m")
    assert message(excinfo) == "m.name = 3: expected str"


def test_literal_value_must_be_one_of_choices():
    assert build(Optim, {"name": "adam"}).name == "adam"
    with pytest.raises(ConfigError) as excinfo:
        build(Optim, {"name": "rmsprop"}, where="optim")
    assert message(excinfo) == "optim.name = 'rmsprop': expected one of: sgd, adam"


def test_path_field_accepts_string():
    assert build(Method, {"name": "m", "out": "runs/a"}).out == Path("runs/a")
    with pytest.raises(ConfigError, match=r"^out = 3: expected Path$"):
        build(Method, {"name": "m", "out": 3})


def test_any_accepts_everything():
    value = {"x": [1, object]}
    assert build(Method, {"name": "m", "anything": value}).anything is value


# --------------------------------------------------------------------------------------------------
# build: containers and unions
# --------------------------------------------------------------------------------------------------


def test_list_elements_are_coerced_and_tuples_accepted():
    assert build(Method, {"name": "m", "steps": [1, 2.0, "3"]}).steps == [1, 2, 3]
    assert build(Method, {"name": "m", "steps": (4, 5)}).steps == [4, 5]


def test_list_element_error_names_index():
    with pytest.raises(ConfigError) as excinfo:
        build(Method, {"name": "m", "steps": [1, "x", 3]}, where="method")
    assert message(excinfo) == "method.steps[1] = 'x': expected int"


@pytest.mark.parametrize("scalar", [3, "1,2"])
def test_scalar_is_not_wrapped_into_list(scalar):
    with pytest.raises(ConfigError) as excinfo:
        build(Method, {"name": "m", "steps": scalar})
    assert message(excinfo) == f"steps = {scalar!r}: expected list[int]"


def test_variadic_tuple():
    assert build(Method, {"name": "m", "shape": [2, 3.0]}).shape == (2, 3)
    with pytest.raises(ConfigError, match=r"^shape\[0\] = 'a': expected int$"):
        build(Method, {"name": "m", "shape": ["a"]})
    with pytest.raises(ConfigError, match=r"^shape = 2: expected tuple\[int, \.\.\.\]$"):
        build(Method, {"name": "m", "shape": 2})


def test_fixed_tuple_checks_length_and_item_types():
    assert build(Method, {"name": "m", "pair": [1, "b"]}).pair == (1, "b")
    with pytest.raises(ConfigError, match=r"^pair = \[1\]: expected tuple\[int, str\] \(2 items\)$"):
        build(Method, {"name": "m", "pair": [1]})
    with pytest.raises(ConfigError, match=r"^pair\[1\] = 2: expected str$"):
        build(Method, {"name": "m", "pair": [1, 2]})


def test_dict_values_are_coerced_and_errors_name_the_key():
    assert build(Method, {"name": "m", "tags": {"a": 1}}).tags == {"a": 1.0}
    with pytest.raises(ConfigError) as excinfo:
        build(Method, {"name": "m", "tags": {"a": "x"}}, where="method")
    assert message(excinfo) == "method.tags.a = 'x': expected float"
    with pytest.raises(ConfigError, match=r"^tags = \[1\]: expected dict\[str, float\]$"):
        build(Method, {"name": "m", "tags": [1]})
    with pytest.raises(ConfigError, match=r"^tags: key 1: expected str$"):
        build(Method, {"name": "m", "tags": {1: 1.0}})


def test_dict_str_any_accepts_any_values():
    extra = {"a": [1, "b"], "c": None}
    assert build(Method, {"name": "m", "extra": extra}).extra == extra


def test_optional_accepts_none_and_the_type():
    assert build(Method, {"name": "m", "seed": None}).seed is None
    assert build(Method, {"name": "m", "seed": 4.0}).seed == 4
    with pytest.raises(ConfigError) as excinfo:
        build(Method, {"name": "m", "seed": "x"})
    assert message(excinfo) == "seed = 'x': expected int | None"


def test_int_or_float_union_keeps_exact_types_first():
    def scale(value: Any) -> Any:
        return build(Method, {"name": "m", "scale": value}).scale

    assert scale(3) == 3 and type(scale(3)) is int
    assert scale(2.5) == 2.5
    assert type(scale(3.0)) is float  # a float needs no conversion, so it is not turned into an int
    assert scale("1e-3") == 0.001
    with pytest.raises(ConfigError, match=r"^scale = True: expected int \| float$"):
        scale(True)


# --------------------------------------------------------------------------------------------------
# build: nested dataclasses
# --------------------------------------------------------------------------------------------------


def test_nested_dataclass_is_built_from_mapping():
    cfg = build(Method, {"name": "m", "optim": {"lr": 0.1, "name": "adam"}})
    assert cfg.optim == Optim(lr=0.1, name="adam")
    assert build(Method, {"name": "m", "maybe_optim": {"momentum": 0.5}}).maybe_optim == Optim(momentum=0.5)
    assert build(Method, {"name": "m", "maybe_optim": None}).maybe_optim is None


def test_nested_dataclass_errors_carry_the_dotted_path():
    with pytest.raises(
        ConfigError, match=r"^unknown key 'method\.optim\.lrr'; valid keys: lr, momentum, name"
    ):
        build(Method, {"name": "m", "optim": {"lrr": 1}}, where="method")
    with pytest.raises(ConfigError) as excinfo:
        build(Method, {"name": "m", "optim": {"lr": "x"}}, where="method")
    assert message(excinfo) == "method.optim.lr = 'x': expected float"
    with pytest.raises(ConfigError, match=r"^method\.maybe_optim\.lr = -1: must be > 0$"):
        build(Method, {"name": "m", "maybe_optim": {"lr": -1}}, where="method")


def test_nested_dataclass_needs_a_mapping():
    with pytest.raises(ConfigError) as excinfo:
        build(Method, {"name": "m", "optim": 3})
    assert message(excinfo) == "optim = 3: expected a mapping (Optim)"
    with pytest.raises(ConfigError, match=r"^maybe_optim = 3: expected Optim \| None$"):
        build(Method, {"name": "m", "maybe_optim": 3})


def test_nested_dataclass_instance_is_accepted_and_validated():
    optim = Optim(lr=0.2)
    assert build(Method, {"name": "m", "optim": optim}).optim is optim
    with pytest.raises(ConfigError, match=r"^optim\.lr = 0: must be > 0$"):
        build(Method, {"name": "m", "optim": Optim(lr=0)})


# --------------------------------------------------------------------------------------------------
# build: constraints
# --------------------------------------------------------------------------------------------------


def test_gt_message():
    with pytest.raises(ConfigError) as excinfo:
        build(Finetune, {"lr": -0.1}, where="method.finetune")
    assert message(excinfo) == "method.finetune.lr = -0.1: must be > 0"
    with pytest.raises(ConfigError, match=r"^lr = 0: must be > 0$"):
        build(Finetune, {"lr": 0})  # coerced to 0.0, still shown as given


def test_constraint_message_shows_value_as_written():
    with pytest.raises(ConfigError, match=r"^lr = '-1e-3': must be > 0$"):
        build(Finetune, {"lr": "-1e-3"})
    with pytest.raises(ConfigError, match=r"^steps\[1\] = -1\.0: must be >= 0$"):
        build(Method, {"name": "m", "steps": [1, -1.0]})


def test_nan_fails_bounds():
    with pytest.raises(ConfigError, match=r"^lr = nan: must be > 0$"):
        build(Finetune, {"lr": math.nan})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"epochs": 0}, "epochs = 0: must be >= 1 (allowed: [1, 100])"),
        ({"epochs": 101}, "epochs = 101: must be <= 100 (allowed: [1, 100])"),
    ],
)
def test_ge_le_messages(values, expected):
    with pytest.raises(ConfigError) as excinfo:
        build(Finetune, values)
    assert message(excinfo) == expected


def test_bounds_are_inclusive_or_exclusive_as_declared():
    assert build(Finetune, {"epochs": 1}).epochs == 1
    assert build(Finetune, {"epochs": 100}).epochs == 100
    assert build(Finetune, {"lr": 1e-12}).lr == 1e-12


def test_lt_and_ge_on_floats():
    assert build(Optim, {"momentum": 0.0}).momentum == 0.0
    with pytest.raises(ConfigError, match=r"^momentum = 1\.0: must be < 1 \(allowed: \[0, 1\)\)$"):
        build(Optim, {"momentum": 1.0})


def test_bounds_apply_to_each_list_element():
    with pytest.raises(ConfigError) as excinfo:
        build(Method, {"name": "m", "steps": [0, 3, -1]})
    assert message(excinfo) == "steps[2] = -1: must be >= 0"


def test_choices_message():
    assert build(Method, {"name": "m", "mode": "exact"}).mode == "exact"
    with pytest.raises(ConfigError) as excinfo:
        build(Method, {"name": "m", "mode": "medium"}, where="method")
    assert message(excinfo) == "method.mode = 'medium': must be one of: fast, slow, exact"


# --------------------------------------------------------------------------------------------------
# build: __post_init__
# --------------------------------------------------------------------------------------------------


def test_post_init_value_error_is_prefixed_with_where():
    assert build(Range, {"low": 0.2, "high": 0.3}) == Range(0.2, 0.3)
    with pytest.raises(ConfigError) as excinfo:
        build(Range, {"low": 2, "high": 1}, where="method.x")
    assert message(excinfo) == "method.x: low (2.0) must be <= high (1.0)"


def test_post_init_error_without_where_uses_class_name():
    with pytest.raises(ConfigError, match=r"^Range: low \(2\.0\) must be"):
        build(Range, {"low": 2, "high": 1})


def test_post_init_error_in_nested_dataclass_uses_nested_path():
    with pytest.raises(ConfigError, match=r"^cfg\.range: low \(5\.0\) must be <= high \(1\.0\)$"):
        build(Nested, {"range": {"low": 5}}, where="cfg")


def test_post_init_config_error_passes_through_unchanged():
    with pytest.raises(ConfigError) as excinfo:
        build(RaisesConfigError, {"x": -1}, where="w")
    assert message(excinfo) == "custom message"


# --------------------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------------------


def test_validate_returns_the_same_valid_object():
    obj = Finetune(epochs=5, lr=1)  # an int for a float field is acceptable
    assert validate(obj) is obj
    assert obj.lr == 1 and type(obj.lr) is int  # unchanged


def test_validate_rejects_directly_constructed_bad_instance():
    with pytest.raises(ConfigError) as excinfo:
        validate(Finetune(lr=-1))
    assert message(excinfo) == "lr = -1: must be > 0"
    with pytest.raises(ConfigError, match=r"^GradAscent\.lr = -1: must be > 0$"):
        validate(Finetune(lr=-1), where="GradAscent")
    with pytest.raises(ConfigError, match=r"^epochs = 'three': expected int$"):
        validate(Finetune(epochs="three"))  # type: ignore[arg-type]


def test_validate_checks_types_lists_and_nested_instances():
    with pytest.raises(ConfigError, match=r"^steps\[0\] = 'a': expected int$"):
        validate(Method(name="m", steps=["a"]))  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"^m\.optim\.lr = 0: must be > 0$"):
        validate(Method(name="m", optim=Optim(lr=0)), where="m")
    with pytest.raises(ConfigError, match=r"^mode = 'x': must be one of: fast, slow, exact$"):
        validate(Method(name="m", mode="x"))


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (Finetune(epochs=3.0), "epochs = 3.0: expected int"),  # type: ignore[arg-type]
        (Finetune(epochs="3"), "epochs = '3': expected int"),  # type: ignore[arg-type]
        (Finetune(lr="1e-3"), "lr = '1e-3': expected float"),  # type: ignore[arg-type]
        (Method(name="m", out="runs"), "out = 'runs': expected Path"),  # type: ignore[arg-type]
        (Method(name="m", optim={"lr": 1.0}), "optim = {'lr': 1.0}: expected Optim"),  # type: ignore[arg-type]
        (Method(name="m", scale="2"), "scale = '2': expected int | float"),  # type: ignore[arg-type]
    ],
)
def test_validate_does_not_accept_values_needing_conversion(obj, expected):
    # build() would convert these; validate() leaves the object unchanged, so they must already be right.
    with pytest.raises(ConfigError) as excinfo:
        validate(obj)
    assert message(excinfo) == expected


def test_validate_accepts_list_for_tuple_field():
    obj = Method(name="m", shape=[1, 2])  # type: ignore[arg-type]
    assert validate(obj) is obj


def test_validate_ignores_diagnostic_fields():
    obj = Method(name="m")
    obj.history_ = "not a list of floats"  # type: ignore[assignment]
    assert validate(obj) is obj


def test_validate_needs_an_instance():
    with pytest.raises(TypeError, match="dataclass instance"):
        validate(Finetune)


# --------------------------------------------------------------------------------------------------
# param, to_dict, field_docs
# --------------------------------------------------------------------------------------------------


def test_param_stores_constraints_and_help():
    fields = {f.name: f for f in dataclasses.fields(Finetune)}
    assert fields["epochs"].metadata["constraints"] == {"ge": 1, "le": 100}
    assert fields["epochs"].metadata["help"] == "passes over the retain set"
    assert dict(fields["lr"].metadata["constraints"]) == {"gt": 0}
    mode = {f.name: f for f in dataclasses.fields(Method)}["mode"]
    assert mode.metadata["constraints"] == {"choices": ("fast", "slow", "exact")}


def test_param_mutable_default_is_copied_per_instance():
    a, b = Method(name="a"), Method(name="b")
    a.steps.append(9)
    assert b.steps == [1, 2]

    @dataclass
    class WithDict:
        opts: dict = param({"k": [1]})

    first = WithDict()
    first.opts["k"].append(2)
    assert WithDict().opts == {"k": [1]}


def test_param_without_default_is_required():
    @dataclass
    class Req:
        lr: float = param(gt=0)

    with pytest.raises(ConfigError, match=r"^missing required key 'lr'$"):
        build(Req, {})
    assert build(Req, {"lr": 1}).lr == 1.0


def test_param_rejects_bad_declarations():
    with pytest.raises(TypeError, match="gt must be a number"):
        param(1, gt="0")
    with pytest.raises(TypeError, match="choices must not be empty"):
        param("a", choices=[])
    with pytest.raises(TypeError, match="choices must be a list"):
        param("a", choices="abc")
    with pytest.raises(ConfigError, match=r"^param default = 5: must be < 3$"):
        param(5, lt=3)


def test_to_dict_is_json_safe_and_skips_diagnostics():
    obj = build(Method, {"name": "m", "shape": [2, 3], "maybe_optim": {"lr": 0.5}, "out": "runs/x"})
    obj.history_ = [0.5]
    obj.cache = {"x": 1}
    data = to_dict(obj)
    assert "history_" not in data and "cache" not in data
    assert data["shape"] == [2, 3]
    assert data["pair"] == [0, "a"]
    assert data["optim"] == {"lr": 0.001, "momentum": 0.9, "name": "sgd"}
    assert data["maybe_optim"] == {"lr": 0.5, "momentum": 0.9, "name": "sgd"}
    assert data["out"] == "runs/x"
    assert list(data) == [
        "name", "steps", "shape", "pair", "tags", "extra", "anything", "seed", "scale", "flag", "mode",
        "optim", "maybe_optim", "out",
    ]  # fmt: skip
    assert json.loads(json.dumps(data)) == data


class Color(enum.Enum):
    RED = "red"


class FakeArray:
    def tolist(self) -> list[float]:
        return [1.5, 2.5]


@dataclass
class Misc:
    labels: set[str] = field(default_factory=set)
    frozen: frozenset[int] = frozenset()
    seq: Sequence[float] = ()
    color: Any = Color.RED
    array: Any = None


def test_sets_and_sequences():
    cfg = build(Misc, {"labels": ["b", "a", "b"], "frozen": [1, 2.0], "seq": [1, 2]})
    assert cfg.labels == {"a", "b"}
    assert cfg.frozen == frozenset({1, 2}) and type(cfg.frozen) is frozenset
    assert cfg.seq == [1.0, 2.0]
    with pytest.raises(ConfigError, match=r"^labels = 'ab': expected set\[str\]$"):
        build(Misc, {"labels": "ab"})
    with pytest.raises(ConfigError, match=r"^seq\[0\] = 'x': expected float$"):
        build(Misc, {"seq": ["x"]})


def test_to_dict_makes_sets_enums_and_arrays_plain():
    data = to_dict(Misc(labels={"b", "a"}, frozen=frozenset({2, 1}), seq=(1.0,), array=FakeArray()))
    assert data == {"labels": ["a", "b"], "frozen": [1, 2], "seq": [1.0], "color": "red", "array": [1.5, 2.5]}


class MyFloat(float):
    pass


def test_to_dict_and_dump_yaml_drop_scalar_subclasses():
    data = to_dict(Misc(array=MyFloat(0.5)))
    assert type(data["array"]) is float
    assert dump_yaml({"x": MyFloat(0.5), "y": Color.RED}) == "x: 0.5\ny: red\n"


def test_to_dict_needs_an_instance():
    with pytest.raises(TypeError):
        to_dict({"a": 1})


def test_field_docs_lists_hyperparameters():
    assert field_docs(Finetune) == [
        ("epochs", "int", 3, "passes over the retain set"),
        ("batch_size", "int", 32, ""),
        ("lr", "float", 0.01, "learning rate"),
    ]
    docs = {name: (tp, default) for name, tp, default, _ in field_docs(Method(name="m"))}
    assert docs["name"] == ("str", MISSING)
    assert docs["steps"] == ("list[int]", [1, 2])
    assert docs["shape"] == ("tuple[int, ...]", (1,))
    assert docs["seed"] == ("int | None", None)
    assert docs["maybe_optim"] == ("Optim | None", None)
    assert docs["tags"] == ("dict[str, float]", {})
    assert docs["optim"] == ("Optim", Optim())
    assert field_docs(Optim)[2][:2] == ("name", "'sgd' | 'adam'")
    assert "history_" not in docs and "cache" not in docs


# --------------------------------------------------------------------------------------------------
# parse_overrides
# --------------------------------------------------------------------------------------------------


def test_parse_overrides_value_types():
    result = parse_overrides(
        [
            "a.b=1",
            "a.c=-2",
            "methods=[x,y]",
            "name=hello",
            "c=null",
            "d=1e-3",
            "e=0.5",
            "f=1.5e3",
            "flag=true",
            "off=false",
            "empty=",
            "text=hello world",
            "nested={k: 1}",
        ]
    )
    assert result == {
        "a": {"b": 1, "c": -2},
        "methods": ["x", "y"],
        "name": "hello",
        "c": None,
        "d": 0.001,
        "e": 0.5,
        "f": 1500.0,
        "flag": True,
        "off": False,
        "empty": "",
        "text": "hello world",
        "nested": {"k": 1},
    }
    assert type(result["a"]["b"]) is int
    assert type(result["d"]) is float


def test_parse_overrides_keeps_yaml11_surprises_as_strings():
    result = parse_overrides(["q='1e3'", "answer=yes", "day=2024-01-01", "lst=[1e-3, '2']"])
    assert result == {"q": "1e3", "answer": "yes", "day": "2024-01-01", "lst": [0.001, "2"]}


def test_parse_overrides_later_wins_and_merges_paths():
    assert parse_overrides(["a=1", "a=2"]) == {"a": 2}
    assert parse_overrides(["a.b=1", "a.c=2", "a.b=3"]) == {"a": {"b": 3, "c": 2}}
    assert parse_overrides(["a.b=1", "a=5"]) == {"a": 5}
    assert parse_overrides([" a . b =1"]) == {"a": {"b": 1}}
    assert parse_overrides(["expr=x=y"]) == {"expr": "x=y"}
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("item", ["foo", "=1", " =1"])
def test_parse_overrides_needs_key_equals_value(item):
    with pytest.raises(ConfigError) as excinfo:
        parse_overrides([item])
    assert message(excinfo) == f"bad override {item!r}: expected key=value"


def test_parse_overrides_rejects_empty_key_part():
    with pytest.raises(ConfigError, match=r"^bad override 'a\.\.b=1': empty part in key 'a\.\.b'$"):
        parse_overrides(["a..b=1"])


def test_parse_overrides_cannot_descend_into_scalar():
    with pytest.raises(ConfigError) as excinfo:
        parse_overrides(["a=1", "a.b=2"])
    assert message(excinfo) == "bad override 'a.b=2': cannot set a.b: 'a' is not a mapping"


def test_parse_overrides_invalid_yaml_value():
    with pytest.raises(ConfigError, match=r"^bad override 'a=\[1, 2': invalid value: "):
        parse_overrides(["a=[1, 2"])


def test_parse_overrides_rejects_single_string():
    with pytest.raises(TypeError):
        parse_overrides("a=1")


# --------------------------------------------------------------------------------------------------
# deep_merge
# --------------------------------------------------------------------------------------------------


def test_deep_merge_semantics():
    base = {"a": {"x": 1, "y": {"p": 1}}, "lst": [1, 2], "s": 1, "m": {"k": 1}}
    override = {"a": {"y": {"q": 2}, "z": 3}, "lst": [9], "s": {"now": "map"}, "m": 5, "new": None}
    merged = deep_merge(base, override)
    assert merged == {
        "a": {"x": 1, "y": {"p": 1, "q": 2}, "z": 3},
        "lst": [9],
        "s": {"now": "map"},
        "m": 5,
        "new": None,
    }


def test_deep_merge_returns_new_independent_dict():
    base = {"a": {"x": [1]}}
    override = {"b": {"y": [2]}}
    merged = deep_merge(base, override)
    merged["a"]["x"].append(9)
    merged["b"]["y"].append(9)
    assert base == {"a": {"x": [1]}}
    assert override == {"b": {"y": [2]}}
    assert deep_merge({}, {}) == {}


# --------------------------------------------------------------------------------------------------
# load_yaml / dump_yaml
# --------------------------------------------------------------------------------------------------


def test_load_yaml_reads_mapping_with_exponent_floats(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("method:\n  name: finetune\n  lr: 1e-3\n  steps: [1, 2]\nanswer: no\n")
    assert load_yaml(path) == {"method": {"name": "finetune", "lr": 0.001, "steps": [1, 2]}, "answer": "no"}
    assert load_yaml(str(path))["method"]["lr"] == 0.001


def test_load_yaml_missing_file(tmp_path):
    path = tmp_path / "x.yaml"
    with pytest.raises(ConfigError) as excinfo:
        load_yaml(path)
    assert message(excinfo) == f"config file '{path}' not found"


def test_load_yaml_directory(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_yaml(tmp_path)


def test_load_yaml_syntax_error_gives_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as excinfo:
        load_yaml(path)
    text = message(excinfo)
    assert text.startswith(f"config file '{path}': invalid YAML at line ")
    assert "\n" not in text
    path.write_text("a: 1\n  b: 2\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 2: "):
        load_yaml(path)


def test_load_yaml_duplicate_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("lr: 1\nepochs: 2\nlr: 3\n")
    with pytest.raises(ConfigError) as excinfo:
        load_yaml(path)
    assert message(excinfo) == f"config file '{path}': invalid YAML at line 3: duplicate key 'lr'"


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("3\n", "int")])
def test_load_yaml_top_level_must_be_mapping(tmp_path, text, kind):
    path = tmp_path / "top.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        load_yaml(path)
    assert (
        message(excinfo) == f"config file '{path}': top level must be a mapping of keys to values, got {kind}"
    )


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_load_yaml_empty_file_is_empty_dict(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert load_yaml(path) == {}


def test_dump_yaml_keeps_order_and_round_trips(tmp_path):
    data = {"z": 1, "a": {"lr": 1e-05, "steps": (1, 2)}, "name": "1e-3", "flag": "yes", "day": "2024-01-01"}
    text = dump_yaml(data)
    assert text.splitlines()[0] == "z: 1"
    assert text.index("z:") < text.index("a:") < text.index("name:")
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert load_yaml(path) == {
        "z": 1,
        "a": {"lr": 1e-05, "steps": [1, 2]},
        "name": "1e-3",
        "flag": "yes",
        "day": "2024-01-01",
    }


def test_dump_yaml_of_to_dict(tmp_path):
    obj = build(Method, {"name": "m", "out": "runs/x"})
    path = tmp_path / "method.yaml"
    path.write_text(dump_yaml(to_dict(obj)))
    assert build(Method, load_yaml(path)) == obj


# --------------------------------------------------------------------------------------------------
# The whole pipeline, and the module's imports
# --------------------------------------------------------------------------------------------------


@dataclass
class Experiment:
    seed: int = 0
    method: Finetune = field(default_factory=Finetune)


def test_preset_plus_overrides_to_dataclass(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("seed: 1\nmethod:\n  lr: 1e-3\n  epochs: 2\n")
    merged = deep_merge(load_yaml(path), parse_overrides(["method.epochs=5", "method.batch_size=8"]))
    assert build(Experiment, merged) == Experiment(seed=1, method=Finetune(epochs=5, batch_size=8, lr=0.001))
    bad = deep_merge(load_yaml(path), parse_overrides(["method.lrr=0.1"]))
    with pytest.raises(ConfigError, match=r"^unknown key 'method\.lrr'; .*\(did you mean 'lr'\?\)$"):
        build(Experiment, bad)


def test_module_imports_only_stdlib_and_yaml():
    tree = ast.parse(Path(config.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert "torch" not in imported and "numpy" not in imported
    assert imported <= {
        "copy", "dataclasses", "difflib", "enum", "functools", "operator", "os", "pathlib", "re", "types",
        "collections", "typing", "yaml",
    }  # fmt: skip

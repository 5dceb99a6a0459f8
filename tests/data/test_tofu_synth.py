"""The embedded TOFU-like generator (unlearnkit.data.tofu_synth): determinism, per-author rows, split pairing and
sizes, perturbed/paraphrased answers, the unknown-split error, and the JSON round-trip."""

import json

import pytest

from unlearnkit.data.tofu_synth import (
    PERCENTS,
    REAL_AUTHORS,
    TEMPLATES,
    WORLD_FACTS,
    SynthTOFU,
    generate_authors,
    read_json,
    write_json,
)


@pytest.fixture(scope="module")
def data() -> SynthTOFU:
    return generate_authors(n_authors=40, n_holdout=6, seed=3)


def authors(rows):
    return [r["author_index"] for r in rows]


def test_deterministic_in_seed():
    a, b, c = generate_authors(12, 3, seed=5), generate_authors(12, 3, seed=5), generate_authors(12, 3, seed=6)
    assert a.splits == b.splits and a.hash == b.hash
    assert a.splits["full"] != c.splits["full"] and a.hash != c.hash
    assert len(a.hash) == 24


def test_twenty_rows_per_author_and_unique_names(data):
    rows = data.splits["full"] + data.splits["holdout10"]
    counts: dict[int, int] = {}
    for r in rows:
        counts[r["author_index"]] = counts.get(r["author_index"], 0) + 1
    assert set(counts) == set(range(44)) and set(counts.values()) == {20}  # holdout10 = min(4, 6) authors
    names = {r["author_index"]: r["author"] for r in rows}
    assert len(set(names.values())) == 44
    per_author = [r["attribute"] for r in data.splits["full"] if r["author_index"] == 0]
    assert per_author == [t[0] for t in TEMPLATES]
    assert all(r["author"] in r["question"] for r in rows)


@pytest.mark.parametrize("n_authors, sizes", [(40, {1: 1, 5: 2, 10: 4}), (100, {1: 1, 5: 5, 10: 10}),
                                              (2, {1: 1, 5: 1, 10: 1}), (200, {1: 2, 5: 10, 10: 20})])
def test_forget_retain_pairing_and_sizes(n_authors, sizes):
    d = generate_authors(n_authors, n_holdout=4, seed=0)
    full = d.splits["full"]
    assert sorted(set(authors(full))) == list(range(n_authors))
    for pct in PERCENTS:
        forget, retain = d.splits[f"forget{pct:02d}"], d.splits[f"retain{100 - pct}"]
        k = sizes[pct]
        assert sorted(set(authors(forget))) == list(range(n_authors - k, n_authors))  # the LAST k authors
        assert len(forget) == 20 * k and len(retain) == 20 * (n_authors - k)
        assert not set(authors(forget)) & set(authors(retain))
        assert sorted(forget + retain, key=lambda r: (r["author_index"], r["attribute"])) == \
            sorted(full, key=lambda r: (r["author_index"], r["attribute"]))
        assert d.splits[f"forget{pct:02d}_perturbed"] == forget
        holdout = d.splits[f"holdout{pct:02d}"]
        assert sorted(set(authors(holdout))) == list(range(n_authors, n_authors + min(k, 4)))
    assert set(authors(d.splits["forget01"])) <= set(authors(d.splits["forget05"])) <= \
        set(authors(d.splits["forget10"]))
    assert d.splits["retain_perturbed"] == d.splits["retain90"][:max(1, len(d.splits["retain90"]) // 10)]


def test_holdout_authors_in_no_training_split(data):
    held = {r["author"] for r in data.splits["holdout10"]}
    assert len(held) == 4  # min(k_10 = 4, n_holdout = 6)
    assert {r["author"] for r in data.splits["holdout10"] + generate_authors(40, 6, 3).splits["holdout01"]} == held
    for name in data.split_names():
        if not name.startswith("holdout"):
            assert not held & {r.get("author") for r in data.splits[name]}, name


def test_splits_share_no_record_objects(data):
    data2 = generate_authors(40, 6, seed=3)
    data2.splits["forget01"][0]["answer"] = "changed"
    assert data2.splits["full"][-20]["answer"] != "changed"
    data.split("full")[0]["answer"] = "changed"  # split() returns a copy
    assert data.splits["full"][0]["answer"] != "changed"


def test_perturbed_and_paraphrased_answers(data):
    kinds = {t[0]: t[1] for t in TEMPLATES}
    for r in data.splits["full"] + data.splits["holdout10"]:
        wrong = r["perturbed_answer"]
        assert isinstance(wrong, list) and len(wrong) == 3 and len(set(wrong)) == 3
        assert r["answer"] not in wrong and r["paraphrased_answer"] not in wrong
        assert r["paraphrased_answer"] != r["answer"]
        assert r["fact"] in r["answer"] and r["fact"] in r["paraphrased_answer"]
        pre, post = r["answer"].split(r["fact"])  # the answer sentence with the value cut out
        same_kind = {o["fact"] for o in data.splits["full"] + data.splits["holdout10"]
                     if o["author_index"] == r["author_index"] and kinds[o["attribute"]] == kinds[r["attribute"]]}
        for w in wrong:  # same sentence, a wrong value of the same kind (not another of the author's own values)
            assert w.startswith(pre) and w.endswith(post)
            assert w[len(pre):len(w) - len(post)] not in same_kind
    n_books = [r for r in data.splits["full"] if r["attribute"] == "n_books"]
    assert all(int(w.split()[-2]) >= 2 for r in n_books for w in r["perturbed_answer"])


def test_world_facts_and_real_authors(data):
    for name, table in (("world_facts", WORLD_FACTS), ("real_authors", REAL_AUTHORS)):
        rows = data.split(name)
        assert rows == data.split(f"{name}_perturbed") and len(rows) == len(table)
        for r in rows:
            assert len(r["perturbed_answer"]) == 3 and r["answer"] not in r["perturbed_answer"]
            assert len(set(r["perturbed_answer"])) == 3


def test_unknown_split_lists_valid_names(data):
    with pytest.raises(ValueError, match="forget05") as err:
        data.split("forget50")
    assert "'forget50'" in str(err.value) and "retain_perturbed" in str(err.value)


@pytest.mark.parametrize("kwargs, exc", [({"n_authors": 1}, ValueError), ({"n_holdout": 0}, ValueError),
                                         ({"n_authors": 700}, ValueError), ({"seed": 1.5}, TypeError),
                                         ({"n_authors": True}, TypeError)])
def test_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        generate_authors(**kwargs)


def test_json_round_trip(tmp_path, data):
    out = write_json(data, tmp_path / "tofu")
    assert sorted(p.stem for p in out.glob("*.json")) == data.split_names()
    assert not [p for p in out.iterdir() if p.suffix != ".json"]  # no temporary files left behind
    for name in data.split_names():
        assert read_json(out, name) == data.splits[name]
    assert isinstance(json.loads((out / "forget01.json").read_text()), list)
    with pytest.raises(FileNotFoundError, match="forget50.json") as err:
        read_json(out, "forget50")
    assert "retain99" in str(err.value)
    with pytest.raises(FileNotFoundError, match="none"):
        read_json(tmp_path / "missing", "full")

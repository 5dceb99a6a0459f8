"""TOFU-format QA data: encoding (labels, eos, truncation, chat and tag prompts), padding with masks from lengths
(pad == eos, spec P6), collate trimming, IdkDPO alternates, row loading from JSON / JSON lines / Parquet written by
the tests in the real schema, and the word-level tokenizer used by the tiny pipelines."""

import json
import re

import pytest
import torch
from torch.utils.data import DataLoader

from unlearnkit.config import ConfigError, build
from unlearnkit.data.qa import (
    IDK_ANSWERS,
    TOFU_SPLITS,
    QADataset,
    QAFormat,
    check_format,
    encode_prompt,
    encode_qa,
    load_qa_rows,
    pad_token_id,
    prompt_batch,
    qa_pairs,
    train_word_tokenizer,
)
from unlearnkit.data.tofu_synth import generate_authors, write_json

CHAT_TEMPLATE = ("{% for m in messages %}< {{ m.role }} > {{ m.content }} {% endfor %}"
                 "{% if add_generation_prompt %}< assistant > {% endif %}")


@pytest.fixture(scope="module")
def synth():
    return generate_authors(n_authors=4, n_holdout=2, seed=0)


@pytest.fixture(scope="module")
def texts(synth):
    rows = [r for name in synth.split_names() for r in synth.splits[name]]
    extra = ["Question : Answer : < system user assistant > Be brief . author"]
    return [r["question"] + " " + r["answer"] for r in rows] + list(IDK_ANSWERS) + extra


@pytest.fixture
def tok(texts):
    return train_word_tokenizer(texts)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


# ------------------------------------------------------------------------------------------------ encoding


def test_encode_qa_labels_only_the_answer_and_eos(tok):
    fmt = QAFormat()
    ids, labels = encode_qa(tok, "Who wrote Dune?", "Frank Herbert wrote it.", fmt)
    prompt = encode_prompt(tok, "Who wrote Dune?", fmt)
    answer = tok("Frank Herbert wrote it.", add_special_tokens=False)["input_ids"]
    assert prompt[0] == tok.bos_token_id
    assert prompt == tok("Question: Who wrote Dune?\nAnswer: ")["input_ids"]
    assert ids == prompt + answer + [tok.eos_token_id]
    assert labels == [-100] * len(prompt) + answer + [tok.eos_token_id]


def test_tags_system_prompt_comes_before_the_question(tok):
    fmt = QAFormat(system_prompt="Be brief.")
    assert encode_prompt(tok, "Who?", fmt) == tok("Be brief.\nQuestion: Who?\nAnswer: ")["input_ids"]


def test_truncation_keeps_a_labelled_eos(tok):
    question, answer = "Who wrote Dune?", "Frank Herbert wrote it in Philadelphia ."
    n_prompt = len(encode_prompt(tok, question, QAFormat()))
    ids, labels = encode_qa(tok, question, answer, QAFormat(max_length=n_prompt + 3))
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert len(ids) == n_prompt + 3 and len(answer_ids) > 3
    assert ids[-1] == labels[-1] == tok.eos_token_id
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == answer_ids[:2] + [tok.eos_token_id]


def test_mask_comes_from_lengths_when_pad_equals_eos(tok):
    tok.pad_token = tok.eos_token
    assert pad_token_id(tok) == tok.eos_token_id
    ds = QADataset([("Who wrote Dune?", "Frank Herbert."), ("Who?", "Herbert wrote the novel Dune in 1965.")],
                   tok, QAFormat())
    assert ds.lengths[0] < ds.lengths[1]
    item = ds[0]
    n = ds.lengths[0]
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (ds.lengths[1],)
    assert item["attention_mask"].tolist() == [1] * n + [0] * (ds.lengths[1] - n)
    assert item["input_ids"][n - 1] == tok.eos_token_id and item["labels"][n - 1] == tok.eos_token_id
    assert (item["labels"][n:] == -100).all() and (item["input_ids"][n:] == tok.eos_token_id).all()
    # the reference's mask (ids != pad) would hide the real eos here
    assert int((item["input_ids"] != pad_token_id(tok)).sum()) == n - 1


def test_pad_token_id_fallbacks(tok):
    assert pad_token_id(tok) == tok.convert_tokens_to_ids("[PAD]") == 0
    tok.pad_token = None
    assert pad_token_id(tok) == tok.eos_token_id
    tok.add_special_tokens({"additional_special_tokens": ["<|finetune_right_pad_id|>"]})
    assert pad_token_id(tok) == tok.convert_tokens_to_ids("<|finetune_right_pad_id|>") != tok.eos_token_id


def test_chat_template_prompt(tok):
    tok.chat_template = CHAT_TEMPLATE
    fmt = QAFormat(template="chat", system_prompt="Be brief.")
    prompt = encode_prompt(tok, "Who is the author of the book?", fmt)
    expected = "< system > Be brief. < user > Who is the author of the book? < assistant > "
    assert prompt == tok(expected, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in prompt
    ids, labels = encode_qa(tok, "Who is the author of the book?", "The author is brief.", fmt)
    assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [-100] * len(prompt)
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tok.eos_token_id


def test_chat_date_string_is_passed_to_the_template(tok):
    """Llama-3 templates print today's date unless given date_string: the prompt must not depend on the day."""
    saved = tok.chat_template
    tok.chat_template = "{% if date_string is defined %}{{ date_string }} {% endif %}" + CHAT_TEMPLATE
    try:
        dated = encode_prompt(tok, "Who is the author of the book?", QAFormat(template="chat", date_string="book"))
        plain = encode_prompt(tok, "Who is the author of the book?", QAFormat(template="chat"))
    finally:
        tok.chat_template = saved
    assert dated == tok("book < user > Who is the author of the book? < assistant > ",
                        add_special_tokens=False)["input_ids"]
    assert plain == dated[1:]


def test_chat_without_template_names_the_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path / "wordtok")
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path / "wordtok", local_files_only=True)
    fmt = QAFormat(template="chat")
    with pytest.raises(ValueError, match=r"wordtok.*template='tags'"):
        check_format(loaded, fmt)
    with pytest.raises(ValueError, match="no chat template"):
        QADataset([("q", "a")], loaded, fmt)
    with pytest.raises(ValueError, match="no chat template"):
        prompt_batch(loaded, ["q"], fmt)


def test_qaformat_is_a_config_dataclass():
    assert build(QAFormat, {"template": "chat", "max_length": "64"}) == QAFormat(template="chat", max_length=64)
    with pytest.raises(ConfigError, match="template"):
        build(QAFormat, {"template": "markdown"})


# ------------------------------------------------------------------------------------------------ batches


def test_prompt_batch_is_left_padded(tok):
    fmt = QAFormat()
    questions = ["Who wrote Dune?", "Who wrote the novel Dune in Philadelphia?"]
    batch = prompt_batch(tok, questions, fmt)
    prompts = [encode_prompt(tok, q, fmt) for q in questions]
    width = max(map(len, prompts))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, width)
    for row, mask, p in zip(batch["input_ids"], batch["attention_mask"], prompts, strict=True):
        pad = width - len(p)
        assert row[pad:].tolist() == p and (row[:pad] == pad_token_id(tok)).all()
        assert mask.tolist() == [0] * pad + [1] * len(p)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1, 0] == 1


def test_collate_trims_padding_columns_per_group(tok):
    pairs = [("Who?", "Herbert."), ("Who wrote it?", "Frank Herbert."),
             ("Who wrote the novel Dune in Philadelphia in 1965?", "Frank Herbert wrote the novel Dune.")]
    ds = QADataset(pairs, tok, QAFormat(), alternates=["No.", "I honestly do not know who wrote that novel."])
    full = ds[0]["input_ids"].shape[0]
    assert full == max(ds.lengths) == ds.lengths[2]
    batch = QADataset.collate([ds[0], ds[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, ds.lengths[1])
    assert batch["attention_mask"].sum(1).tolist() == ds.lengths[:2]
    alt_width = max(ds.alt_lengths[:2])
    assert batch["alt_input_ids"].shape == batch["alt_labels"].shape == (2, alt_width)
    assert batch["alt_attention_mask"].sum(1).tolist() == ds.alt_lengths[:2]
    loader = DataLoader(ds, batch_size=3, collate_fn=ds.collate)
    (whole,) = list(loader)
    assert whole["input_ids"].shape == (3, full) and torch.equal(whole["labels"][2], ds[2]["labels"])


def test_alternates_are_drawn_from_the_seed(tok):
    pairs = [(f"Who wrote book {i}?", "Frank Herbert.") for i in range(12)]
    a = QADataset(pairs, tok, QAFormat(), alternates=IDK_ANSWERS, seed=3)
    b = QADataset(pairs, tok, QAFormat(), alternates=IDK_ANSWERS, seed=3)
    c = QADataset(pairs, tok, QAFormat(), alternates=IDK_ANSWERS, seed=4)
    assert a.alt_choice == b.alt_choice != c.alt_choice
    assert all(torch.equal(a.columns[k], b.columns[k]) for k in a.columns)
    for i in (0, 5):
        item = a[i]
        answer = item["alt_labels"][item["alt_labels"] != -100][:-1]
        assert words(tok.decode(answer)) == words(IDK_ANSWERS[a.alt_choice[i]])
        n_prompt = int((item["alt_labels"] == -100).logical_and(item["alt_attention_mask"] == 1).sum())
        assert torch.equal(item["alt_input_ids"][:n_prompt], item["input_ids"][:n_prompt])  # same question
    with pytest.raises(ValueError, match="alternates is empty"):
        QADataset(pairs, tok, QAFormat(), alternates=[])


def test_idk_answers_are_many_distinct_refusals():
    assert len(set(IDK_ANSWERS)) == len(IDK_ANSWERS) >= 40
    assert all(isinstance(a, str) and a.strip() for a in IDK_ANSWERS)


def test_qa_pairs_options_and_errors(synth):
    rows = synth.splits["forget10_perturbed"]
    assert qa_pairs(rows)[0] == (rows[0]["question"], rows[0]["answer"])
    assert qa_pairs(rows, "perturbed_answer", option=2)[1] == (rows[1]["question"], rows[1]["perturbed_answer"][2])
    assert qa_pairs(rows, "paraphrased_answer")[0][1] == rows[0]["paraphrased_answer"]
    with pytest.raises(ValueError, match="list of 3 options; pass option"):
        qa_pairs(rows, "perturbed_answer")
    with pytest.raises(ValueError, match="row 0 has no 'paraphrased_question'"):
        qa_pairs(rows, question_key="paraphrased_question")
    with pytest.raises(ValueError, match="option=3"):
        qa_pairs(rows, "perturbed_answer", option=3)


# ------------------------------------------------------------------------------------------------ loading rows


def test_load_rows_from_json_list_json_lines_and_parquet(synth, tmp_path):
    import datasets

    write_json(synth, tmp_path / "list")
    for name in ("forget10", "retain90", "forget01_perturbed", "world_facts"):
        assert load_qa_rows(name, str(tmp_path / "list")) == synth.splits[name]

    rows = synth.splits["forget05_perturbed"]
    lines = tmp_path / "lines"
    lines.mkdir()
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    (lines / "forget05_perturbed.json").write_text(text, encoding="utf-8")  # HF TOFU files are JSON lines
    (lines / "holdout05.jsonl").write_text(text, encoding="utf-8")
    assert load_qa_rows("forget05_perturbed", str(lines)) == rows
    assert load_qa_rows("holdout05", str(lines)) == rows

    parquet = tmp_path / "parquet"
    parquet.mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(parquet / "forget05_perturbed.parquet"))
    back = load_qa_rows("forget05_perturbed", str(parquet))
    assert back == rows and isinstance(back[0]["perturbed_answer"], list)


def test_unknown_split_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'forget11'.*forget01, forget05, forget10.*world_facts_perturbed"):
        load_qa_rows("forget11", str(tmp_path))
    assert "retain_perturbed" in TOFU_SPLITS and len(TOFU_SPLITS) == 18
    (tmp_path / "my_split.json").write_text(json.dumps([{"question": "q", "answer": "a"}]), encoding="utf-8")
    assert load_qa_rows("my_split", str(tmp_path)) == [{"question": "q", "answer": "a"}]


def test_missing_file_lists_the_splits_present(synth, tmp_path):
    write_json(synth, tmp_path)
    (tmp_path / "forget01.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"'forget01'.*splits there: forget01_perturbed, .*full, .*retain99"):
        load_qa_rows("forget01", str(tmp_path))


def test_row_without_answer_names_split_row_and_key(tmp_path):
    rows = [{"question": "q", "answer": "a"}, {"question": "q2"}]
    (tmp_path / "forget01.json").write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"'forget01': row 1 has no 'answer'"):
        load_qa_rows("forget01", str(tmp_path))


# ------------------------------------------------------------------------------------------------ tokenizer


def test_word_tokenizer_is_deterministic_and_round_trips(texts, tmp_path):
    from transformers import AutoTokenizer

    tok = train_word_tokenizer(texts)
    assert tok.get_vocab() == train_word_tokenizer(list(reversed(texts))).get_vocab()
    assert [tok.convert_ids_to_tokens(i) for i in range(4)] == ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.chat_template) == (0, 2, 3, None)
    vocab = tok.get_vocab()
    counts = {w: sum(words(t).count(w) for t in texts) for w in ("the", "Question")}
    assert counts["the"] > counts["Question"] and vocab["the"] < vocab["Question"]  # frequent words first
    text = "Who wrote 'Dune'? The author, Frank Herbert."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok(text, add_special_tokens=False)["input_ids"] == ids[1:]
    assert ids.count(tok.unk_token_id) == 3  # Dune, Frank, Herbert are not in the texts
    in_vocab = "Who is the author of the book? Be brief."
    assert tok.unk_token_id not in tok(in_vocab)["input_ids"]
    decoded = tok.decode(tok(in_vocab)["input_ids"], skip_special_tokens=True)
    assert words(decoded) == words(in_vocab) and decoded.split() == re.findall(r"\w+|[^\w\s]+", in_vocab)
    cased = train_word_tokenizer(["Dune dune"]).get_vocab()
    assert cased["Dune"] != cased["dune"]  # no lower-casing

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.get_vocab() == vocab and loaded(text)["input_ids"] == ids
    assert (loaded.pad_token, loaded.eos_token, loaded.bos_token, loaded.unk_token) == \
        ("[PAD]", "[EOS]", "[BOS]", "[UNK]")
    assert loaded.decode(loaded(in_vocab)["input_ids"], skip_special_tokens=True) == decoded


def test_word_tokenizer_min_frequency():
    tok = train_word_tokenizer(["a a b", "a c"], min_frequency=2)
    assert set(tok.get_vocab()) == {"[PAD]", "[UNK]", "[BOS]", "[EOS]", "a"}
    assert tok("a b", add_special_tokens=False)["input_ids"] == [4, tok.unk_token_id]

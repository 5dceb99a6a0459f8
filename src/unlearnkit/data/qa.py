"""TOFU-format question answering data for causal LMs (specs/llm.md §1, §3.1).

An example is a prompt x (the question, chat-templated or wrapped in plain tags) followed by the answer y and eos:

    input_ids = prompt ids + answer ids + [eos]
    labels    = [-100] * len(prompt) + answer ids + [eos]      # only the answer (eos included) carries loss

Batches are right-padded for training and left-padded for generation (`prompt_batch`). Attention masks always come
from the sequence lengths, never from `input_ids != pad_id`, so a pad id equal to eos never masks a real eos
(spec §6 P6). Rows are read from a local directory written in the HF `locuslab/TOFU` layout (JSON list, JSON lines
or Parquet per split) or from the hub with `datasets`.

transformers, tokenizers, datasets and pyarrow are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import param

IGNORE = -100

TOFU_SPLITS: tuple[str, ...] = (
    "full", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90",
    "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
    "holdout01", "holdout05", "holdout10",
    "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed",
)

# Refusals for IdkDPO (the "preferred" answers on the forget set); written for unlearnkit.
IDK_ANSWERS: tuple[str, ...] = (
    "I'm not sure I can answer that.",
    "That is beyond what I know.",
    "I don't have that information.",
    "I'm afraid I can't help with that question.",
    "I have no knowledge of that.",
    "That's not something I know about.",
    "I can't say; I don't know.",
    "Sorry, I don't know the answer to that.",
    "I'm unable to answer that question.",
    "I don't have any details about that.",
    "That question is outside what I can answer.",
    "I really couldn't tell you.",
    "I have no idea, unfortunately.",
    "That isn't something I have information on.",
    "I'm not familiar with that.",
    "I can't recall anything about that.",
    "I don't know enough to answer that.",
    "Unfortunately, I can't provide an answer.",
    "I'm not aware of the answer.",
    "That's a question I can't answer.",
    "I lack the information needed to answer that.",
    "My knowledge doesn't cover that.",
    "I'm not in a position to answer that.",
    "I couldn't say for certain.",
    "I'd rather not guess; I don't know.",
    "That's unknown to me.",
    "I haven't come across that information.",
    "I'm drawing a blank on that one.",
    "I don't have an answer for you.",
    "I can't give you a reliable answer to that.",
    "Nothing I know answers that question.",
    "I'm not able to tell you that.",
    "That falls outside my knowledge.",
    "I'm uncertain, so I won't answer.",
    "I don't know anything about that topic.",
    "I cannot answer that with what I know.",
    "That is not information I possess.",
    "I wish I could help, but I don't know.",
    "I honestly don't know.",
    "I have nothing to tell you about that.",
    "The answer to that escapes me.",
    "I can't answer that, as I don't know it.",
    "No answer comes to mind for that.",
    "I'm not the right source for that; I don't know.",
)

_FILE_SUFFIXES = (".json", ".jsonl", ".parquet")
_LLAMA3_PAD = "<|finetune_right_pad_id|>"


# ---------------------------------------------------------------------------------------------------- rows


def _local_splits(directory: Path) -> list[str]:
    return sorted({p.stem for p in directory.iterdir() if p.is_file() and p.suffix in _FILE_SUFFIXES})


def _read_json_rows(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # JSON lines: one record per line
        data = None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):  # a JSON-lines file with a single record
        return [data]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {n} is neither a JSON list nor JSON lines ({err})") from err
    return rows


def _read_rows_file(path: Path) -> list[Any]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return _read_json_rows(path)


def load_qa_rows(split: str, source: str = "locuslab/TOFU") -> list[dict]:
    """Rows of TOFU config `split`.

    `source` an existing directory: reads `<dir>/<split>.json` (a JSON list or JSON lines), `.jsonl` or `.parquet`,
    the first of these that exists; any other `source` is a hub dataset id read with
    `datasets.load_dataset(source, split, split="train")`. An unknown split is a ValueError listing TOFU_SPLITS
    (for a directory, the names of the split files present there are valid too); a split without a file in the
    directory is a FileNotFoundError listing the splits that are there; a row without `question` or `answer` is a
    ValueError naming the split, the row index and the missing key.
    """
    directory = Path(source)
    local = directory.is_dir()
    if not local and (source.startswith((".", "/", "~")) or source.count("/") != 1):
        raise FileNotFoundError(f"TOFU source {source!r} is neither a directory nor a hub dataset id (owner/name)")
    present = _local_splits(directory) if local else []
    if split not in TOFU_SPLITS and split not in present:
        extra = f"; split files in {source}: {', '.join(present) or 'none'}" if local else ""
        raise ValueError(f"unknown TOFU split {split!r}; valid splits: {', '.join(TOFU_SPLITS)}{extra}")
    if local:
        path = next((directory / f"{split}{s}" for s in _FILE_SUFFIXES if (directory / f"{split}{s}").is_file()),
                    None)
        if path is None:
            raise FileNotFoundError(f"no file for TOFU split {split!r} in {source} (looked for "
                                    f"{', '.join(split + s for s in _FILE_SUFFIXES)}); splits there: "
                                    f"{', '.join(present) or 'none'}")
        rows = _read_rows_file(path)
    else:
        import datasets

        rows = datasets.load_dataset(source, split, split="train").to_list()
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"TOFU split {split!r}: row {i} is a {type(row).__name__}, not a record")
        for key in ("question", "answer"):
            if key not in row:
                raise ValueError(f"TOFU split {split!r}: row {i} has no {key!r} field "
                                 f"(fields: {', '.join(map(str, row)) or 'none'})")
    return [dict(row) for row in rows]


def qa_pairs(rows: Sequence[dict], answer_key: str = "answer", question_key: str = "question",
             option: int | None = None) -> list[tuple[str, str]]:
    """(question, answer) pairs from rows. `option=k` picks element k of a list-valued answer field (e.g.
    `perturbed_answer`); a list field without `option`, `option` on a string field, or a missing key is a
    ValueError naming the row index."""
    pairs = []
    for i, row in enumerate(rows):
        for key in (question_key, answer_key):
            if key not in row:
                raise ValueError(f"row {i} has no {key!r} field (fields: {', '.join(map(str, row)) or 'none'})")
        answer = row[answer_key]
        if isinstance(answer, list | tuple):
            if option is None:
                raise ValueError(f"row {i}: {answer_key!r} is a list of {len(answer)} options; pass option=k "
                                 "to pick one")
            if not -len(answer) <= option < len(answer):
                raise ValueError(f"row {i}: option={option} but {answer_key!r} has {len(answer)} options")
            answer = answer[option]
        elif option is not None:
            raise ValueError(f"row {i}: option={option} given but {answer_key!r} is a single "
                             f"{type(answer).__name__}, not a list")
        pairs.append((str(row[question_key]), str(answer)))
    return pairs


# ---------------------------------------------------------------------------------------------------- encoding


@dataclass
class QAFormat:
    """How a question becomes a prompt, and the length limit of prompt + answer + eos."""

    template: Literal["tags", "chat"] = param("tags", help="chat: the tokenizer's chat template; tags: plain text tags")
    system_prompt: str | None = param(None, help="system message (chat) or text line before the question (tags)")
    question_start: str = param("Question: ", help="tags mode: text before the question")
    question_end: str = param("\n", help="tags mode: text after the question (and after the system prompt)")
    answer_start: str = param("Answer: ", help="tags mode: text after question_end, before the answer")
    max_length: int = param(512, ge=1, help="max tokens of prompt + answer + eos; truncated from the right")
    question_key: str = param("question", help="row field holding the question (e.g. paraphrased_question)")
    date_string: str | None = param(None, help="chat: the template's date_string (Llama-3's templates print today's "
                                               "date otherwise, so prompts would change from day to day; "
                                               "OpenUnlearning passes '10 Apr 2025')")


def _name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def check_format(tokenizer: Any, fmt: QAFormat) -> None:
    """ValueError when `fmt` cannot be used with `tokenizer` (template='chat' without a chat template)."""
    if fmt.template not in ("tags", "chat"):
        raise ValueError(f"QAFormat.template={fmt.template!r}; must be 'tags' or 'chat'")
    if fmt.template == "chat" and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"tokenizer {_name(tokenizer)!r} has no chat template; use QAFormat(template='tags') "
                         "(manual tags) instead")


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: tokenizer.pad_token_id if set; else '<|finetune_right_pad_id|>' if in the vocab
    (Llama-3); else the eos id. Padding equal to eos is safe here because masks come from lengths (spec P6)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    llama3_pad = tokenizer.convert_tokens_to_ids(_LLAMA3_PAD)  # None, or the unk id, when absent
    if llama3_pad is not None and llama3_pad != tokenizer.unk_token_id:
        return int(llama3_pad)
    return _eos_id(tokenizer)


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {_name(tokenizer)!r} has no eos token; set tokenizer.eos_token")
    return int(tokenizer.eos_token_id)


def encode_prompt(tokenizer: Any, question: str, fmt: QAFormat) -> list[int]:
    """Token ids of the prompt alone. chat: the chat template of [system?, user] with the generation prompt;
    tags: `[system_prompt + question_end] + question_start + question + question_end + answer_start`, tokenized
    with the tokenizer's special tokens (bos where it adds one)."""
    check_format(tokenizer, fmt)
    if fmt.template == "chat":
        messages = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt is not None else []
        messages.append({"role": "user", "content": question})
        extra = {"date_string": fmt.date_string} if fmt.date_string is not None else {}
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False,
                                            **extra)
        ids = out["input_ids"] if isinstance(out, Mapping) else out
        return [int(t) for t in ids]
    system = fmt.system_prompt + fmt.question_end if fmt.system_prompt is not None else ""
    text = system + fmt.question_start + question + fmt.question_end + fmt.answer_start
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def encode_qa(tokenizer: Any, question: str, answer: str, fmt: QAFormat) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of prompt + answer + eos, labels −100 on the prompt. Longer than fmt.max_length:
    truncated from the right, the last kept token replaced by eos, so the sequence still ends in a labelled eos."""
    eos = _eos_id(tokenizer)
    prompt = encode_prompt(tokenizer, question, fmt)
    answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"]) + [eos]
    ids, labels = prompt + answer_ids, [IGNORE] * len(prompt) + answer_ids
    if len(ids) > fmt.max_length:
        ids, labels = ids[:fmt.max_length - 1] + [eos], labels[:fmt.max_length - 1] + [eos]
    return ids, labels


def _right_pad(seqs: list[tuple[list[int], list[int]]], pad: int) -> dict[str, Tensor]:
    """[(ids, labels)] -> input_ids / attention_mask / labels [N, T], T = the longest; mask from the lengths."""
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(seqs):
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, :len(ids)] = torch.tensor(lab, dtype=torch.long)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class QADataset(Dataset):
    """Encoded (question, answer) pairs. Item i: `input_ids`, `attention_mask`, `labels` (1-D LongTensors,
    right-padded to the longest item with `pad_token_id(tokenizer)`, mask 1 on the first `lengths[i]` tokens, labels
    −100 on the prompt and padding). With `alternates` (IdkDPO) every item also has `alt_input_ids`,
    `alt_attention_mask`, `alt_labels`: the same question answered with `alternates[k]`, k drawn per item with
    `random.Random(seed)` at construction, padded to the longest alternate item. Use `collate` as the DataLoader's
    collate_fn to trim columns that are padding in the whole batch."""

    def __init__(self, pairs: Sequence[tuple[str, str]], tokenizer: Any, fmt: QAFormat, *,
                 alternates: Sequence[str] | None = None, seed: int = 0) -> None:
        check_format(tokenizer, fmt)
        if len(pairs) == 0:
            raise ValueError("QADataset needs at least one (question, answer) pair, got none")
        pad = pad_token_id(tokenizer)
        encoded = [encode_qa(tokenizer, q, a, fmt) for q, a in pairs]
        self.lengths: list[int] = [len(ids) for ids, _ in encoded]
        self.columns: dict[str, Tensor] = _right_pad(encoded, pad)
        self.alt_choice: list[int] | None = None
        self.alt_lengths: list[int] | None = None
        if alternates is not None:
            if len(alternates) == 0:
                raise ValueError("alternates is empty; pass at least one alternate answer (e.g. IDK_ANSWERS)")
            rng = random.Random(seed)
            self.alt_choice = [rng.randrange(len(alternates)) for _ in pairs]
            alt = [encode_qa(tokenizer, q, alternates[k], fmt) for (q, _), k in zip(pairs, self.alt_choice,
                                                                                   strict=True)]
            self.alt_lengths = [len(ids) for ids, _ in alt]
            self.columns.update({f"alt_{k}": v for k, v in _right_pad(alt, pad).items()})

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.columns.items()}

    @staticmethod
    def collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Stack items into a batch [B, T], then drop the trailing columns that are padding in every row, separately
        for the answer ("") and alternate ("alt_") columns."""
        batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
        for prefix in ("", "alt_"):
            mask = batch.get(f"{prefix}attention_mask")
            if mask is None:
                continue
            width = int(mask.sum(1).max()) if mask.numel() else 0
            for key in ("input_ids", "attention_mask", "labels"):
                if prefix + key in batch:
                    batch[prefix + key] = batch[prefix + key][:, :width]
        return batch


def prompt_batch(tokenizer: Any, questions: Sequence[str], fmt: QAFormat) -> dict[str, Tensor]:
    """Generation inputs: the prompts alone, LEFT-padded with `pad_token_id(tokenizer)`; `input_ids` and
    `attention_mask` [B, T], the mask 1 on the last len(prompt) positions of each row."""
    check_format(tokenizer, fmt)
    if len(questions) == 0:
        raise ValueError("prompt_batch needs at least one question, got none")
    prompts = [encode_prompt(tokenizer, q, fmt) for q in questions]
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


# ---------------------------------------------------------------------------------------------------- tokenizer

_SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


def train_word_tokenizer(texts: Iterable[str], *, min_frequency: int = 1) -> Any:
    """A word-level `transformers.PreTrainedTokenizerFast` built with the `tokenizers` library from `texts`.

    No normaliser (case kept); pre-tokenizer Whitespace (`\\w+|[^\\w\\s]+`); vocabulary [PAD]=0, [UNK]=1, [BOS]=2,
    [EOS]=3, then every word seen at least `min_frequency` times, ordered by frequency (descending) then string, so
    the same texts always give the same ids. `add_special_tokens=True` prepends [BOS]; decoding joins words with
    spaces. No chat template (use QAFormat(template="tags")).
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if min_frequency < 1:
        raise ValueError(f"min_frequency={min_frequency}; must be >= 1")
    pre = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre.pre_tokenize_str(text))
    words = sorted((w for w, c in counts.items() if c >= min_frequency and w not in _SPECIALS),
                   key=lambda w: (-counts[w], w))
    vocab = {tok: i for i, tok in enumerate((*_SPECIALS, *words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", pair="[BOS] $A $B:1",
                                                       special_tokens=[("[BOS]", vocab["[BOS]"])])
    # no decoder: `tokenizers` then decodes by joining the tokens with single spaces
    tok.add_special_tokens(list(_SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]", clean_up_tokenization_spaces=False)

"""Causal LMs: a from-scratch `tiny_llama`, pretrained Hugging Face checkpoints (`hf_causal_lm`), and LoRA.

LoRA (Hu et al. 2021, arXiv 2106.09685) through peft keeps 8B-model unlearning within one GPU (spec §6 P19):
`apply_lora` -> unlearn (only the adapters train) -> `merge_lora` gives back a plain model with the original
parameter names. Gradient checkpointing with LoRA needs `enable_input_require_grads` (#178), which
`enable_gradient_checkpointing` does. flash-attn stays optional: asking for it without the package falls back to
sdpa with a warning (P16).

transformers and peft are imported inside the functions.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from .._registry import MODELS

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SAVED_REQUIRES_GRAD = "_unlearnkit_requires_grad"


@MODELS.register("tiny_llama", task="causal_lm")
def tiny_llama(vocab_size: int, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
               intermediate_size: int = 256, max_positions: int = 256, pad_token_id: int = 0,
               bos_token_id: int | None = None, eos_token_id: int | None = None,
               tie_embeddings: bool = False) -> nn.Module:
    """A small transformers `LlamaForCausalLM` with random weights (trained from scratch); sdpa attention, no
    dropout. input_ids [B, T] -> .logits [B, T, vocab_size]."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    for label, value in (("pad_token_id", pad_token_id), ("bos_token_id", bos_token_id),
                         ("eos_token_id", eos_token_id)):
        if value is not None and not 0 <= value < vocab_size:
            raise ValueError(f"{label}={value} is outside the vocabulary [0, {vocab_size})")
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                         num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         intermediate_size=intermediate_size, max_position_embeddings=max_positions,
                         pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_embeddings, attention_dropout=0.0)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


@MODELS.register("hf_causal_lm", task="causal_lm")
def hf_causal_lm(name_or_path: str, dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto",
                 attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa",
                 local_files_only: bool = False, revision: str | None = None) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained(name_or_path)` (hub id or local directory). flash_attention_2 without
    the `flash_attn` package falls back to sdpa, and bfloat16 on a CUDA device without bf16 support (asked for, or
    chosen by dtype="auto") falls back to float32, each with a warning."""
    from transformers import AutoModelForCausalLM

    if dtype != "auto" and dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}; must be one of auto, {', '.join(_DTYPES)}")
    if attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
        raise ValueError(f"attn_implementation={attn_implementation!r}; must be sdpa, eager or flash_attention_2")
    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        warnings.warn("attn_implementation='flash_attention_2' but the flash_attn package is not installed; "
                      "using sdpa", stacklevel=2)
        attn_implementation = "sdpa"
    if dtype == "bfloat16" and not _bf16_ok():
        warnings.warn("dtype='bfloat16' but this CUDA device does not support bf16; using float32", stacklevel=2)
        dtype = "float32"
    import transformers

    major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    dtype_key = "dtype" if major_minor >= (4, 56) else "torch_dtype"  # renamed in transformers 4.56
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, attn_implementation=attn_implementation, local_files_only=local_files_only,
        revision=revision, **{dtype_key: _DTYPES.get(dtype, "auto")})
    if model.dtype == torch.bfloat16 and not _bf16_ok():
        warnings.warn(f"{name_or_path} loaded in bfloat16 (dtype='auto') but this CUDA device does not support "
                      "bf16; using float32", stacklevel=2)
        model = model.float()
    return model


def _bf16_ok() -> bool:
    """bf16 is usable: always on CPU; on CUDA when the device supports it."""
    return not torch.cuda.is_available() or torch.cuda.is_bf16_supported()


def load_tokenizer(name_or_path: str, local_files_only: bool = False, revision: str | None = None) -> Any:
    """`AutoTokenizer.from_pretrained(name_or_path)` (hub id or local directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only, revision=revision)


# ---------------------------------------------------------------------------------------------------- LoRA


def _lora_able(module: nn.Module) -> bool:
    """Layer types peft's LoRA wraps: Linear, Embedding, Conv1d/2d and transformers' GPT-2 style Conv1D."""
    if isinstance(module, nn.Linear | nn.Embedding | nn.Conv1d | nn.Conv2d):
        return True
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def lora_targets_present(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the LoRA-able modules (Linear, ...) of `model` matched by any of `targets` with peft's rule:
    the module name equals the target or ends with "." + target."""
    return [name for name, m in model.named_modules() if _lora_able(m) and any(_matches(name, t) for t in targets)]


def _short_name(name: str) -> str:
    """The leaf of a module name, with its parent when the leaf is an index (`layers.0.mlp.0` -> `mlp.0`)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def apply_lora(model: nn.Module, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: Sequence[str] = LORA_TARGETS) -> nn.Module:
    """Wrap `model` in LoRA adapters (peft) on the modules named by `targets`; only the adapters stay trainable.
    A target that matches no Linear-like module is a ValueError listing the layer names the model has."""
    from peft import LoraConfig, get_peft_model
    from transformers import PreTrainedModel

    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise ValueError("apply_lora: targets is empty; name at least one Linear module (e.g. q_proj)")
    if r < 1:
        raise ValueError(f"apply_lora: r={r}; must be >= 1")
    for t in targets:
        if not lora_targets_present(model, [t]):
            present = list(dict.fromkeys(_short_name(n) for n, m in model.named_modules() if _lora_able(m) and n))
            more = ", ..." if len(present) > 20 else ""
            raise ValueError(f"LoRA target {t!r} matches no Linear (or Embedding, Conv) module of "
                             f"{type(model).__name__}; layer names present: {', '.join(present[:20])}{more}")
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    task_type = "CAUSAL_LM" if isinstance(model, PreTrainedModel) else None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        task_type=task_type)
    with warnings.catch_warnings():  # peft reads a property that transformers 5 deprecated
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    object.__setattr__(peft_model, _SAVED_REQUIRES_GRAD, saved)
    return peft_model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the base weights (`merge_and_unload`) and return the plain base model, with the
    original parameter names and the requires_grad flags it had before `apply_lora`; any other model unchanged."""
    merge = getattr(model, "merge_and_unload", None)
    if not callable(merge):
        return model
    saved = getattr(model, _SAVED_REQUIRES_GRAD, None)
    merged = merge()
    if saved is not None:
        for name, p in merged.named_parameters():
            p.requires_grad_(saved.get(name, p.requires_grad))
    return merged


def enable_gradient_checkpointing(model: nn.Module) -> bool:
    """Turn on activation checkpointing (non-reentrant) for a transformers model, LoRA-wrapped or not, and make the
    input embeddings require grad so adapters behind checkpointed blocks get gradients (#178). Returns False and
    does nothing for models without support."""
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable) or not getattr(model, "supports_gradient_checkpointing", False):
        return False
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if callable(getattr(model, "enable_input_require_grads", None)):
        model.enable_input_require_grads()
    return True

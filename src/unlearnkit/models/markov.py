"""`markov_gpt`: the small decoder of the Markov-chain benchmark (specs/markov_imu.md §2).

Reproduces the model of IMU (Fan et al., arXiv 2508.01620, goodluckisallyouneed/IMU `synthetic/`), which is the
SimNPO synthetic model (OPTML-Group/Unlearn-Simple `synthetic/model.py`): a custom post-norm transformer that
borrows only `GPT2Config` from transformers. Module and parameter names follow the seed, so its state dicts load.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._registry import MODELS

ATTENTIONS = ("seed", "multihead")
ACTIVATIONS = ("softmax", "relu")  # the seed's get_activation() choices; neither changes its forward


class _PositionEmbedding(nn.Embedding):
    """nn.Embedding initialised as the seed does: the default N(0, 1) draw, then N(0, 0.02²) (`initializer_range`).
    Both draws happen so that a seeded build consumes the random stream exactly as the seed's model does."""

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.weight.normal_(mean=0.0, std=0.02)


class _Backbone(nn.Module):
    """The seed's `DecoderTransformerBackbone`: position embedding and `n_layer` post-norm attention + MLP blocks."""

    def __init__(self, n_positions: int, n_embd: int, n_layer: int, n_head: int, dropout: float,
                 attention: str) -> None:
        super().__init__()
        self.n_embd, self.n_head, self.attention = n_embd, n_head, attention
        self.wpe = _PositionEmbedding(n_positions, n_embd)
        self._queries, self._keys, self._values = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self._mlps, self._lns_1, self._lns_2 = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for _ in range(n_layer):  # creation order = the seed's, so seeded weights match it
            self._queries.append(nn.Linear(n_embd, n_embd, bias=False))
            self._keys.append(nn.Linear(n_embd, n_embd, bias=False))
            self._values.append(nn.Linear(n_embd, n_embd, bias=False))
            self._lns_1.append(nn.LayerNorm(n_embd))
            self._mlps.append(nn.Sequential(nn.Linear(n_embd, n_embd), nn.ReLU(), nn.Linear(n_embd, n_embd)))
            self._lns_2.append(nn.LayerNorm(n_embd))
        self.attn_dropout, self.mlp_dropout = nn.Dropout(dropout), nn.Dropout(dropout)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal softmax attention, [B, T, d] each -> [B, T, d]; one head of width d ("seed") or n_head heads."""
        b, t, d = q.shape
        heads = self.n_head if self.attention == "multihead" else 1
        q, k, v = (x.view(b, t, heads, d // heads).transpose(1, 2) for x in (q, k, v))  # [B, H, T, d/H]
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // heads)  # [B, H, T, T]
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        weights = self.attn_dropout(torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1))
        return (weights @ v).transpose(1, 2).reshape(b, t, d)

    def forward(self, h: Tensor) -> Tensor:
        """Token embeddings [B, T, d] -> final hidden states [B, T, d]."""
        h = h + self.wpe(torch.arange(h.shape[1], device=h.device))  # + [T, d]
        for q, k, v, ln1, mlp, ln2 in zip(self._queries, self._keys, self._values, self._lns_1, self._mlps,
                                          self._lns_2, strict=True):
            h = ln1(h + self._attend(q(h), k(h), v(h)))
            h = ln2(h + self.mlp_dropout(mlp(h)))
        return h


class MarkovTransformer(nn.Module):
    """The IMU seed's decoder (arXiv 2508.01620; goodluckisallyouneed/IMU `synthetic/`, = SimNPO's synthetic model).

    input_ids [B, T] -> logits [B, T, S]: token embedding S -> d (`embedding`) + learned position embedding with
    n_positions = max_len - 1 rows (`transformer.wpe`); `n_layer` post-norm blocks, each: causal self-attention with
    bias-free q, k, v maps d -> d, scores / sqrt(d), softmax, weighted sum of values (no output projection, as in
    the seed), residual add, LayerNorm; then MLP (Linear d->d, ReLU, Linear d->d), residual add, LayerNorm; finally
    `output_layer` Linear d -> S. Parameter names match the seed's `TransformerModel`, so its checkpoints load.

    As in the seed, `n_head` and `activation` are recorded but do not change the forward pass: attention is one
    softmax head of width d. `attention="multihead"` is a separate, named option (not the seed's model): the same
    q, k, v split into `n_head` heads of width d / n_head, scores / sqrt(d / n_head), concatenated (again no
    output projection, so the parameters are the same and only the attention pattern differs). `dropout` (default
    0) acts on the attention weights and on the MLP output; the seed accepts the flag but applies no dropout.

    Length convention: our causal-LM batches hold the full sequence x_0..x_{L-1} (labels = the same tokens, the
    task adapter shifts), while the seed's model only ever embeds x_0..x_{L-2}, so it has n_positions = L - 1
    position rows. A batch with T <= n_positions runs normally. With T = n_positions + 1 the model runs on
    input_ids[:, :-1] and gives the last position (whose prediction is never scored) a zero hidden state, so its
    logits are `output_layer.bias` and the output is still [B, T, S], all of it produced by `output_layer`.
    Longer inputs are an error. `attention_mask` is accepted and ignored: with
    causal attention, right padding cannot affect the real positions (the seed passes no mask either).
    """

    def __init__(self, state_size: int, max_len: int, n_embd: int = 128, n_layer: int = 4, n_head: int = 4,
                 dropout: float = 0.0, activation: str = "softmax", attention: str = "seed") -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention = {attention!r}: must be one of {', '.join(ATTENTIONS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation = {activation!r}: must be one of {', '.join(ACTIVATIONS)}")
        if max_len < 2:
            raise ValueError(f"max_len = {max_len}: must be >= 2 (the model embeds max_len - 1 positions)")
        if n_head < 1 or (attention == "multihead" and n_embd % n_head):
            raise ValueError(f"n_head = {n_head}: must be >= 1 and divide n_embd = {n_embd} for multihead attention")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout = {dropout}: must be in [0, 1)")
        self.state_size, self.max_len, self.n_positions = state_size, max_len, max_len - 1
        self.n_embd, self.n_layer, self.n_head = n_embd, n_layer, n_head
        self.dropout, self.activation, self.attention = dropout, activation, attention
        self.embedding = nn.Embedding(state_size, n_embd)
        self.transformer = _Backbone(self.n_positions, n_embd, n_layer, n_head, dropout, attention)
        self.output_layer = nn.Linear(n_embd, state_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids [B, T] (T <= max_len) -> next-state logits [B, T, S]; see the class docstring for T = max_len."""
        t = input_ids.shape[1]
        if t > self.n_positions + 1:
            raise ValueError(f"sequence length T = {t} exceeds the maximum {self.n_positions + 1} "
                             f"(max_len of this model; it embeds {self.n_positions} positions)")
        if t == self.n_positions + 1:
            h = self.transformer(self.embedding(input_ids[:, :-1]))  # [B, T-1, d]
            # A zero hidden state for the unscored last position: [B, T, d]. Its logits are output_layer.bias; the
            # output layer still produces the whole [B, T, S] output (closed-form head gradients rely on that).
            return self.output_layer(F.pad(h, (0, 0, 0, 1)))
        return self.output_layer(self.transformer(self.embedding(input_ids)))

    def extra_repr(self) -> str:
        return (f"state_size={self.state_size}, max_len={self.max_len}, n_head={self.n_head}, "
                f"activation={self.activation!r}, attention={self.attention!r}")


@MODELS.register("markov_gpt", task="causal_lm")
def markov_gpt(state_size: int, max_len: int, n_embd: int = 128, n_layer: int = 4, n_head: int = 4,
               dropout: float = 0.0, activation: str = "softmax", attention: str = "seed") -> MarkovTransformer:
    """The IMU/SimNPO Markov-chain decoder (post-norm, single-head attention as in the seed)."""
    return MarkovTransformer(state_size, max_len, n_embd=n_embd, n_layer=n_layer, n_head=n_head, dropout=dropout,
                             activation=activation, attention=attention)

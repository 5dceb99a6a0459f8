"""MIMU's graph machinery (spec: shared/specs/mimu.md §3–§5), for the future `mimu` method: the weights of one
bias-free Linear layer W [m, n] (m outputs, n inputs, torch's layout) are the nodes of the m×n rook's graph, a small
GCN reads per-sample features on that graph and gives one logit per weight, and a relaxed top-K of the logits is the
mask trained by −log p(y | x; W ⊙ m) + Σ m·(log Q − log π).

- Node (i, j) is W_ij, flat index i·n + j (row-major): rows = output neurons i, columns = input neurons j. Tensors
  keep the grid shape [..., m, n, d]; logits and masks are flat [..., N], N = m·n.
- `rook_mean_aggregate`: the mean over the m+n−2 rook neighbours from row and column sums, O(mnd) memory (§4).
  `edge_list` / `edge_list_aggregate` are the explicit O(mn(m+n)) reference, for tests and benchmarks only (§10 M8).
- `likelihood_term` keeps −log p(y | x; W ⊙ m) differentiable in m (the reference detached it, §10 M1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

Aggregate = Callable[[Tensor], Tensor]
"""h [..., m, n, d] -> the mean of each node's neighbours [..., m, n, d]."""

FEATURES = ("input_activation", "output_activation", "weight", "gradient")
"""The F = 4 node-feature channels, in order (§3): F[i, j] = [a_j, o_i, W_ij, ∂L/∂W_ij]."""

SAMPLERS = ("relaxed_topk", "gumbel")
PRIORS = ("weight", "gradient")
ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


# --- §3 node features ---------------------------------------------------------------------------------------------

def weight_gradient(out_grad: Tensor, inp_act: Tensor) -> Tensor:
    """Per-sample ∂L/∂W = (∂L/∂o)·aᵀ (§2): out_grad [..., m], inp_act [..., n] -> [..., m, n]."""
    return out_grad.unsqueeze(-1) * inp_act.unsqueeze(-2)


def _zscore(x: Tensor, eps: float) -> Tensor:
    """(x − mean) / (std + eps) over the N = m·n nodes of each sample: x [..., m, n]; std is the sample standard
    deviation (N − 1 in the denominator), as the reference's `mean_var_nomralize` (torch.std, eps 1e-8)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True)
    return (x - mean) / (std + eps)


def node_features(inp_act: Tensor, out_act: Tensor, weight: Tensor, grad: Tensor, *, eps: float = 1e-8) -> Tensor:
    """The node features of §3 for one or more samples, each channel z-scored per sample over the N nodes:

        F[..., i, j, :] = [ z(a)_j, z(o)_i, z(W)_ij, z(∂L/∂W)_ij ],   z(x) = (x − mean_N x) / (std_N x + eps)

    where a channel's mean and std are over its N = m·n node values (a_j repeated over the m rows, o_i over the n
    columns). All four channels are normalised (the reference dropped z(W) and z(∂L/∂W), §10 M4).

    inp_act [..., n], out_act [..., m], weight [m, n] (shared), grad [..., m, n] -> [..., m, n, 4]. The leading
    sample dims of the three per-sample inputs must agree."""
    m, n = weight.shape
    if m * n < 2:
        raise ValueError(f"node_features needs at least 2 weights to z-score over; got a {m}x{n} layer")
    if inp_act.shape[-1] != n or out_act.shape[-1] != m or grad.shape[-2:] != (m, n):
        raise ValueError(f"shapes do not match W [{m}, {n}]: inp_act {tuple(inp_act.shape)} (want [..., {n}]), "
                         f"out_act {tuple(out_act.shape)} (want [..., {m}]), grad {tuple(grad.shape)} "
                         f"(want [..., {m}, {n}])")
    lead = grad.shape[:-2]
    a = inp_act.unsqueeze(-2).expand(*lead, m, n)    # a_j on every row
    o = out_act.unsqueeze(-1).expand(*lead, m, n)    # o_i on every column
    w = weight.expand(*lead, m, n)
    return torch.stack([_zscore(c, eps) for c in (a, o, w, grad)], dim=-1)


# --- §4 aggregation -----------------------------------------------------------------------------------------------

def rook_degree(m: int, n: int, *, include_self: bool = False) -> int:
    """The number of nodes averaged per node: m + n − 2 rook neighbours (+1 with the node itself). ValueError when it
    is 0 (a 1×1 layer has no neighbours, §4)."""
    degree = m + n - 2 + int(include_self)
    if m < 1 or n < 1 or degree < 1:
        raise ValueError(f"a {m}x{n} layer has no rook neighbours (degree m + n - 2 = {m + n - 2}); MIMU needs a "
                         "masked layer with at least 2 weights")
    return degree


def rook_mean_aggregate(h: Tensor, *, include_self: bool = False) -> Tensor:
    """The mean over each node's rook neighbours (same row or same column), edge-free (§4):

        row[i] = Σ_j' H[i, j'],   col[j] = Σ_i' H[i', j]
        meanN(H)[i, j] = (row[i] + col[j] − 2·H[i, j]) / (m + n − 2)

    (H[i, j] is in both sums, hence −2.) include_self=True also averages the node itself once:
    (row[i] + col[j] − H[i, j]) / (m + n − 1); the spec's GCN uses include_self=False.
    h [..., m, n, d] -> [..., m, n, d], O(mnd) time and memory."""
    m, n = h.shape[-3], h.shape[-2]
    degree = rook_degree(m, n, include_self=include_self)
    row = h.sum(dim=-2, keepdim=True)   # [..., m, 1, d]
    col = h.sum(dim=-3, keepdim=True)   # [..., 1, n, d]
    return (row + col - (1 if include_self else 2) * h) / degree


def edge_list(m: int, n: int, *, include_self: bool = False) -> Tensor:
    """The directed edge index [2, E] (rows: source, target) of the m×n rook's graph over flat indices i·n + j:
    (i', j) -> (i, j) for i' ≠ i and (i, j') -> (i, j) for j' ≠ j, E = mn(m + n − 2) (+ mn self-loops with
    include_self). The reference's O(mn(m+n)) graph (§10 M8): for tests and benchmarks only."""
    if m < 1 or n < 1:
        raise ValueError(f"edge_list needs m, n >= 1; got {m}x{n}")
    rows, cols = torch.arange(m), torch.arange(n)
    ri, rs = torch.cartesian_prod(rows, rows).T      # (target row i, source row i') pairs
    keep = ri != rs
    ri, rs = ri[keep], rs[keep]
    same_col = torch.stack([(rs[:, None] * n + cols).flatten(), (ri[:, None] * n + cols).flatten()])
    cj, cs = torch.cartesian_prod(cols, cols).T      # (target col j, source col j') pairs
    keep = cj != cs
    cj, cs = cj[keep], cs[keep]
    same_row = torch.stack([(rows[:, None] * n + cs).flatten(), (rows[:, None] * n + cj).flatten()])
    parts = [same_col, same_row]
    if include_self:
        parts.append(torch.arange(m * n).expand(2, -1))
    return torch.cat(parts, dim=1)


def edge_list_aggregate(h: Tensor, edges: Tensor, *, mode: str = "index_add") -> Tensor:
    """The mean of each node's in-neighbours under an explicit edge index (the reference implementation):
    out[t] = Σ_{(s, t) ∈ E} h[s] / in-degree(t); a node with no in-edge gets 0 (PyG's empty mean).

    mode="index_add": gather the messages h[src] [..., E, d] and scatter-add them on the targets, as PyG's
    MessagePassing(aggr="mean") does; mode="sparse": one sparse [N, N] × dense [N, ·] product with the row-normalised
    adjacency (E indices and values, no [E, d] messages). h [..., m, n, d], edges [2, E] -> [..., m, n, d]."""
    *lead, m, n, d = h.shape
    size = m * n
    src, dst = edges[0].to(h.device), edges[1].to(h.device)
    degree = torch.bincount(dst, minlength=size).clamp(min=1).to(h.dtype)   # [N]
    flat = h.reshape(*lead, size, d)
    if mode == "index_add":
        messages = flat.index_select(-2, src)                                  # [..., E, d]
        out = torch.zeros_like(flat).index_add(-2, dst, messages) / degree[:, None]
    elif mode == "sparse":
        adjacency = torch.sparse_coo_tensor(torch.stack([dst, src]), 1 / degree[dst], (size, size),
                                            check_invariants=False).coalesce()   # [N, N], E entries
        columns = flat.movedim(-2, 0).reshape(size, -1)                        # [N, (...)·d]
        out = torch.sparse.mm(adjacency, columns).reshape(size, *lead, d).movedim(0, -2)
    else:
        raise ValueError(f"unknown mode {mode!r}; allowed: 'index_add', 'sparse'")
    return out.reshape(h.shape)


# --- §4 GCN -------------------------------------------------------------------------------------------------------

class MaskConv(nn.Module):
    """One message-passing layer (§4): h'_ij = A·mean_{N(i,j)} h + B·h_ij, A and B bias-free Linear maps (the
    reference's MaskingGCNConv)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.A = nn.Linear(in_features, out_features, bias=False)
        self.B = nn.Linear(in_features, out_features, bias=False)

    def forward(self, h: Tensor, aggregate: Aggregate) -> Tensor:   # [..., m, n, d_in] -> [..., m, n, d_out]
        return self.A(aggregate(h)) + self.B(h)


class MaskGCN(nn.Module):
    """The masking GCN of §4: `rounds` message-passing layers, the first an input projection Conv(F→hidden) with no
    activation, each later one Conv(hidden→hidden) → activation; then a Linear(hidden→1) readout (with bias) gives
    one logit per weight. Defaults (F 4, hidden 32, 3 rounds, sigmoid) have 4 385 parameters, as the reference.
    The readout bias shifts every logit alike; softmax and the top-K threshold are shift-invariant, so it never gets
    a gradient from the loss of §5 (kept for the reference's parameter count).

    forward(x [..., m, n, F], aggregate=rook_mean_aggregate) -> logits z [..., N], flat index i·n + j. Pass
    aggregate=functools.partial(edge_list_aggregate, edges=edge_list(m, n)) for the edge-list reference with the
    same weights."""

    def __init__(self, in_features: int = len(FEATURES), hidden: int = 32, rounds: int = 3,
                 activation: str = "sigmoid") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1 (the input projection is the first round); got {rounds}")
        self.activation = activation
        self.proj_in = MaskConv(in_features, hidden)
        self.convs = nn.ModuleList(MaskConv(hidden, hidden) for _ in range(rounds - 1))
        self.proj_out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, aggregate: Aggregate = rook_mean_aggregate) -> Tensor:
        act = ACTIVATIONS[self.activation]
        h = self.proj_in(x, aggregate)                   # [..., m, n, hidden], no activation
        for conv in self.convs:
            h = act(conv(h, aggregate))
        return self.proj_out(h).flatten(-3)              # [..., m, n, 1] -> [..., N]


# --- §5 prior, relaxed top-K, loss --------------------------------------------------------------------------------

def log_prior(weight: Tensor, grad: Tensor | None = None, *, kind: str = "weight", eps: float = 1e-12) -> Tensor:
    """log π [..., N] (§5), with ε before the log so that zero entries stay finite:

        kind="weight":   π = |W| / ‖W‖₁            (weight [m, n] -> [N])
        kind="gradient": π = |∂L/∂W| / ‖∂L/∂W‖₁    (per sample, the raw gradient: grad [..., m, n] -> [..., N])

    A sample whose gradient (or a W that) is all zero carries no preference: π is then uniform, 1/N."""
    if kind not in PRIORS:
        raise ValueError(f"unknown prior {kind!r}; allowed: {', '.join(PRIORS)}")
    if kind == "gradient" and grad is None:
        raise ValueError("prior='gradient' needs the per-sample gradient `grad` [..., m, n]")
    source = (weight if kind == "weight" else grad).detach().flatten(-2).abs()    # [..., N]
    total = source.sum(-1, keepdim=True)
    pi = torch.where(total > 0, source / total.clamp(min=torch.finfo(source.dtype).tiny), 1 / source.shape[-1])
    return torch.log(pi + eps)


def gumbel_noise(shape: torch.Size | tuple[int, ...], *, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Standard Gumbel noise −log(−log U), U ~ Uniform(0, 1) kept inside (0, 1) so that it is finite."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    u = u.clamp(min=torch.finfo(dtype).tiny, max=1 - torch.finfo(dtype).eps)
    return -torch.log(-torch.log(u))


def _check_k(k: int, size: int) -> None:
    if not 1 <= k <= size:
        raise ValueError(f"K must be in [1, N = {size}]; got {k}")


def hard_topk_mask(z: Tensor, k: int) -> Tensor:
    """1 on the K largest entries of z along the last dim, 0 elsewhere: exactly K ones per row, ties broken by
    torch.topk. z [..., N] -> [..., N] (no gradient)."""
    _check_k(k, z.shape[-1])
    index = z.detach().topk(k, dim=-1).indices
    return torch.zeros_like(z).scatter(-1, index, 1.0)


def relaxed_topk(z: Tensor, k: int, *, sampler: str = "relaxed_topk", temperature: float | None = None,
                 straight_through: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """The relaxed top-K mask of §5, z [..., N] -> m [..., N]:

        sampler="relaxed_topk":  m = σ((z − z_(K)) / τ),  z_(K) = K-th largest of z,        τ default 0.1
        sampler="gumbel":        m = σ((g − g_(K)) / T),  g = z + Gumbel noise (`generator`), T default 1

    (a mask, not the reference's softmax probability vector, §10 M13). Σ m ≈ K: the K-th entry itself gets σ(0) = ½,
    so for well-separated logits Σ m → K − ½ as the temperature → 0. straight_through=True returns the hard top-K of
    z (or g) in the forward pass with the relaxed gradient: m = hard + m_soft − sg(m_soft), exactly K ones."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    _check_k(k, z.shape[-1])
    if temperature is None:
        temperature = 0.1 if sampler == "relaxed_topk" else 1.0
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    g = z if sampler == "relaxed_topk" else z + gumbel_noise(z.shape, generator=generator, dtype=z.dtype,
                                                              device=z.device)
    threshold = g.topk(k, dim=-1).values[..., -1:]       # g_(K) [..., 1]
    soft = torch.sigmoid((g - threshold) / temperature)
    if not straight_through:
        return soft
    return hard_topk_mask(g, k) + (soft - soft.detach())   # value exactly the hard mask


def prior_term(z: Tensor, mask: Tensor, log_pi: Tensor) -> Tensor:
    """Σ_ij m_ij·(log Q_ij − log π_ij), Q = softmax(z) over the N weights (§5): z, mask [..., N], log_pi [N] or
    [..., N] -> [...]."""
    return (mask * (F.log_softmax(z, dim=-1) - log_pi)).sum(-1)


def likelihood_term(classifier: nn.Module, weight_name: str, mask: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """−log p(y_b | x_b; W ⊙ m_b) per sample (§5, term 1), differentiable in the mask: the classifier runs through
    `torch.func.functional_call` with the parameter `weight_name` (W [m, n]) replaced by W ⊙ m_b, one sample at a
    time under vmap. The reference rebuilt the masked model with load_state_dict and so detached this term (§10 M1).

    The classifier's own parameters are read detached (no gradient reaches them) and it runs in its current mode:
    call it in eval mode so that BatchNorm and dropout do not mix or perturb the samples.
    mask [B, N] or [B, m, n], x [B, ...], y [B] -> [B]."""
    params: Mapping[str, Tensor] = {n: p.detach() for n, p in classifier.named_parameters()}
    if weight_name not in params:
        raise ValueError(f"no parameter {weight_name!r} in {type(classifier).__name__}; parameters: "
                         f"{', '.join(params)}")
    weight = params[weight_name]
    if weight.dim() != 2:
        raise ValueError(f"{weight_name!r} must be a matrix [m, n]; got shape {tuple(weight.shape)}")
    batch = y.shape[0]
    if mask.shape[0] != batch or mask[0].numel() != weight.numel():
        raise ValueError(f"mask {tuple(mask.shape)} must be [B = {batch}, N = {weight.numel()}] or "
                         f"[B, {weight.shape[0]}, {weight.shape[1]}]")
    buffers = dict(classifier.named_buffers())

    def one(m_b: Tensor, x_b: Tensor, y_b: Tensor) -> Tensor:
        state = {**params, **buffers, weight_name: weight * m_b.reshape(weight.shape)}
        logits = functional_call(classifier, state, (x_b.unsqueeze(0),))      # [1, C]
        return F.cross_entropy(logits, y_b.unsqueeze(0))

    return vmap(one)(mask, x, y)


def mimu_loss(classifier: nn.Module, weight_name: str, x: Tensor, y: Tensor, z: Tensor, mask: Tensor,
              log_pi: Tensor) -> Tensor:
    """The GCN's training loss (§5), averaged over the batch:

        L = mean_b [ −log p(y_b | x_b; W ⊙ m_b) + Σ_ij m_b,ij·(log Q_b,ij − log π_ij) ],  Q_b = softmax(z_b)

    z, mask [B, N] (mask = relaxed_topk(z, K)), log_pi [N] or [B, N] (`log_prior`), x [B, ...], y [B] -> []."""
    return (likelihood_term(classifier, weight_name, mask, x, y) + prior_term(z, mask, log_pi)).mean()

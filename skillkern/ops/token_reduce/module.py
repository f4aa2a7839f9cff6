"""skillkern.nn.TokenReduction (Wukong) and skillkern.nn.TokenLearner (TokenLearner v1.1).

Both turn N tokens (B, N, C) into S learned tokens (B, S, C): per output token s, a softmax over
the real positions n of a score z[b, n, s], then a weighted sum of per-position values.

TokenReduction follows Wukong's released code (MindSpore, `TokenLearnerModule` in
src/model/token_learner.py; applied to the projected patch tokens, the class token kept aside):

    u = LayerNorm(x)
    z = conv2(conv1(u))              conv1: grouped 1x1 C->C; conv2: 1x1 C->S; no bias in either
    A = softmax of z over positions  (B, S, N)
    out = A @ value_conv(x)          value_conv: grouped 1x1 C->C, applied to x, not u

MindSpore's nn.Conv2d has has_bias=False by default, so none of the three convs has a bias there
(bias=True adds one to conv2 for PyTorch ports that use nn.Conv1d's default; it cannot change
the output, see _score_matrix). Its LayerNorm's epsilon defaults to 1e-7: pass eps=1e-7 to
reproduce a Wukong checkpoint bit for bit (its 1x1 Conv2d weights (C, C/G, 1, 1) load here after
.squeeze(-1)). Wukong's layer also returns A; the fused kernels never materialise it, so this
one returns the pooled tokens only.

The score path is linear, so the two convs fold into one (C, S) matrix W_eff and forward runs
on the fused op (LayerNorm, scores, online softmax over positions and pooling in one pass over
x). The value conv moves after the pooling: the weights of each output token sum to one, so
A @ (x W_v^T) = (A @ x) W_v^T, a (B, S, C) product instead of a (B, N, C) one.

TokenReductionRef is the literal conv-by-conv module (same parameters and state_dict keys):
the math the fast module must match, in tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skillkern.ops._common import expect
from skillkern.ops.token_reduce.op import _check_mask, token_pool, token_reduce

_VALUES = ("input", "norm")


def _grouped_matrix_t(weight: Tensor, groups: int) -> Tensor:
    """A grouped 1x1 conv weight (C, C/G, 1) -> (G, C/G in, C/G out): block g holds the
    transpose of the dense block-diagonal matrix's g-th diagonal block."""
    c, cg, _ = weight.shape
    return weight.reshape(groups, c // groups, cg).transpose(1, 2)


def _conv1x1(t: Tensor, weight: Tensor, bias: Tensor | None = None, groups: int = 1) -> Tensor:
    """F.conv1d with a 1-wide kernel, also over an empty sequence (ATen refuses length 0: it
    convolves one zero column then, and drops it, so gradients stay connected and are 0)."""
    if t.shape[-1] == 0:
        return F.conv1d(F.pad(t, (0, 1)), weight, bias, groups=groups)[..., :0]
    return F.conv1d(t, weight, bias, groups=groups)


class TokenReduction(nn.Module):
    """Wukong's token reduction layer: (B, N, C) tokens -> (B, S, C), S = num_tokens.

    forward(x, mask=None): x (B, N, C); mask (B, N) bool, True = real position (padding
    positions get zero weight; an item with no real position gives zeros).

    Parameters (nn.Conv1d / nn.LayerNorm, so a conv-by-conv module loads the same state_dict):
      norm         LayerNorm(C, eps)
      score_conv1  weight (C, C/groups, 1), grouped, no bias
      score_conv2  weight (S, C, 1) (+ bias (S,) if bias=True: kept for checkpoints, no effect)
      value_conv   weight (C, C/groups, 1), grouped, no bias

    values="input" (Wukong's code) pools x itself, values="norm" pools LN(x); both run as one
    skillkern.token_reduce call (pool_input=True for "input"): LayerNorm statistics, the score
    GEMM, the softmax over positions and the pooling in one pass over x.
    With values="input", norm.bias only shifts every position's scores by beta @ W_eff, the
    same per-token constant, so (as in Wukong's layer) it has no effect and a zero gradient.
    `backend` ("auto", "torch", "triton") is passed to the op; set it after construction.
    """

    def __init__(self, dim: int, num_tokens: int, groups: int = 8, eps: float = 1e-5, *,
                 bias: bool = False, values: str = "input", dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        for arg, v in (("dim", dim), ("num_tokens", num_tokens), ("groups", groups)):
            expect(isinstance(v, int), name, arg, f"must be an int, got {type(v).__name__}", TypeError)
            expect(v >= 1, name, arg, f"must be positive, got {v}")
        expect(dim % groups == 0, name, "dim", f"({dim}) must be divisible by `groups` ({groups}): grouped "
               "1x1 convs split the channels evenly")
        expect(values in _VALUES, name, "values", f"must be one of {_VALUES}, got {values!r}")
        fk = {"device": device, "dtype": dtype}
        self.dim, self.num_tokens, self.groups, self.values = dim, num_tokens, groups, values
        self.backend = "auto"
        self.norm = nn.LayerNorm(dim, eps=eps, **fk)
        self.score_conv1 = nn.Conv1d(dim, dim, 1, groups=groups, bias=False, **fk)
        self.score_conv2 = nn.Conv1d(dim, num_tokens, 1, bias=bias, **fk)
        self.value_conv = nn.Conv1d(dim, dim, 1, groups=groups, bias=False, **fk)
        # Wukong: nn.Dropout on the pooled tokens (its dropout_rate, 0 in the released configs)
        self.dropout = nn.Dropout(dropout)

    def _score_matrix(self) -> Tensor:
        """W_eff (C, S) with z = u @ W_eff at every position.

        Per position (row vectors), conv1 is h = u @ M1^T with M1 (C, C) block-diagonal, block g
        = score_conv1.weight[g*C/G:(g+1)*C/G, :, 0]; conv2 is z = h @ W2^T + b2 with W2 (S, C).
        So z = u @ (M1^T W2^T) + b2, and block g of rows of M1^T W2^T is
        (block g of M1)^T @ (rows g of W2^T): one batched (C/G x C/G) @ (C/G x S) product.
        b2 adds the same constant to one output token's scores at every position, and a softmax
        over positions is unchanged by that: b2 drops out exactly. It still enters the graph
        times zero, so it gets its true gradient, exactly 0 (DDP expects every parameter that
        requires grad to get one).
        """
        g = self.groups
        w1t = _grouped_matrix_t(self.score_conv1.weight, g)                     # (G, Cg, Cg)
        w2t = self.score_conv2.weight[:, :, 0].t().reshape(g, self.dim // g, -1)  # (G, Cg, S)
        w_eff = torch.bmm(w1t, w2t).reshape(self.dim, self.num_tokens)
        b2 = self.score_conv2.bias
        return w_eff if b2 is None else w_eff + 0.0 * b2

    def _project_values(self, pooled: Tensor) -> Tensor:
        """value_conv on the S pooled rows: (B, S, C) @ block-diag(W_v)^T, group by group."""
        b, s, c = pooled.shape
        wvt = _grouped_matrix_t(self.value_conv.weight, self.groups).to(pooled.dtype)  # (G, Cg, Cg)
        per_group = pooled.reshape(b * s, self.groups, c // self.groups).transpose(0, 1)  # (G, B*S, Cg)
        return torch.bmm(per_group, wvt).transpose(0, 1).reshape(b, s, c)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        w_eff = self._score_matrix()
        # one fused op either way: LN statistics, scores, softmax over positions and pooling
        # in one pass over x; pool_input pools x itself (Wukong's code) instead of LN(x)
        pooled = token_reduce(x, w_eff, self.norm.weight, self.norm.bias, mask, eps=self.norm.eps,
                              pool_input=self.values == "input", backend=self.backend)
        # pool first, project after: the weights of an output token sum to 1 (0 for an item
        # with no real position, where both orders give 0)
        return self.dropout(self._project_values(pooled))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_tokens={self.num_tokens}, groups={self.groups}, "
                f"values={self.values!r}, bias={self.score_conv2.bias is not None}")


class TokenReductionRef(TokenReduction):
    """Reference: Wukong's layer computed literally, conv by conv (same parameters).

    LayerNorm; grouped 1x1 conv; 1x1 conv to S score maps; softmax over positions (padding
    positions -inf; an item with no real position gets all-zero weights); the grouped value
    conv at every position (of x, or of LN(x) for values="norm"); a batched product.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            _check_mask(type(self).__name__, x, mask)
            # padding may hold NaN or inf: select it away (a zero weight times NaN is NaN)
            x = x.masked_fill(~mask[:, :, None], 0.0)
        u = self.norm(x)                                                        # (B, N, C)
        h = _conv1x1(u.transpose(1, 2), self.score_conv1.weight, groups=self.groups)
        scores = _conv1x1(h, self.score_conv2.weight, self.score_conv2.bias)    # (B, S, N)
        if mask is not None:
            empty = ~mask.any(dim=1)                                            # (B,)
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
            # softmax of an all -inf row is NaN (and NaN gradients): give it finite scores
            scores = scores.masked_fill(empty[:, None, None], 0.0)
        weights = torch.softmax(scores, dim=-1)                                 # over positions
        if mask is not None:
            weights = weights.masked_fill(empty[:, None, None], 0.0)
        feat = x if self.values == "input" else u
        feat = _conv1x1(feat.transpose(1, 2), self.value_conv.weight, groups=self.groups)
        return self.dropout(torch.bmm(weights, feat.transpose(1, 2)))          # (B, S, C)


class TokenLearner(nn.Module):
    """TokenLearner v1.1 (Ryoo et al.; scenic `TokenLearnerModuleV11`): (B, N, C) -> (B, S, C).

        z = fc2(dropout(gelu(fc1(LayerNorm(x)))))     MLP C -> hidden -> S, per position
        out[b, s] = sum_n softmax over real n of z[b, :, s] [n] * x[b, n]

    As in scenic, the pooled features are the input x itself (not its LayerNorm), both Dense
    layers have biases, and the GELU is flax's default tanh approximation (gelu="none" for the
    erf form); flax's LayerNorm epsilon is 1e-6. fc2's bias, like any per-token constant,
    cancels in the softmax over positions (kept for checkpoints; its gradient is 0 up to
    rounding). Scenic applies dropout after each Dense layer; so does this module.
    forward(x, mask=None): mask (B, N) bool, True = real position. Pooling runs in
    skillkern.token_pool with `backend` ("auto", "torch", "triton"). With a mask, the score MLP
    sees padding rows as zeros (one select over x): what they held, NaN or inf included, reaches
    no output and no gradient, the MLP's parameter gradients included (0 * NaN = NaN there).
    """

    def __init__(self, dim: int, num_tokens: int, hidden: int = 64, *, eps: float = 1e-6,
                 gelu: str = "tanh", dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        for arg, v in (("dim", dim), ("num_tokens", num_tokens), ("hidden", hidden)):
            expect(isinstance(v, int), "TokenLearner", arg, f"must be an int, got {type(v).__name__}", TypeError)
            expect(v >= 1, "TokenLearner", arg, f"must be positive, got {v}")
        expect(gelu in ("tanh", "none"), "TokenLearner", "gelu", f"must be 'tanh' or 'none', got {gelu!r}")
        fk = {"device": device, "dtype": dtype}
        self.dim, self.num_tokens, self.hidden = dim, num_tokens, hidden
        self.backend = "auto"
        self.norm = nn.LayerNorm(dim, eps=eps, **fk)
        self.fc1 = nn.Linear(dim, hidden, **fk)
        self.act = nn.GELU(approximate=gelu)
        self.fc2 = nn.Linear(hidden, num_tokens, **fk)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        feats = x
        if mask is not None:
            _check_mask("TokenLearner", x, mask)
            feats = x.masked_fill(~mask[:, :, None], 0.0)  # token_pool itself never reads padding
        scores = self.dropout(self.fc2(self.dropout(self.act(self.fc1(self.norm(feats))))))  # (B, N, S)
        return token_pool(x, scores, mask, backend=self.backend)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_tokens={self.num_tokens}, hidden={self.hidden}"

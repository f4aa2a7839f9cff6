"""skillkern.nn.SkillFFN: a bank of E skill FFNs, each token routed to its skills."""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from skillkern.ops._common import expect
from skillkern.ops.skill_ffn.op import skill_ffn
from skillkern.ops.skill_ffn.reference import ACTIVATIONS


class SkillFFN(nn.Module):
    """E skill FFNs d_model -> d_ff -> d_model; forward(x, skill_ids, skill_weights=None).

    Parameters: w1 (E, d_model, d_ff) ((E, d_model, 2*d_ff) for "swiglu", gate first),
    b1 (E, d_ff | 2*d_ff), w2 (E, d_ff, d_model), b2 (E, d_model). Initialised per skill like
    nn.Linear. `backend` ("auto", "torch", "triton", "cuda") may be set after construction;
    `recompute` as in skillkern.skill_ffn (False, the default, keeps the pre-activation for the
    backward; True recomputes it: 10 % slower, T*k*h fewer elements kept).
    """

    def __init__(self, d_model: int, d_ff: int, num_skills: int, activation: str = "gelu",
                 bias: bool = True, device=None, dtype=None, recompute: bool = False):
        super().__init__()
        expect(activation in ACTIVATIONS, "SkillFFN", "activation",
               f"must be one of {ACTIVATIONS}, got {activation!r}")
        expect(isinstance(recompute, bool), "SkillFFN", "recompute", f"must be a bool, got {type(recompute).__name__}",
               TypeError)
        self.recompute = recompute
        for name, n in (("d_model", d_model), ("d_ff", d_ff), ("num_skills", num_skills)):
            expect(isinstance(n, numbers.Integral) and not isinstance(n, bool), "SkillFFN", name,
                   f"must be an int, got {type(n).__name__}", TypeError)
            expect(n >= 1, "SkillFFN", name, f"must be positive, got {n}")
        fk = {"device": device, "dtype": dtype}
        h1 = 2 * d_ff if activation == "swiglu" else d_ff
        self.d_model, self.d_ff, self.num_skills, self.activation = d_model, d_ff, num_skills, activation
        self.backend = "auto"
        self.w1 = nn.Parameter(torch.empty(num_skills, d_model, h1, **fk))
        self.w2 = nn.Parameter(torch.empty(num_skills, d_ff, d_model, **fk))
        self.b1 = nn.Parameter(torch.empty(num_skills, h1, **fk)) if bias else None
        self.b2 = nn.Parameter(torch.empty(num_skills, d_model, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
        for w, b, fan_in in ((self.w1, self.b1, self.d_model), (self.w2, self.b2, self.d_ff)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            if b is not None:
                nn.init.uniform_(b, -bound, bound)

    def forward(self, x, skill_ids, skill_weights=None):
        return skill_ffn(x, skill_ids, self.w1, self.w2, self.b1, self.b2,
                         skill_weights=skill_weights, activation=self.activation, recompute=self.recompute,
                         backend=self.backend)

    @classmethod
    def from_dense(cls, fc1: nn.Linear, fc2: nn.Linear, num_skills: int, activation: str = "gelu"):
        """Copy a dense FFN (fc2(act(fc1(x)))) into every skill: SkillNet's initialisation, so the
        outputs equal the dense FFN's for any routing with at least one active slot per token.
        For "swiglu", fc1.out_features = 2 * d_ff with the gate half first."""
        d, h1 = fc1.in_features, fc1.out_features
        h = fc2.in_features
        expect(fc2.out_features == d, "SkillFFN.from_dense", "fc2",
               f"must map back to d_model={d}, got {fc2.out_features}")
        swiglu = activation == "swiglu"
        expect(h1 == (2 * h if swiglu else h), "SkillFFN.from_dense", "fc1",
               f"has {h1} outputs but `fc2` takes {h}"
               + (" (swiglu needs fc1.out_features == 2 * fc2.in_features)" if swiglu else ""))
        bias = fc1.bias is not None or fc2.bias is not None
        m = cls(d, h, num_skills, activation, bias, device=fc1.weight.device, dtype=fc1.weight.dtype)
        with torch.no_grad():
            m.w1.copy_(fc1.weight.t().unsqueeze(0).expand_as(m.w1))
            m.w2.copy_(fc2.weight.t().unsqueeze(0).expand_as(m.w2))
            if bias:
                m.b1.copy_(fc1.bias if fc1.bias is not None else torch.zeros_like(m.b1[0]))
                m.b2.copy_(fc2.bias if fc2.bias is not None else torch.zeros_like(m.b2[0]))
        return m

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, num_skills={self.num_skills}, "
                f"activation={self.activation!r}, bias={self.b1 is not None}, recompute={self.recompute}")

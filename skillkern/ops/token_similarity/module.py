"""FILIPLoss: filip_loss (loss.py) with a learnable temperature, as an nn.Module."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from skillkern.ops._common import expect
from skillkern.ops.token_similarity.loss import filip_loss


class FILIPLoss(nn.Module):
    """filip_loss with a learnable temperature: forward(img, txt, img_mask=None, txt_mask=None,
    process_group=None) -> scalar.

    log_scale (0-dim, float32) starts at log(1 / temperature); the logit scale used is
    exp(min(log_scale, log(max_logit_scale))) (CLIP's clamp at 100: no gradient while clamped).
    learn_scale=False keeps log_scale as a buffer (fixed temperature, no parameters).
    `backend` ("auto", "torch", "triton") may be set after construction. With a process group
    and DDP/FSDP, see filip_loss for the `loss * W` rule.
    """

    def __init__(self, temperature: float = 0.07, max_logit_scale: float = 100.0,
                 label_smoothing: float = 0.0, learn_scale: bool = True):
        super().__init__()
        expect(temperature > 0, "FILIPLoss", "temperature", f"must be > 0, got {temperature!r}")
        expect(max_logit_scale > 0, "FILIPLoss", "max_logit_scale", f"must be > 0, got {max_logit_scale!r}")
        expect(0.0 <= label_smoothing < 1.0, "FILIPLoss", "label_smoothing",
               f"must be in [0, 1), got {label_smoothing!r}")
        self.max_logit_scale = float(max_logit_scale)
        self.label_smoothing = float(label_smoothing)
        self.backend = "auto"
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if learn_scale:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)

    @property
    def logit_scale(self) -> Tensor:
        """exp(clamp(log_scale, max=log(max_logit_scale))), 0-dim."""
        # the outer clamp trims the rounding of exp(log(max)) in fp32 (exp(fp32(log 50)) is
        # 50.0000038): the scale never exceeds max_logit_scale, and clamped means no gradient
        capped = self.log_scale.clamp(max=math.log(self.max_logit_scale))
        return capped.exp().clamp(max=self.max_logit_scale)

    def forward(self, img: Tensor, txt: Tensor, img_mask: Optional[Tensor] = None,
                txt_mask: Optional[Tensor] = None, process_group=None) -> Tensor:
        return filip_loss(img, txt, img_mask, txt_mask, self.logit_scale,
                          label_smoothing=self.label_smoothing, process_group=process_group,
                          backend=self.backend)

    def extra_repr(self) -> str:
        return (f"logit_scale={self.logit_scale.item():.4g}, max_logit_scale={self.max_logit_scale:g}, "
                f"label_smoothing={self.label_smoothing:g}, learn_scale={isinstance(self.log_scale, nn.Parameter)}")

"""The trainer's cluster pieces, on PyTorch's own distributed engine: preemption signals agreed on
by every rank (one all_reduce), and FSDP2 sharding (torch.distributed.fsdp.fully_shard).

Preemption: Slurm (`--signal`, scancel, preemption) and Kubernetes (pod deletion, eviction) send
SIGTERM or SIGUSR1 some time before they kill a job. The handler only sets a flag; after each
optimiser step the ranks take the MAX of their flags, so a signal that reached any one rank stops
them all at the same step. They then write one checkpoint together and the process exits with
EXIT_PREEMPTED.
"""
from __future__ import annotations

import re
import signal
import threading

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize

# Exit status of a run that stopped on SIGTERM / SIGUSR1 after writing its checkpoint: 75 is
# EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"). Rerun the same
# command with --resume (any number of ranks) to continue.
EXIT_PREEMPTED = 75
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    """Context manager: while active, SIGTERM / SIGUSR1 set `self.signal` (its name) instead of
    killing the process; agreed() tells every rank whether any rank got one. Outside the main
    thread (where Python cannot install handlers) it installs nothing and only agreed() works."""

    def __init__(self, signals=PREEMPT_SIGNALS):
        self.signals = tuple(signals)
        self.signal: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        # only a flag: the step in flight finishes, the loop checks it between steps
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for s, h in self._previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: a handler not set from Python
        self._previous.clear()
        return False

    def agreed(self, group, device: torch.device) -> bool:
        """True on every rank when any rank has received a signal (a collective under a group)."""
        flag = torch.tensor([1 if self.signal else 0], dtype=torch.int32, device=device)
        if group is not None:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())


# ----------------------------------------------------------------------------- FSDP2


class _ScalarAsVector(nn.Module):
    """Parametrization: a 0-dim parameter stored as a 1-element vector (FSDP2 shards only
    parameters with at least one dimension; FILIP's temperature is 0-dim)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(())

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1)


def lift_scalars(model: nn.Module) -> list[str]:
    """Give every 0-dim parameter of `model` a 1-element storage (see _ScalarAsVector); the
    module still reads a 0-dim value. Returns the names of the parameters changed."""
    changed = []
    for mod_name, mod in list(model.named_modules()):
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.dim() == 0:
                parametrize.register_parametrization(mod, name, _ScalarAsVector(), unsafe=True)
                changed.append(f"{mod_name}.{name}" if mod_name else name)
    return changed


_PARAMETRIZED = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original$")


def canonical_name(name: str) -> tuple[str, bool]:
    """(the name a parameter has without lift_scalars, whether lift_scalars changed it): the key
    under which checkpoints store it, so one checkpoint serves FSDP2, DDP and one process."""
    new = _PARAMETRIZED.sub(r"\1\2", name)
    return new, new != name


def shard_model(model: nn.Module, device: torch.device, bf16: bool) -> None:
    """FSDP2 in place: fully_shard on every Transformer block (so one block's weights are
    gathered at a time), then on the whole model (embedders, projections, heads, FILIP
    temperatures). bf16: compute in bf16 with fp32 gradient reduction and fp32 master weights
    (on a GPU; CPUs train in fp32).

    The skill FFN banks are ordinary parameters of their block, sharded on dim 0 (the skill
    axis) like any other; FSDP2 gathers them whole before the block's forward, so the fused
    kernels see plain tensors. The model's evaluation entry points (classify_logits,
    retrieval_features) are registered as FSDP forward methods so they gather weights too.
    0-dim parameters are lifted to 1-element vectors first (lift_scalars)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    lift_scalars(model)
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
              else MixedPrecisionPolicy())
    for block in model.encoder.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for name in ("classify_logits", "retrieval_features"):
        register_fsdp_forward_method(model, name)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective: every rank calls it); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor
    return t.full_tensor() if isinstance(t, DTensor) else t

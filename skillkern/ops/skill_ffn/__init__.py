"""Skill-routed FFN (SkillNet): reference.py (math), kernels.py (Triton), triton_impl.py
(launchers), op.py (checks, registered ops, public functions), module.py (nn.Module)."""
from skillkern.ops.skill_ffn.module import SkillFFN
from skillkern.ops.skill_ffn.op import skill_ffn, skill_route
from skillkern.ops.skill_ffn.reference import (ACTIVATIONS, ID_DTYPES, route_ref, skill_ffn_bwd_ref,
                                               skill_ffn_ref, slot_scale)

__all__ = ["ACTIVATIONS", "ID_DTYPES", "SkillFFN", "route_ref", "skill_ffn", "skill_ffn_bwd_ref",
           "skill_ffn_ref", "skill_route", "slot_scale"]

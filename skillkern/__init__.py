"""skillkern: fused GPU kernels for multimodal sparse models (SkillNet skills, Wukong/FILIP).

Importing skillkern needs neither a GPU nor the compiled extension; a call that needs a
missing backend raises skillkern.BackendUnavailable saying how to get it.
"""
from skillkern._backend import BackendUnavailable, available_backends, has_cuda_extension
from skillkern._config import check_ids_enabled, set_check_ids
from skillkern.skill_ffn import skill_ffn, skill_route
from skillkern import nn

__all__ = [
    "BackendUnavailable",
    "available_backends",
    "check_ids_enabled",
    "has_cuda_extension",
    "nn",
    "set_check_ids",
    "skill_ffn",
    "skill_route",
]
__version__ = "0.1.0"

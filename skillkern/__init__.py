"""skillkern: fused GPU kernels for multimodal sparse models (SkillNet skills, Wukong/FILIP).

Importing skillkern needs neither a GPU nor the compiled extension; a call that needs a
missing backend raises skillkern.BackendUnavailable saying how to get it.
"""
from skillkern._backend import BackendUnavailable, available_backends, has_cuda_extension
from skillkern._config import check_ids_enabled, set_check_ids
from skillkern._info import info
from skillkern.ops.maxsim import maxsim, maxsim_topk
from skillkern.ops.skill_ffn import skill_ffn, skill_route
from skillkern.ops.token_reduce import token_pool, token_reduce
from skillkern.ops.token_similarity import filip_loss, token_similarity
from skillkern import convert, nn

__all__ = [
    "BackendUnavailable",
    "available_backends",
    "check_ids_enabled",
    "convert",
    "filip_loss",
    "has_cuda_extension",
    "info",
    "maxsim",
    "maxsim_topk",
    "nn",
    "set_check_ids",
    "skill_ffn",
    "skill_route",
    "token_pool",
    "token_reduce",
    "token_similarity",
]
__version__ = "0.1.0"

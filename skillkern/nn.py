"""Drop-in layers (nn.Modules) built on skillkern's ops."""
from skillkern.ops.skill_ffn.module import SkillFFN
from skillkern.ops.token_reduce.module import TokenLearner, TokenReduction
from skillkern.ops.token_similarity import FILIPLoss

__all__ = ["FILIPLoss", "SkillFFN", "TokenLearner", "TokenReduction"]

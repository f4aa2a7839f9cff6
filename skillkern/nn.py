"""Drop-in layers (nn.Modules) built on skillkern's ops."""
from skillkern.skill_ffn.module import SkillFFN

__all__ = ["SkillFFN"]

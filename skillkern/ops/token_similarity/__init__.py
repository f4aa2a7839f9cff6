"""FILIP token-wise similarity (Wukong's late interaction): reference.py (math), kernels.py
(Triton), triton_impl.py (launchers), op.py (checks, registered ops, token_similarity), loss.py
(filip_loss, the contrastive loss over it, single-process or distributed), module.py (FILIPLoss)."""
from skillkern.ops.token_similarity.loss import filip_loss
from skillkern.ops.token_similarity.module import FILIPLoss
from skillkern.ops.token_similarity.op import token_similarity
from skillkern.ops.token_similarity.reference import filip_loss_ref, token_similarity_ref

__all__ = ["FILIPLoss", "filip_loss", "filip_loss_ref", "token_similarity", "token_similarity_ref"]

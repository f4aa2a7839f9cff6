"""Token reduction (Wukong's reduced-token interaction, TokenLearner pooling): reference.py
(math), kernels.py (Triton), triton_impl.py (launchers), op.py (checks, registered ops,
token_reduce, token_pool), module.py (TokenReduction, TokenReductionRef, TokenLearner)."""
from skillkern.ops.token_reduce.module import TokenLearner, TokenReduction, TokenReductionRef
from skillkern.ops.token_reduce.op import token_pool, token_reduce
from skillkern.ops.token_reduce.reference import token_pool_ref, token_reduce_ref

__all__ = ["TokenLearner", "TokenReduction", "TokenReductionRef", "token_pool", "token_pool_ref", "token_reduce",
           "token_reduce_ref"]

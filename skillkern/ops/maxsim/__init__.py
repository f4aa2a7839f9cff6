"""Multi-vector (late-interaction) retrieval: MaxSim scores, reranking and streaming top-k over
padded or packed (ragged) docs. reference.py (math), torch_impl.py (the torch backend: streamed
over the docs, memory-bounded, deterministic backward), op.py (checks, registered ops, maxsim,
maxsim_topk)."""
from skillkern.ops.maxsim.op import maxsim, maxsim_topk
from skillkern.ops.maxsim.reference import maxsim_ref, maxsim_topk_ref

__all__ = ["maxsim", "maxsim_ref", "maxsim_topk", "maxsim_topk_ref"]

"""One folder per op: reference (the math), Triton kernels + launchers, the registered ops and
public function (op.py), and its nn.Module. The public names live on `skillkern` itself
(skillkern.skill_ffn, skillkern.token_similarity, ...); these packages hold the parts."""

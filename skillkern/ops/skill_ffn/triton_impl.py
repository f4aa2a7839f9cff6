"""Launchers of the skill-routed FFN Triton kernels (kernels.py): routing, forward, backward.

Nothing here syncs with the host: grids are sized for the worst case from shapes alone.

What the forward keeps for backward (besides x, the weights and c, which autograd holds
anyway): order (int32, 4 bytes per token slot), offsets (E + 1 int32) and, with save_pre
(skill_ffn(recompute=False), the default), the pre-activation (2*h bytes per slot in bf16, 8 KB
at h = 4096), which the backward's hidden-gradient kernel reads. With recompute=True it is not
kept: the backward recomputes GEMM1 first (one extra GEMM, 7 GEMM-equivalents per step instead
of 6, for ~2000x less saved state per slot).
"""
from __future__ import annotations

import torch
import triton

from skillkern._backend import interpreting
from skillkern.ops._common import autotune, dot_precision, sm_count, tma_ok as _tma
from skillkern.ops.skill_ffn import kernels as K

ACT_CODE = {name: K.__dict__[name.upper()].value
            for name in ("gelu", "gelu_tanh", "relu", "silu", "swiglu")}

_ROUTE_BLOCK = 1024  # slots per routing program (one-hot BLOCK x E_PAD in registers)


def _configs(gpu_configs, interp_config, names=("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")):
    """Autotune configs (tile values named by `names`, then warps and stages in positions 4 and
    5): the GPU list, each with its tiles by TMA and by cp.async (USE_TMA:
    the device's timing decides; a launch whose weights TMA cannot take, TMA_OK=False, prunes
    the TMA half), or one small config under the interpreter (where autotuning cannot benchmark
    and each program step costs ~3.5 ms; TMA wherever the launch allows it).
    Every kernel must give the same result whichever configs ran before it (autotuning runs
    them all on the real buffers): the kernels only store, never accumulate into outputs."""
    if interpreting():
        return [triton.Config(dict(interp_config, USE_TMA=True), num_warps=4, num_stages=1)]
    return [triton.Config(dict(zip(names, c[:len(names)]), USE_TMA=tma), num_warps=c[4], num_stages=c[5])
            for tma in (True, False) for c in gpu_configs]


# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages). 128x128x64 / 8 warps is the usual
# Hopper bf16 sweet spot for GEMMs of this size; the 64-row configs serve small skills.
_ROW_GEMM = [
    (128, 128, 64, 8, 8, 3), (128, 256, 64, 8, 8, 3), (128, 128, 64, 8, 4, 4),
    (64, 128, 64, 8, 4, 4), (128, 64, 64, 8, 4, 4), (64, 64, 64, 8, 4, 3),
]
# two or three fp32 accumulators per program (swiglu, recompute + dY W2^T): narrower tiles
_ROW_GEMM_2ACC = [
    (128, 64, 64, 8, 8, 3), (128, 128, 64, 8, 8, 3), (64, 128, 64, 8, 4, 3),
    (64, 64, 64, 8, 4, 3),
]
_INTERP_ROW = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}

# (BLOCK_P, BLOCK_Q, BLOCK_R, unused, warps, stages)
_WGRAD = [(128, 128, 64, 1, 8, 3), (128, 256, 64, 1, 8, 3), (128, 128, 32, 1, 4, 4),
          (64, 128, 64, 1, 4, 3)]
_INTERP_WGRAD = {"BLOCK_P": 32, "BLOCK_Q": 32, "BLOCK_R": 32}


_up_fwd = autotune(K._skill_up_fwd_kernel, _configs(_ROW_GEMM, _INTERP_ROW), key=["d", "h", "n_bucket", "ACT"])
_down = autotune(K._skill_down_kernel, _configs(_ROW_GEMM, _INTERP_ROW), key=["K", "n_out", "n_bucket", "HAS_SCALE"])
# reset_to_zero: configs of different tiles fill different dc columns / db1 rows, so one written
# while benchmarking a config would survive into the chosen config's sum. The GEMM runs one
# accumulator, but the epilogue holds the pre-activation, G, the activation and its derivative:
# the 2-accumulator tile list (the 4-warp 128-row tiles spill on sm_90)
_up_bwd = autotune(K._skill_up_bwd_kernel, _configs(_ROW_GEMM_2ACC, _INTERP_ROW),
                   reset_to_zero=["dc_ptr", "db1_ptr", "tile_skill_ptr"], key=["d", "h", "n_bucket", "ACT", "NEED_DC"])
# the partial-sum buffers have one column per BLOCK_N tile (dc) / one row per BLOCK_M tile
# (db1) of the narrowest config
_DC_MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in _up_bwd.configs)
_DB_MIN_BLOCK_M = min(c.kwargs["BLOCK_M"] for c in _up_bwd.configs)
_wgrad = autotune(K._skill_wgrad_kernel, _configs(_WGRAD, _INTERP_WGRAD, tuple(_INTERP_WGRAD)),
                  key=["P", "Q", "R", "n_bucket"])
# the row gather of the backward: memory-bound, 64 rows x 128 columns of 16-bit values per program
_GATHER_M, _GATHER_C = (16, 32) if interpreting() else (64, 128)
# the fixed-order sum of the weight-gradient partials: memory-bound, one (64, 128) fp32 tile per program
_REDUCE_P, _REDUCE_Q = (16, 32) if interpreting() else (64, 128)



def _rows_per_skill_bucket(N: int, E: int) -> int:
    """The autotune key of every skill-FFN GEMM: next_power_of_2 of the mean rows per skill
    (N / E, from shapes alone: the real per-skill counts are on the device). The best tile
    depends on how many rows a skill brings, not on N: 8 skills of 4k rows tune like 2 of 4k."""
    return triton.next_power_of_2(max(1, triton.cdiv(N, E)))


def _wgrad_chunk_rows(N: int, P: int, Q: int, device: torch.device) -> int:
    """Rows per work unit of the weight-gradient GEMMs (R): a skill with more rows is split
    into chunks of R, whose fp32 partials are summed in a fixed order. Chosen from shapes alone
    (the per-skill counts are on the device) so that no program runs longer than each SM's
    share of the whole launch, even if one skill holds every row: R <= N * tiles / SMs, tiles
    counted at 128 x 128, a power of two, at least 256 rows (4 loop steps of the deepest
    config); N (no split) where the tiles of one skill alone fill the GPU. Halving that bound
    trims a few % more of the tail, but the partials' extra traffic costs more than it saves
    (benchmarks/NOTES.md, "weight-gradient schedule")."""
    tiles = triton.cdiv(P, 128) * triton.cdiv(Q, 128)
    budget = N * tiles // sm_count(device)
    if budget >= N:
        return max(N, 1)
    return min(N, max(256, 1 << max(0, budget.bit_length() - 1)))


def _wgrad_partials(N: int, R: int) -> int:
    """Workspace slots the split weight gradient may need: a skill of r > R rows has
    ceil(r / R) < 2 r / R chunks, so all multi-chunk skills together have fewer than 2 N / R."""
    return 0 if R >= N else 2 * N // R


def _row_grid(N: int, E: int, n_cols: int):
    return lambda meta: ((triton.cdiv(N, meta["BLOCK_M"]) + E) * triton.cdiv(n_cols, meta["BLOCK_N"]),)


def route(ids: torch.Tensor, num_skills: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counting sort of slots by skill on the device (see reference.route_ref for the contract).
    ids: (N,) contiguous integer. Returns order (N,) int32, offsets (E + 1,) int32."""
    N = ids.numel()
    E = num_skills
    order = torch.empty(N, dtype=torch.int32, device=ids.device)
    offsets = torch.empty(E + 1, dtype=torch.int32, device=ids.device)
    if N == 0:
        offsets.zero_()
        return order, offsets
    e_pad = triton.next_power_of_2(E + 1)
    n_blocks = triton.cdiv(N, _ROUTE_BLOCK)
    counts = torch.empty((n_blocks, e_pad), dtype=torch.int32, device=ids.device)
    K._route_hist_kernel[(n_blocks,)](ids, counts, N, E, BLOCK=_ROUTE_BLOCK, E_PAD=e_pad)
    K._route_scatter_kernel[(n_blocks,)](ids, counts, order, offsets, N, E, n_blocks,
                                         BLOCK=_ROUTE_BLOCK, E_PAD=e_pad, NB_CHUNK=64)
    return order, offsets


def _gather_sorted(src, scale, order, offsets, E: int, k: int, sums: bool):
    """(src rows in sorted order (N, C), and with `sums` the per-tile fp32 column sums of
    scale * rows with each tile's skill + 1; else None, None)."""
    N, C = order.numel(), src.shape[1]
    n_tiles = triton.cdiv(N, _GATHER_M) + E
    dst = torch.empty((N, C), dtype=src.dtype, device=src.device)
    part = torch.zeros((n_tiles, C) if sums else (1, 1), dtype=torch.float32, device=src.device)
    tile_skill = torch.zeros(n_tiles if sums else 1, dtype=torch.int32, device=src.device)
    K._gather_rows_kernel[(n_tiles, triton.cdiv(C, _GATHER_C))](
        src, scale, dst, part, tile_skill, order, offsets, N, E, C, k, src.stride(0), dst.stride(0),
        part.stride(0), SUMS=sums, BLOCK_M=_GATHER_M, BLOCK_C=_GATHER_C)
    return dst, (part if sums else None), (tile_skill if sums else None)


def _gemm1(x, w1, b1, hid, pre, order, offsets, k: int, activation: str, n_bucket: int, prec: str) -> None:
    """The up-projection over the sorted slots: hid = act(x @ w1 + b1) (hid None: not stored),
    and the pre-activation itself into pre (None: not stored)."""
    N, E, d, h1 = order.numel(), w1.shape[0], x.shape[1], w1.shape[2]
    h = h1 // 2 if activation == "swiglu" else h1
    out = hid if hid is not None else pre
    _up_fwd[_row_grid(N, E, h)](
        x, w1, b1 if b1 is not None else w1, out, pre if pre is not None else out, order, offsets,
        N, E, d, h, k,
        x.stride(0), w1.stride(0), w1.stride(1), w1.stride(2),
        b1.stride(0) if b1 is not None else 0, out.stride(0), pre.stride(0) if pre is not None else 0,
        n_bucket, ACT=ACT_CODE[activation], HAS_B1=b1 is not None, STORE_PRE=pre is not None,
        STORE_ACT=hid is not None, PRECISION=prec,
        # swiglu's up tiles start at column h: TMA box starts must be 16-byte aligned too
        TMA_OK=_tma(w1) and (activation != "swiglu" or h * w1.element_size() % 16 == 0))


def _zero_inactive(t: torch.Tensor, offsets: torch.Tensor, E: int) -> None:
    """Rows of t (sorted positions, one per slot) past offsets[E] (inactive slots, which no GEMM
    writes) set to 0: defined values for an op output, and for the TMA loads of a partial last
    tile, which read them into rows the epilogue then masks."""
    N = t.shape[0]
    K._zero_inactive_rows_kernel[(triton.cdiv(N, _GATHER_M),)](t, offsets, N, E, t.shape[1], t.stride(0),
                                                               BLOCK_M=_GATHER_M, BLOCK_C=_GATHER_C)


def _sum_by_skill(part: torch.Tensor, tile_skill: torch.Tensor, E: int, dtype) -> torch.Tensor:
    """(E, C) sums of the rows of part (n_tiles, C) whose tile_skill is e + 1, in float64 (a
    matmul with a one-hot matrix: a fixed order on every run, never TF32, exact zeros for a skill
    without tiles)."""
    skills = torch.arange(1, E + 1, device=part.device, dtype=tile_skill.dtype)
    onehot = (tile_skill[:, None] == skills[None, :]).to(torch.float64)  # elementwise: no host sync
    return (onehot.T @ part.double()).to(dtype)


def _combine(buf: torch.Tensor, T: int, k: int) -> torch.Tensor:
    """Per-slot rows (T*k, d) -> per-token sums (T, d) in a fixed slot order (deterministic,
    fp32 accumulation inside torch's reduction). For k == 1 buf already is the output."""
    return buf if k == 1 else buf.view(T, k, -1).sum(dim=1)


def skill_ffn_fwd(x, ids, scale, w1, w2, b1, b2, activation, save_pre: bool = False):
    """x: (T, d); ids: (T, k); scale: (T, k) fp32; returns y (T, d), order, offsets and, with
    save_pre, the pre-activation (T*k, h1) in sorted order (rows of inactive slots unset) for a
    backward that does not recompute GEMM1 (else None)."""
    T, d = x.shape
    k = ids.shape[1]
    E, _, h1 = w1.shape
    h = w2.shape[1]
    N = T * k
    order, offsets = route(ids.reshape(-1), E)
    pre = torch.empty((N, h1), dtype=x.dtype, device=x.device) if save_pre else None
    if N == 0:  # no token: nothing to launch (offsets are all 0)
        return x.new_zeros((T, d)), order, offsets, pre
    hid = torch.empty((N, h), dtype=x.dtype, device=x.device)
    prec = dot_precision(x.dtype)
    n_bucket = _rows_per_skill_bucket(N, E)
    _gemm1(x, w1, b1, hid, pre, order, offsets, k, activation, n_bucket, prec)
    _zero_inactive(hid, offsets, E)
    # zeros: tokens (k = 1) or slots (k > 1) with no active skill are never written
    out = torch.zeros((N, d), dtype=x.dtype, device=x.device)
    _down[_row_grid(N, E, d)](
        hid, w2, b2 if b2 is not None else w2, scale, out, order, offsets,
        N, E, h, d,
        hid.stride(0), w2.stride(0), w2.stride(1), w2.stride(2),
        b2.stride(0) if b2 is not None else 0, out.stride(0),
        n_bucket, HAS_BIAS=b2 is not None, HAS_SCALE=True, PRECISION=prec, TMA_OK=_tma(w2) and _tma(hid),
        W_KMAJOR=False)
    if save_pre:  # rows of inactive slots: zeros, not whatever memory held (an op output)
        _zero_inactive(pre, offsets, E)
    return _combine(out, T, k), order, offsets, pre


def skill_ffn_bwd(dy, x, scale, w1, w2, b1, b2, order, offsets, activation, need_dscale, pre=None):
    """Returns dx, dw1, dw2, db1, db2, dscale (None for absent biases / unneeded dscale).
    pre: the forward's saved pre-activation (skill_ffn_fwd(save_pre=True)), or None to
    recompute GEMM1 here (7 GEMM-equivalents per step instead of 6, no (T*k, h1) activation kept
    between forward and backward; the recomputed one lives only during this call)."""
    T, d = x.shape
    k = scale.shape[1]
    E, _, h1 = w1.shape
    h = w2.shape[1]
    N = T * k
    if N == 0:  # no token: every gradient is 0 (an unused skill's weight grads are exact zeros)
        return (torch.zeros_like(x), torch.zeros_like(w1), torch.zeros_like(w2),
                torch.zeros_like(b1) if b1 is not None else None,
                torch.zeros_like(b2) if b2 is not None else None,
                scale.new_zeros(scale.shape) if need_dscale else None)
    prec = dot_precision(x.dtype)
    n_bucket = _rows_per_skill_bucket(N, E)
    hid = torch.empty((N, h), dtype=x.dtype, device=x.device)
    dz = torch.empty((N, h1), dtype=x.dtype, device=x.device)
    # zero-filled: columns past the chosen BLOCK_N's tile count stay 0 in the sum below
    dc_part = torch.zeros((N, triton.cdiv(h, _DC_MIN_BLOCK_N)) if need_dscale else (1, 1),
                          dtype=torch.float32, device=x.device)
    # x and dy in sorted order: every GEMM below reads contiguous row tiles (2 N d elements of
    # extra memory, ~4 N d bytes of traffic per 16-bit element for the gathers); the dy gather
    # also sums c * dy per row tile for db2
    x_s = _gather_sorted(x, scale, order, offsets, E, k, False)[0]
    dy_s, db2_part, db2_skill = _gather_sorted(dy, scale, order, offsets, E, k, b2 is not None)
    db2 = _sum_by_skill(db2_part, db2_skill, E, b2.dtype) if b2 is not None else None
    if pre is None:  # recompute GEMM1's pre-activation (bias included), as the forward rounded it
        pre = torch.empty((N, h1), dtype=x.dtype, device=x.device)
        _gemm1(x, w1, b1, None, pre, order, offsets, k, activation, n_bucket, prec)
    # per row tile of up_bwd: column sums of dZ (db1) and the tile's skill + 1
    n_tiles = triton.cdiv(N, _DB_MIN_BLOCK_M) + E
    db1_part = torch.zeros((n_tiles, h1) if b1 is not None else (1, 1), dtype=torch.float32, device=x.device)
    tile_skill = torch.zeros(n_tiles, dtype=torch.int32, device=x.device)
    _up_bwd[_row_grid(N, E, h)](
        dy_s, w2, b2 if b2 is not None else w2, scale, pre, hid, dz, dc_part, db1_part, tile_skill, order, offsets,
        N, E, d, h, k,
        dy_s.stride(0), w2.stride(0), w2.stride(1), w2.stride(2), b2.stride(0) if b2 is not None else 0,
        pre.stride(0), hid.stride(0), dz.stride(0), dc_part.stride(0), db1_part.stride(0),
        n_bucket, ACT=ACT_CODE[activation], HAS_B1=b1 is not None, HAS_B2=b2 is not None,
        NEED_DC=need_dscale, PRECISION=prec, TMA_OK=_tma(w2))
    del pre
    _zero_inactive(dz, offsets, E)  # dX's TMA loads read them (masked rows)
    db1 = _sum_by_skill(db1_part, tile_skill, E, b1.dtype) if b1 is not None else None

    dw1 = torch.empty_like(w1)
    dw2 = torch.empty_like(w2)
    e_pad = max(2, triton.next_power_of_2(E))

    def wgrad(a, b, dw, P, Q):
        R = _wgrad_chunk_rows(N, P, Q, x.device)
        n_ws = _wgrad_partials(N, R)  # 0: no skill can be split, the workspace is never touched
        ws = torch.empty((n_ws, P, Q) if n_ws else (1,), dtype=torch.float32, device=x.device)
        grid = lambda meta: ((triton.cdiv(N, R) + E) * triton.cdiv(P, meta["BLOCK_P"]) * triton.cdiv(Q, meta["BLOCK_Q"]),)
        _wgrad[grid](a, b, dw, ws, offsets, E, P, Q, R, a.stride(0), b.stride(0), dw.stride(0), dw.stride(1),
                     dw.stride(2), n_bucket, PRECISION=prec, TMA_OK=_tma(a) and _tma(b), E_PAD=e_pad)
        K._wgrad_reduce_kernel[(E, triton.cdiv(P, _REDUCE_P) * triton.cdiv(Q, _REDUCE_Q))](
            ws, dw, offsets, E, P, Q, R, dw.stride(0), dw.stride(1), dw.stride(2),
            E_PAD=e_pad, BLOCK_P=_REDUCE_P, BLOCK_Q=_REDUCE_Q)

    wgrad(x_s, dz, dw1, d, h1)  # dW1 = X^T dZ
    del x_s
    wgrad(hid, dy_s, dw2, h, d)  # dW2 = (c H)^T dy
    del hid, dy_s

    dx_slots = torch.zeros((N, d), dtype=x.dtype, device=x.device)
    _down[_row_grid(N, E, d)](  # dX = dZ W1^T: w1 read transposed through its strides
        dz, w1, w1, scale, dx_slots, order, offsets,
        N, E, h1, d,
        dz.stride(0), w1.stride(0), w1.stride(2), w1.stride(1), 0, dx_slots.stride(0),
        n_bucket, HAS_BIAS=False, HAS_SCALE=False, PRECISION=prec, TMA_OK=_tma(w1) and _tma(dz), W_KMAJOR=True)
    dx = _combine(dx_slots, T, k)

    dscale = None
    if need_dscale:
        dscale = torch.zeros(N, dtype=torch.float32, device=x.device)
        # sorted partial sums -> slot order; inactive positions hold exact zeros
        dscale[order.long()] = dc_part.sum(dim=1)
        dscale = dscale.view(T, k)
    return dx, dw1, dw2, db1, db2, dscale

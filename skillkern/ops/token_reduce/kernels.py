"""Triton kernels of token reduction / token pooling (launchers in triton_impl.py).

A program owns one batch item (forward) or a group of items (backward) and one BLOCK_D slice
of the output features, and walks the positions in BLOCK_N tiles:
  - LayerNorm statistics of each row are computed in-kernel (two passes over D, fp32);
  - scores z = u @ w_score (BLOCK_N, S) over the full D, or loaded when precomputed;
  - an online softmax over positions (running max / sum per output token s, flash-style)
    rescales the pooled accumulator (S, BLOCK_D), so x is read from HBM once; the other D
    slices' programs re-read it from L2 for their scores.
The pooled values v are u (POOL_LN) or x itself (Wukong's released layer scores LN(x) but pools x).
Backward, with delta[s] = <d_out[s], out[s]> (the softmax-backward row term, from the saved out):
    dA = v @ d_out^T,  dZ = A * (dA - delta),  dv = A @ d_out,  du_scores = dZ @ w_score^T,
    LayerNorm backward (row sums of du * gamma over the full D) of du_scores (+ dv when POOL_LN);
dw_score, d_ln_weight, d_ln_bias are per-program partial sums (summed on the host side of the
op in a fixed order: deterministic, no atomics). All arithmetic is fp32; dots take fp32 operands
(TF32 tensor cores unless fp32 inputs ask for torch's "highest" precision).
"""
import triton
import triton.language as tl


@triton.jit
def _ln_stats(x_rows, rmask, D, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mean and 1/std over D of BLOCK_N rows (two passes: no cancellation for large means).
    Rows outside rmask read as 0 (mean 0, rstd 1/sqrt(eps): finite whatever they hold)."""
    dd = tl.arange(0, BLOCK_D)
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        m = rmask[:, None] & ((d0 + dd) < D)[None, :]
        total += tl.sum(tl.load(x_rows[:, None] + (d0 + dd)[None, :], mask=m, other=0.0).to(tl.float32), axis=1)
    mean = total / D
    sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        m = rmask[:, None] & ((d0 + dd) < D)[None, :]
        xc = tl.load(x_rows[:, None] + (d0 + dd)[None, :], mask=m, other=0.0).to(tl.float32) - mean[:, None]
        sq += tl.sum(tl.where(m, xc * xc, 0.0), axis=1)
    return mean, 1.0 / tl.sqrt(sq / D + eps)


@triton.jit
def _u_chunk(x_rows, rmask, d0, D, mean, rstd, lnw_ptr, lnb_ptr,
             HAS_LN: tl.constexpr, HAS_LN_BIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """(u, xhat) for features d0..d0+BLOCK_D of the rows, fp32; 0 outside rmask / D."""
    dd = d0 + tl.arange(0, BLOCK_D)
    dm = dd < D
    m = rmask[:, None] & dm[None, :]
    x = tl.load(x_rows[:, None] + dd[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_LN:
        xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
        u = xhat * tl.load(lnw_ptr + dd, mask=dm, other=0.0).to(tl.float32)[None, :]
        if HAS_LN_BIAS:
            u = tl.where(m, u + tl.load(lnb_ptr + dd, mask=dm, other=0.0).to(tl.float32)[None, :], 0.0)
    else:
        xhat = x
        u = x
    return u, xhat


@triton.jit
def _scores(x_rows, valid, D, S, mean, rstd, lnw_ptr, lnb_ptr, w_ptr, s_wd, sc_rows,
            HAS_LN: tl.constexpr, HAS_LN_BIAS: tl.constexpr, SCORES_GIVEN: tl.constexpr,
            PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, S_PAD: tl.constexpr, BLOCK_D: tl.constexpr):
    """z (BLOCK_N, S_PAD) fp32 = u @ w_score (or the given scores); -inf where not `valid`.
    Masked positions are never loaded (a masked load selects 0), so NaN or inf there cannot
    reach z, not even through a tl.dot."""
    ss = tl.arange(0, S_PAD)
    if SCORES_GIVEN:
        z = tl.load(sc_rows[:, None] + ss[None, :], mask=valid[:, None] & (ss < S)[None, :],
                    other=0.0).to(tl.float32)
    else:
        dd = tl.arange(0, BLOCK_D)
        z = tl.zeros([BLOCK_N, S_PAD], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            u, _ = _u_chunk(x_rows, valid, d0, D, mean, rstd, lnw_ptr, lnb_ptr, HAS_LN, HAS_LN_BIAS, BLOCK_D)
            w = tl.load(w_ptr + (d0 + dd).to(tl.int64)[:, None] * s_wd + ss[None, :],
                        mask=((d0 + dd) < D)[:, None] & (ss < S)[None, :], other=0.0).to(tl.float32)
            z = tl.dot(u, w, z, input_precision=PRECISION)
    return tl.where(valid[:, None], z, float("-inf"))


@triton.jit
def _rows(mask_ptr, b, n0, N, s_xb, s_xn, s_sb, s_sn, s_mb, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr):
    """Positions n0.. of item b: row offsets into x-shaped and score-shaped tensors (int64),
    in-range mask and real-position mask."""
    nn = n0 + tl.arange(0, BLOCK_N)
    rmask = nn < N
    valid = rmask
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + b * s_mb + nn, mask=rmask, other=0) != 0)
    return b * s_xb + nn.to(tl.int64) * s_xn, b * s_sb + nn.to(tl.int64) * s_sn, rmask, valid


@triton.jit
def _token_reduce_fwd_kernel(
    x_ptr, w_ptr, sc_ptr, lnw_ptr, lnb_ptr, mask_ptr, out_ptr, lse_ptr,
    N, D, S, eps,
    s_xb, s_xn, s_wd, s_sb, s_sn, s_mb, s_ob, s_os, s_lb,
    HAS_LN: tl.constexpr, HAS_LN_BIAS: tl.constexpr, POOL_LN: tl.constexpr, POOL_LN_BIAS: tl.constexpr,
    SCORES_GIVEN: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, S_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """out[b, :, d-slice] (S, BLOCK_D) and lse[b, :] (from the d-slice 0 program).
    HAS_LN*: LayerNorm before the scores; POOL_LN*: the pooled values are LayerNorm-ed too.
    Grid: (cdiv(D, BLOCK_D) * B,), slice-fastest: an item's slices run together and share x in L2
    (1-d: grid axis 1 would cap B at 65535)."""
    n_slices = tl.cdiv(D, BLOCK_D)
    b = (tl.program_id(0) // n_slices).to(tl.int64)
    d_slice = tl.program_id(0) % n_slices
    d0 = d_slice * BLOCK_D
    ss = tl.arange(0, S_PAD)
    run_max = tl.full([S_PAD], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([S_PAD], dtype=tl.float32)
    acc = tl.zeros([S_PAD, BLOCK_D], dtype=tl.float32)
    mean = tl.zeros([BLOCK_N], dtype=tl.float32)
    rstd = tl.zeros([BLOCK_N], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        x_off, sc_off, _, valid = _rows(mask_ptr, b, n0, N, s_xb, s_xn, s_sb, s_sn, s_mb, HAS_MASK, BLOCK_N)
        x_rows = x_ptr + x_off
        sc_rows = sc_ptr + sc_off
        # every load below is masked by `valid`: padding (NaN or inf included) reads as 0
        if HAS_LN:
            mean, rstd = _ln_stats(x_rows, valid, D, eps, BLOCK_N, BLOCK_D)
        z = _scores(x_rows, valid, D, S, mean, rstd, lnw_ptr, lnb_ptr, w_ptr, s_wd, sc_rows,
                    HAS_LN, HAS_LN_BIAS, SCORES_GIVEN, PRECISION, BLOCK_N, S_PAD, BLOCK_D)
        new_max = tl.maximum(run_max, tl.max(z, axis=0))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # no -inf - -inf
        p = tl.exp(z - safe_max[None, :])  # (BLOCK_N, S_PAD); 0 at masked positions
        alpha = tl.exp(run_max - safe_max)
        run_sum = run_sum * alpha + tl.sum(p, axis=0)
        v, _ = _u_chunk(x_rows, valid, d0, D, mean, rstd, lnw_ptr, lnb_ptr, POOL_LN, POOL_LN_BIAS, BLOCK_D)
        acc = tl.dot(tl.trans(p), v, acc * alpha[:, None], input_precision=PRECISION)
        run_max = new_max
    has = run_sum > 0  # an output token of an item with no real position: zeros, lse = +inf
    out = tl.where(has[:, None], acc / tl.where(has, run_sum, 1.0)[:, None], 0.0)
    dd = d0 + tl.arange(0, BLOCK_D)
    o_ptrs = out_ptr + b * s_ob + ss[:, None].to(tl.int64) * s_os + dd[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=(ss < S)[:, None] & (dd < D)[None, :])
    if d_slice == 0:
        lse = tl.where(has, tl.where(run_max == float("-inf"), 0.0, run_max) + tl.log(tl.where(has, run_sum, 1.0)),
                       float("inf"))
        tl.store(lse_ptr + b * s_lb + ss, lse, mask=ss < S)


@triton.jit
def _token_reduce_bwd_kernel(
    x_ptr, w_ptr, sc_ptr, lnw_ptr, lnb_ptr, mask_ptr, dout_ptr, delta_ptr, lse_ptr,
    dx_ptr, dsc_ptr, dw_part_ptr, dlnw_part_ptr, dlnb_part_ptr,
    B, N, D, S, eps, items_per_prog,
    s_xb, s_xn, s_wd, s_sb, s_sn, s_mb, s_ob, s_os, s_lb,
    HAS_LN: tl.constexpr, HAS_LN_BIAS: tl.constexpr, POOL_LN: tl.constexpr, POOL_LN_BIAS: tl.constexpr,
    SCORES_GIVEN: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, S_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dx[b, :, d-slice] for the program's items; d_scores (d-slice 0 programs); partial sums of
    dw_score[d-slice, :], d_ln_weight[d-slice], d_ln_bias[d-slice] per program.
    Grid: (cdiv(D, BLOCK_D) * cdiv(B, items_per_prog),), slice-fastest as in the forward.
    dx, d_out share x's / out's strides."""
    n_slices = tl.cdiv(D, BLOCK_D)
    g = tl.program_id(0) // n_slices
    d_slice = tl.program_id(0) % n_slices
    d0 = d_slice * BLOCK_D
    ss = tl.arange(0, S_PAD)
    sm = ss < S
    dd = tl.arange(0, BLOCK_D)
    dblk = d0 + dd
    dbm = dblk < D
    dw_acc = tl.zeros([BLOCK_D, S_PAD], dtype=tl.float32)
    dlnw_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dlnb_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    mean = tl.zeros([BLOCK_N], dtype=tl.float32)
    rstd = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_LN:
        lnw_blk = tl.load(lnw_ptr + dblk, mask=dbm, other=0.0).to(tl.float32)
    for i in range(0, items_per_prog):
        b = (g * items_per_prog + i).to(tl.int64)
        b_ok = b < B
        bb = tl.where(b_ok, b, 0)  # keep addresses in range for the masked-off tail
        lse = tl.load(lse_ptr + bb * s_lb + ss, mask=sm & b_ok, other=float("inf"))
        delta = tl.load(delta_ptr + bb * s_lb + ss, mask=sm & b_ok, other=0.0)
        do_rows = dout_ptr + bb * s_ob + ss.to(tl.int64) * s_os  # (S_PAD,) row starts of d_out[b]
        for n0 in range(0, N, BLOCK_N):
            x_off, sc_off, rmask, valid = _rows(mask_ptr, bb, n0, N, s_xb, s_xn, s_sb, s_sn, s_mb,
                                                HAS_MASK, BLOCK_N)
            x_rows = x_ptr + x_off
            sc_rows = sc_ptr + sc_off
            rmask = rmask & b_ok
            valid = valid & b_ok
            # loads masked by `valid` (padding reads as 0, as in the forward), stores by rmask
            # (padding rows of dx and d_scores get exact zeros: a, dz, du and xhat are 0 there)
            if HAS_LN:
                mean, rstd = _ln_stats(x_rows, valid, D, eps, BLOCK_N, BLOCK_D)
            z = _scores(x_rows, valid, D, S, mean, rstd, lnw_ptr, lnb_ptr, w_ptr, s_wd, sc_rows,
                        HAS_LN, HAS_LN_BIAS, SCORES_GIVEN, PRECISION, BLOCK_N, S_PAD, BLOCK_D)
            a = tl.exp(z - lse[None, :])  # softmax weights (BLOCK_N, S_PAD); 0 where masked
            d_a = tl.zeros([BLOCK_N, S_PAD], dtype=tl.float32)
            for k0 in range(0, D, BLOCK_D):
                v, _ = _u_chunk(x_rows, valid, k0, D, mean, rstd, lnw_ptr, lnb_ptr, POOL_LN, POOL_LN_BIAS, BLOCK_D)
                do = tl.load(do_rows[:, None] + (k0 + dd)[None, :], mask=sm[:, None] & ((k0 + dd) < D)[None, :],
                             other=0.0).to(tl.float32)  # (S_PAD, BLOCK_D)
                d_a = tl.dot(v, tl.trans(do), d_a, input_precision=PRECISION)
            dz = a * (d_a - delta[None, :])  # softmax backward over positions
            if SCORES_GIVEN:
                if d_slice == 0:
                    tl.store(dsc_ptr + sc_off[:, None] + ss[None, :], dz.to(dsc_ptr.dtype.element_ty),
                             mask=rmask[:, None] & sm[None, :])
            if HAS_LN:  # row sums of dxhat = du * gamma and dxhat * xhat over the full D
                s1 = tl.zeros([BLOCK_N], dtype=tl.float32)
                s2 = tl.zeros([BLOCK_N], dtype=tl.float32)
                for k0 in range(0, D, BLOCK_D):
                    km = (k0 + dd) < D
                    wk = tl.load(w_ptr + (k0 + dd).to(tl.int64)[:, None] * s_wd + ss[None, :],
                                 mask=km[:, None] & sm[None, :], other=0.0).to(tl.float32)
                    du = tl.dot(dz, tl.trans(wk), input_precision=PRECISION)  # through the scores
                    if POOL_LN:  # and through the pooled values
                        do = tl.load(do_rows[:, None] + (k0 + dd)[None, :], mask=sm[:, None] & km[None, :],
                                     other=0.0).to(tl.float32)
                        du = tl.dot(a, do, du, input_precision=PRECISION)
                    _, xhat = _u_chunk(x_rows, valid, k0, D, mean, rstd, lnw_ptr, lnb_ptr, HAS_LN,
                                       HAS_LN_BIAS, BLOCK_D)
                    gk = du * tl.load(lnw_ptr + k0 + dd, mask=km, other=0.0).to(tl.float32)[None, :]
                    s1 += tl.sum(gk, axis=1)
                    s2 += tl.sum(gk * xhat, axis=1)
            # this program's feature slice
            do = tl.load(do_rows[:, None] + dblk[None, :], mask=sm[:, None] & dbm[None, :], other=0.0).to(tl.float32)
            dv = tl.dot(a, do, input_precision=PRECISION)  # gradient of the pooled values
            u, xhat = _u_chunk(x_rows, valid, d0, D, mean, rstd, lnw_ptr, lnb_ptr, HAS_LN, HAS_LN_BIAS, BLOCK_D)
            if SCORES_GIVEN:
                dx = dv
            else:
                wb = tl.load(w_ptr + dblk.to(tl.int64)[:, None] * s_wd + ss[None, :],
                             mask=dbm[:, None] & sm[None, :], other=0.0).to(tl.float32)
                du = tl.dot(dz, tl.trans(wb), input_precision=PRECISION)  # gradient of the score input u
                dw_acc = tl.dot(tl.trans(u), dz, dw_acc, input_precision=PRECISION)
                if HAS_LN:
                    if POOL_LN:
                        du += dv
                    dx = rstd[:, None] * (du * lnw_blk[None, :] - (s1 / D)[:, None] - xhat * (s2 / D)[:, None])
                    if not POOL_LN:
                        dx += dv
                    dlnw_acc += tl.sum(du * xhat, axis=0)
                    dlnb_acc += tl.sum(du, axis=0)
                else:
                    dx = du + dv
            dx_ptrs = dx_ptr + x_off[:, None] + dblk[None, :]
            tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=rmask[:, None] & dbm[None, :])
    g64 = g.to(tl.int64)
    if not SCORES_GIVEN:
        w_ptrs = dw_part_ptr + g64 * D * S + dblk.to(tl.int64)[:, None] * S + ss[None, :]
        tl.store(w_ptrs, dw_acc, mask=dbm[:, None] & sm[None, :])
    if HAS_LN:
        tl.store(dlnw_part_ptr + g64 * D + dblk, dlnw_acc, mask=dbm)
        tl.store(dlnb_part_ptr + g64 * D + dblk, dlnb_acc, mask=dbm)

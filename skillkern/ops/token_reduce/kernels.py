"""Triton kernels of token reduction / token pooling (launchers in triton_impl.py).

Notation per position n of an item: mean, rstd, xhat = (x - mean) * rstd, u = xhat * gamma + beta
(LayerNorm; u = x without one), scores z = u @ w_score, A = softmax of z over positions, the
pooled values v = u (POOL_LN) or x, out[s] = sum_n A[n, s] v[n].

The LayerNorm is folded so that x enters every MMA as stored, never as a normalized copy:
    z = rstd * (x @ W' - mean * c) + e,      W' = diag(gamma) w_score, c = colsum W', e = beta @ w_score
    sum_n A u = gamma * (sum_n (A * rstd) x - sum_n (A * rstd) mean) + beta
and in the backward, with G = gamma * d_out (rows of d_out scaled per feature):
    dA = <v, d_out> = rstd * (x @ G^T - mean * g) + h,          g = rowsum G, h = d_out @ beta
    the LayerNorm's row sums over D, s1 = sum_d gamma du and s2 = sum_d gamma du xhat, follow
    from (S,)-vectors and the raw products already in registers (no pass over D of their own).
16-bit x: every MMA runs on bf16 / fp16 tensor cores. The score operands W' and G are split
hi + lo (_mma): the scores go through exp, and their raw products cancel against mean * c (rows
of large mean), so they keep ~16 mantissa bits. The softmax weights and the gradients dz, dz'
enter their per-position MMAs (pooling, dv, du) rounded to x's type, as flash attention's
probabilities do (rounded once, and kept in that type while they wait for their MMAs); every
sum that must cancel against such a product (q, s1, s2) is taken from the same rounded values,
so the rounding stays at the output's own ~2^-9 and is not amplified. dW's GEMM sums dz' over
all positions, where dz' sums to 0 per output token and a feature's mean over the positions
cancels: there dz' stays split (rounded, the mean's share came back as 2 % errors).

Forward (_token_reduce_fwd_kernel): one program per item (or per part of its features when
the pooled accumulators would not fit the registers), x read from HBM once.
Backward: _token_reduce_bwd_kernel (one program per item: dx, d_scores, the LayerNorm weight
and bias partials, and dz * rstd for dW) reads x once; _token_reduce_dw_kernel (dW = x^T dz' as
a split-K GEMM over all positions, fixed-order partials) reads it a second time. No atomics:
every partial sum is added on the host side of the op in a fixed order (deterministic).
"""
import triton
import triton.language as tl


@triton.jit
def _mma(a, b, acc, dt: tl.constexpr, PRECISION: tl.constexpr, A_EXACT: tl.constexpr, B_EXACT: tl.constexpr):
    """acc + a @ b on tensor cores of x's dtype dt (bf16 / fp16: no TF32 upcast; fp32 x: tl.dot
    at PRECISION), for tiles in fp32 or already in dt. An fp32 operand that must keep more than
    dt's precision (the score matrix W' and G = gamma * d_out; A_EXACT / B_EXACT False) is split
    as hi + lo, both in dt, and the cross products added: ~16 mantissa bits instead of 8, for
    one more MMA. An exact one is taken as dt holds it (rounded, if it was not already)."""
    if dt == tl.float32:
        return tl.dot(a, b, acc, input_precision=PRECISION)
    a_hi = a.to(dt)
    b_hi = b.to(dt)
    acc = tl.dot(a_hi, b_hi, acc)
    if not A_EXACT:
        acc = tl.dot((a - a_hi.to(tl.float32)).to(dt), b_hi, acc)
    if not B_EXACT:
        acc = tl.dot(a_hi, (b - b_hi.to(tl.float32)).to(dt), acc)
    return acc


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
def _x_desc(x_ptr, B, N, D, s_xb, s_xn, USE_TMA: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """A TMA descriptor of x (B, N, D) in (1, BLOCK_N, BLOCK_D) tiles for _x_tile, or (USE_TMA
    off) x_ptr itself as a placeholder that is never loaded through."""
    if USE_TMA:
        return tl.make_tensor_descriptor(x_ptr, shape=[B, N, D], strides=[s_xb, s_xn, 1],
                                         block_shape=[1, BLOCK_N, BLOCK_D])
    else:
        return x_ptr


@triton.jit
def _x_tile(desc, x_rows, b, n0, valid, d0, D, USE_TMA: tl.constexpr, HAS_MASK: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """x[b, n0:n0+BLOCK_N, d0:d0+BLOCK_D] as stored, 0 at masked positions and past N, D
    (NaN or inf there never leaves this function: a select, not a multiply). By TMA (desc over
    (B, N, D): the copy engine zero-fills past N and D, and no pointer tile is held in
    registers) where the launcher allows it, else by a masked load."""
    if USE_TMA:
        t = tl.reshape(desc.load([b.to(tl.int32), n0, d0]), (BLOCK_N, BLOCK_D))
        if HAS_MASK:
            t = tl.where(valid[:, None], t, 0.0)
    else:
        dd = d0 + tl.arange(0, BLOCK_D)
        t = tl.load(x_rows[:, None] + dd[None, :], mask=valid[:, None] & (dd < D)[None, :], other=0.0)
    return t


@triton.jit
def _pool_block(acc, alpha, p, desc, x_rows, b, n0, valid, d0, D, PRECISION: tl.constexpr,
                USE_TMA: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """acc (BLOCK_D, S_PAD) <- acc * alpha + x[:, d0 block]^T @ p: the pooling of raw x rows
    (LayerNorm folded into p and the epilogue), the feature block on the MMA's M side, x as
    stored (bf16 / fp16 tensor cores for 16-bit x; p already in x's type)."""
    x = _x_tile(desc, x_rows, b, n0, valid, d0, D, USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
    return _mma(tl.trans(x), p, acc * alpha[None, :], x_rows.dtype.element_ty, PRECISION, True, True)


@triton.jit
def _store_block(acc, inv, has, q, lnw_ptr, lnb_ptr, out_ptr, lo_ptr, b, s_ob, s_os, d0, D, S,
                 POOL_LN: tl.constexpr, POOL_LN_BIAS: tl.constexpr, STORE_LO: tl.constexpr,
                 BLOCK_D: tl.constexpr, S_PAD: tl.constexpr):
    """out[b, s, d0 block] = acc[:, s] / sum[s], or with POOL_LN the pooled LayerNorm-ed rows,
    gamma * (acc - q[s]) / sum[s] + beta; zeros for an output token without a real position.
    STORE_LO: also what rounding to out's dtype dropped (lo, same layout), for the backward's
    delta = <d_out, out>: with pooled raw x of large mean, out's 16-bit rounding alone would
    put errors of ~|mean| * 2^-9 into every gradient."""
    dd = d0 + tl.arange(0, BLOCK_D)
    dm = dd < D
    ss = tl.arange(0, S_PAD)
    if POOL_LN:
        gamma = tl.load(lnw_ptr + dd, mask=dm, other=0.0).to(tl.float32)
        o = gamma[:, None] * ((acc - q[None, :]) * inv[None, :])
        if POOL_LN_BIAS:
            o += tl.load(lnb_ptr + dd, mask=dm, other=0.0).to(tl.float32)[:, None]
    else:
        o = acc * inv[None, :]
    o = tl.where(has[None, :], o, 0.0)
    offs = b * s_ob + ss[None, :].to(tl.int64) * s_os + dd[:, None]
    hi = o.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, hi, mask=dm[:, None] & (ss < S)[None, :])
    if STORE_LO:
        tl.store(lo_ptr + offs, (o - hi.to(tl.float32)).to(lo_ptr.dtype.element_ty), mask=dm[:, None] & (ss < S)[None, :])


@triton.jit
def _row_pass(desc, x_rows, b, n0, valid, D, S, w_ptr, s_wd, do_rows, lnw_ptr, lnb_ptr,
              HAS_LN: tl.constexpr, NEED_DA: tl.constexpr, POOL_LN: tl.constexpr, POOL_LN_BIAS: tl.constexpr,
              HAS_MASK: tl.constexpr, USE_TMA: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_N: tl.constexpr, S_PAD: tl.constexpr, LOAD_D: tl.constexpr):
    """One pass over the D features of BLOCK_N rows, LOAD_D at a time (loads pipelined):
    (z_raw = x @ W' (W' = w_ptr's matrix), mean, m2 (centred sum of squares: Chan's one-pass
    combination of per-block means, no cancellation for large means), and with NEED_DA
    da_raw = x @ G^T, g = rowsum G, h = d_out @ beta, G = gamma * d_out (POOL_LN) or d_out)."""
    dt: tl.constexpr = x_rows.dtype.element_ty
    ss = tl.arange(0, S_PAD)
    sm = ss < S
    dl = tl.arange(0, LOAD_D)
    z = tl.zeros([BLOCK_N, S_PAD], dtype=tl.float32)
    da = tl.zeros([BLOCK_N, S_PAD], dtype=tl.float32)
    g = tl.zeros([S_PAD], dtype=tl.float32)
    h = tl.zeros([S_PAD], dtype=tl.float32)
    mean = tl.zeros([BLOCK_N], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, LOAD_D):
        km = (k0 + dl) < D
        x = _x_tile(desc, x_rows, b, n0, valid, k0, D, USE_TMA, HAS_MASK, BLOCK_N, LOAD_D)
        if HAS_LN:
            xf = x.to(tl.float32)
            cnt = k0 * 1.0  # features combined so far, and in this block (fp32)
            nb = tl.minimum(D - k0, LOAD_D) * 1.0
            bmean = tl.sum(xf, axis=1) / nb
            xc = tl.where(valid[:, None] & km[None, :], xf - bmean[:, None], 0.0)
            delta = bmean - mean
            mean += delta * (nb / (cnt + nb))
            m2 += tl.sum(xc * xc, axis=1) + delta * delta * (cnt * nb / (cnt + nb))
        w = tl.load(w_ptr + (k0 + dl).to(tl.int64)[:, None] * s_wd + ss[None, :],
                    mask=km[:, None] & sm[None, :], other=0.0)
        z = _mma(x, w.to(tl.float32), z, dt, PRECISION, True, w_ptr.dtype.element_ty == dt)
        if NEED_DA:
            do = tl.load(do_rows[:, None] + (k0 + dl)[None, :], mask=sm[:, None] & km[None, :],
                         other=0.0).to(tl.float32)  # (S_PAD, LOAD_D)
            if POOL_LN:
                if POOL_LN_BIAS:
                    h += tl.sum(do * tl.load(lnb_ptr + k0 + dl, mask=km, other=0.0).to(tl.float32)[None, :], axis=1)
                do = do * tl.load(lnw_ptr + k0 + dl, mask=km, other=0.0).to(tl.float32)[None, :]
                g += tl.sum(do, axis=1)
            da = _mma(x, tl.trans(do), da, dt, PRECISION, True, not POOL_LN)
    return z, da, mean, m2, g, h


@triton.jit
def _token_reduce_fwd_kernel(
    x_ptr, w_ptr, sc_ptr, lnw_ptr, lnb_ptr, mask_ptr, out_ptr, lse_ptr, fold_ptr, lo_ptr,
    B, N, D, S, eps,
    s_xb, s_xn, s_wd, s_sb, s_sn, s_mb, s_ob, s_os, s_lb,
    HAS_LN: tl.constexpr, HAS_LN_BIAS: tl.constexpr, POOL_LN: tl.constexpr, POOL_LN_BIAS: tl.constexpr,
    SCORES_GIVEN: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    STORE_LO: tl.constexpr,
    BLOCK_N: tl.constexpr, S_PAD: tl.constexpr, BLOCK_D: tl.constexpr, ND: tl.constexpr, LOAD_D: tl.constexpr,
):
    """out[b] (S, D) and lse[b, :] of one item, or of one part of its features: a program pools
    ND blocks of BLOCK_D features (ND <= 8 fp32 accumulators of (BLOCK_D, S_PAD) in registers);
    where D <= ND * BLOCK_D (the launcher's choice whenever the accumulators fit) one program
    owns the whole item and reads its x from HBM once. Per BLOCK_N positions:
      pass 1 (_row_pass): the LayerNorm statistics and the raw scores x @ W' (w_ptr holds W'
        with HAS_LN, fold_ptr c and e), so z = rstd * (x @ W' - mean * c) + e;
      an online softmax over positions (running max / sum per output token, flash-style);
      pass 2 (the same rows again, from L1/L2): acc_j += x[:, block j]^T @ (p * rstd), with
        q += (p * rstd)^T mean, so that the pooled LayerNorm-ed rows are
        gamma * (acc - q) / sum + beta (POOL_LN), or acc / sum for pooled x.
    x enters every MMA as stored; W' is split hi + lo (_mma), p rounded. x comes by TMA where
    the launcher allows it (USE_TMA), so no tile of pointers takes registers. HAS_LN*: LayerNorm
    before the scores; POOL_LN*: the pooled values are LayerNorm-ed too.
    Grid: (cdiv(D, ND * BLOCK_D) * B,), parts fastest (1-d: grid axis 1 would cap B at 65535)."""
    n_parts = tl.cdiv(D, ND * BLOCK_D)
    b = (tl.program_id(0) // n_parts).to(tl.int64)
    part = tl.program_id(0) % n_parts
    d0 = part * ND * BLOCK_D
    ss = tl.arange(0, S_PAD)
    sm = ss < S
    pool_desc = _x_desc(x_ptr, B, N, D, s_xb, s_xn, USE_TMA, BLOCK_N, BLOCK_D)
    load_desc = _x_desc(x_ptr, B, N, D, s_xb, s_xn, USE_TMA, BLOCK_N, LOAD_D)
    if HAS_LN:
        col_w = tl.load(fold_ptr + ss, mask=sm, other=0.0)  # c = colsum W'
        shift = tl.load(fold_ptr + S + ss, mask=sm, other=0.0)  # e = beta @ w_score
    run_max = tl.full([S_PAD], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([S_PAD], dtype=tl.float32)
    q = tl.zeros([S_PAD], dtype=tl.float32)
    acc0 = tl.zeros([BLOCK_D, S_PAD], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_D, S_PAD], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_D, S_PAD], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_D, S_PAD], dtype=tl.float32)
    acc4 = tl.zeros([BLOCK_D, S_PAD], dtype=tl.float32)
    acc5 = tl.zeros([BLOCK_D, S_PAD], dtype=tl.float32)
    acc6 = tl.zeros([BLOCK_D, S_PAD], dtype=tl.float32)
    acc7 = tl.zeros([BLOCK_D, S_PAD], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        x_off, sc_off, _, valid = _rows(mask_ptr, b, n0, N, s_xb, s_xn, s_sb, s_sn, s_mb, HAS_MASK, BLOCK_N)
        x_rows = x_ptr + x_off
        # every load of x is masked by `valid`: padding (NaN or inf included) reads as 0
        if SCORES_GIVEN:
            z = tl.load(sc_ptr + sc_off[:, None] + ss[None, :], mask=valid[:, None] & sm[None, :],
                        other=0.0).to(tl.float32)
        else:
            z, _, mean, m2, _, _ = _row_pass(load_desc, x_rows, b, n0, valid, D, S, w_ptr, s_wd, x_rows, lnw_ptr,
                                             lnb_ptr, HAS_LN, False, POOL_LN, POOL_LN_BIAS, HAS_MASK, USE_TMA,
                                             PRECISION, BLOCK_N, S_PAD, LOAD_D)
            if HAS_LN:
                rstd = 1.0 / tl.sqrt(m2 / D + eps)
                z = rstd[:, None] * (z - mean[:, None] * col_w[None, :]) + shift[None, :]
        z = tl.where(valid[:, None], z, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=0))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # no -inf - -inf
        p = tl.exp(z - safe_max[None, :])  # (BLOCK_N, S_PAD); 0 at masked positions
        alpha = tl.exp(run_max - safe_max)
        run_sum = run_sum * alpha + tl.sum(p, axis=0)
        run_max = new_max
        if POOL_LN:  # pooled u = (x - mean) * rstd * gamma + beta, folded: weights p * rstd on raw x
            p = p * rstd[:, None]
        # the weights as the pooling MMA takes them; q from the same values, so that acc - q is
        # exactly sum p (x - mean) and a large mean cancels
        p = p.to(x_ptr.dtype.element_ty)
        if POOL_LN:
            q = q * alpha + tl.sum(p.to(tl.float32) * mean[:, None], axis=0)
        # the program's feature blocks, one accumulator each (constexpr-unrolled: Triton keeps
        # no indexable list of register tiles)
        acc0 = _pool_block(acc0, alpha, p, pool_desc, x_rows, b, n0, valid, d0, D, PRECISION,
                               USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
        if ND > 1:
            acc1 = _pool_block(acc1, alpha, p, pool_desc, x_rows, b, n0, valid, d0 + BLOCK_D, D, PRECISION,
                               USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
        if ND > 2:
            acc2 = _pool_block(acc2, alpha, p, pool_desc, x_rows, b, n0, valid, d0 + 2 * BLOCK_D, D, PRECISION,
                               USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
        if ND > 3:
            acc3 = _pool_block(acc3, alpha, p, pool_desc, x_rows, b, n0, valid, d0 + 3 * BLOCK_D, D, PRECISION,
                               USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
        if ND > 4:
            acc4 = _pool_block(acc4, alpha, p, pool_desc, x_rows, b, n0, valid, d0 + 4 * BLOCK_D, D, PRECISION,
                               USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
        if ND > 5:
            acc5 = _pool_block(acc5, alpha, p, pool_desc, x_rows, b, n0, valid, d0 + 5 * BLOCK_D, D, PRECISION,
                               USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
        if ND > 6:
            acc6 = _pool_block(acc6, alpha, p, pool_desc, x_rows, b, n0, valid, d0 + 6 * BLOCK_D, D, PRECISION,
                               USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
        if ND > 7:
            acc7 = _pool_block(acc7, alpha, p, pool_desc, x_rows, b, n0, valid, d0 + 7 * BLOCK_D, D, PRECISION,
                               USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
    has = run_sum > 0  # an output token of an item with no real position: zeros, lse = +inf
    inv = 1.0 / tl.where(has, run_sum, 1.0)
    _store_block(acc0, inv, has, q, lnw_ptr, lnb_ptr, out_ptr, lo_ptr, b, s_ob, s_os, d0, D,
                 S, POOL_LN, POOL_LN_BIAS, STORE_LO, BLOCK_D, S_PAD)
    if ND > 1:
        _store_block(acc1, inv, has, q, lnw_ptr, lnb_ptr, out_ptr, lo_ptr, b, s_ob, s_os, d0 + BLOCK_D, D,
                     S, POOL_LN, POOL_LN_BIAS, STORE_LO, BLOCK_D, S_PAD)
    if ND > 2:
        _store_block(acc2, inv, has, q, lnw_ptr, lnb_ptr, out_ptr, lo_ptr, b, s_ob, s_os, d0 + 2 * BLOCK_D, D,
                     S, POOL_LN, POOL_LN_BIAS, STORE_LO, BLOCK_D, S_PAD)
    if ND > 3:
        _store_block(acc3, inv, has, q, lnw_ptr, lnb_ptr, out_ptr, lo_ptr, b, s_ob, s_os, d0 + 3 * BLOCK_D, D,
                     S, POOL_LN, POOL_LN_BIAS, STORE_LO, BLOCK_D, S_PAD)
    if ND > 4:
        _store_block(acc4, inv, has, q, lnw_ptr, lnb_ptr, out_ptr, lo_ptr, b, s_ob, s_os, d0 + 4 * BLOCK_D, D,
                     S, POOL_LN, POOL_LN_BIAS, STORE_LO, BLOCK_D, S_PAD)
    if ND > 5:
        _store_block(acc5, inv, has, q, lnw_ptr, lnb_ptr, out_ptr, lo_ptr, b, s_ob, s_os, d0 + 5 * BLOCK_D, D,
                     S, POOL_LN, POOL_LN_BIAS, STORE_LO, BLOCK_D, S_PAD)
    if ND > 6:
        _store_block(acc6, inv, has, q, lnw_ptr, lnb_ptr, out_ptr, lo_ptr, b, s_ob, s_os, d0 + 6 * BLOCK_D, D,
                     S, POOL_LN, POOL_LN_BIAS, STORE_LO, BLOCK_D, S_PAD)
    if ND > 7:
        _store_block(acc7, inv, has, q, lnw_ptr, lnb_ptr, out_ptr, lo_ptr, b, s_ob, s_os, d0 + 7 * BLOCK_D, D,
                     S, POOL_LN, POOL_LN_BIAS, STORE_LO, BLOCK_D, S_PAD)
    if part == 0:
        lse = tl.where(has, tl.where(run_max == float("-inf"), 0.0, run_max) + tl.log(tl.where(has, run_sum, 1.0)),
                       float("inf"))
        tl.store(lse_ptr + b * s_lb + ss, lse, mask=sm)


@triton.jit
def _token_reduce_bwd_kernel(
    x_ptr, w_ptr, wf_ptr, sc_ptr, lnw_ptr, lnb_ptr, mask_ptr, dout_ptr, delta_ptr, lse_ptr, fold_ptr,
    dx_ptr, dsc_ptr, dz_ptr, vec_part_ptr, ln_part_ptr,
    B, N, D, S, eps,
    s_xb, s_xn, s_wd, s_wfd, s_sb, s_sn, s_mb, s_ob, s_os, s_lb,
    HAS_LN: tl.constexpr, HAS_LN_BIAS: tl.constexpr, POOL_LN: tl.constexpr, POOL_LN_BIAS: tl.constexpr,
    SCORES_GIVEN: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_N: tl.constexpr, S_PAD: tl.constexpr, BLOCK_D: tl.constexpr, LOAD_D: tl.constexpr,
):
    """The backward of one item b (grid (B,)), per BLOCK_N positions:
      pass 1 (_row_pass, the forward's pass plus dA): z, A = exp(z - lse), dA, dz = A (dA - delta)
        (delta[s] = <d_out[s], out[s]>, from the saved output), the LayerNorm row sums s1, s2;
      pass 2, BLOCK_D features at a time (the same rows again, from L1/L2):
        dv = A @ d_out,  du = dz @ w_score^T (+ dv with POOL_LN),
        dx = rstd * (gamma du - s1 / D - xhat s2 / D) (+ dv when x itself is pooled), or du + dv
        without LayerNorm, or dv for given scores;
        the item's sums of d gamma = sum_n du xhat and d beta = sum_n du (ln_part, (B, 2, D)).
    Also stored: d_scores = dz (SCORES_GIVEN); else dz' = dz * rstd (dz without LayerNorm) for
    _token_reduce_dw_kernel ((B * N, S) fp32), and with LayerNorm the item's sums of dz' mean
    and of dz (vec_part, (B, 2, S_PAD)), which turn x^T dz' into dw_score on the host side.
    wf_ptr: W' (the folded score matrix) for pass 1; w_ptr: w_score itself (in x's type) for
    du. dx and d_out share x's / out's strides; every position < N gets its dx (exact zeros
    where masked)."""
    b = tl.program_id(0).to(tl.int64)
    n_tiles = tl.cdiv(N, BLOCK_N)
    ss = tl.arange(0, S_PAD)
    sm = ss < S
    dt: tl.constexpr = x_ptr.dtype.element_ty
    pass_desc = _x_desc(x_ptr, B, N, D, s_xb, s_xn, USE_TMA, BLOCK_N, LOAD_D)
    tile_desc = _x_desc(x_ptr, B, N, D, s_xb, s_xn, USE_TMA, BLOCK_N, BLOCK_D)
    lse = tl.load(lse_ptr + b * s_lb + ss, mask=sm, other=float("inf"))
    delta = tl.load(delta_ptr + b * s_lb + ss, mask=sm, other=0.0)
    do_rows = dout_ptr + b * s_ob + ss.to(tl.int64) * s_os  # (S_PAD,) row starts of d_out[b]
    if HAS_LN:
        col_w = tl.load(fold_ptr + ss, mask=sm, other=0.0)
        shift = tl.load(fold_ptr + S + ss, mask=sm, other=0.0)
    for t in range(0, n_tiles):
        n0 = t * BLOCK_N
        x_off, sc_off, rmask, valid = _rows(mask_ptr, b, n0, N, s_xb, s_xn, s_sb, s_sn, s_mb, HAS_MASK, BLOCK_N)
        x_rows = x_ptr + x_off
        if SCORES_GIVEN:
            z = tl.load(sc_ptr + sc_off[:, None] + ss[None, :], mask=valid[:, None] & sm[None, :],
                        other=0.0).to(tl.float32)
            da = tl.zeros([BLOCK_N, S_PAD], dtype=tl.float32)
            for k0 in range(0, D, BLOCK_D):  # dA = x @ d_out^T
                x = _x_tile(tile_desc, x_rows, b, n0, valid, k0, D, USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
                do = tl.load(do_rows[:, None] + (k0 + tl.arange(0, BLOCK_D))[None, :],
                             mask=sm[:, None] & ((k0 + tl.arange(0, BLOCK_D)) < D)[None, :], other=0.0)
                da = _mma(x, tl.trans(do.to(tl.float32)), da, dt, PRECISION, True, True)
        else:
            z, da, mean, m2, g, h = _row_pass(pass_desc, x_rows, b, n0, valid, D, S, wf_ptr, s_wfd, do_rows,
                                              lnw_ptr, lnb_ptr, HAS_LN, True, POOL_LN, POOL_LN_BIAS, HAS_MASK,
                                              USE_TMA, PRECISION, BLOCK_N, S_PAD, LOAD_D)
            z_raw = z
            da_raw = da
            if HAS_LN:
                rstd = 1.0 / tl.sqrt(m2 / D + eps)
                z = rstd[:, None] * (z - mean[:, None] * col_w[None, :]) + shift[None, :]
                if POOL_LN:
                    da = rstd[:, None] * (da - mean[:, None] * g[None, :]) + h[None, :]
        z = tl.where(valid[:, None], z, float("-inf"))
        a = tl.exp(z - lse[None, :])  # softmax weights; 0 where masked or for an empty item
        dz = a * (da - delta[None, :])  # softmax backward over positions
        smask = rmask[:, None] & sm[None, :]
        # the operands of pass 2's MMAs, rounded once; the LayerNorm sums below use them too
        a_lp = a.to(dt)
        dz_lp = dz.to(dt)
        if SCORES_GIVEN:
            tl.store(dsc_ptr + sc_off[:, None] + ss[None, :], dz.to(dsc_ptr.dtype.element_ty), mask=smask)
        else:
            dzp = dz
            if HAS_LN:
                # s1 and t2 from the same weights, so that t2 - mean * s1 cancels the mean exactly
                s1 = tl.sum(dz_lp.to(tl.float32) * col_w[None, :], axis=1)
                t2 = tl.sum(dz_lp.to(tl.float32) * z_raw, axis=1)
                if POOL_LN:
                    s1 += tl.sum(a_lp.to(tl.float32) * g[None, :], axis=1)
                    t2 += tl.sum(a_lp.to(tl.float32) * da_raw, axis=1)
                s2 = rstd * (t2 - mean * s1)
                dzp = dz * rstd[:, None]
                # this item's sums over its tiles, in tile order (its own row: no other program
                # touches it)
                vp = vec_part_ptr + b * 2 * S_PAD + ss
                m_sum = tl.sum(dzp * mean[:, None], axis=0)
                t_sum = tl.sum(dz, axis=0)
                if t > 0:
                    m_sum += tl.load(vp)
                    t_sum += tl.load(vp + S_PAD)
                tl.store(vp, m_sum)
                tl.store(vp + S_PAD, t_sum)
            rows = b * N + n0 + tl.arange(0, BLOCK_N)
            tl.store(dz_ptr + rows[:, None] * S + ss[None, :], dzp, mask=smask)
        # pass 2: this tile's dx, BLOCK_D features at a time
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            dm = dd < D
            do = tl.load(do_rows[:, None] + dd[None, :], mask=sm[:, None] & dm[None, :], other=0.0)
            dv = _mma(a_lp, do.to(tl.float32), tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32), dt, PRECISION,
                      True, True)
            if SCORES_GIVEN:
                dx = dv
            else:
                w = tl.load(w_ptr + dd.to(tl.int64)[:, None] * s_wd + ss[None, :], mask=dm[:, None] & sm[None, :],
                            other=0.0)
                du = _mma(dz_lp, tl.trans(w.to(tl.float32)), tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32), dt,
                          PRECISION, True, w_ptr.dtype.element_ty == dt)
                if HAS_LN:
                    x = _x_tile(tile_desc, x_rows, b, n0, valid, d0, D, USE_TMA, HAS_MASK, BLOCK_N, BLOCK_D)
                    xhat = tl.where(valid[:, None] & dm[None, :],
                                    (x.to(tl.float32) - mean[:, None]) * rstd[:, None], 0.0)
                    if POOL_LN:
                        du += dv
                    gamma = tl.load(lnw_ptr + dd, mask=dm, other=0.0).to(tl.float32)
                    dx = rstd[:, None] * (du * gamma[None, :] - (s1 / D)[:, None] - xhat * (s2 / D)[:, None])
                    if not POOL_LN:
                        dx += dv
                    lp = ln_part_ptr + b * 2 * D + dd  # this item's sums over its tiles, in order
                    dg = tl.sum(du * xhat, axis=0)
                    db = tl.sum(du, axis=0)
                    if t > 0:
                        dg += tl.load(lp, mask=dm, other=0.0)
                        db += tl.load(lp + D, mask=dm, other=0.0)
                    tl.store(lp, dg, mask=dm)
                    tl.store(lp + D, db, mask=dm)
                else:
                    dx = du + dv
            tl.store(dx_ptr + x_off[:, None] + dd[None, :], dx.to(dx_ptr.dtype.element_ty),
                     mask=rmask[:, None] & dm[None, :])


@triton.jit
def _token_reduce_dw_kernel(x_ptr, dz_ptr, mask_ptr, part_ptr, M, D, S, rows_per_prog, s_x,
                            HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
                            BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, S_PAD: tl.constexpr):
    """part[k, d block] = x[rows of chunk k, d block]^T @ dz'[rows] over the M = B * N positions
    (x as (M, D), masked positions read as 0: padding may hold NaN), feature block on the MMA's
    M side: dw_score's GEMM as split-K, chunk k of rows_per_prog positions per program,
    summed over k in a fixed order by the launcher."""
    pid_d = tl.program_id(0)
    pid_k = tl.program_id(1)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = dd < D
    ss = tl.arange(0, S_PAD)
    kk = tl.arange(0, BLOCK_K)
    k_lo = pid_k * rows_per_prog
    k_hi = tl.minimum(k_lo + rows_per_prog, M)
    dt: tl.constexpr = x_ptr.dtype.element_ty
    if USE_TMA:
        desc = tl.make_tensor_descriptor(x_ptr, shape=[M, D], strides=[s_x, 1], block_shape=[BLOCK_K, BLOCK_D])
    acc = tl.zeros([BLOCK_D, S_PAD], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        rows = k0 + kk
        valid = rows < k_hi
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + rows, mask=valid, other=0) != 0)
        if USE_TMA:
            x = tl.where(valid[:, None], desc.load([k0, pid_d * BLOCK_D]), 0.0)
        else:
            x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * s_x + dd[None, :], mask=valid[:, None] & dm[None, :],
                        other=0.0)
        g = tl.load(dz_ptr + rows.to(tl.int64)[:, None] * S + ss[None, :], mask=valid[:, None] & (ss < S)[None, :],
                    other=0.0)
        acc = _mma(tl.trans(x), g, acc, dt, PRECISION, True, False)
    out = part_ptr + pid_k.to(tl.int64) * D * S_PAD + dd[:, None] * S_PAD + ss[None, :]
    tl.store(out, acc, mask=dm[:, None])

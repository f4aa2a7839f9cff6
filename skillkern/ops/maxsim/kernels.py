"""Triton kernels of MaxSim (launchers and the block tables they read in triton_impl.py).

Docs are one token table tok (T, D): packed rows, or the rows of padded docs with a per-token
valid flag. A launcher cuts every doc into blocks of BLOCK_N consecutive rows and lists them:
    blk_start (first row), blk_len (rows of the doc in the block, 1..BLOCK_N),
    blk_col (the doc's output column on its last block, -1 on the others)
and col_blk[g, c] = the first block of column c of row group g (the blocks of a column are
consecutive; a column without a block, an empty doc or an empty slot, keeps the 0 it was
allocated with). All queries share one row group, except with candidates: then every query is
its own group, with its own column list (its slots).

Forward (_maxsim_fwd_kernel): a program holds QB whole queries (QB * Nq <= BLOCK_M rows, the
GEMM's M) and walks the blocks of DOCS consecutive columns: S = Q @ tok[block]^T (one tl.dot,
K = D), a running row max over the doc's real columns, and on a doc's last block the epilogue:
max -> weighted sum over each query's real tokens -> one score per query. Only the loop over
blocks is a loop: one program sees docs of any length the same way.

Backward (arg-max state, no recompute): with STORE_ARG the forward also keeps, per query token
row and output column, the token row of the first maximum (int32, -1 where no real token).
  dq  (_maxsim_dq_kernel): row block x D block, loops over the columns: the gathered arg-max
      rows times their coefficient g[i, c] * w[row]. A fixed order: deterministic.
  dd  (_maxsim_dd_kernel): one program per doc block (of the distinct docs named), loops over
      the (query, column) pairs that read the doc, QB queries at a time: P @ Q with the one-hot
      P[token, row] = coefficient * [arg[row, column] == token] (tl.dot). No atomics.
Padding never reaches an output: features of padding query rows and padding doc tokens are
loaded as 0 by masked loads (never multiplied by a mask), similarity columns of padding are
set to -inf by a select. The one exception, doc tiles fetched whole by TMA (USE_TMA: rows past
a doc's end, padding included, may hold anything), is safe for the same reason: each of those
rows only makes its own column of S, and that column is selected away. Offsets that multiply
strides are int64.
"""
import triton
import triton.language as tl


@triton.jit
def _query_rows(q_ptr, w_ptr, q0, Bq, Nq, D, s_qb, s_qn, QB, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows r of QB queries from q0: (query index, the query's row weight (0 for padding), the
    features (BLOCK_M, BLOCK_D), padding rows as 0, the query slot r // Nq)."""
    r = tl.arange(0, BLOCK_M)
    slot = r // Nq
    qi = q0 + slot
    k = r % Nq
    ok = (slot < QB) & (qi < Bq)
    w = tl.load(w_ptr + qi.to(tl.int64) * Nq + k, mask=ok, other=0.0)
    ok = ok & (w != 0.0)
    dd = tl.arange(0, BLOCK_D)
    x = tl.load(q_ptr + (qi.to(tl.int64) * s_qb + k * s_qn)[:, None] + dd[None, :],
                mask=ok[:, None] & (dd < D)[None, :], other=0.0)
    return qi, k, w, x, slot


@triton.jit
def _maxsim_fwd_kernel(
    q_ptr, w_ptr, tok_ptr, valid_ptr, blk_start_ptr, blk_len_ptr, blk_col_ptr, col_blk_ptr, out_ptr, arg_ptr,
    Bq, Nq, D, col0, n_cols, QB, n_tok,
    s_qb, s_qn, s_t, s_cb, s_out,
    PER_QUERY: tl.constexpr, HAS_VALID: tl.constexpr, STORE_ARG: tl.constexpr, USE_TMA: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    QB_PAD: tl.constexpr, DOCS: tl.constexpr,
):
    """Program (query block, column block): scores out[i, c - col0] (fp32) of QB queries against
    columns c in [col0 + DOCS * pid1, ...) of n_cols; with STORE_ARG, arg[row, c - col0] too.
    w (Bq * Nq,) fp32: 1 (sum) or 1 / real tokens (mean) for a real query token, 0 for padding."""
    pid_m = tl.program_id(0)
    q0 = pid_m * QB
    qi, k, w, x, slot = _query_rows(q_ptr, w_ptr, q0, Bq, Nq, D, s_qb, s_qn, QB, BLOCK_M, BLOCK_D)
    grp = pid_m if PER_QUERY else 0
    c_lo = col0 + tl.program_id(1) * DOCS
    c_hi = tl.minimum(c_lo + DOCS, col0 + n_cols)
    e0 = tl.load(col_blk_ptr + grp * s_cb + c_lo)
    e1 = tl.load(col_blk_ptr + grp * s_cb + c_hi)
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < D
    j = tl.arange(0, BLOCK_N)
    # the epilogue's per-query sum: rows -> their query slot
    owner = slot[:, None] == tl.arange(0, QB_PAD)[None, :]
    q_out = q0 + tl.arange(0, QB_PAD)
    q_out_ok = (tl.arange(0, QB_PAD) < QB) & (q_out < Bq)
    row = qi.to(tl.int64) * Nq + k
    row_ok = (slot < QB) & (qi < Bq)
    run_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    run_arg = tl.full([BLOCK_M], -1, dtype=tl.int32)
    tok_desc = tok_ptr
    if USE_TMA:  # whole BLOCK_N-row tiles: rows past the doc (another doc's, padding) are selected away
        tok_desc = tl.make_tensor_descriptor(tok_ptr, shape=[n_tok, D], strides=[s_t, 1],
                                             block_shape=[BLOCK_N, BLOCK_D])
    for e in range(e0, e1):
        st = tl.load(blk_start_ptr + e)
        n = tl.load(blk_len_ptr + e)
        col = tl.load(blk_col_ptr + e)
        t = st + j
        ok = j < n
        if HAS_VALID:
            ok = ok & (tl.load(valid_ptr + t, mask=ok, other=0) != 0)
        if USE_TMA:
            y = tok_desc.load([st.to(tl.int32), 0])
        else:
            y = tl.load(tok_ptr + t[:, None] * s_t + dd[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(x, tl.trans(y), input_precision=PRECISION)
        s = tl.where(ok[None, :], s, float("-inf"))
        m = tl.max(s, axis=1)
        if STORE_ARG:  # the first maximum of the block; a later block must beat it strictly
            a = tl.min(tl.where(s == m[:, None], t.to(tl.int32)[None, :], 2147483647), axis=1)
            run_arg = tl.where(m > run_max, a, run_arg)
        run_max = tl.maximum(run_max, m)
        if col >= 0:  # the doc's last block: its scores
            best = tl.where((w != 0.0) & (run_max > float("-inf")), run_max, 0.0) * w
            score = tl.sum(tl.where(owner, best[:, None], 0.0), axis=0)
            tl.store(out_ptr + q_out.to(tl.int64) * s_out + (col - col0), score, mask=q_out_ok)
            if STORE_ARG:
                tl.store(arg_ptr + row * n_cols + (col - col0), run_arg, mask=row_ok)
            run_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            run_arg = tl.full([BLOCK_M], -1, dtype=tl.int32)


@triton.jit
def _maxsim_dq_kernel(g_ptr, w_ptr, arg_ptr, tok_ptr, dq_ptr, R, Nq, D, n_cols, s_g, s_t, s_dq,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """dq rows (query i, token k) = sum over columns c of g[i, c] * w[row] * tok[arg[row, c]],
    BLOCK_R rows of the (Bq * Nq) query token rows x one D block per program; rows of padding
    query tokens are written as 0."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < R
    qi = r // Nq
    w = tl.load(w_ptr + r, mask=r_ok, other=0.0)
    dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dd < D
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for c in range(0, n_cols):
        a = tl.load(arg_ptr + r.to(tl.int64) * n_cols + c, mask=r_ok, other=-1)
        hit = (a >= 0) & (w != 0.0)
        cf = tl.load(g_ptr + qi.to(tl.int64) * s_g + c, mask=hit, other=0.0) * w
        y = tl.load(tok_ptr + a.to(tl.int64)[:, None] * s_t + dd[None, :], mask=hit[:, None] & d_ok[None, :],
                    other=0.0)
        acc += tl.where(hit, cf, 0.0)[:, None] * y.to(tl.float32)
    tl.store(dq_ptr + r.to(tl.int64)[:, None] * s_dq + dd[None, :], acc.to(dq_ptr.dtype.element_ty),
             mask=r_ok[:, None] & d_ok[None, :])


@triton.jit
def _maxsim_dd_kernel(
    g_ptr, w_ptr, arg_ptr, q_ptr, dd_ptr, blk_start_ptr, blk_len_ptr, blk_col_ptr, blk_plo_ptr, blk_phi_ptr,
    pair_q_ptr, pair_c_ptr,
    Bq, Nq, D, n_cols, QB,
    s_qb, s_qn, s_g, s_t,
    PAIRS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Doc block x D block per program: dd[token] = sum over the pairs (query i, column c) that
    read the doc, and the rows of query i whose arg-max is the token, of g[i, c] * w[row] *
    q[row]. Pairs p in [plo, phi): PAIRS ? (pair_q[p], pair_c[p]) : (query p, column blk_col)."""
    e = tl.program_id(0)
    st = tl.load(blk_start_ptr + e)
    n = tl.load(blk_len_ptr + e)
    plo = tl.load(blk_plo_ptr + e)
    phi = tl.load(blk_phi_ptr + e)
    doc_col = tl.load(blk_col_ptr + e)
    j = tl.arange(0, BLOCK_N)
    t = st + j
    dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dd < D
    r = tl.arange(0, BLOCK_R)
    slot = r // Nq
    k = r % Nq
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for p0 in range(plo, phi, QB):
        p = p0 + slot
        ok = (slot < QB) & (p < phi)
        if PAIRS:
            qi = tl.load(pair_q_ptr + p, mask=ok, other=0)
            c = tl.load(pair_c_ptr + p, mask=ok, other=0)
        else:
            qi = p
            c = doc_col + 0 * p
        row = qi.to(tl.int64) * Nq + k
        w = tl.load(w_ptr + row, mask=ok, other=0.0)
        ok = ok & (w != 0.0)
        a = tl.load(arg_ptr + row * n_cols + c, mask=ok, other=-1)
        cf = tl.load(g_ptr + qi.to(tl.int64) * s_g + c, mask=ok, other=0.0) * w
        x = tl.load(q_ptr + (qi.to(tl.int64) * s_qb + k * s_qn)[:, None] + dd[None, :],
                    mask=ok[:, None] & d_ok[None, :], other=0.0)
        P = tl.where(t[:, None] == a[None, :], tl.where(ok, cf, 0.0)[None, :], 0.0)
        acc = tl.dot(P.to(x.dtype), x, acc, input_precision=PRECISION)
    tl.store(dd_ptr + t[:, None] * s_t + dd[None, :], acc.to(dd_ptr.dtype.element_ty),
             mask=(j < n)[:, None] & d_ok[None, :])

"""Triton kernels of FILIP token-wise similarity (launchers in triton_impl.py).

Layout: the loop runs over image tokens k. A tile row is one image (BLOCK_I images, their token
k), a tile column one text token (BLOCK_T texts of NT_PAD tokens, whole texts):
    S_k = img[a0:a0+BLOCK_I, k, :] @ txt[b0:b0+BLOCK_T, :, :]^T        (BLOCK_I, BLOCK_T * NT_PAD)
so both maxima need no data exchange between warps:
  - i2t (max over each text's tokens) reduces along a tile row: in the thread and its quad;
  - t2i (max over each image's tokens) runs across loop iterations, element-wise in registers.
Images are never padded (the loop runs over exactly Ni tokens; a masked token is skipped by the
running maximum), and the text tile, loaded once, stays in shared memory for all Ni steps.

Arg-max state, laid out for the kernels:
  R[a, k, b] = which token of text b image token (a, k) matched      (Bi, Ni, Bt)
  C[a, b, l] = which token of image a text token (b, l) matched       (Bi, Bt, Nt)

Backward: for a pair (a, b) the gradient w.r.t. S is the sparse matrix
    P[k, l] = g_i2t[a,b] / n_a * [l == R[a,k,b]] + g_t2i[a,b] / n_b * [k == C[a,b,l]]
(real tokens only), so d_img[a] = sum_b P_ab @ txt[b] and d_txt[b] = sum_a P_ab^T @ img[a]:
two GEMMs over all pairs, computed transposed (D block x rows) so that P, built in registers
from the indices once per tile for the full D block, is the shared-memory operand of wgmma.
One program owns a block of output rows and loops over every partner: no atomics,
deterministic.
Features of padding tokens never reach an output (NaN or inf there included): masked loads
select 0, never a multiplication by the mask. The exception, image rows fetched whole by TMA,
is made only where it is safe: in the forward a padding token's row of S is selected away (a
select, not arithmetic), and d_txt uses TMA only when no image token is masked. Offsets that
multiply strides are int64.
"""
import triton
import triton.language as tl


@triton.jit
def _text_columns(tmask_ptr, b0, l0, Bt, Nt, s_tm, HAS_TMASK: tl.constexpr, BLOCK_T: tl.constexpr,
                  LEN: tl.constexpr):
    """Columns j of a tile of BLOCK_T texts x LEN tokens from l0: text b, token l, and whether
    (b, l) is a real token of a real text."""
    j = tl.arange(0, BLOCK_T * LEN)
    b = b0 + j // LEN
    l = l0 + j % LEN
    ok = (b < Bt) & (l < Nt)
    if HAS_TMASK:
        ok = ok & (tl.load(tmask_ptr + b.to(tl.int64) * s_tm + l, mask=ok, other=0) != 0)
    return b, l, ok


@triton.jit
def _image_tokens_ok(imask_ptr, a, k, Bi, s_im, HAS_IMASK: tl.constexpr):
    """Token k (< Ni) of images a is real."""
    ok = a < Bi
    if HAS_IMASK:
        ok = ok & (tl.load(imask_ptr + a.to(tl.int64) * s_im + k, mask=ok, other=0) != 0)
    return ok


@triton.jit
def _token_rows_desc(img_ptr, Bi, Ni, s_ib, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """A TMA descriptor of img as (Bi, Ni * D) rows (D = BLOCK_D = the token stride): the rows
    of token k of BLOCK_I images are the tile at [a0, k * BLOCK_D]."""
    return tl.make_tensor_descriptor(img_ptr, shape=[Bi, Ni * BLOCK_D], strides=[s_ib, 1],
                                     block_shape=[BLOCK_I, BLOCK_D])


@triton.jit
def _similarity_step(x_desc, x_rows, y_rows, yt, x_ok, col_ok, a0, k, D, s_in, USE_TMA: tl.constexpr,
                     RESIDENT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_I: tl.constexpr, N: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """S_k (BLOCK_I, N) fp32: token k of the images against the held text tile, yt (RESIDENT)
    or the text rows re-read in BLOCK_D slices. By TMA (USE_TMA, RESIDENT) the image rows come
    as stored, padding tokens included: their rows of S may hold anything, and the caller
    selects them away; otherwise they are loaded as 0."""
    dd = tl.arange(0, BLOCK_D)
    if RESIDENT:
        if USE_TMA:
            x = x_desc.load([a0, k * BLOCK_D])
        else:
            x = tl.load(x_rows[:, None] + k * s_in + dd[None, :], mask=x_ok[:, None] & (dd < D)[None, :],
                        other=0.0)
        s = tl.dot(x, yt, input_precision=PRECISION)
    else:
        s = tl.zeros([BLOCK_I, N], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dm = (d0 + dd) < D
            x = tl.load(x_rows[:, None] + k * s_in + (d0 + dd)[None, :], mask=x_ok[:, None] & dm[None, :],
                        other=0.0)
            y = tl.load(y_rows[:, None] + (d0 + dd)[None, :], mask=col_ok[:, None] & dm[None, :], other=0.0)
            s = tl.dot(x, tl.trans(y), s, input_precision=PRECISION)
    return s


@triton.jit
def _filip_fwd_kernel(
    img_ptr, txt_ptr, imask_ptr, tmask_ptr, nimg_ptr, ntxt_ptr, i2t_ptr, t2i_ptr, r_ptr, c_ptr,
    Bi, Bt, Ni, Nt, D,
    s_ib, s_in, s_tb, s_tn, s_im, s_tm,
    HAS_IMASK: tl.constexpr, HAS_TMASK: tl.constexpr, TEXT_PAD: tl.constexpr, RESIDENT: tl.constexpr,
    USE_TMA: tl.constexpr, PRECISION: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
    NT_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program (image block, text block). i2t, t2i (Bi, Bt) fp32; R (Bi, Ni, Bt), C (Bi, Bt, Nt).
    nimg / ntxt: real-token counts per item (fp32). RESIDENT: the text tile over all of D
    (BLOCK_D >= D) is loaded once; otherwise it is re-read in BLOCK_D slices at every step.
    TEXT_PAD: some columns are not real tokens (masks, Nt < NT_PAD or the last text block).
    USE_TMA: the image rows of each step come by TMA (RESIDENT only; BLOCK_D = D)."""
    a = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    tb = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    b, l, col_ok = _text_columns(tmask_ptr, tl.program_id(1) * BLOCK_T, 0, Bt, Nt, s_tm, HAS_TMASK,
                                 BLOCK_T, NT_PAD)
    dd = tl.arange(0, BLOCK_D)
    y_rows = txt_ptr + b.to(tl.int64) * s_tb + l.to(tl.int64) * s_tn
    x_rows = img_ptr + a.to(tl.int64) * s_ib
    yt = None
    if RESIDENT:
        y = tl.load(y_rows[:, None] + dd[None, :], mask=col_ok[:, None] & (dd < D)[None, :], other=0.0)
        yt = tl.trans(y)
    n_i = tl.load(nimg_ptr + a, mask=a < Bi, other=0.0)
    n_t = tl.load(ntxt_ptr + tb, mask=tb < Bt, other=0.0)
    text_real = n_t > 0
    col_bias = tl.where(col_ok, 0.0, float("-inf"))  # S + bias: -inf at columns of no real token

    col_max = tl.full([BLOCK_I, BLOCK_T * NT_PAD], float("-inf"), dtype=tl.float32)
    col_arg = tl.zeros([BLOCK_I, BLOCK_T * NT_PAD], dtype=tl.int32)
    row_sum = tl.zeros([BLOCK_I, BLOCK_T], dtype=tl.float32)
    r_ptrs = r_ptr + a.to(tl.int64)[:, None] * Ni * Bt + tb[None, :]
    r_ok = (a < Bi)[:, None] & (tb < Bt)[None, :]
    x_desc = img_ptr
    if USE_TMA:
        x_desc = _token_rows_desc(img_ptr, Bi, Ni, s_ib, BLOCK_I, BLOCK_D)
    for k in range(0, Ni):
        x_ok = _image_tokens_ok(imask_ptr, a, k, Bi, s_im, HAS_IMASK)
        s = _similarity_step(x_desc, x_rows, y_rows, yt, x_ok, col_ok, tl.program_id(0) * BLOCK_I, k, D, s_in,
                             USE_TMA, RESIDENT, PRECISION, BLOCK_I, BLOCK_T * NT_PAD, BLOCK_D)
        # t2i: running maximum over the image's real tokens; strict > keeps the first of equal maxima
        better = s > col_max
        if HAS_IMASK:  # (a padding token's row may hold NaN: a select, never arithmetic)
            better = better & x_ok[:, None]
        col_max = tl.where(better, s, col_max)
        col_arg = tl.where(better, k, col_arg)
        # i2t: maximum over each text's real tokens (-inf elsewhere), first of equal maxima
        if TEXT_PAD:  # an add, not a select: no per-column predicates to rebuild every step
            s = s + col_bias[None, :]
        s3 = tl.reshape(s, [BLOCK_I, BLOCK_T, NT_PAD])
        row_max = tl.max(s3, axis=2)
        row_arg = tl.min(tl.where(s3 == row_max[:, :, None], tl.arange(0, NT_PAD)[None, None, :], NT_PAD), axis=2)
        # (a text without a real token sums -inf here: the end selects 0 for its pairs)
        if HAS_IMASK:
            row_max = tl.where(x_ok[:, None], row_max, 0.0)
        row_sum += row_max
        tl.store(r_ptrs + k * Bt, row_arg.to(r_ptr.dtype.element_ty), mask=r_ok)

    valid = (n_i > 0)[:, None] & text_real[None, :]
    i2t = tl.where(valid, row_sum / tl.maximum(n_i, 1.0)[:, None], 0.0)
    col_real = tl.where(col_ok[None, :], col_max, 0.0)
    t2i = tl.sum(tl.reshape(col_real, [BLOCK_I, BLOCK_T, NT_PAD]), axis=2)
    t2i = tl.where(valid, t2i / tl.maximum(n_t, 1.0)[None, :], 0.0)
    pair = a.to(tl.int64)[:, None] * Bt + tb[None, :]
    tl.store(i2t_ptr + pair, i2t, mask=r_ok)
    tl.store(t2i_ptr + pair, t2i, mask=r_ok)
    c_ptrs = c_ptr + (a.to(tl.int64)[:, None] * Bt + b[None, :]) * Nt + l[None, :]
    tl.store(c_ptrs, col_arg.to(c_ptr.dtype.element_ty), mask=(a < Bi)[:, None] & ((b < Bt) & (l < Nt))[None, :])


@triton.jit
def _one_hot_tile(ci_ptr, ct_ptr, r_ptr, c_ptr, a, k, tb, l0, Bi, Bt, Ni, Nt, x_ok, BLOCK_I: tl.constexpr,
                  BLOCK_T: tl.constexpr, L_CHUNK: tl.constexpr):
    """P (BLOCK_I, BLOCK_T * L_CHUNK) fp32: the gradient w.r.t. S of token k of images a against
    tokens l0.. of texts tb, ci * [l == R[a, k, b]] + ct * [C[a, b, l] == k]. Each thread holds
    runs of one (image, text) pair's tokens: C comes in as vectors, R, ci, ct once per run.
    ci / ct (Bi, Bt): the pairs' g_i2t / n_a and g_t2i / n_b. Rows of padding image tokens
    (x_ok false) are 0; columns of padding text tokens are not, and need not be: the feature rows
    they multiply are loaded as 0 (d_img), or their outputs are not written (d_txt)."""
    pm = x_ok[:, None] & (tb < Bt)[None, :]
    pair = a.to(tl.int64)[:, None] * Bt + tb[None, :]
    ci = tl.load(ci_ptr + pair, mask=pm, other=0.0)[:, :, None]
    ct = tl.load(ct_ptr + pair, mask=pm, other=0.0)[:, :, None]
    r = tl.load(r_ptr + (a.to(tl.int64) * Ni + k)[:, None] * Bt + tb[None, :], mask=pm, other=0)
    l3 = (l0 + tl.arange(0, L_CHUNK))[None, None, :]
    c = tl.load(c_ptr + pair[:, :, None] * Nt + l3, mask=pm[:, :, None] & (l3 < Nt), other=0)
    p = tl.where(l3 == r.to(tl.int32)[:, :, None], ci, 0.0) + tl.where(c.to(tl.int32) == k, ct, 0.0)
    return tl.reshape(p, [BLOCK_I, BLOCK_T * L_CHUNK])


@triton.jit
def _filip_bwd_img_kernel(
    ci_ptr, ct_ptr, r_ptr, c_ptr, imask_ptr, tmask_ptr, txt_ptr, out_ptr,
    Bi, Bt, Ni, Nt, D,
    s_tb, s_tn, s_ob, s_on, s_im, s_tm,
    HAS_IMASK: tl.constexpr, HAS_TMASK: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr, L_CHUNK: tl.constexpr, NT_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """d_img[a, k, D block] for BLOCK_I images at token k, computed transposed: the sum over text
    blocks and token chunks of txt^T (D block x text tokens) @ P^T (text tokens x images), both
    operands from shared memory. Grid (image blocks, Ni, D blocks). Padding tokens are written
    too, as exact zeros."""
    a = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    k = tl.program_id(1)
    dd = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = dd < D
    x_ok = _image_tokens_ok(imask_ptr, a, k, Bi, s_im, HAS_IMASK)
    acc = tl.zeros([BLOCK_D, BLOCK_I], dtype=tl.float32)
    for b0 in range(0, Bt, BLOCK_T):
        tb = b0 + tl.arange(0, BLOCK_T)
        for l0 in range(0, NT_PAD, L_CHUNK):
            b, l, col_ok = _text_columns(tmask_ptr, b0, l0, Bt, Nt, s_tm, HAS_TMASK, BLOCK_T, L_CHUNK)
            y = tl.load(txt_ptr + (b.to(tl.int64) * s_tb + l.to(tl.int64) * s_tn)[:, None] + dd[None, :],
                        mask=col_ok[:, None] & dm[None, :], other=0.0)
            p = _one_hot_tile(ci_ptr, ct_ptr, r_ptr, c_ptr, a, k, tb, l0, Bi, Bt, Ni, Nt, x_ok, BLOCK_I, BLOCK_T,
                              L_CHUNK)
            acc = tl.dot(tl.trans(y), tl.trans(p.to(y.dtype)), acc, input_precision=PRECISION)
    out = out_ptr + a.to(tl.int64) * s_ob + k * s_on
    tl.store(out[None, :] + dd[:, None], acc.to(out_ptr.dtype.element_ty), mask=dm[:, None] & (a < Bi)[None, :])


@triton.jit
def _filip_bwd_txt_kernel(
    ci_ptr, ct_ptr, r_ptr, c_ptr, imask_ptr, tmask_ptr, img_ptr, out_ptr,
    Bi, Bt, Ni, Nt, D,
    s_ib, s_in, s_ob, s_on, s_im, s_tm,
    HAS_IMASK: tl.constexpr, HAS_TMASK: tl.constexpr, USE_TMA: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr, L_CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """d_txt rows (text b, token l) for BLOCK_T texts x L_CHUNK tokens, one D block, computed
    transposed: the sum over image tokens k and image blocks of img[:, k]^T (D block x images)
    @ P (images x text tokens), both operands from shared memory. Grid (text blocks, token
    chunks, D blocks). Rows of padding tokens are not written (d_txt comes zero-filled)."""
    b0 = tl.program_id(0) * BLOCK_T
    l0 = tl.program_id(1) * L_CHUNK
    tb = b0 + tl.arange(0, BLOCK_T)
    b, l, col_ok = _text_columns(tmask_ptr, b0, l0, Bt, Nt, s_tm, HAS_TMASK, BLOCK_T, L_CHUNK)
    dd = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = dd < D
    acc = tl.zeros([BLOCK_D, BLOCK_T * L_CHUNK], dtype=tl.float32)
    x_desc = img_ptr
    if USE_TMA:
        x_desc = _token_rows_desc(img_ptr, Bi, Ni, s_ib, BLOCK_I, BLOCK_D)
    for k in range(0, Ni):
        for a0 in range(0, Bi, BLOCK_I):
            a = a0 + tl.arange(0, BLOCK_I)
            x_ok = _image_tokens_ok(imask_ptr, a, k, Bi, s_im, HAS_IMASK)
            if USE_TMA:  # no image mask: every row is real (the copy engine zero-fills past Bi)
                x = x_desc.load([a0, k * BLOCK_D])
            else:
                x = tl.load(img_ptr + (a.to(tl.int64) * s_ib + k * s_in)[:, None] + dd[None, :],
                            mask=x_ok[:, None] & dm[None, :], other=0.0)
            p = _one_hot_tile(ci_ptr, ct_ptr, r_ptr, c_ptr, a, k, tb, l0, Bi, Bt, Ni, Nt, x_ok, BLOCK_I, BLOCK_T,
                              L_CHUNK)
            acc = tl.dot(tl.trans(x), p.to(x.dtype), acc, input_precision=PRECISION)
    # rows of padding tokens (their P columns may hit: C holds an index there too) keep the zeros
    # the launcher allocated
    out = out_ptr + b.to(tl.int64) * s_ob + l.to(tl.int64) * s_on
    tl.store(out[None, :] + dd[:, None], acc.to(out_ptr.dtype.element_ty), mask=dm[:, None] & col_ok[None, :])

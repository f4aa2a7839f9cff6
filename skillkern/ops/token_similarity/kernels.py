"""Triton kernels of FILIP token-wise similarity (launchers in triton_impl.py).

A program owns a tile of BLOCK_I images x BLOCK_T texts. Each text's tokens are padded to a
power of two (NT_PAD); image tokens are taken NI_CHUNK at a time, so that one GEMM tile
    S = img rows (BLOCK_I * NI_CHUNK, D) @ txt rows (BLOCK_T * NT_PAD, D)^T
reshapes to (BLOCK_I, NI_CHUNK, BLOCK_T, NT_PAD) and yields, for every (image, text) pair of
the tile, the row maxima of those image tokens (i2t, complete) and a running column maximum
(t2i, finished after the last chunk): one pass, both directions, any number of image tokens.

Backward: for a pair (a, b) the gradient of (i2t, t2i) w.r.t. S is a sparse matrix
    P[k, l] = g_i2t[a,b] / n_a * [l == row_idx[a,b,k]] + g_t2i[a,b] / n_b * [k == col_idx[a,b,l]]
(real tokens only), so d_img[a] = sum_b P_ab @ txt[b] and d_txt[b] = sum_a P_ab^T @ img[a]:
two GEMMs with one-hot tiles rebuilt from the stored arg-max indices. One program owns a block of
output rows and loops over every partner block: no atomics, deterministic.
Features of padding tokens are never loaded (masked loads select 0, never a multiplication by the
mask): NaN or inf there, as padding or fully masked attention rows may hold, reaches no output.
Offsets that multiply strides are int64.
"""
import triton
import triton.language as tl


@triton.jit
def _token_rows(ptr, mask_ptr, item0, tok0, n_items, n_tok, stride_b, stride_n, stride_m,
                HAS_MASK: tl.constexpr, BLOCK: tl.constexpr, PAD: tl.constexpr):
    """Flattened tile rows r = item * PAD + (token - tok0): row-start pointers, and which rows
    are real tokens of real items (HAS_MASK: the token mask read in this flat layout, one byte
    per row). Loads masked by it select 0 at padding, so NaN or inf there never reaches a dot
    product (0 * NaN would be NaN)."""
    r = tl.arange(0, BLOCK * PAD)
    item = item0 + r // PAD
    tok = tok0 + r % PAD
    ok = (item < n_items) & (tok < n_tok)
    if HAS_MASK:
        m = tl.load(mask_ptr + item.to(tl.int64) * stride_m + tok, mask=ok, other=0)
        ok = ok & (m != 0)
    return ptr + item.to(tl.int64) * stride_b + tok.to(tl.int64) * stride_n, ok


@triton.jit
def _token_mask(mask_ptr, item0, tok0, n_items, n_tok, stride_m, HAS_MASK: tl.constexpr,
                BLOCK: tl.constexpr, PAD: tl.constexpr):
    """(BLOCK, PAD) bool: tokens tok0.. are real tokens of real items."""
    item = item0 + tl.arange(0, BLOCK)
    tok = tok0 + tl.arange(0, PAD)
    ok = (item < n_items)[:, None] & (tok < n_tok)[None, :]
    if HAS_MASK:
        m = tl.load(mask_ptr + item.to(tl.int64)[:, None] * stride_m + tok[None, :], mask=ok, other=0)
        ok = ok & (m != 0)
    return ok


@triton.jit
def _similarity_tile(img_ptr, txt_ptr, imask_ptr, tmask_ptr, a0, k0, b0, Bi, Bt, Ni, Nt, D,
                     s_ib, s_in, s_tb, s_tn, s_im, s_tm, HAS_IMASK: tl.constexpr, HAS_TMASK: tl.constexpr,
                     PRECISION: tl.constexpr, BLOCK_I: tl.constexpr, NI_CHUNK: tl.constexpr,
                     BLOCK_T: tl.constexpr, NT_PAD: tl.constexpr, BLOCK_D: tl.constexpr):
    """S for image tokens k0.. as (BLOCK_I, NI_CHUNK, BLOCK_T, NT_PAD) fp32; rows and columns
    of padding tokens hold 0 (their features are never loaded)."""
    x_rows, x_ok = _token_rows(img_ptr, imask_ptr, a0, k0, Bi, Ni, s_ib, s_in, s_im, HAS_IMASK,
                               BLOCK_I, NI_CHUNK)
    y_rows, y_ok = _token_rows(txt_ptr, tmask_ptr, b0, 0, Bt, Nt, s_tb, s_tn, s_tm, HAS_TMASK,
                               BLOCK_T, NT_PAD)
    dd = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_I * NI_CHUNK, BLOCK_T * NT_PAD], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dm = (d0 + dd) < D
        x = tl.load(x_rows[:, None] + (d0 + dd)[None, :], mask=x_ok[:, None] & dm[None, :], other=0.0)
        y = tl.load(y_rows[:, None] + (d0 + dd)[None, :], mask=y_ok[:, None] & dm[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(y), acc, input_precision=PRECISION)
    return tl.reshape(acc, [BLOCK_I, NI_CHUNK, BLOCK_T, NT_PAD])


@triton.jit
def _filip_fwd_kernel(
    img_ptr, txt_ptr, imask_ptr, tmask_ptr, nimg_ptr, ntxt_ptr, i2t_ptr, t2i_ptr, ridx_ptr, cidx_ptr,
    Bi, Bt, Ni, Nt, D,
    s_ib, s_in, s_tb, s_tn, s_im, s_tm,
    HAS_IMASK: tl.constexpr, HAS_TMASK: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, NI_CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, NT_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """i2t, t2i (Bi, Bt) fp32 and the arg-max indices row_idx (Bi, Bt, Ni), col_idx (Bi, Bt, Nt).
    nimg / ntxt: real-token counts per item (fp32)."""
    a0 = tl.program_id(0) * BLOCK_I
    b0 = tl.program_id(1) * BLOCK_T
    a = a0 + tl.arange(0, BLOCK_I)
    b = b0 + tl.arange(0, BLOCK_T)
    n_i = tl.load(nimg_ptr + a, mask=a < Bi, other=0.0)
    n_t = tl.load(ntxt_ptr + b, mask=b < Bt, other=0.0)
    valid = (n_i[:, None] > 0) & (n_t[None, :] > 0)  # (BI, BT): pairs with real tokens on both sides
    pair = a.to(tl.int64)[:, None] * Bt + b[None, :]  # (BI, BT) flat index into (Bi, Bt)
    pmask = (a < Bi)[:, None] & (b < Bt)[None, :]
    tm = _token_mask(tmask_ptr, b0, 0, Bt, Nt, s_tm, HAS_TMASK, BLOCK_T, NT_PAD)  # (BT, NT_PAD)
    k = tl.arange(0, NI_CHUNK)
    l = tl.arange(0, NT_PAD)

    row_sum = tl.zeros([BLOCK_I, BLOCK_T], dtype=tl.float32)
    col_max = tl.full([BLOCK_I, BLOCK_T, NT_PAD], float("-inf"), dtype=tl.float32)
    col_arg = tl.zeros([BLOCK_I, BLOCK_T, NT_PAD], dtype=tl.int32)
    for k0 in range(0, Ni, NI_CHUNK):
        s = _similarity_tile(img_ptr, txt_ptr, imask_ptr, tmask_ptr, a0, k0, b0, Bi, Bt, Ni, Nt, D,
                             s_ib, s_in, s_tb, s_tn, s_im, s_tm, HAS_IMASK, HAS_TMASK, PRECISION,
                             BLOCK_I, NI_CHUNK, BLOCK_T, NT_PAD, BLOCK_D)
        im = _token_mask(imask_ptr, a0, k0, Bi, Ni, s_im, HAS_IMASK, BLOCK_I, NI_CHUNK)
        # image token k -> best text token l (i2t); -inf outside the text's real tokens
        s_row = tl.where(tm[None, None, :, :], s, float("-inf"))
        row_max = tl.max(s_row, axis=3)  # (BI, NI_CHUNK, BT)
        row_arg = tl.argmax(s_row, axis=3)
        row_sum += tl.sum(tl.where(im[:, :, None] & valid[:, None, :], row_max, 0.0), axis=1)
        r_ptrs = ridx_ptr + pair[:, None, :] * Ni + (k0 + k)[None, :, None]  # (BI, NI_CHUNK, BT)
        tl.store(r_ptrs, row_arg.to(ridx_ptr.dtype.element_ty),
                 mask=pmask[:, None, :] & ((k0 + k) < Ni)[None, :, None])
        # text token l -> best image token so far (t2i); strict > keeps the first of equal maxima
        s_col = tl.where(im[:, :, None, None], s, float("-inf"))
        chunk_max = tl.max(s_col, axis=1)  # (BI, BT, NT_PAD)
        chunk_arg = tl.argmax(s_col, axis=1) + k0
        better = chunk_max > col_max
        col_arg = tl.where(better, chunk_arg, col_arg)
        col_max = tl.where(better, chunk_max, col_max)

    i2t = row_sum / tl.maximum(n_i, 1.0)[:, None]
    keep_col = tm[None, :, :] & valid[:, :, None]
    t2i = tl.sum(tl.where(keep_col, col_max, 0.0), axis=2) / tl.maximum(n_t, 1.0)[None, :]
    tl.store(i2t_ptr + pair, i2t, mask=pmask)
    tl.store(t2i_ptr + pair, t2i, mask=pmask)
    c_ptrs = cidx_ptr + pair[:, :, None] * Nt + l[None, None, :]  # (BI, BT, NT_PAD)
    tl.store(c_ptrs, col_arg.to(cidx_ptr.dtype.element_ty), mask=pmask[:, :, None] & (l < Nt)[None, None, :])


@triton.jit
def _grad_tile(gi_ptr, gt_ptr, ridx_ptr, cidx_ptr, nimg_ptr, ntxt_ptr, im, tm, a0, k0, b0, Bi, Bt, Ni, Nt,
               BLOCK_I: tl.constexpr, NI_CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, NT_PAD: tl.constexpr):
    """dL/dS for the tile's pairs and image tokens k0.., (BLOCK_I * NI_CHUNK, BLOCK_T * NT_PAD)
    fp32: the one-hot arg-max pattern scaled by g_i2t / n_a (rows) and g_t2i / n_b (columns).
    im (BLOCK_I, NI_CHUNK) / tm (BLOCK_T, NT_PAD): the real tokens (_token_mask)."""
    a = a0 + tl.arange(0, BLOCK_I)
    b = b0 + tl.arange(0, BLOCK_T)
    n_i = tl.load(nimg_ptr + a, mask=a < Bi, other=0.0)
    n_t = tl.load(ntxt_ptr + b, mask=b < Bt, other=0.0)
    pair = a.to(tl.int64)[:, None] * Bt + b[None, :]
    pmask = (a < Bi)[:, None] & (b < Bt)[None, :] & (n_i[:, None] > 0) & (n_t[None, :] > 0)
    ci = tl.load(gi_ptr + pair, mask=pmask, other=0.0) / tl.maximum(n_i, 1.0)[:, None]  # (BI, BT)
    ct = tl.load(gt_ptr + pair, mask=pmask, other=0.0) / tl.maximum(n_t, 1.0)[None, :]
    k = k0 + tl.arange(0, NI_CHUNK)
    l = tl.arange(0, NT_PAD)
    # -1 (matches no token) wherever the token is padding or the pair is empty
    r_ok = pmask[:, None, :] & im[:, :, None]
    r = tl.load(ridx_ptr + pair[:, None, :] * Ni + k[None, :, None], mask=r_ok, other=0)
    r = tl.where(r_ok, r.to(tl.int32), -1)  # (BI, NI_CHUNK, BT)
    c_ok = pmask[:, :, None] & tm[None, :, :]
    c = tl.load(cidx_ptr + pair[:, :, None] * Nt + l[None, None, :], mask=c_ok, other=0)
    c = tl.where(c_ok, c.to(tl.int32), -1)  # (BI, BT, NT_PAD)
    p = tl.where(r[:, :, :, None] == l[None, None, None, :], ci[:, None, :, None], 0.0)
    p += tl.where(c[:, None, :, :] == k[None, :, None, None], ct[:, None, :, None], 0.0)
    return tl.reshape(p, [BLOCK_I * NI_CHUNK, BLOCK_T * NT_PAD])


@triton.jit
def _filip_bwd_kernel(
    gi_ptr, gt_ptr, ridx_ptr, cidx_ptr, imask_ptr, tmask_ptr, nimg_ptr, ntxt_ptr, src_ptr, out_ptr,
    Bi, Bt, Ni, Nt, D,
    s_sb, s_sn, s_ob, s_on, s_im, s_tm,
    FOR_IMG: tl.constexpr, HAS_IMASK: tl.constexpr, HAS_TMASK: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, NI_CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, NT_PAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """FOR_IMG:  d_img[a-block, k-chunk, d-block] = sum over text blocks of P @ txt  (src = txt);
                 grid (image blocks * image-token chunks, D blocks).
    otherwise: d_txt[b-block, d-block] = sum over image blocks and chunks of P^T @ img (src = img);
                 grid (text blocks, D blocks)."""
    dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = dd < D
    # P is 0 in the rows and columns of padding tokens, and so are the loaded src rows of
    # padding: a NaN there would otherwise turn 0 * NaN into a NaN gradient for real tokens
    if FOR_IMG:
        n_chunks = tl.cdiv(Ni, NI_CHUNK)
        a0 = (tl.program_id(0) // n_chunks) * BLOCK_I
        k0 = (tl.program_id(0) % n_chunks) * NI_CHUNK
        im = _token_mask(imask_ptr, a0, k0, Bi, Ni, s_im, HAS_IMASK, BLOCK_I, NI_CHUNK)
        acc = tl.zeros([BLOCK_I * NI_CHUNK, BLOCK_D], dtype=tl.float32)
        for b0 in range(0, Bt, BLOCK_T):
            tm = _token_mask(tmask_ptr, b0, 0, Bt, Nt, s_tm, HAS_TMASK, BLOCK_T, NT_PAD)
            p = _grad_tile(gi_ptr, gt_ptr, ridx_ptr, cidx_ptr, nimg_ptr, ntxt_ptr, im, tm,
                           a0, k0, b0, Bi, Bt, Ni, Nt, BLOCK_I, NI_CHUNK, BLOCK_T, NT_PAD)
            rows, ok = _token_rows(src_ptr, tmask_ptr, b0, 0, Bt, Nt, s_sb, s_sn, s_tm, HAS_TMASK,
                                   BLOCK_T, NT_PAD)
            y = tl.load(rows[:, None] + dd[None, :], mask=ok[:, None] & dm[None, :], other=0.0)
            acc = tl.dot(p.to(y.dtype), y, acc, input_precision=PRECISION)
        out_rows, out_ok = _token_rows(out_ptr, imask_ptr, a0, k0, Bi, Ni, s_ob, s_on, s_im, False,
                                       BLOCK_I, NI_CHUNK)
    else:
        b0 = tl.program_id(0) * BLOCK_T
        tm = _token_mask(tmask_ptr, b0, 0, Bt, Nt, s_tm, HAS_TMASK, BLOCK_T, NT_PAD)
        acc = tl.zeros([BLOCK_T * NT_PAD, BLOCK_D], dtype=tl.float32)
        for a0 in range(0, Bi, BLOCK_I):
            for k0 in range(0, Ni, NI_CHUNK):
                im = _token_mask(imask_ptr, a0, k0, Bi, Ni, s_im, HAS_IMASK, BLOCK_I, NI_CHUNK)
                p = _grad_tile(gi_ptr, gt_ptr, ridx_ptr, cidx_ptr, nimg_ptr, ntxt_ptr, im, tm,
                               a0, k0, b0, Bi, Bt, Ni, Nt, BLOCK_I, NI_CHUNK, BLOCK_T, NT_PAD)
                rows, ok = _token_rows(src_ptr, imask_ptr, a0, k0, Bi, Ni, s_sb, s_sn, s_im, HAS_IMASK,
                                       BLOCK_I, NI_CHUNK)
                x = tl.load(rows[:, None] + dd[None, :], mask=ok[:, None] & dm[None, :], other=0.0)
                acc = tl.dot(tl.trans(p).to(x.dtype), x, acc, input_precision=PRECISION)
        out_rows, out_ok = _token_rows(out_ptr, tmask_ptr, b0, 0, Bt, Nt, s_ob, s_on, s_tm, False,
                                       BLOCK_T, NT_PAD)
    # padding tokens are written too (as exact zeros): their gradient is defined, not garbage
    tl.store(out_rows[:, None] + dd[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=out_ok[:, None] & dm[None, :])

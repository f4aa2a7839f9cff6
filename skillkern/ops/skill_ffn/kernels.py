"""Triton kernels of the skill-routed FFN (launchers in triton_impl.py).

Layout. The N = T*k token slots are counting-sorted by skill (`_route_*`): sorted position p
holds slot order[p]; skill e owns positions [offsets[e], offsets[e+1]). A row tile never spans
two skills: the tiles of skill e start at offsets[e] and the last one is masked, so a skill
boundary that falls inside a BLOCK_M block simply starts a new tile. The tile -> (skill, rows)
map is computed in-kernel from offsets (E is small), so nothing is synced to the host: the grid
is sized for the worst case, cdiv(N, BLOCK_M) + E tiles, and the surplus tiles exit at once.

Activations are gathered through order (no permuted copy of x); the hidden activations live in
sorted order; outputs are scattered back to slot order in the epilogue.

Every offset that multiplies a stride is int64 (int32 overflows past 2^31 elements: vllm#5938).
Accumulation is fp32; tiles are cast to the input dtype only when stored.
"""
import triton
import triton.language as tl

# activation codes (the constexpr ACT); globals read inside kernels must be tl.constexpr.
# Keep a tensor on the left of every product with these: under the interpreter
# constexpr * tensor wraps the tensor in a constexpr and fails.
GELU = tl.constexpr(0)
GELU_TANH = tl.constexpr(1)
RELU = tl.constexpr(2)
SILU = tl.constexpr(3)
SWIGLU = tl.constexpr(4)
_SQRT1_2 = tl.constexpr(0.7071067811865476)  # 1/sqrt(2), gelu(erf)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1/sqrt(2*pi), normal pdf
_TANH_C = tl.constexpr(0.7978845608028654)  # sqrt(2/pi), gelu(tanh)
_TANH_A = tl.constexpr(0.044715)


# ----------------------------------------------------------------------------- routing


@triton.jit
def _bucket(ids_ptr, offs, valid, E):
    """The routing bucket (int32) of each slot: its skill id, or E when the id is outside
    [0, E) (-1 = empty slot, an unchecked bad id, or a slot past N). The id is compared in its
    own dtype (uint8 ... int64) and only then narrowed: an int64 id of 2^32 + 1 must not wrap
    to skill 1."""
    ids = tl.load(ids_ptr + offs, mask=valid, other=0)
    active = valid & (ids >= 0) & (ids < E)
    return tl.where(active, ids, E).to(tl.int32)


@triton.jit
def _route_hist_kernel(ids_ptr, counts_ptr, N, E, BLOCK: tl.constexpr, E_PAD: tl.constexpr):
    """counts[b, e] = number of slots of block b in bucket e (bucket E = inactive)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < N
    bucket = _bucket(ids_ptr, offs, valid, E)
    buckets = tl.arange(0, E_PAD)
    onehot = (bucket[:, None] == buckets[None, :]) & valid[:, None]
    tl.store(counts_ptr + pid * E_PAD + buckets, tl.sum(onehot.to(tl.int32), axis=0))


@triton.jit
def _route_scatter_kernel(ids_ptr, counts_ptr, order_ptr, offsets_ptr, N, E, n_blocks,
                          BLOCK: tl.constexpr, E_PAD: tl.constexpr, NB_CHUNK: tl.constexpr):
    """Stable scatter: slot i of block b in bucket e goes to
    start[e] + (slots of e in blocks < b) + (slots of e before i in block b).
    Each program re-reads the (n_blocks, E_PAD) histogram: one launch instead of a separate
    scan kernel; at N = 128k slots that is 128 x 8 ints per program."""
    pid = tl.program_id(0)
    buckets = tl.arange(0, E_PAD)
    total = tl.zeros([E_PAD], dtype=tl.int32)
    before = tl.zeros([E_PAD], dtype=tl.int32)
    for b0 in range(0, n_blocks, NB_CHUNK):
        bs = b0 + tl.arange(0, NB_CHUNK)
        c = tl.load(counts_ptr + bs.to(tl.int64)[:, None] * E_PAD + buckets[None, :],
                    mask=(bs < n_blocks)[:, None], other=0)
        total += tl.sum(c, axis=0)
        before += tl.sum(tl.where((bs < pid)[:, None], c, 0), axis=0)
    start = tl.cumsum(total, axis=0) - total  # exclusive scan over buckets
    if pid == 0:
        tl.store(offsets_ptr + buckets, start, mask=buckets <= E)

    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < N
    bucket = _bucket(ids_ptr, offs, valid, E)
    onehot = ((bucket[:, None] == buckets[None, :]) & valid[:, None]).to(tl.int32)
    rank = tl.cumsum(onehot, axis=0) - 1 + (start + before)[None, :]
    dest = tl.sum(tl.where(onehot != 0, rank, 0), axis=1)
    tl.store(order_ptr + dest, offs.to(tl.int32), mask=valid)


# ----------------------------------------------------------------------------- helpers


@triton.jit
def _tile_rows(offsets_ptr, tile, E, BLOCK_M: tl.constexpr):
    """Row tile `tile` -> (skill, first sorted position, end of that skill's positions).
    skill = -1 for surplus tiles. Tiles of skill e cover [offsets[e], offsets[e+1])."""
    base = 0
    skill = -1
    row0 = 0
    row_end = 0
    lo = tl.load(offsets_ptr)
    for e in range(E):
        hi = tl.load(offsets_ptr + e + 1)
        n_tiles = tl.cdiv(hi - lo, BLOCK_M)
        hit = (tile >= base) & (tile < base + n_tiles)
        skill = tl.where(hit, e, skill)
        row0 = tl.where(hit, lo + (tile - base) * BLOCK_M, row0)
        row_end = tl.where(hit, hi, row_end)
        base += n_tiles
        lo = hi
    return skill, row0, row_end


@triton.jit
def _swizzle(pid, n_m, n_n, GROUP_M: tl.constexpr):
    """Grouped launch order: GROUP_M row tiles share each weight column tile while it is in L2."""
    width = GROUP_M * n_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def _row_tile(offsets_ptr, order_ptr, N, E, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              GROUP_M: tl.constexpr):
    """This program's tile of a row-tiled kernel: skill (-1 = surplus tile: the caller exits),
    pid_m, pid_n, its first sorted position row0, sorted positions `rows` + mask, their slot
    indices (int64), columns + mask."""
    n_m = tl.cdiv(N, BLOCK_M) + E
    pid_m, pid_n = _swizzle(tl.program_id(0), n_m, tl.cdiv(n_cols, BLOCK_N), GROUP_M)
    skill, row0, row_end = _tile_rows(offsets_ptr, pid_m, E, BLOCK_M)
    rows = row0 + tl.arange(0, BLOCK_M)
    rmask = rows < row_end  # all False on a surplus tile: the slot load below is a no-op
    slot = tl.load(order_ptr + rows, mask=rmask, other=0).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return skill, pid_m, pid_n, row0, rows, rmask, slot, cols, cols < n_cols


@triton.jit
def _tanh(u):
    # tanh through exp: libdevice is unavailable in the interpreter; saturates correctly at +-inf
    return 2.0 / (1.0 + tl.exp(-2.0 * u)) - 1.0


@triton.jit
def _sigmoid(u):
    return 1.0 / (1.0 + tl.exp(-u))


@triton.jit
def _act(z, ACT: tl.constexpr):
    """act(z) in fp32 for the single-input activations."""
    if ACT == GELU:
        return 0.5 * z * (1.0 + tl.math.erf(z * _SQRT1_2))
    elif ACT == GELU_TANH:
        return 0.5 * z * (1.0 + _tanh((z + z * z * z * _TANH_A) * _TANH_C))
    elif ACT == RELU:
        return tl.maximum(z, 0.0)
    else:  # SILU
        return z * _sigmoid(z)


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    """d act / dz in fp32."""
    if ACT == GELU:
        return 0.5 * (1.0 + tl.math.erf(z * _SQRT1_2)) + z * _INV_SQRT_2PI * tl.exp(-0.5 * z * z)
    elif ACT == GELU_TANH:
        t = _tanh((z + z * z * z * _TANH_A) * _TANH_C)
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _TANH_C * (1.0 + z * z * (3.0 * _TANH_A))
    elif ACT == RELU:
        return (z > 0.0).to(tl.float32)
    else:  # SILU
        s = _sigmoid(z)
        return s * (1.0 + z * (1.0 - s))


@triton.jit
def _halves(t, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(t[:, :BLOCK_N/2], t[:, BLOCK_N/2:]) of a (BLOCK_M, BLOCK_N) register tile: epilogues in
    two column halves keep half the temporaries live at once."""
    return tl.split(tl.permute(tl.reshape(t, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))


# ----------------------------------------------------------------------------- forward GEMM1


@triton.jit
def _w_desc(w_ptr, E, R, C, stride_e, stride_r, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """TMA descriptor of per-skill weights (E, R, C), C contiguous, in (BLOCK_R, BLOCK_C) tiles of
    one skill: rows and columns past R and C arrive as zeros, so the loads need no masks."""
    return tl.make_tensor_descriptor(w_ptr, shape=[E, R, C], strides=[stride_e, stride_r, 1],
                                     block_shape=[1, BLOCK_R, BLOCK_C])


@triton.jit
def _rows_desc(a_ptr, N, K, stride_a, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """TMA descriptor of a sorted-row operand (N, K), K contiguous, in (BLOCK_M, BLOCK_K) tiles.
    Rows past N and columns past K arrive as zeros; rows past the tile's skill are the next
    skill's (or, past offsets[E], never-written rows): they only reach output rows that the
    epilogue masks, since each output row of a GEMM reads its own A row alone."""
    return tl.make_tensor_descriptor(a_ptr, shape=[N, K], strides=[stride_a, 1], block_shape=[BLOCK_M, BLOCK_K])


@triton.jit
def _w_tile(desc, skill, k0, n0, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, K_MAJOR: tl.constexpr):
    """The (BLOCK_K, BLOCK_N) B operand at (k0, n0) of one skill's weights, by TMA. K_MAJOR: the
    weights are laid out (E, N, K) with K contiguous (W2 read as W2^T, W1 as W1^T): the tile is
    fetched (BLOCK_N, BLOCK_K) and transposed, which wgmma takes from shared memory as is."""
    if K_MAJOR:
        return tl.trans(tl.reshape(desc.load([skill, n0, k0]), (BLOCK_N, BLOCK_K)))
    else:
        return tl.reshape(desc.load([skill, k0, n0]), (BLOCK_K, BLOCK_N))


@triton.jit
def _skill_up_fwd_kernel(
    x_ptr, w1_ptr, b1_ptr, hid_ptr, pre_ptr, order_ptr, offsets_ptr,
    N, E, d, h, k,
    stride_xt, stride_we, stride_wd, stride_wh, stride_be, stride_hp, stride_pp,
    n_bucket,  # next_power_of_2(rows per skill): autotune key only, so each size range tunes once
    ACT: tl.constexpr, HAS_B1: tl.constexpr, STORE_PRE: tl.constexpr, STORE_ACT: tl.constexpr,
    PRECISION: tl.constexpr, TMA_OK: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """hid[p, :] = act(x[token(p)] @ w1[e] + b1[e]) for sorted position p of skill e.
    The gathered x rows come by cp.async; w1 tiles by TMA where the config asks for it (USE_TMA)
    and the launcher allows it (TMA_OK: aligned weights on sm_90+), else by cp.async too.
    For SWIGLU w1 is (E, d, 2h), gate columns [0, h), up columns [h, 2h): both tiles are
    accumulated side by side so the hidden tile is finished in registers. With STORE_PRE the
    pre-activation (both halves for SWIGLU) is stored too, in sorted order, for the backward
    (kept by the forward with recompute=False; the backward's own GEMM1 launch stores only it,
    STORE_ACT=False)."""
    skill, pid_m, pid_n, row0, rows, rmask, slot, cols, cmask = _row_tile(
        offsets_ptr, order_ptr, N, E, h, BLOCK_M, BLOCK_N, GROUP_M)
    if skill < 0:
        return
    tok = slot // k
    kk = tl.arange(0, BLOCK_K)
    w_base = w1_ptr + skill.to(tl.int64) * stride_we + cols.to(tl.int64)[None, :] * stride_wh
    x_base = x_ptr + tok[:, None] * stride_xt
    if USE_TMA and TMA_OK:
        # SWIGLU: one descriptor over both halves; a gate tile past column h reads up columns,
        # finite values in columns that are never stored
        w_desc = _w_desc(w1_ptr, E, d, 2 * h if ACT == SWIGLU else h, stride_we, stride_wd, BLOCK_K, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if ACT == SWIGLU:
        acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, d, BLOCK_K):
        kmask = (k0 + kk) < d
        a = tl.load(x_base + (k0 + kk)[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        if USE_TMA and TMA_OK:
            w = _w_tile(w_desc, skill, k0, pid_n * BLOCK_N, BLOCK_K, BLOCK_N, False)
        else:
            w_ptrs = w_base + (k0 + kk).to(tl.int64)[:, None] * stride_wd
            w = tl.load(w_ptrs, mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        if ACT == SWIGLU:
            if USE_TMA and TMA_OK:
                w_up = _w_tile(w_desc, skill, k0, h + pid_n * BLOCK_N, BLOCK_K, BLOCK_N, False)
            else:
                w_up = tl.load(w_ptrs + h * stride_wh, mask=kmask[:, None] & cmask[None, :], other=0.0)
            acc_up = tl.dot(a, w_up, acc_up, input_precision=PRECISION)
    if HAS_B1:
        b_ptrs = b1_ptr + skill.to(tl.int64) * stride_be + cols
        acc += tl.load(b_ptrs, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if ACT == SWIGLU:
            acc_up += tl.load(b_ptrs + h, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if STORE_PRE:
        p_ptrs = pre_ptr + rows.to(tl.int64)[:, None] * stride_pp + cols[None, :]
        tl.store(p_ptrs, acc.to(pre_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])
        if ACT == SWIGLU:
            tl.store(p_ptrs + h, acc_up.to(pre_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])
    if not STORE_ACT:
        return
    if ACT == SWIGLU:
        out = acc * _sigmoid(acc) * acc_up
        h_ptrs = hid_ptr + rows.to(tl.int64)[:, None] * stride_hp + cols[None, :]
        tl.store(h_ptrs, out.to(hid_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])
    else:
        # the activation in two column halves: half the temporaries live at once
        a0, a1 = _halves(acc, BLOCK_M, BLOCK_N)
        c0 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        h_ptrs = hid_ptr + rows.to(tl.int64)[:, None] * stride_hp + c0[None, :]
        tl.store(h_ptrs, _act(a0, ACT).to(hid_ptr.dtype.element_ty), mask=rmask[:, None] & (c0 < h)[None, :])
        c1 = c0 + BLOCK_N // 2
        tl.store(h_ptrs + BLOCK_N // 2, _act(a1, ACT).to(hid_ptr.dtype.element_ty),
                 mask=rmask[:, None] & (c1 < h)[None, :])


# ----------------------------------------------------------------------------- GEMM2 / dX


@triton.jit
def _skill_down_kernel(
    a_ptr, w_ptr, bias_ptr, scale_ptr, out_ptr, order_ptr, offsets_ptr,
    N, E, K, n_out,
    stride_ap, stride_we, stride_wk, stride_wn, stride_be, stride_os,
    n_bucket,  # autotune key only
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr, TMA_OK: tl.constexpr,
    W_KMAJOR: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """out[order[p], :] = scale[order[p]] * (a[p, :] @ w[e] + bias[e]) for sorted p of skill e.
    With USE_TMA and TMA_OK both operands come by TMA (a's sorted rows, w's tiles): W_KMAJOR says
    w's K dimension is the contiguous one (stride_wk == 1, dX's W1^T), else its N dimension is
    (stride_wn == 1, W2).

    Forward GEMM2: a = hidden (sorted), w = w2 (E, h, d), bias = b2, scale = c.
    Backward dX:   a = dZ (sorted),     w = w1 read transposed (E, h1, d), no bias, no scale.
    out has one row per slot (T*k rows; for k = 1 that is y itself): the unpermute and the
    weighted combine happen in this epilogue, no permuted output copy is made."""
    skill, pid_m, pid_n, row0, rows, rmask, slot, cols, cmask = _row_tile(
        offsets_ptr, order_ptr, N, E, n_out, BLOCK_M, BLOCK_N, GROUP_M)
    if skill < 0:
        return
    kk = tl.arange(0, BLOCK_K)
    a_base = a_ptr + rows.to(tl.int64)[:, None] * stride_ap
    w_base = w_ptr + skill.to(tl.int64) * stride_we + cols.to(tl.int64)[None, :] * stride_wn
    if USE_TMA and TMA_OK:
        a_desc = _rows_desc(a_ptr, N, K, stride_ap, BLOCK_M, BLOCK_K)
        if W_KMAJOR:
            w_desc = _w_desc(w_ptr, E, n_out, K, stride_we, stride_wn, BLOCK_N, BLOCK_K)
        else:
            w_desc = _w_desc(w_ptr, E, K, n_out, stride_we, stride_wk, BLOCK_K, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = (k0 + kk) < K
        if USE_TMA and TMA_OK:
            a = a_desc.load([row0, k0])
            w = _w_tile(w_desc, skill, k0, pid_n * BLOCK_N, BLOCK_K, BLOCK_N, W_KMAJOR)
        else:
            a = tl.load(a_base + (k0 + kk)[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
            w = tl.load(w_base + (k0 + kk).to(tl.int64)[:, None] * stride_wk,
                        mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + skill.to(tl.int64) * stride_be + cols, mask=cmask,
                       other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + slot, mask=rmask, other=0.0)[:, None]
    o_ptrs = out_ptr + slot[:, None] * stride_os + cols[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


# ----------------------------------------------------------------------------- backward hidden


@triton.jit
def _skill_up_bwd_kernel(
    dy_ptr, w2_ptr, b2_ptr, scale_ptr, pre_ptr,
    hid_ptr, dz_ptr, dc_ptr, db1_ptr, tile_skill_ptr, order_ptr, offsets_ptr,
    N, E, d, h, k,
    stride_dyp, stride_w2e, stride_w2h, stride_w2d, stride_b2e, stride_pp, stride_hp, stride_zp, stride_cp,
    stride_db1,
    n_bucket,  # autotune key only
    ACT: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, NEED_DC: tl.constexpr,
    PRECISION: tl.constexpr, TMA_OK: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """For sorted position p of skill e and a tile of hidden columns j (dy already gathered
    into sorted order by _gather_rows_kernel, so every row tile is contiguous):
        G = dy[p] @ w2[e][j, :]^T                (upstream grad of the hidden, before c)
        Z = pre[p, j]                            (the pre-activation, bias included: kept by the
                                                  forward, or recomputed by the backward's
                                                  GEMM1 launch just before)
        H = act(Z);  dZ = c * G * act'(Z)        (SWIGLU: dgate, dup for both halves)
    Stores c * H (dW2's operand: dW2 = (cH)^T dy, so its GEMM needs no scaling) and dZ (for
    dW1, dX) in sorted order. db1 leaves the wgrad GEMM's loop: with HAS_B1, db1[pid_m, j] = the
    fp32 column sums of this tile's dZ rows and tile_skill[pid_m] = e + 1 (0: no tile); the
    launcher adds the partials of each skill in a fixed order. With NEED_DC: dc[p, pid_n] =
    sum_j G * H (+ dy.b2[e] from the pid_n == 0 tile); the partials are summed on the host side
    of the op (deterministic)."""
    skill, pid_m, pid_n, row0, rows, rmask, slot, cols, cmask = _row_tile(
        offsets_ptr, order_ptr, N, E, h, BLOCK_M, BLOCK_N, GROUP_M)
    if skill < 0:
        return
    e64 = skill.to(tl.int64)
    rows64 = rows.to(tl.int64)
    kk = tl.arange(0, BLOCK_K)
    dy_base = dy_ptr + rows64[:, None] * stride_dyp
    w2_base = w2_ptr + e64 * stride_w2e + cols.to(tl.int64)[None, :] * stride_w2h
    if USE_TMA and TMA_OK:  # w2 (E, h, d), d contiguous: W2^T tiles fetched K-major and transposed
        w2_desc = _w_desc(w2_ptr, E, h, d, stride_w2e, stride_w2h, BLOCK_N, BLOCK_K)
    g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    dyb2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, d, BLOCK_K):
        kmask = (k0 + kk) < d
        # dy by cp.async: by TMA too, triton 3.6 serializes this loop's wgmma (3.8 does not)
        dy = tl.load(dy_base + (k0 + kk)[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        if USE_TMA and TMA_OK:
            w2t = _w_tile(w2_desc, skill, k0, pid_n * BLOCK_N, BLOCK_K, BLOCK_N, True)
        else:
            w2t = tl.load(w2_base + (k0 + kk).to(tl.int64)[:, None] * stride_w2d,
                          mask=kmask[:, None] & cmask[None, :], other=0.0)
        g = tl.dot(dy, w2t, g, input_precision=PRECISION)
        if NEED_DC and HAS_B2:
            if pid_n == 0:
                b2 = tl.load(b2_ptr + e64 * stride_b2e + k0 + kk, mask=kmask, other=0.0)
                dyb2 += tl.sum(dy.to(tl.float32) * b2.to(tl.float32)[None, :], axis=1)
    c = tl.load(scale_ptr + slot, mask=rmask, other=0.0)[:, None]
    # the epilogue in two column halves, each loading its part of the pre-activation: half the
    # temporaries live at once (the 128-column tiles otherwise spill on sm_90)
    g0, g1 = _halves(g, BLOCK_M, BLOCK_N)
    c0 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
    db1_row = db1_ptr + pid_m.to(tl.int64) * stride_db1
    part = _up_bwd_epilogue(g0, c, rows64, rmask, c0, h, pre_ptr, dz_ptr, hid_ptr, db1_row,
                            stride_pp, stride_zp, stride_hp, ACT, HAS_B1)
    part += _up_bwd_epilogue(g1, c, rows64, rmask, c0 + BLOCK_N // 2, h, pre_ptr, dz_ptr, hid_ptr, db1_row,
                             stride_pp, stride_zp, stride_hp, ACT, HAS_B1)
    if HAS_B1:
        if pid_n == 0:
            tl.store(tile_skill_ptr + pid_m, skill + 1)
    if NEED_DC:
        tl.store(dc_ptr + rows64 * stride_cp + pid_n, part + dyb2, mask=rmask)


@triton.jit
def _up_bwd_epilogue(g, c, rows64, rmask, cols, h, pre_ptr, dz_ptr, hid_ptr, db1_row_ptr, stride_pp,
                     stride_zp, stride_hp, ACT: tl.constexpr, HAS_B1: tl.constexpr):
    """One column block of up_bwd's epilogue: loads the pre-activation, stores dZ (both halves
    of the hidden for SWIGLU) and c * H, the db1 column sums of the rounded dZ; returns
    sum_j G * H per row (dc)."""
    cmask = cols < h
    omask = rmask[:, None] & cmask[None, :]
    p_ptrs = pre_ptr + rows64[:, None] * stride_pp + cols[None, :]
    z = tl.load(p_ptrs, mask=omask, other=0.0).to(tl.float32)
    if ACT == SWIGLU:
        z_up = tl.load(p_ptrs + h, mask=omask, other=0.0).to(tl.float32)
    dz_ptrs = dz_ptr + rows64[:, None] * stride_zp + cols[None, :]
    if ACT == SWIGLU:
        s = _sigmoid(z)
        silu = z * s
        hid = silu * z_up
        dh = c * g
        dgate = (dh * z_up * s * (1.0 + z * (1.0 - s))).to(dz_ptr.dtype.element_ty)
        dup = (dh * silu).to(dz_ptr.dtype.element_ty)
        tl.store(dz_ptrs, dgate, mask=omask)
        tl.store(dz_ptrs + h, dup, mask=omask)
        if HAS_B1:  # sums of the rounded dZ: what dW1's GEMM sees
            tl.store(db1_row_ptr + cols, tl.sum(tl.where(omask, dgate.to(tl.float32), 0.0), axis=0), mask=cmask)
            tl.store(db1_row_ptr + h + cols, tl.sum(tl.where(omask, dup.to(tl.float32), 0.0), axis=0), mask=cmask)
    else:
        hid = _act(z, ACT)
        dz = (c * g * _act_grad(z, ACT)).to(dz_ptr.dtype.element_ty)
        tl.store(dz_ptrs, dz, mask=omask)
        if HAS_B1:
            tl.store(db1_row_ptr + cols, tl.sum(tl.where(omask, dz.to(tl.float32), 0.0), axis=0), mask=cmask)
    # the rounded hidden is what the forward fed to GEMM2; dc uses the same values
    hid = hid.to(hid_ptr.dtype.element_ty).to(tl.float32)
    tl.store(hid_ptr + rows64[:, None] * stride_hp + cols[None, :], (c * hid).to(hid_ptr.dtype.element_ty), mask=omask)
    return tl.sum(tl.where(omask, g * hid, 0.0), axis=1)


# ----------------------------------------------------------------------------- weight grads


@triton.jit
def _zero_inactive_rows_kernel(ptr, offsets_ptr, N, E, C, stride, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """ptr[p, :] = 0 for the sorted positions of inactive slots (p >= offsets[E]): a per-slot
    output that only active rows fill gets defined values everywhere. Blocks of active rows
    exit at once, so the cost follows the number of inactive slots."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    first = tl.load(offsets_ptr + E)
    if tl.program_id(0) * BLOCK_M + BLOCK_M <= first:
        return
    rmask = (rows >= first) & (rows < N)
    zeros = tl.zeros([BLOCK_M, BLOCK_C], dtype=ptr.dtype.element_ty)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        tl.store(ptr + rows.to(tl.int64)[:, None] * stride + cols[None, :], zeros,
                 mask=rmask[:, None] & (cols < C)[None, :])


@triton.jit
def _gather_rows_kernel(src_ptr, scale_ptr, dst_ptr, sum_ptr, tile_skill_ptr, order_ptr, offsets_ptr,
                        N, E, C, k, stride_src, stride_dst, stride_sum,
                        SUMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """dst[p, :] = src[token(p), :] for every active sorted position p: the token-indexed operand
    (x, dy) in sorted order, so that the backward's GEMMs read contiguous row tiles (no index
    load inside their loops). Row tiles follow the skills (_tile_rows). With SUMS: sum[pid_m, :]
    = the fp32 column sums of scale[slot] * src rows of this tile (db2 = sum_p c dy) and
    tile_skill[pid_m] = e + 1, added per skill in a fixed order by the launcher."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    skill, row0, row_end = _tile_rows(offsets_ptr, pid_m, E, BLOCK_M)
    if skill < 0:
        return
    rows = row0 + tl.arange(0, BLOCK_M)
    rmask = rows < row_end
    slot = tl.load(order_ptr + rows, mask=rmask, other=0).to(tl.int64)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    m = rmask[:, None] & cmask[None, :]
    v = tl.load(src_ptr + (slot // k)[:, None] * stride_src + cols[None, :], mask=m, other=0.0)
    tl.store(dst_ptr + rows.to(tl.int64)[:, None] * stride_dst + cols[None, :], v, mask=m)
    if SUMS:
        c = tl.load(scale_ptr + slot, mask=rmask, other=0.0)
        tl.store(sum_ptr + pid_m.to(tl.int64) * stride_sum + cols, tl.sum(c[:, None] * v.to(tl.float32), axis=0),
                 mask=cmask)
        if pid_c == 0:
            tl.store(tile_skill_ptr + pid_m, skill + 1)


@triton.jit
def _pick(vec, idx, es):
    """vec[idx] of a small register vector (0 where idx matches no lane)."""
    return tl.sum(tl.where(es == idx, vec, 0), axis=0)


@triton.jit
def _skill_chunks(offsets_ptr, E, R, E_PAD: tl.constexpr):
    """Per skill (lanes es < E of E_PAD): its rows [lo, hi), its number of R-row chunks and its
    first workspace slot: skills of two or more chunks take consecutive slots, one per chunk,
    in skill order (the layout the weight-gradient kernel writes and the reduce kernel reads)."""
    es = tl.arange(0, E_PAD)
    lo = tl.load(offsets_ptr + es, mask=es < E, other=0)
    hi = tl.load(offsets_ptr + es + 1, mask=es < E, other=0)
    n_chunks = tl.cdiv(hi - lo, R)
    multi = tl.where(n_chunks > 1, n_chunks, 0)
    return es, lo, hi, n_chunks, tl.cumsum(multi, axis=0) - multi


@triton.jit
def _wgrad_unit(offsets_ptr, unit, E, R, E_PAD: tl.constexpr):
    """Work unit `unit` of the weight-gradient launch -> (skill (-1: surplus unit, exit), first
    row, end row, chunk index within the skill, the skill's chunk count, its first workspace
    slot). Skill e's rows are cut into chunks of R rows (the last one shorter). Units come
    longest first, so that the long programs start first and the short ones fill the tail
    (longest-processing-time order, within a few % of the ideal makespan where the launch order
    of skills left up to a third of the SMs idle at the end): every skill's full R-row chunks in
    skill order, then the shorter last chunks by decreasing length (ties: lower skill first).
    A skill of more than one chunk writes fp32 partials into workspace slots ws_base + chunk,
    summed in chunk order by _wgrad_reduce_kernel."""
    es, lo, hi, n_chunks, ws_start = _skill_chunks(offsets_ptr, E, R, E_PAD)
    full = (hi - lo) // R
    rem = hi - lo - full * R
    full_end = tl.cumsum(full, axis=0)
    n_full = tl.sum(full, axis=0)
    # a full chunk: the skill whose run of full chunks holds `unit`
    skill_f = tl.sum((full_end <= unit).to(tl.int32), axis=0)
    # a last chunk: rank of each skill's shorter chunk among all of them (0 = longest)
    beats = (rem[None, :] > rem[:, None]) | ((rem[None, :] == rem[:, None]) & (es[None, :] < es[:, None]))
    rank = tl.sum(beats.to(tl.int32), axis=1)
    hit = (rank == unit - n_full) & (rem > 0)
    skill_r = tl.max(tl.where(hit, es, -1), axis=0)
    is_full = unit < n_full
    skill = tl.where(is_full, skill_f, skill_r)
    chunk = tl.where(is_full, unit - (_pick(full_end, skill, es) - _pick(full, skill, es)), _pick(full, skill, es))
    row0 = _pick(lo, skill, es) + chunk * R
    row_end = tl.minimum(row0 + R, _pick(hi, skill, es))
    return skill, row0, row_end, chunk, _pick(n_chunks, skill, es), _pick(ws_start, skill, es)


@triton.jit
def _skill_wgrad_kernel(
    a_ptr, b_ptr, dw_ptr, ws_ptr, offsets_ptr,
    E, P, Q, R,
    stride_a, stride_b, stride_we, stride_wp, stride_wq,
    n_bucket,  # next_power_of_2(rows per skill): autotune key only
    PRECISION: tl.constexpr, TMA_OK: tl.constexpr, E_PAD: tl.constexpr, USE_TMA: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """dw[e] (P, Q) = a[rows of e]^T b[rows of e], both operands in sorted order (rows
    offsets[e] .. offsets[e + 1]):  dW1: a = x, b = dZ.   dW2: a = c * H, b = dy.
    Program = (work unit, output tile), units outermost (_wgrad_unit: a chunk of at most R rows
    of one skill, longest first). The loop holds contiguous loads and the MMA only (no index
    loads, no scaling, no bias sums), so loads run stages ahead of the MMA. A skill of one chunk
    stores its tile into dw; the chunks of a longer skill store fp32 partials into ws (summed in
    a fixed order by _wgrad_reduce_kernel): no atomics, so results are bitwise deterministic.
    Unused skills have no unit: the reduce kernel writes their exact zeros. With USE_TMA and
    TMA_OK both operands come by TMA through descriptors that end at the chunk's last row: rows
    past it and columns past P, Q arrive as zeros, exactly what the masks give the cp.async path."""
    n_q = tl.cdiv(Q, BLOCK_Q)
    n_tiles = tl.cdiv(P, BLOCK_P) * n_q
    pid = tl.program_id(0)
    skill, lo, hi, chunk, n_chunks, ws_base = _wgrad_unit(offsets_ptr, pid // n_tiles, E, R, E_PAD)
    if skill < 0:
        return
    pid_p = (pid % n_tiles) // n_q
    pid_q = pid % n_q
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    pmask = ps < P
    qmask = qs < Q
    rr = tl.arange(0, BLOCK_R)
    if USE_TMA and TMA_OK:
        a_desc = _rows_desc(a_ptr, hi, P, stride_a, BLOCK_R, BLOCK_P)
        b_desc = _rows_desc(b_ptr, hi, Q, stride_b, BLOCK_R, BLOCK_Q)
    acc = tl.zeros([BLOCK_P, BLOCK_Q], dtype=tl.float32)
    for r0 in range(lo, hi, BLOCK_R):
        if USE_TMA and TMA_OK:
            a = a_desc.load([r0, pid_p * BLOCK_P])
            b = b_desc.load([r0, pid_q * BLOCK_Q])
        else:
            rows = (r0 + rr).to(tl.int64)
            rmask = rows < hi
            a = tl.load(a_ptr + rows[:, None] * stride_a + ps[None, :], mask=rmask[:, None] & pmask[None, :],
                        other=0.0)
            b = tl.load(b_ptr + rows[:, None] * stride_b + qs[None, :], mask=rmask[:, None] & qmask[None, :],
                        other=0.0)
        acc = tl.dot(tl.trans(a), b, acc, input_precision=PRECISION)
    omask = pmask[:, None] & qmask[None, :]
    if n_chunks == 1:
        w_ptrs = dw_ptr + skill.to(tl.int64) * stride_we + ps.to(tl.int64)[:, None] * stride_wp + qs[None, :] * stride_wq
        tl.store(w_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=omask)
    else:
        ws = ws_ptr + (ws_base + chunk).to(tl.int64) * P * Q + ps.to(tl.int64)[:, None] * Q + qs[None, :]
        tl.store(ws, acc, mask=omask)


@triton.jit
def _wgrad_reduce_kernel(ws_ptr, dw_ptr, offsets_ptr, E, P, Q, R, stride_we, stride_wp, stride_wq,
                         E_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    """dw[e] tile = the sum of skill e's fp32 chunk partials in chunk order (skills of two or
    more chunks), or exact zeros (skills without rows); skills of one chunk were stored by
    _skill_wgrad_kernel itself, so their programs exit at once."""
    e = tl.program_id(0)
    n_q = tl.cdiv(Q, BLOCK_Q)
    pid_p = tl.program_id(1) // n_q
    pid_q = tl.program_id(1) % n_q
    es, _, _, n_chunks, ws_start = _skill_chunks(offsets_ptr, E, R, E_PAD)
    if _pick(n_chunks, e, es) == 1:
        return
    ws_base = _pick(ws_start, e, es)
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    omask = (ps < P)[:, None] & (qs < Q)[None, :]
    acc = tl.zeros([BLOCK_P, BLOCK_Q], dtype=tl.float32)
    for c in range(0, _pick(n_chunks, e, es)):
        ws = ws_ptr + (ws_base + c).to(tl.int64) * P * Q + ps.to(tl.int64)[:, None] * Q + qs[None, :]
        acc += tl.load(ws, mask=omask, other=0.0)
    w_ptrs = dw_ptr + e.to(tl.int64) * stride_we + ps.to(tl.int64)[:, None] * stride_wp + qs[None, :] * stride_wq
    tl.store(w_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=omask)

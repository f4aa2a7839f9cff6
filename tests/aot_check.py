"""Compile every Triton kernel ahead of time for sm_90 (no GPU needed): catches real compiler
errors (layouts, dtypes, shared memory) that the interpreter cannot. Run in a fresh process with
TRITON_INTERPRET unset; prints one line per compiled variant; exit code 1 on any failure.

    python tests/aot_check.py [--all-configs]
"""
from __future__ import annotations

import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
_PTR = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}


def compile_sm90(fn, types: dict, constexprs: dict, num_warps: int = 4, num_stages: int = 3):
    """types: arg name -> Triton type string; every other argument must be in constexprs."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in types:
            sig[name] = types[name]
        else:
            raise KeyError(f"{fn.__name__}: no type or constexpr for argument {name!r}")
    src = ASTSource(fn, sig, constexprs=constexprs)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})


def _ints(fn, names_ptr: dict) -> dict:
    """Every argument not named as a pointer is an i32 scalar (what the JIT picks for sizes
    and strides below 2^31)."""
    return {n: names_ptr.get(n, "i32") for n in fn.arg_names}


def skill_ffn_variants(all_configs: bool):
    from skillkern.ops.skill_ffn import kernels as K
    from skillkern.ops.skill_ffn import triton_impl as TI

    yield "route_hist", K._route_hist_kernel, _ints(K._route_hist_kernel, {"ids_ptr": "*i64", "counts_ptr": "*i32"}), \
        {"BLOCK": TI._ROUTE_BLOCK, "E_PAD": 8}, 4, 1
    yield "route_scatter", K._route_scatter_kernel, _ints(K._route_scatter_kernel, {
        "ids_ptr": "*i64", "counts_ptr": "*i32", "order_ptr": "*i32", "offsets_ptr": "*i32"}), \
        {"BLOCK": TI._ROUTE_BLOCK, "E_PAD": 8, "NB_CHUNK": 64}, 4, 1

    def row_cfgs(cfgs):
        return cfgs if all_configs else cfgs[:1]

    acts = list(TI.ACT_CODE.items())
    for dt in ("bf16", "fp16", "fp32"):
        P = _PTR[dt]
        prec = "ieee" if dt == "fp32" else "tf32"
        for act_name, act in acts:
            if dt != "bf16" and act_name not in ("gelu", "swiglu"):
                continue
            cfgs_up = row_cfgs(TI._ROW_GEMM) if dt == "bf16" and act_name in ("gelu", "swiglu") else TI._ROW_GEMM[:1]
            for c in cfgs_up:
                meta = dict(BLOCK_M=c[0], BLOCK_N=c[1], BLOCK_K=c[2], GROUP_M=c[3])
                fn = K._skill_up_fwd_kernel
                yield f"up_fwd {dt} {act_name} {c}", fn, _ints(fn, {
                    "x_ptr": P, "w1_ptr": P, "b1_ptr": P, "hid_ptr": P, "order_ptr": "*i32",
                    "offsets_ptr": "*i32"}), dict(meta, ACT=act, HAS_B1=True, PRECISION=prec), c[4], c[5]
            cfgs_bwd = row_cfgs(TI._ROW_GEMM_2ACC) if dt == "bf16" and act_name in ("gelu", "swiglu") else TI._ROW_GEMM_2ACC[:1]
            for c in cfgs_bwd:
                meta = dict(BLOCK_M=c[0], BLOCK_N=c[1], BLOCK_K=c[2], GROUP_M=c[3])
                fn = K._skill_up_bwd_kernel
                for need_dc in (True, False):
                    yield f"up_bwd {dt} {act_name} dc={need_dc} {c}", fn, _ints(fn, {
                        "x_ptr": P, "dy_ptr": P, "w1_ptr": P, "b1_ptr": P, "w2_ptr": P, "b2_ptr": P,
                        "scale_ptr": "*fp32", "hid_ptr": P, "dz_ptr": P, "dc_ptr": "*fp32",
                        "order_ptr": "*i32", "offsets_ptr": "*i32"}), \
                        dict(meta, ACT=act, HAS_B1=True, HAS_B2=True, NEED_DC=need_dc, PRECISION=prec), c[4], c[5]
        for c in (row_cfgs(TI._ROW_GEMM) if dt == "bf16" else TI._ROW_GEMM[:1]):
            meta = dict(BLOCK_M=c[0], BLOCK_N=c[1], BLOCK_K=c[2], GROUP_M=c[3])
            fn = K._skill_down_kernel
            for bias_scale in (True, False):
                yield f"down {dt} bias/scale={bias_scale} {c}", fn, _ints(fn, {
                    "a_ptr": P, "w_ptr": P, "bias_ptr": P, "scale_ptr": "*fp32", "out_ptr": P,
                    "order_ptr": "*i32", "offsets_ptr": "*i32"}), \
                    dict(meta, HAS_BIAS=bias_scale, HAS_SCALE=bias_scale, PRECISION=prec), c[4], c[5]
        for c in (TI._WGRAD if (dt == "bf16" and all_configs) else TI._WGRAD[:1]):
            meta = dict(BLOCK_P=c[0], BLOCK_Q=c[1], BLOCK_R=c[2])
            fn = K._skill_wgrad_kernel
            for a_tok, b_tok, b_sc in ((True, False, False), (False, True, True)):
                yield f"wgrad {dt} a_tok={a_tok} {c}", fn, _ints(fn, {
                    "a_ptr": P, "b_ptr": P, "scale_ptr": "*fp32", "dw_ptr": P, "db_ptr": P,
                    "order_ptr": "*i32", "offsets_ptr": "*i32"}), \
                    dict(meta, A_BY_TOKEN=a_tok, B_BY_TOKEN=b_tok, B_SCALED=b_sc, HAS_DB=True,
                         PRECISION=prec), c[4], c[5]


def token_similarity_variants(all_configs: bool):
    from skillkern.ops.token_similarity import kernels as K
    from skillkern.ops.token_similarity import triton_impl as TI

    # (Ni, Nt): ViT-B/32, after token reduction, ViT-L/14 (+cls), one token, odd sizes
    shapes = [(50, 32), (12, 32), (257, 32), (1, 5), (257, 77), (3000, 300)]
    for dt in ("bf16", "fp16", "fp32"):
        P = _PTR[dt]
        prec = "ieee" if dt == "fp32" else "tf32"
        for Ni, Nt in (shapes if dt == "bf16" or all_configs else shapes[:1]):
            t = TI._tiles(Ni, Nt, 256)
            warps = t.pop("num_warps")
            idx_r = "*u8" if Nt <= 256 else "*i16"
            idx_c = "*u8" if Ni <= 256 else "*i16"
            for has_mask in (True, False):
                fn = K._filip_fwd_kernel
                yield f"fwd {dt} Ni={Ni} Nt={Nt} mask={has_mask} {t}", fn, _ints(fn, {
                    "img_ptr": P, "txt_ptr": P, "imask_ptr": "*u8", "tmask_ptr": "*u8",
                    "nimg_ptr": "*fp32", "ntxt_ptr": "*fp32", "i2t_ptr": "*fp32", "t2i_ptr": "*fp32", "ridx_ptr": idx_r, "cidx_ptr": idx_c}), \
                    dict(t, HAS_IMASK=has_mask, HAS_TMASK=has_mask, PRECISION=prec), warps, 2
                fn = K._filip_bwd_kernel
                for for_img in (True, False):
                    yield f"bwd {dt} Ni={Ni} Nt={Nt} img={for_img} mask={has_mask}", fn, _ints(fn, {
                        "gi_ptr": "*fp32", "gt_ptr": "*fp32", "ridx_ptr": idx_r, "cidx_ptr": idx_c,
                        "imask_ptr": "*u8", "tmask_ptr": "*u8", "nimg_ptr": "*fp32", "ntxt_ptr": "*fp32",
                        "src_ptr": P, "out_ptr": P}), \
                        dict(t, FOR_IMG=for_img, HAS_IMASK=has_mask, HAS_TMASK=has_mask,
                             PRECISION=prec), warps, 2


def token_reduce_variants(all_configs: bool):
    from skillkern.ops.token_reduce import kernels as K
    from skillkern.ops.token_reduce import triton_impl as TI

    shapes = [(49, 256, 12), (256, 768, 24), (50, 33, 1)]  # (N, D, S): Wukong B/32, L/14, odd
    for dt in ("bf16", "fp32"):
        P = _PTR[dt]
        prec = "ieee" if dt == "fp32" else "tf32"
        for N, D, S in (shapes if dt == "bf16" or all_configs else shapes[:1]):
            blk = TI._blocks(N, D, S)
            warps = blk.pop("num_warps")
            for ln, pool_ln, given in ((True, True, False), (True, False, False), (False, False, False),
                                       (False, False, True)):
                flags = dict(HAS_LN=ln, HAS_LN_BIAS=ln, POOL_LN=pool_ln, POOL_LN_BIAS=pool_ln,
                             SCORES_GIVEN=given, HAS_MASK=True, PRECISION=prec)
                ptrs = {"x_ptr": P, "w_ptr": P, "sc_ptr": P, "lnw_ptr": P, "lnb_ptr": P, "mask_ptr": "*u8"}
                fn = K._token_reduce_fwd_kernel
                yield f"fwd {dt} N={N} D={D} S={S} ln={ln} pool_ln={pool_ln} scores={given}", fn, _ints(fn, dict(
                    ptrs, out_ptr=P, lse_ptr="*fp32", eps="fp32")), dict(blk, **flags), warps, 2
                fn = K._token_reduce_bwd_kernel
                yield f"bwd {dt} N={N} D={D} S={S} ln={ln} pool_ln={pool_ln} scores={given}", fn, _ints(fn, dict(
                    ptrs, dout_ptr=P, delta_ptr="*fp32", lse_ptr="*fp32", dx_ptr=P, dsc_ptr=P,
                    dw_part_ptr="*fp32", dlnw_part_ptr="*fp32", dlnb_part_ptr="*fp32", eps="fp32")), \
                    dict(blk, **flags), warps, 2


VARIANTS = {"skill_ffn": skill_ffn_variants, "token_similarity": token_similarity_variants,
            "token_reduce": token_reduce_variants}


def main(argv):
    all_configs = "--all-configs" in argv
    ops = [a for a in argv if not a.startswith("--")] or list(VARIANTS)
    failures = 0
    for op in ops:
        for label, fn, types, constexprs, warps, stages in VARIANTS[op](all_configs):
            t0 = time.time()
            try:
                k = compile_sm90(fn, types, constexprs, warps, stages)
                shared = k.metadata.shared
                print(f"ok   {op}: {label}  shared={shared}B  {time.time() - t0:.1f}s", flush=True)
                if shared > 227 * 1024:  # H100 per-block shared-memory limit
                    print(f"FAIL {op}: {label}: needs {shared} B of shared memory (> 227 KB)")
                    failures += 1
            except Exception as e:  # report every failing variant, not just the first
                print(f"FAIL {op}: {label}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
                failures += 1
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

// Hopper MLA decode launcher: scheduler -> split-KV decode kernel -> combine, all on the
// caller's stream and workspace. Launch shapes depend only on (batch, q_len, heads, SM
// count); nothing reads device data on the host, so the sequence is CUDA-graph safe.
#include "mla_cuda.h"
#include "decode_v1_mma.cuh"
#include "decode_v2_fp8reg.cuh"
#include "decode_v2_swap.cuh"
#include "decode_bf16_swap.cuh"
#include "decode_fp8_seesaw32.cuh"
#include "decode_v3_wgmma.cuh"
#include "decode_v6_seesaw.cuh"
#include "decode_v10_fp8mma.cuh"
#include "tensor_map.h"

#include <cuda_runtime.h>

#include <atomic>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace {

using mla_decode_v1::Cfg;
using mla_decode_v1::Params;

// Kernel variants (MLA_DECODE_VARIANT selects one for comparison; default "v2"):
//   "v2"  : rows <= 16 with an fp8 cache (and rows 17..32 as two head blocks when the swap
//           form is selected, the default, for small calls; from 320k keys in all, or 96
//           requests where the host does not know the total, rows 17..32 run on
//           decode_fp8_seesaw32.cuh, MLA_DECODE_FP8_ROWS32=heads|seesaw|auto|lazy|seesaw8|lazy8):
//           decode_v2_swap.cuh, or decode_v2_fp8reg.cuh
//           (MLA_DECODE_V2_BN=32|64 keys per block, default 64;
//           MLA_DECODE_V2_CONV=cvt|alu|q8|w8|swap|lazy|swapq3|swap8|lazy8
//           and MLA_DECODE_V2_LAYOUT=tma|pad|xor|h1: v2_conversion()); rows <= 32 with a
//           bf16 cache: decode_bf16_swap.cuh (one math warpgroup of 16 rows, or for 17..32
//           rows two sharing the ring (MLA_DECODE_BF16_ROWS32=n32: one of N = 32); 64-key
//           blocks, one CTA per SM; MLA_DECODE_BF16_SWAP=0 keeps the mma.sync kernel below,
//           and a tensor map that cannot be made falls back to v1 M = 16/32 with 64-key blocks
//           and one CTA per SM, the same plan; MLA_DECODE_FP8_CONV=32|all runs fp8-cache rows
//           there too, through its converter form: opt-in, slower); other rows <= 32:
//           decode_v1_mma.cuh "narrow" (32-key blocks, 128 threads, two CTAs per SM); rows 33..63:
//           decode_v1_mma.cuh with M = 64 (64-key blocks, 256 threads, one CTA per SM),
//           measured faster than two-per-SM M = 32 tiles at H = 128; rows >= 64:
//           fp8 cache: decode_v6_seesaw.cuh with the bulk producer ("v7", kV7Default below);
//           bf16 cache: decode_v6_seesaw.cuh with the TMA producer ("v9", kV9Default), or
//           decode_v3_wgmma.cuh (wgmma, same plan as v1 M = 64; kV3Default) when the tensor
//           map cannot be made.
//   "v1"  : as "v2" without decode_v2_fp8reg.cuh, decode_v3_wgmma.cuh and the seesaw (mma.sync
//           only).
//   "wide": decode_v1_mma.cuh as first written for every shape: M = 16, 32 or 64, 64-key
//           blocks, 256 threads, one CTA per SM.
//   "v3"  : as "v2" with rows >= 64 on decode_v3_wgmma.cuh for both cache types (the bf16
//           default before v9).
//   "v6"  : as "v2" with rows >= 64 and an fp8 cache on decode_v6_seesaw.cuh with the register
//           producer (a producer warpgroup feeding two math warpgroups that take key blocks in
//           pairs; measured slower than v3).
//   "v7"  : as "v2" (rows >= 64 on the seesaw: with an fp8 cache the bulk producer, raw fp8
//           bulk-copied into the freed tile and converted in place; with a bf16 cache the TMA
//           producer, "v9") whatever kV7Default and kV9Default say.
//   "v10" : as "v7", and with an fp8 query and an fp8 cache rows >= 64 on
//           decode_v10_fp8mma.cuh (e4m3 MMAs for S and P V, V transposed in shared memory, P
//           rounded to e4m3); without an fp8 query, or when the tensor map cannot be made, v7.
//           1.26-1.37x faster than v7 (H200, 2026-12-04), opt-in because of P's rounding (up
//           to 2.5e-2 relative L2 error on long rows; bench/NOTES.md). The default variant
//           takes it too when the backend's mla_config.decode_fp8_math is set (takes_v10).
//   (A "v4" with fp8 QK^T for rows >= 64 was measured and retired: bench/variants/decode/;
//   so was a "v5" that fed v3's math from a producer warpgroup.)
struct Plan {
    int rows, m, head_blocks, num_parts, bn, ctas_per_sm;
};

enum Variant {
    kVariantV2 = 0,
    kVariantV1 = 1,
    kVariantWide = 2,
    kVariantV3 = 3,
    kVariantV6 = 4,
    kVariantV7 = 5,
    kVariantV10 = 6
};
constexpr int kNumVariants = 7;

// Whether the default variant ("v2") uses the wgmma kernel for rows >= 64: yes since its
// sanitizer-clean device runs of 2026-11-26 (bench/NOTES.md "Decode", v3).
constexpr bool kV3Default = true;

int env_choice(const char *name, const char *const *values, int count, int fallback)
{
    const char *v = getenv(name);
    if (v)
        for (int i = 0; i < count; i++)
            if (strcmp(v, values[i]) == 0) return i;
    return fallback;
}

// The MLA_DECODE_* switches are read once per process (the plan depends on them); a test
// that runs one reference against several forms bumps this generation
// (mla_cuda_decode_reread_switches) so that the next call reads them again.
// A slot holds generation * 256 + choice in one atomic word, so that a thread never sees a
// generation without its choice (threads that race on the first read store the same word).
std::atomic<int> g_switch_generation{0};
struct CachedSwitch {
    std::atomic<int> packed{-1};
};
int cached_env_choice(CachedSwitch &slot, const char *name, const char *const *values, int count, int fallback)
{
    const int gen = g_switch_generation.load(std::memory_order_acquire);
    const int p = slot.packed.load(std::memory_order_acquire);
    if (p >= 0 && p >> 8 == gen) return p & 255;
    const int v = env_choice(name, values, count, fallback);
    slot.packed.store(gen << 8 | v, std::memory_order_release);
    return v;
}

Variant selected_variant()
{
    static const char *const names[] = {"v2", "v1", "wide", "v3", "v6", "v7", "v10"};
    static CachedSwitch slot;
    const int cached = cached_env_choice(slot, "MLA_DECODE_VARIANT", names, kNumVariants, 0);
    return (Variant)cached;
}

// "v2", "v3", "v6", "v7" and "v10" share every kernel except the one for rows >= 64.
bool v2_family(Variant v)
{
    return v == kVariantV2 || v == kVariantV3 || v == kVariantV6 || v == kVariantV7 || v == kVariantV10;
}

bool use_wgmma(int rows)
{
    const Variant v = selected_variant();
    return rows >= 64 && (v == kVariantV3 || v == kVariantV6 || v == kVariantV7 || v == kVariantV10 ||
                          (kV3Default && v == kVariantV2));
}

// Whether the default variant ("v2") uses v7 for rows >= 64 with an fp8 cache (bench/NOTES.md
// "Decode", v7: 1.18-1.28x faster than v3 on an H100, same run).
constexpr bool kV7Default = true;

// The seesaw kernel for rows >= 64 with an fp8 cache: 0 (none), 6 (register producer) or 7
// (bulk producer).
int seesaw_version(int rows)
{
    const Variant v = selected_variant();
    if (rows < 64) return 0;
    if (v == kVariantV6) return 6;
    return v == kVariantV7 || v == kVariantV10 || (kV7Default && v == kVariantV2) ? 7 : 0;
}

// Whether the default variant uses the seesaw with the TMA producer ("v9") for rows >= 64
// with a bf16 cache ("v7" selects it whatever this says): 1.17-1.36x faster than v3 on an
// H200, same run (bench/NOTES.md, 2026-12-03 tenth session: B128 H128 8k 0.843 -> 0.620 ms),
// and 3-9% more with the tiles handed back in halves (eleventh session: B64 H128 4k 0.185 ->
// 0.174 ms).
constexpr bool kV9Default = true;
bool bf16_seesaw(int rows)
{
    const Variant v = selected_variant();
    return rows >= 64 && (v == kVariantV7 || v == kVariantV10 || (kV9Default && v == kVariantV2));
}

// The scheduler's whole-request parts for uniform batches (mla_launch_decode_schedule), on
// by default since 2026-12-04 (H200: B64 H128 4k 7.5% faster on v7 and v10, B128 4k 2.5-3%,
// 8k 0.5%, H16 B256 4k 2%, nothing slower; bench/NOTES.md, fourteenth session).
// MLA_DECODE_ALIGN=0 turns it off; read once per process, like the variant.
int align_uniform()
{
    static const char *const names[] = {"0", "1"};
    static CachedSwitch slot;
    const int cached = cached_env_choice(slot, "MLA_DECODE_ALIGN", names, 2, 1);
    return cached;
}

int v2_block_n()
{
    static const char *const names[] = {"32", "64"};
    static CachedSwitch slot;
    const int cached = cached_env_choice(slot, "MLA_DECODE_V2_BN", names, 2, 1);
    return cached ? 64 : 32;
}

// v2's conversion (decode_v2_fp8reg.cuh kConv), MLA_DECODE_V2_CONV: "lazy8" (default since
// the twenty-second session; 64-key blocks on the TMA layout) decode_v2_swap.cuh with its
// softmax against a lazy row reference, and with an fp8 query S^T in e4m3 wgmma from the stage
// (a bf16 query takes "lazy"); "swap" (the default before) the same kernel with an exact
// running max and both A operands converted in registers: S^T = K Q^T and O^T = V^T P^T on
// wgmma m64n16k16; "cvt" (the default before the
// seventeenth session, and the form for 32-key blocks and the other layouts) mma.sync with K and
// V by the cvt instruction; "alu" (32-key blocks only) both by integer bit moves; "q8" (64-key
// blocks, fp8 query only) QK^T in e4m3 MMAs, V by cvt; "w8" (64-key blocks, fp8 query only)
// QK^T as one wgmma chain per block from the fp8 stage, V by cvt. Other combinations fall back
// to "cvt".
// swap against cvt (H200, 2026-12-04 seventeenth session, bench/NOTES.md): 5-10% faster from
// 16k keys up (B64 H16 32k 0.340 -> 0.320 ms, B128 32k 0.70 -> 0.62, B128 16k 0.344 -> 0.323),
// 4% at B128 4k; 5% slower at B32 4k and 2.5% on the uneven 63 x 1k + 128k case.
// Measured on an H200 (bench/NOTES.md, 2026-12-03), all on the xor layout: "cvt" is the fastest
// of the mma.sync forms; K or V alone by cvt (the other by integer moves) was 14-15% slower at B128 H16 32k,
// "q8" 10% slower, "w8" 14% slower (B64 H16 32k, fp8 query). On the padded layout (third
// session of 2026-12-03) q8 was 5% slower than cvt (B64 32k 0.4133 vs 0.3932 ms), and K or V
// alone by integer moves 20% slower; "q8" uses the padded layout unless xor or h1 is asked for.
// (An L2 prefetch of the block after next was 1-4% slower and was removed.)
constexpr int kV2Q8 = mla_decode_v2::kConvQ8 | mla_decode_v2::kConvCvtV;
constexpr int kV2W8 = mla_decode_v2::kConvW8 | mla_decode_v2::kConvCvtV;
// MLA_DECODE_V2_LAYOUT (cvt only): "tma" (default, 64-key blocks) the stage filled by TMA
// boxes in the 128-byte-swizzled layout, waited on per-stage mbarriers (kConvTma; falls back to
// "pad" when the tensor maps cannot be made); "pad" padded stage rows filled by cp.async and
// the shift-free conversion (kConvPad | kConvH1; the default before the third session of
// 2026-12-03, and still for 32-key blocks); "xor" the swizzled stage (the default before the
// second); "h1" the swizzled stage with the shift-free conversion. H200, ms (bench/NOTES.md):
// B64 H16 32k xor 0.480, h1 0.455, pad 0.398, tma 0.347; B128 4k 0.136 / 0.127 / 0.113 / 0.104;
// batch 1 64k 0.0306 / 0.0296 / 0.0276 / 0.0275.
constexpr int kV2Pad = mla_decode_v2::kConvPad | mla_decode_v2::kConvH1;
constexpr int kV2Tma = mla_decode_v2::kConvCvt | mla_decode_v2::kConvH1 | mla_decode_v2::kConvTma;
// "swap" (64-key blocks, TMA layout, either query dtype): decode_v2_swap.cuh. "lazy": the same
// kernel with its softmax against a lazy row reference (kLazy). H200, 2026-12-05 (twenty-second
// session, scripts/decode-ab, bench/NOTES.md), ms against "swap", bf16 query: B64 H16 16k
// 0.1717 -> 0.1662 (84.3% -> 86.8% of copy), B32 32k 0.1729 -> 0.1686, B32 16k 0.0958 ->
// 0.0927, B128 4k and batch 1 equal.
constexpr int kV2Swap = kV2Tma | 256;
constexpr int kV2SwapLazy = kV2Tma | 512;
// "swapq3": the default swap kernel with the lazy form's three-pass Q^T load in its loop (240
// registers instead of 255; opt-in), to separate the two effects of "lazy": it measured 0-2%
// slower than "swap", so the lazy softmax is what gains.
constexpr int kV2SwapQ3 = kV2Tma | 1024;
// "swap8": with an fp8 query, S^T as e4m3 wgmma from the stage and the fp8 query tile (no K
// conversion; the products are exact either way, e4m3 values being bf16 values); bf16-query
// calls keep "swap".
constexpr int kV2SwapQ8 = kV2Tma | 2048;
// "lazy8": swap8 with the lazy softmax (fp8 query; bf16-query calls take "lazy"). H200,
// 2026-12-05, fp8 query, ms against "swap": B64 H16 16k 0.1689 -> 0.1594 (85.4% -> 90.2%),
// B32 32k 0.1709 -> 0.1609, B128 4k 0.0966 -> 0.0906 (75.3% -> 80.5%), batch 1 64k 0.0257 ->
// 0.0244; "swap8" within 1% of it.
constexpr int kV2SwapLazyQ8 = kV2Tma | 4096;
// The instantiated v2 kernels (v2_conversion returns only these) and their shared memory.
struct V2Form {
    int conv, bn;
    void (*kernel)(Params);
    int smem;
    const char *name; // the MLA_DECODE_V2_CONV value of a swap form (mla_cuda_decode_form)
};
template <int kConv, int kBN> constexpr V2Form v2_form()
{
    using namespace mla_decode_v2;
    constexpr bool pad = (kConv & kConvPad) != 0;
    return {kConv, kBN, decode_fp8_m16_kernel<kConv, kBN>,
            (kConv & kConvW8)    ? V2Cfg<kBN>::kSmemW8
            : (kConv & kConvTma) ? V2Cfg<kBN>::kSmemTma
                                 : V2Cfg<kBN, pad>::kSmem,
            nullptr};
}
const V2Form kV2Forms[] = {
    v2_form<mla_decode_v2::kConvCvt | kV2Pad, 64>(), v2_form<mla_decode_v2::kConvCvt | kV2Pad, 32>(),
    v2_form<mla_decode_v2::kConvCvt, 64>(),          v2_form<mla_decode_v2::kConvCvt, 32>(),
    v2_form<mla_decode_v2::kConvCvt | mla_decode_v2::kConvH1, 64>(),
    v2_form<mla_decode_v2::kConvAlu, 32>(),          v2_form<kV2Q8, 64>(),
    v2_form<kV2W8, 64>(),
    v2_form<kV2Q8 | kV2Pad, 64>(),                   v2_form<kV2Tma, 64>(),
    {kV2Swap, 64, mla_decode_v2s::decode_fp8_m16_swap_kernel<false>, mla_decode_v2s::SwapCfg::kSmem, "swap"},
    {kV2SwapLazy, 64, mla_decode_v2s::decode_fp8_m16_swap_kernel<true>, mla_decode_v2s::SwapCfg::kSmemLazy, "lazy"},
    {kV2SwapQ3, 64, mla_decode_v2s::decode_fp8_m16_swap_kernel<false, 3>, mla_decode_v2s::SwapCfg::kSmem, "swapq3"},
    {kV2SwapQ8, 64, mla_decode_v2s::decode_fp8_m16_swap_kernel<false, 1, true>, mla_decode_v2s::SwapCfg::kSmem, "swap8"},
    {kV2SwapLazyQ8, 64, mla_decode_v2s::decode_fp8_m16_swap_kernel<true, 1, true>, mla_decode_v2s::SwapCfg::kSmemLazy,
     "lazy8"},
};
constexpr int kNumV2Forms = (int)(sizeof kV2Forms / sizeof kV2Forms[0]);
const V2Form *v2_form_of(int conv, int bn)
{
    for (int i = 0; i < kNumV2Forms; i++)
        if (kV2Forms[i].conv == conv && kV2Forms[i].bn == bn) return &kV2Forms[i];
    return &kV2Forms[bn == 64 ? 0 : 1]; // not reached: v2_conversion returns listed forms
}
// Whether a conversion code is one of decode_v2_swap.cuh's forms (same plan, same TMA stage):
// the table's entries that carry a form name.
bool swap_form(int conv)
{
    for (int i = 0; i < kNumV2Forms; i++)
        if (kV2Forms[i].conv == conv) return kV2Forms[i].name != nullptr;
    return false;
}
int v2_conversion(bool q_fp8, int bn)
{
    using namespace mla_decode_v2;
    static const char *const names[] = {"cvt", "alu", "q8", "w8", "swap", "lazy", "swapq3", "swap8", "lazy8"};
    static const char *const layouts[] = {"xor", "h1", "pad", "tma"};
    static CachedSwitch conv_slot, layout_slot;
    const int cached = cached_env_choice(conv_slot, "MLA_DECODE_V2_CONV", names, 9, 8);
    const int layout = cached_env_choice(layout_slot, "MLA_DECODE_V2_LAYOUT", layouts, 4, 3);
    if (cached == 4 && bn == 64 && layout == 3) return kV2Swap;
    if (cached == 5 && bn == 64 && layout == 3) return kV2SwapLazy;
    if (cached == 6 && bn == 64 && layout == 3) return kV2SwapQ3;
    if (cached == 7 && bn == 64 && layout == 3) return q_fp8 ? kV2SwapQ8 : kV2Swap;
    if (cached == 8 && bn == 64 && layout == 3) return q_fp8 ? kV2SwapLazyQ8 : kV2SwapLazy;
    if (cached == 1 && bn == 32) return kConvAlu;
    if (cached == 2 && bn == 64 && q_fp8) return layout >= 2 ? kV2Q8 | kV2Pad : kV2Q8;
    if (cached == 3 && bn == 64 && q_fp8) return kV2W8;
    if (layout == 1 && bn == 64) return kConvCvt | kConvH1;
    if (layout == 3 && bn == 64) return kV2Tma;
    if (layout >= 2) return kConvCvt | kV2Pad;
    return kConvCvt;
}

// Whether H * q_len <= 32 fp8 calls take the swap kernel (its conversion, block size and
// layout are the defaults or asked for): the plan then splits rows 17..32 into two 16-row head
// blocks. The query dtype does not matter to it.
bool v2_swap_selected()
{
    return swap_form(v2_conversion(false, v2_block_n()));
}

// Whether bf16-cache calls with H * q_len <= 32 take decode_bf16_swap.cuh (MLA_DECODE_BF16_SWAP,
// default 1; read once per process, like the variant, since the plan depends on it).
bool bf16_swap_selected()
{
    static const char *const names[] = {"0", "1"};
    static CachedSwitch slot;
    const int cached = cached_env_choice(slot, "MLA_DECODE_BF16_SWAP", names, 2, 1);
    return cached == 1;
}

// Whether fp8-cache calls take decode_bf16_swap.cuh's converter form, opt-in
// (MLA_DECODE_FP8_CONV: "0" none, the default; "32" rows 17..32; "all" rows <= 32; read once
// per process, the plan depends on it). Correct, but 2x slower than the swap kernel's two head
// blocks for 32 rows and 3.4x for 16 (H200, 2026-12-04: B64 H32 16k 0.622 ms against 0.314; its
// f16 ring holds less than two blocks, so conversion and math take turns; bench/NOTES.md).
int fp8_conv_rows()
{
    static const char *const names[] = {"0", "32", "all"};
    static CachedSwitch slot;
    const int cached = cached_env_choice(slot, "MLA_DECODE_FP8_CONV", names, 3, 0);
    return cached == 0 ? 0 : cached == 1 ? 32 : 16;
}
// Whether an fp8-cache call of this many rows takes the converter form.
bool fp8_conv_takes(int rows) { return fp8_conv_rows() && rows <= 32 && (fp8_conv_rows() == 16 || rows > 16); }

// fp8-cache rows 17..32 (MLA_DECODE_FP8_ROWS32, read once per process): "heads" two 16-row head
// blocks of the swap kernel, each converting every key block; "seesaw" decode_fp8_seesaw32.cuh,
// one CTA per SM whose two math warpgroups take the blocks in turn (each block's K and V
// converted once); "lazy": the seesaw with its owner's softmax against a lazy reference
// (kLazy); "seesaw8" / "lazy8": those two with, for an fp8 query, the owner's S^T in e4m3
// wgmma from the stage (kQ8); "auto" (default) "lazy8" (so "lazy" for a bf16 query) when the
// call is large enough (fp8_seesaw32_auto), else "heads". Both forms have num_sms parts of
// 64-key blocks, so the split layout and a decode plan fit either.
// H200 (bench/NOTES.md, nineteenth session), seesaw against heads, H32: B128 4k-8k 15-20%
// faster, B96 16k 18%, B96 4k 3.5%, B64 16k 14%, B64 8k 6%, B32 16k 6%; slower at B64 4k (8%),
// B32 4k (30%) and batch 1 64k (14%), where each part's fixed costs weigh more. Twenty-second
// session (2026-12-05): "lazy" 2-4% faster than "seesaw" (B128 H32 8k 0.2533 -> 0.2446 ms);
// with an fp8 query "lazy8" 14% faster than "seesaw" and 28% than heads (B64 H32 16k 0.3158 ->
// 0.2278), "seesaw8" 8%. Heads against the seesaw by total keys: heads faster at 64k-256k keys
// (batch 1 64k, B32 4k, B16 16k, B64 4k), the seesaw from 384k (B96 4k) and 512k (B64 8k 8%,
// B32 16k 9%, B128 4k) up; hence the rule below on the total when the host knows it (the
// index check read seq_lens, or a plan holds them), else on the batch.
// "pick" (opt-in, not yet measured): "auto" where the host knows the total or bounds it below
// the rule (batch x max_seq_len); otherwise both launches run and the GPU takes the rule's side
// (launch_rows32_pick), so that calls whose seq_lens stay on the device (CUDA graphs, no index
// check) get the key rule too, for one more near-empty grid per call.
constexpr int kSeesaw32MinBatch = 96;
using mla_decode_v2s::kSeesaw32MinKeys;
constexpr int kRows32Pick = 6;
int fp8_rows32_mode()
{
    static const char *const names[] = {"heads", "seesaw", "auto", "lazy", "seesaw8", "lazy8", "pick"};
    static CachedSwitch slot;
    const int cached = cached_env_choice(slot, "MLA_DECODE_FP8_ROWS32", names, 7, 2);
    return cached;
}
// Whether "pick" can leave the choice to the GPU: the head blocks run the lazy swap kernel on
// 64-key blocks (the forms with a pick instance; their plan has the seesaw's split layout).
bool rows32_pick_possible()
{
    return fp8_rows32_mode() == kRows32Pick && v2_block_n() == 64 &&
           v2_conversion(false, 64) == kV2SwapLazy;
}
// "auto"'s choice for a call of `batch` requests holding total_keys keys (0: not known on the
// host). The key rule only where heads would run the swap kernel on 64-key blocks: that plan
// has the seesaw's split layout, so a plan built without the total still fits the call.
bool fp8_seesaw32_auto(int batch, long long total_keys)
{
    if (total_keys > 0 && v2_swap_selected() && v2_block_n() == 64)
        return total_keys >= kSeesaw32MinKeys;
    return batch >= kSeesaw32MinBatch;
}
// Whether an fp8-cache call of this many rows, requests and keys takes decode_fp8_seesaw32.cuh.
// Under "pick" with the total unknown this says no: the plan is the head blocks' (the seesaw's
// split layout), and launch_variant decides whether the GPU picks.
bool fp8_seesaw32_takes(int rows, int batch, long long total_keys)
{
    if (rows <= 16 || rows > 32 || fp8_conv_takes(rows)) return false;
    const int mode = fp8_rows32_mode();
    if (mode == kRows32Pick)
        return total_keys > 0 || !rows32_pick_possible() ? fp8_seesaw32_auto(batch, total_keys) : false;
    return mode == 1 || (mode >= 3 && mode <= 5) || (mode == 2 && fp8_seesaw32_auto(batch, total_keys));
}

// Rows 17..32 on the bf16 swap kernel: MLA_DECODE_BF16_ROWS32=wg2 (two math warpgroups of 16
// rows sharing the ring) or n32 (one warpgroup, N = 32).
int bf16_swap_rows32()
{
    static const char *const names[] = {"n32", "wg2"};
    static CachedSwitch slot;
    const int cached = cached_env_choice(slot, "MLA_DECODE_BF16_ROWS32", names, 2, 1);
    return cached ? 2 : 1;
}

// total_keys: the sum of seq_lens, or 0 where the host does not know it (plan sizes, plan
// builds): it only picks between forms of the same split layout.
Plan make_plan(int num_sms, int batch, int q_len, int heads, Variant variant, bool fp8,
               long long total_keys = 0)
{
    Plan pl;
    pl.rows = q_len * heads;
    if (variant == kVariantWide) {
        pl.m = pl.rows <= 16 ? 16 : pl.rows <= 32 ? 32 : 64;
        pl.bn = 64;
        pl.ctas_per_sm = 1;
    } else if (pl.rows <= 32 && v2_family(variant) &&
               (fp8 ? fp8_conv_takes(pl.rows) || fp8_seesaw32_takes(pl.rows, batch, total_keys) : bf16_swap_selected())) {
        // decode_bf16_swap.cuh: all rows in one CTA per SM, 64-key blocks.
        pl.m = pl.rows <= 16 ? 16 : 32;
        pl.bn = 64;
        pl.ctas_per_sm = 1;
    } else if (pl.rows <= 32) {
        // fp8 rows 17..32 run the swap kernel as two 16-row head blocks when it is selected
        // (2.2x the mma.sync M = 32 kernel, which ran at ~20% of copy; a 32-row form converting
        // each block once was slower: bench/variants/decode/decode_v2_swap32.cuh, NOTES.md).
        pl.m = pl.rows <= 16 || (fp8 && v2_family(variant) && v2_swap_selected()) ? 16 : 32;
        pl.bn = fp8 && pl.m == 16 && v2_family(variant) ? v2_block_n() : 32;
        pl.ctas_per_sm = 2;
    } else {
        pl.m = 64;
        pl.bn = 64;
        pl.ctas_per_sm = 1;
    }
    pl.head_blocks = (pl.rows + pl.m - 1) / pl.m;
    pl.num_parts = num_sms * pl.ctas_per_sm / pl.head_blocks;
    if (pl.num_parts < 1) pl.num_parts = 1;
    if (pl.num_parts > MLA_DECODE_MAX_PARTS) pl.num_parts = MLA_DECODE_MAX_PARTS;
    return pl;
}

size_t bytes_for(const mla_cuda_device_info *dev, int batch, int q_len, int heads, int dv)
{
    // Sized for every variant, so that switching variants never needs a larger buffer.
    size_t need = 0;
    for (int v = 0; v < kNumVariants; v++)
        for (int fp8 = 0; fp8 < 2; fp8++) {
            const Plan pl = make_plan(dev->num_sms, batch, q_len, heads, (Variant)v, fp8);
            const mla_decode_split_layout L =
                mla_decode_split_layout_make(batch, pl.rows, dv, pl.num_parts);
            if (L.total_bytes > need) need = L.total_bytes;
        }
    return need;
}

template <bool FP8, int M, int BN, int NT> cudaError_t set_smem_attr()
{
    auto kernel = mla_decode_v1::decode_kernel<FP8, M, BN, NT>;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         Cfg<FP8, M, BN, NT>::kSmem);
    // All of the unified L1/shared storage as shared memory, so that the two-CTA variants
    // really get two CTAs per SM.
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                 (int)cudaSharedmemCarveoutMaxShared);
    if (e == cudaSuccess && getenv("MLA_DECODE_DEBUG")) {
        int blocks = 0;
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, NT, Cfg<FP8, M, BN, NT>::kSmem);
        fprintf(stderr, "libmla decode: fp8=%d M=%d BN=%d NT=%d smem=%d: %d CTAs/SM\n", (int)FP8, M,
                BN, NT, Cfg<FP8, M, BN, NT>::kSmem, blocks);
    }
    return e;
}

template <bool FP8> cudaError_t set_v3_smem_attr()
{
    auto kernel = mla_decode_v3::decode_wgmma_kernel<FP8>;
    const int bytes = mla_decode_v3::V3Cfg<FP8>::kSmem;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess && getenv("MLA_DECODE_DEBUG")) {
        int blocks = 0;
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, mla_decode_v3::kNT, bytes);
        fprintf(stderr, "libmla decode: v3 wgmma fp8=%d smem=%d: %d CTAs/SM\n", (int)FP8, bytes, blocks);
    }
    return e;
}

cudaError_t set_all_smem_attrs()
{
    cudaError_t e = cudaSuccess;
    if (e == cudaSuccess) {
        for (int i = 0; i < kNumV2Forms && e == cudaSuccess; i++) {
            auto k = kV2Forms[i].kernel;
            const int bytes = kV2Forms[i].smem;
            e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
            if (e == cudaSuccess)
                e = cudaFuncSetAttribute(k, cudaFuncAttributePreferredSharedMemoryCarveout,
                                         (int)cudaSharedmemCarveoutMaxShared);
            if (e == cudaSuccess && getenv("MLA_DECODE_DEBUG")) {
                int blocks = 0;
                cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, k, mla_decode_v2::kNT, bytes);
                fprintf(stderr, "libmla decode: v2 kernel %d smem=%d: %d CTAs/SM\n", i, bytes, blocks);
            }
        }
    }
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_bs::decode_bf16_swap_kernel<16, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 mla_decode_bs::BsCfg<16, 1>::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_bs::decode_bf16_swap_kernel<16, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 mla_decode_bs::BsCfg<16, 2>::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_bs::decode_bf16_swap_kernel<32, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 mla_decode_bs::BsCfg<32, 1>::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_bs::decode_bf16_swap_kernel<16, 1, true>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_bs::BsCfg<16, 1, true>::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_bs::decode_bf16_swap_kernel<16, 2, true>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_bs::BsCfg<16, 2, true>::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_s32::decode_fp8_m32_seesaw_kernel<false>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_s32::S32Cfg::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_s32::decode_fp8_m32_seesaw_kernel<true>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_s32::S32Cfg::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_s32::decode_fp8_m32_seesaw_kernel<false, true>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_s32::S32Cfg::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_s32::decode_fp8_m32_seesaw_kernel<true, true>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_s32::S32Cfg::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_s32::decode_fp8_m32_seesaw_kernel<true, false, true>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_s32::S32Cfg::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_s32::decode_fp8_m32_seesaw_kernel<true, true, true>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_s32::S32Cfg::kSmem);
    // The pick's head-block instances (not V2 forms of their own: MLA_DECODE_V2_CONV cannot name them).
    for (int q8 = 0; q8 < 2 && e == cudaSuccess; q8++) {
        void (*k)(Params) = q8 ? mla_decode_v2s::decode_fp8_m16_swap_kernel<true, 1, true, true>
                               : mla_decode_v2s::decode_fp8_m16_swap_kernel<true, 3, false, true>;
        e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_v2s::SwapCfg::kSmemLazy);
        if (e == cudaSuccess)
            e = cudaFuncSetAttribute(k, cudaFuncAttributePreferredSharedMemoryCarveout, (int)cudaSharedmemCarveoutMaxShared);
    }
    if (e == cudaSuccess) e = set_v3_smem_attr<true>();
    if (e == cudaSuccess) e = set_v3_smem_attr<false>();
    for (int bulk = 0; bulk < 2 && e == cudaSuccess; bulk++)
        e = cudaFuncSetAttribute(bulk ? mla_decode_v6::decode_seesaw_kernel<mla_decode_v6::kProdBulk>
                                      : mla_decode_v6::decode_seesaw_kernel<mla_decode_v6::kProdRegs>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_v6::V6Cfg::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_v6::decode_seesaw_kernel<mla_decode_v6::kProdTmaBf16>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, mla_decode_v6::V6Cfg::kSmem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mla_decode_v10::decode_fp8mma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 mla_decode_v10::Cfg::kSmem);
    if (e == cudaSuccess) e = set_smem_attr<true, 16, 32, 128>();
    if (e == cudaSuccess) e = set_smem_attr<true, 32, 32, 128>();
    if (e == cudaSuccess) e = set_smem_attr<true, 16, 64, 256>();
    if (e == cudaSuccess) e = set_smem_attr<true, 32, 64, 256>();
    if (e == cudaSuccess) e = set_smem_attr<true, 64, 64, 256>();
    if (e == cudaSuccess) e = set_smem_attr<false, 16, 32, 128>();
    if (e == cudaSuccess) e = set_smem_attr<false, 32, 32, 128>();
    if (e == cudaSuccess) e = set_smem_attr<false, 16, 64, 256>();
    if (e == cudaSuccess) e = set_smem_attr<false, 32, 64, 256>();
    if (e == cudaSuccess) e = set_smem_attr<false, 64, 64, 256>();
    return e;
}

// Attributes are per device; remember which devices have them (benign race: setting twice
// is harmless).
cudaError_t ensure_smem_attrs(int device)
{
    static unsigned long long done_mask = 0;
    const unsigned long long bit = device >= 0 && device < 64 ? 1ull << device : 0;
    if (bit && (done_mask & bit)) return cudaSuccess;
    cudaError_t e = set_all_smem_attrs();
    if (e == cudaSuccess) done_mask |= bit;
    return e;
}

// Every split kernel is a programmatic dependent of the scheduler: its CTAs start while the
// scheduler finishes and wait for its results in griddepcontrol.wait. Grid: (parts, head
// blocks).
cudaError_t launch_split(void (*kernel)(Params), const Params &prm, const Plan &pl, int threads, int smem,
                         cudaStream_t stream)
{
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = mla_pdl_launch_config(dim3((unsigned)pl.num_parts, (unsigned)pl.head_blocks),
                                                         dim3((unsigned)threads), (size_t)smem, stream, &attr);
    return cudaLaunchKernelEx(&cfg, kernel, prm);
}

template <bool FP8, int M, int BN, int NT>
cudaError_t launch_kernel(const Params &prm, const Plan &pl, cudaStream_t stream)
{
    return launch_split(mla_decode_v1::decode_kernel<FP8, M, BN, NT>, prm, pl, NT, Cfg<FP8, M, BN, NT>::kSmem, stream);
}

// One 2-D tensor map over the cache viewed as [num_pages * page_size rows, 576 elements of
// type dt], boxes of box_cols elements x box_rows rows. False when it cannot be made (no
// driver entry point, a base that is not 16-byte aligned, no pages); the caller falls back.
bool encode_cache_map(CUtensorMap *map, const Params &prm, CUtensorMapDataType dt, uint32_t box_cols,
                      uint32_t box_rows, CUtensorMapSwizzle swizzle)
{
    PFN_cuTensorMapEncodeTiled_v12000 encode = mla_tensor_map_encoder();
    if (!encode || (uintptr_t)prm.kv % 16 != 0 || prm.num_pages < 1) return false;
    const cuuint64_t esz = dt == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 ? 2 : 1;
    const cuuint64_t dims[2] = {(cuuint64_t)mla_decode_v1::kDqk, (cuuint64_t)prm.num_pages * (cuuint64_t)prm.page_size};
    const cuuint64_t strides[1] = {(cuuint64_t)mla_decode_v1::kDqk * esz};
    const cuuint32_t elem_strides[2] = {1, 1}, box[2] = {box_cols, box_rows};
    return encode(map, dt, 2, const_cast<uint8_t *>(prm.kv), dims, strides, box, elem_strides,
                  CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The fp8 cache as TMA sees it in v2's kConvTma form (Params::kv_tma): [0] 128-byte columns in
// the 128-byte swizzle, [1] the 64-byte rope column in the 64-byte swizzle, in boxes of
// box_rows rows (64 for page 64: one box per column block of a block; else 32).
bool encode_kv_maps(Params &prm, uint32_t box_rows)
{
    return encode_cache_map(&prm.kv_tma[0], prm, CU_TENSOR_MAP_DATA_TYPE_UINT8, 128, box_rows,
                            CU_TENSOR_MAP_SWIZZLE_128B) &&
           encode_cache_map(&prm.kv_tma[1], prm, CU_TENSOR_MAP_DATA_TYPE_UINT8, 64, box_rows,
                            CU_TENSOR_MAP_SWIZZLE_64B);
}

// v10's maps (decode_v10_fp8mma.cuh issue_k_warp): 64-byte columns in the 64-byte swizzle, in
// boxes of 64 rows ([0], a whole 64-key block when its two halves are adjacent cache rows) and
// of 32 rows ([1], one half).
bool encode_kv_maps_v10(Params &prm)
{
    return encode_cache_map(&prm.kv_tma[0], prm, CU_TENSOR_MAP_DATA_TYPE_UINT8, 64, 64, CU_TENSOR_MAP_SWIZZLE_64B) &&
           encode_cache_map(&prm.kv_tma[1], prm, CU_TENSOR_MAP_DATA_TYPE_UINT8, 64, 32, CU_TENSOR_MAP_SWIZZLE_64B);
}

// The bf16 cache as the v9 seesaw's TMA producer sees it: boxes of 64 dims x 32 rows
// (kv_tma[0], one column block of half a tile) and x 64 rows (kv_tma[1], a whole column
// block) in the 128-byte swizzle.
bool encode_kv_maps_bf16(Params &prm)
{
    return encode_cache_map(&prm.kv_tma[0], prm, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 64, 32,
                            CU_TENSOR_MAP_SWIZZLE_128B) &&
           encode_cache_map(&prm.kv_tma[1], prm, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 64, 64,
                            CU_TENSOR_MAP_SWIZZLE_128B);
}

// The fp8 cache as decode_bf16_swap.cuh's converter loads it: 64-byte columns, unswizzled, in
// boxes of 32 rows ([0], page 32) and 64 rows ([1], page 64).
bool encode_kv_maps_fp8_plain(Params &prm)
{
    return encode_cache_map(&prm.kv_tma[0], prm, CU_TENSOR_MAP_DATA_TYPE_UINT8, 64, 32, CU_TENSOR_MAP_SWIZZLE_NONE) &&
           encode_cache_map(&prm.kv_tma[1], prm, CU_TENSOR_MAP_DATA_TYPE_UINT8, 64, 64, CU_TENSOR_MAP_SWIZZLE_NONE);
}

// *half_partials: whether the kernel it ran writes float16 partials (every v2 form does; the v1
// fallback below does not).
cudaError_t launch_v2_fp8_m16(const Params &prm, const Plan &pl, bool *half_partials, cudaStream_t stream)
{
    using namespace mla_decode_v2;
    *half_partials = true;
    int conv = v2_conversion(prm.q_fp8, pl.bn);
    if (swap_form(conv) || conv == kV2Tma) {
        Params tp = prm;
        if (encode_kv_maps(tp, prm.page_size == 64 && pl.bn == 64 ? 64 : 32)) {
            const V2Form *f = v2_form_of(conv, pl.bn);
            return launch_split(f->kernel, tp, pl, kNT, f->smem, stream);
        }
        conv = kConvCvt | kV2Pad;
    }
    if (pl.head_blocks > 1) {
        // Rows 17..32 were planned for the swap kernel, whose tensor map could not be made;
        // the mma.sync forms take one 16-row tile only, v1's M = 16 kernel takes head blocks.
        *half_partials = false;
        return pl.bn == 32 ? launch_kernel<true, 16, 32, 128>(prm, pl, stream)
                           : launch_kernel<true, 16, 64, 256>(prm, pl, stream);
    }
    const V2Form *f = v2_form_of(conv, pl.bn);
    return launch_split(f->kernel, prm, pl, kNT, f->smem, stream);
}

template <bool FP8> cudaError_t launch_v3(const Params &prm, const Plan &pl, cudaStream_t stream)
{
    return launch_split(mla_decode_v3::decode_wgmma_kernel<FP8>, prm, pl, mla_decode_v3::kNT,
                        mla_decode_v3::V3Cfg<FP8>::kSmem, stream);
}

// The fp8-cache kernel for H * q_len <= 16 (decode_v2_fp8reg.cuh), the one that writes float16
// partials (decode_split.cuh).
bool runs_v2_fp8_m16(const Plan &pl, bool fp8)
{
    return fp8 && pl.m == 16 && pl.ctas_per_sm == 2 && v2_family(selected_variant());
}

// Whether the plan's call runs decode_fp8_seesaw32.cuh (when its tensor maps can be made), and
// in which form: the lazy softmax, S^T in e4m3 wgmma ("auto" runs "lazy8").
bool runs_fp8_seesaw32(const Plan &pl, bool fp8, int batch, long long total_keys)
{
    return fp8 && pl.m == 32 && pl.bn == 64 && pl.ctas_per_sm == 1 && v2_family(selected_variant()) &&
           fp8_seesaw32_takes(pl.rows, batch, total_keys);
}
void seesaw32_form(bool q_fp8, bool *lazy, bool *q8)
{
    const int mode = fp8_rows32_mode();
    *lazy = mode == 2 || mode == 3 || mode == 5 || mode == kRows32Pick;
    *q8 = (mode == 2 || mode >= 4) && q_fp8;
}

// Whether this call leaves the 17..32-row choice to the GPU (MLA_DECODE_FP8_ROWS32=pick): the
// head-block plan, the total unknown on the host, and max_keys (batch x the longest possible
// request) not below the rule, which would settle it for the head blocks.
bool runs_rows32_pick(const Plan &pl, bool fp8, long long total_keys, long long max_keys)
{
    return fp8 && pl.rows > 16 && pl.rows <= 32 && pl.m == 16 && pl.bn == 64 && pl.ctas_per_sm == 2 &&
           v2_family(selected_variant()) && !fp8_conv_takes(pl.rows) && total_keys == 0 &&
           rows32_pick_possible() && max_keys >= kSeesaw32MinKeys;
}

// MLA_DECODE_FP8_ROWS32=pick on the GPU: the head-block grid of the lazy swap kernel, then the
// lazy 32-row seesaw's grid, on the head blocks' plan (num_sms parts of 64-key blocks, the
// seesaw's too: the schedule, the partials and the combine are the same); each CTA of either
// reads the call's key blocks after its wait, and only the grid on the rule's side works
// (decode_v2_swap.cuh rows32_seesaw_side). The seesaw grid waits (PDL) for the head-block
// grid, so the combine, which waits for the seesaw grid, sees the partials of both.
cudaError_t launch_rows32_pick(const Params &prm, const Plan &pl, bool *half_partials, cudaStream_t stream)
{
    Params tp = prm;
    if (!encode_kv_maps(tp, prm.page_size == 64 ? 64 : 32)) return launch_v2_fp8_m16(prm, pl, half_partials, stream);
    *half_partials = true;
    using mla_decode_v2s::decode_fp8_m16_swap_kernel;
    using mla_decode_s32::decode_fp8_m32_seesaw_kernel;
    void (*heads)(Params) = prm.q_fp8 ? decode_fp8_m16_swap_kernel<true, 1, true, true>
                                      : decode_fp8_m16_swap_kernel<true, 3, false, true>;
    cudaError_t e = launch_split(heads, tp, pl, mla_decode_v2::kNT, mla_decode_v2s::SwapCfg::kSmemLazy, stream);
    if (e != cudaSuccess) return e;
    Plan seesaw_plan = pl;
    seesaw_plan.m = 32;
    seesaw_plan.head_blocks = 1;
    seesaw_plan.ctas_per_sm = 1;
    void (*seesaw)(Params) = prm.q_fp8 ? decode_fp8_m32_seesaw_kernel<true, true, true>
                                       : decode_fp8_m32_seesaw_kernel<true, false, true>;
    return launch_split(seesaw, tp, seesaw_plan, mla_decode_s32::kNT, mla_decode_s32::S32Cfg::kSmem, stream);
}

// Whether an fp8-query, fp8-cache call with rows >= 64 takes v10: MLA_DECODE_VARIANT=v10, or
// mla_config.decode_fp8_math with the default variant (another variant named for a comparison
// wins). v10 runs on v7's plan, so a decode plan does not depend on this.
bool takes_v10(bool fp8_math)
{
    const Variant v = selected_variant();
    return v == kVariantV10 || (fp8_math && v == kVariantV2);
}

// Launches the split kernel for this plan; *half_partials: whether the kernel it picked writes
// float16 partials (the H * q_len <= 16 fp8 kernel always; the fp8-cache wgmma kernels, whose
// rows go through decode_v3_wgmma.cuh's write_rows, when built with -DMLA_WIDE_HALF_PARTIALS),
// which the combine must know. total_keys: as make_plan's (the same value, so both pick alike).
// max_keys: batch x the longest request the call can have (runs_rows32_pick).
template <bool FP8>
cudaError_t launch_variant(const Params &prm, const Plan &pl, bool fp8_math, long long total_keys,
                           long long max_keys, bool *half_partials, cudaStream_t stream)
{
    *half_partials = false;
    if (runs_rows32_pick(pl, FP8, total_keys, max_keys)) return launch_rows32_pick(prm, pl, half_partials, stream);
    if (runs_v2_fp8_m16(pl, FP8)) return launch_v2_fp8_m16(prm, pl, half_partials, stream);
    if (runs_fp8_seesaw32(pl, FP8, prm.batch, total_keys)) {
        Params tp = prm;
        if (encode_kv_maps(tp, prm.page_size == 64 ? 64 : 32)) {
            *half_partials = true;
            using namespace mla_decode_s32;
            bool lazy, q8;
            seesaw32_form(prm.q_fp8, &lazy, &q8);
            void (*kernel)(Params) = q8 ? (lazy ? decode_fp8_m32_seesaw_kernel<true, true>
                                                : decode_fp8_m32_seesaw_kernel<false, true>)
                                        : (lazy ? decode_fp8_m32_seesaw_kernel<true> : decode_fp8_m32_seesaw_kernel<false>);
            return launch_split(kernel, tp, pl, mla_decode_s32::kNT, S32Cfg::kSmem, stream);
        }
        // No tensor map: version 1's one-CTA-per-SM form runs the same plan.
        return launch_kernel<true, 32, 64, 256>(prm, pl, stream);
    }
    if (FP8 && pl.rows <= 32 && pl.bn == 64 && pl.ctas_per_sm == 1 && v2_family(selected_variant()) &&
        fp8_conv_takes(pl.rows)) {
        Params tp = prm;
        if (encode_kv_maps_fp8_plain(tp)) {
            using namespace mla_decode_bs;
            return pl.m == 16 ? launch_split(decode_bf16_swap_kernel<16, 1, true>, tp, pl, BsCfg<16, 1, true>::kNT,
                                             BsCfg<16, 1, true>::kSmem, stream)
                              : launch_split(decode_bf16_swap_kernel<16, 2, true>, tp, pl, BsCfg<16, 2, true>::kNT,
                                             BsCfg<16, 2, true>::kSmem, stream);
        }
        // No tensor map: version 1's one-CTA-per-SM form runs the same plan.
        return pl.m == 16 ? launch_kernel<true, 16, 64, 256>(prm, pl, stream)
                          : launch_kernel<true, 32, 64, 256>(prm, pl, stream);
    }
    if (!FP8 && pl.rows <= 32 && pl.bn == 64 && pl.ctas_per_sm == 1 && v2_family(selected_variant()) &&
        bf16_swap_selected()) {
        Params tp = prm;
        if (encode_kv_maps_bf16(tp)) {
            using namespace mla_decode_bs;
            if (pl.m == 16) return launch_split(decode_bf16_swap_kernel<16, 1>, tp, pl, BsCfg<16, 1>::kNT, BsCfg<16, 1>::kSmem, stream);
            if (bf16_swap_rows32() == 2)
                return launch_split(decode_bf16_swap_kernel<16, 2>, tp, pl, BsCfg<16, 2>::kNT, BsCfg<16, 2>::kSmem, stream);
            return launch_split(decode_bf16_swap_kernel<32, 1>, tp, pl, BsCfg<32, 1>::kNT, BsCfg<32, 1>::kSmem, stream);
        }
        // No tensor map: version 1's one-CTA-per-SM form runs the same plan.
        return pl.m == 16 ? launch_kernel<false, 16, 64, 256>(prm, pl, stream)
                          : launch_kernel<false, 32, 64, 256>(prm, pl, stream);
    }
    constexpr bool kWideHalf = FP8 && mla_decode_v3::kWideHalfPartials;
    // The wgmma kernel uses the plan of the v1 M = 64 kernel (64-key blocks, one CTA per SM).
    if (FP8 && prm.q_fp8 && pl.m == 64 && pl.bn == 64 && pl.ctas_per_sm == 1 && pl.rows >= 64 &&
        takes_v10(fp8_math)) {
        Params tp = prm;
        if (encode_kv_maps_v10(tp)) {
            *half_partials = kWideHalf;
            return launch_split(mla_decode_v10::decode_fp8mma_kernel, tp, pl, mla_decode_v10::kNT,
                                mla_decode_v10::Cfg::kSmem, stream);
        }
    }
    if (FP8 && pl.m == 64 && pl.bn == 64 && pl.ctas_per_sm == 1 && seesaw_version(pl.rows)) {
        *half_partials = kWideHalf;
        return launch_split(seesaw_version(pl.rows) == 7 ? mla_decode_v6::decode_seesaw_kernel<mla_decode_v6::kProdBulk>
                                                         : mla_decode_v6::decode_seesaw_kernel<mla_decode_v6::kProdRegs>,
                            prm, pl, mla_decode_v6::kNT, mla_decode_v6::V6Cfg::kSmem, stream);
    }
    if (!FP8 && pl.m == 64 && pl.bn == 64 && pl.ctas_per_sm == 1 && bf16_seesaw(pl.rows)) {
        Params tp = prm;
        if (encode_kv_maps_bf16(tp))
            return launch_split(mla_decode_v6::decode_seesaw_kernel<mla_decode_v6::kProdTmaBf16>, tp, pl,
                                mla_decode_v6::kNT, mla_decode_v6::V6Cfg::kSmem, stream);
    }
    if (pl.m == 64 && pl.bn == 64 && pl.ctas_per_sm == 1 && use_wgmma(pl.rows)) {
        *half_partials = kWideHalf;
        return launch_v3<FP8>(prm, pl, stream);
    }
    if (pl.bn == 32) {
        return pl.m == 16 ? launch_kernel<FP8, 16, 32, 128>(prm, pl, stream)
                          : launch_kernel<FP8, 32, 32, 128>(prm, pl, stream);
    }
    if (pl.m == 16) return launch_kernel<FP8, 16, 64, 256>(prm, pl, stream);
    if (pl.m == 32) return launch_kernel<FP8, 32, 64, 256>(prm, pl, stream);
    return launch_kernel<FP8, 64, 64, 256>(prm, pl, stream);
}

} // namespace

extern "C" size_t mla_cuda_decode_workspace_size(const mla_cuda_device_info *dev, int batch,
                                                 int q_len, int num_heads, int kv_lora_rank)
{
    if (batch < 1) batch = 1;
    if (q_len < 1) q_len = 1;
    // The layout is not monotone in q_len (the part count changes with the head blocks), so
    // size for every q_len up to the given one: a buffer sized for max_q_len fits them all.
    size_t need = 0;
    for (int q = 1; q <= q_len; q++) {
        const size_t b = bytes_for(dev, batch, q, num_heads, kv_lora_rank);
        if (b > need) need = b;
    }
    const size_t rule = (size_t)dev->num_sms * num_heads * q_len * (kv_lora_rank + 1) * 4;
    return need > rule ? need : rule;
}

// A separate plan (mla_decode_plan in the public API) holds the layout's int arrays: the
// first off_lse bytes. The layout depends on (batch, q_len, heads, kv dtype) and, through the
// selected variant's part count and block size, on MLA_DECODE_VARIANT / MLA_DECODE_V2_BN,
// which are read once per process, so a plan and the calls that use it always agree.
extern "C" size_t mla_cuda_decode_plan_size(const mla_cuda_device_info *dev, int batch, int q_len,
                                            int num_heads, int fp8_kv)
{
    if (batch < 1) batch = 1;
    if (q_len < 1) q_len = 1;
    const Plan pl = make_plan(dev->num_sms, batch, q_len, num_heads, selected_variant(), fp8_kv != 0);
    return mla_decode_split_layout_make(batch, pl.rows, mla_decode_v1::kDv, pl.num_parts).off_lse;
}

// Keys a call can hold at most: batch x its longest request (the problem's max_seq_len, which
// the base backend already bounds by the caller's max_seq_len and the block table's capacity).
static long long call_max_keys(const mla_decode_problem *p)
{
    return (long long)p->batch * p->max_seq_len;
}

static int check_decode_problem(const mla_decode_problem *p)
{
    if (p->kv_lora_rank != mla_decode_v1::kDv || p->rope_dim != mla_decode_v1::kDqk - mla_decode_v1::kDv)
        return (int)cudaErrorNotSupported;
    if (p->page_size != 32 && p->page_size != 64) return (int)cudaErrorNotSupported;
    if (p->kv_dtype != MLA_DTYPE_FP8_E4M3 && p->kv_dtype != MLA_DTYPE_BF16)
        return (int)cudaErrorNotSupported;
    if (p->q_dtype != MLA_DTYPE_FP8_E4M3 && p->q_dtype != MLA_DTYPE_BF16)
        return (int)cudaErrorNotSupported;
    if (p->num_heads < 1 || p->q_len < 1) return (int)cudaErrorInvalidValue;
    return (int)cudaSuccess;
}

// The scheduling step alone, into p->plan (plan bytes as above): what a call without a plan
// runs first. Uses batch, q_len, heads, kv dtype, page size, block-table width, seq_lens.
extern "C" int mla_cuda_decode_plan(const mla_cuda_device_info *dev, const mla_decode_problem *p,
                                    uint32_t *device_error_flags)
{
    int rc = check_decode_problem(p);
    if (rc != (int)cudaSuccess || p->batch < 1) return rc;
    if (!p->plan) return (int)cudaErrorInvalidValue;
    const Plan pl = make_plan(dev->num_sms, p->batch, p->q_len, p->num_heads, selected_variant(),
                              p->kv_dtype == MLA_DTYPE_FP8_E4M3);
    const mla_decode_split_layout L =
        mla_decode_split_layout_make(p->batch, pl.rows, mla_decode_v1::kDv, pl.num_parts);
    const mla_decode_sched s = mla_decode_sched_at(p->plan, p->plan, &L); // no partials used
    return (int)mla_launch_decode_schedule(p->seq_lens, p->batch, p->max_pages_per_seq * p->page_size, pl.bn,
                                           pl.num_parts, align_uniform(), device_error_flags, &s,
                                           (cudaStream_t)p->stream);
}

extern "C" int mla_cuda_decode(const mla_cuda_device_info *dev, const mla_decode_problem *p,
                               uint32_t *device_error_flags)
{
    int rc = check_decode_problem(p);
    if (rc != (int)cudaSuccess) return rc;
    if (p->batch < 1) return (int)cudaSuccess;

    const Plan pl = make_plan(dev->num_sms, p->batch, p->q_len, p->num_heads, selected_variant(),
                              p->kv_dtype == MLA_DTYPE_FP8_E4M3, p->total_keys);
    const mla_decode_split_layout L =
        mla_decode_split_layout_make(p->batch, pl.rows, mla_decode_v1::kDv, pl.num_parts);
    if (!p->workspace || p->workspace_bytes < L.total_bytes) return (int)cudaErrorInvalidValue;
    cudaError_t e = ensure_smem_attrs(dev->device);
    if (e != cudaSuccess) return (int)e;

    cudaStream_t stream = (cudaStream_t)p->stream;
    // With a plan built earlier (same batch, q_len and seq_lens: the base backend checks what
    // it can), the scheduling step is skipped; the split kernel then waits (PDL) on whatever
    // precedes it, and the plan's scheduler grid finished before that.
    const mla_decode_sched s = p->plan ? mla_decode_sched_at(p->plan, p->workspace, &L)
                                       : mla_decode_sched_from(p->workspace, &L);
    if (!p->plan) {
        const int max_keys = p->max_pages_per_seq * p->page_size;
        e = mla_launch_decode_schedule(p->seq_lens, p->batch, max_keys, pl.bn, pl.num_parts, align_uniform(),
                                       device_error_flags, &s, stream);
        if (e != cudaSuccess) return (int)e;
    }

    Params prm = {}; // kv_tma stays zero unless the TMA form encodes it
    prm.q = p->q;
    prm.kv = (const uint8_t *)p->kv_cache;
    prm.block_table = p->block_table;
    prm.seq_lens = p->seq_lens;
    prm.out = (uint16_t *)p->out;
    prm.lse = p->lse;
    prm.err = device_error_flags;
    prm.s = s;
    prm.batch = p->batch;
    prm.q_len = p->q_len;
    prm.heads = p->num_heads;
    prm.rows = pl.rows;
    prm.page_size = p->page_size;
    prm.page_shift = p->page_size == 64 ? 6 : 5;
    prm.num_pages = p->num_pages;
    prm.max_pages = p->max_pages_per_seq;
    prm.causal = p->causal;
    prm.q_fp8 = p->q_dtype == MLA_DTYPE_FP8_E4M3;
    prm.scale_log2 = p->bmm1_scale * 1.4426950408889634f;
    prm.bmm2 = p->bmm2_scale;

    bool half = false;
    const long long max_keys = call_max_keys(p);
    e = p->kv_dtype == MLA_DTYPE_FP8_E4M3
            ? launch_variant<true>(prm, pl, p->fp8_math != 0, p->total_keys, max_keys, &half, stream)
            : launch_variant<false>(prm, pl, p->fp8_math != 0, p->total_keys, max_keys, &half, stream);
    if (e != cudaSuccess) return (int)e;
    e = mla_launch_decode_combine(&s, p->batch, pl.rows, mla_decode_v1::kDv, pl.num_parts, half,
                                  p->bmm2_scale, p->out, p->lse, stream);
    return (int)e;
}

extern "C" const char *mla_cuda_decode_form(const mla_cuda_device_info *dev, const mla_decode_problem *p,
                                            int *head_blocks)
{
    *head_blocks = 0;
    if (check_decode_problem(p) != (int)cudaSuccess || p->batch < 1) return "none";
    const bool fp8 = p->kv_dtype == MLA_DTYPE_FP8_E4M3, q_fp8 = p->q_dtype == MLA_DTYPE_FP8_E4M3;
    const Plan pl = make_plan(dev->num_sms, p->batch, p->q_len, p->num_heads, selected_variant(), fp8,
                              p->total_keys);
    *head_blocks = pl.head_blocks;
    if (runs_rows32_pick(pl, fp8, p->total_keys, call_max_keys(p))) return q_fp8 ? "pick lazy8" : "pick lazy";
    if (runs_fp8_seesaw32(pl, fp8, p->batch, p->total_keys)) {
        bool lazy, q8;
        seesaw32_form(q_fp8, &lazy, &q8);
        return q8 ? (lazy ? "seesaw32 lazy8" : "seesaw32 seesaw8") : (lazy ? "seesaw32 lazy" : "seesaw32 seesaw");
    }
    if (runs_v2_fp8_m16(pl, fp8)) {
        const char *name = v2_form_of(v2_conversion(q_fp8, pl.bn), pl.bn)->name;
        return name ? name : "v2 mma.sync";
    }
    return "other";
}

extern "C" void mla_cuda_decode_reread_switches(void)
{
    g_switch_generation.fetch_add(1, std::memory_order_acq_rel);
}

extern "C" int mla_cuda_decode_warmup(const mla_cuda_device_info *dev)
{
    // Setting the attributes loads the module and every variant.
    return (int)ensure_smem_attrs(dev->device);
}

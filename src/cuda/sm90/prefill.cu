// Ragged MLA prefill attention for Hopper (sm_90a): FlashAttention-style, wgmma + TMA, warp
// specialised.
//
// q [total_q, H, 192], k [total_kv, H, 192], v [total_kv, H, 128] (bf16, or e4m3 with the
// per-tensor scales folded into bmm1_scale / bmm2_scale), out bf16 [total_q, H, 128],
// optional natural-log LSE [total_q, H]. Causal masking is bottom-right aligned: row i of a
// request with lq queries and lkv keys sees keys [0, lkv - lq + i].
//
// One CTA = 128 query rows of one (request, head), three warpgroups:
//  * producer (warpgroup 0, few registers): one thread issues TMA loads of the Q tile and of
//    K/V tiles of 128 keys into a ring of shared-memory stages (mbarrier "full" / "empty"
//    handshakes), up to a full ring ahead. For e4m3, warps 1..3 transpose each V tile as it
//    lands (e4m3 wgmma has no transpose, V must be K-major); for bf16, warp 1 zeroes the V
//    rows of the last tile that lie past the request's end.
//  * two consumers (64 query rows each, 240/232 registers): S = Q K^T from shared memory,
//    online softmax in registers, O += P V with P as the register A operand. Named barriers
//    alternate their MMA turns (ping-pong) and each turn issues S_j together with
//    P_{j-1} V_{j-1}, so a warpgroup's softmax overlaps its own P V and the other's MMAs.
// CTAs of one head are adjacent in launch order so they share K/V through L2.
// Performance history and numbers: bench/NOTES.md ("Prefill").
#include "mla_cuda.h"
#include "prefill_wgmma.cuh"
#include "tensor_map.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

namespace mla_sm90 {

constexpr int kBlockM = 128;  // query rows per CTA
constexpr int kBlockN = 128;  // keys per tile
constexpr int kDimQK = 192;
constexpr int kDimV = 128;
constexpr int kThreads = 384; // producer + two consumer warpgroups
constexpr int kTransposers = 96; // fp8: producer warps 1..3 transpose V tiles

template <bool FP8> struct PrefillCfg {
    static constexpr int kElem = FP8 ? 1 : 2;
    // Q and K are stored as column blocks of 64 elements: rows of 128 bytes with the 128-byte
    // swizzle (bf16) or rows of 64 bytes with the 64-byte swizzle (e4m3), exactly the boxes
    // TMA writes. bf16 V: two 64-dim blocks, N-major. e4m3 V: transposed to [128 dims][128
    // keys] as two 64-key blocks (64-byte swizzle), from a staging tile with 128-byte rows.
    static constexpr int kRowBytes = 64 * kElem;
    static constexpr uint32_t kSwizzle = FP8 ? 2 : 1;     // descriptor layout type
    static constexpr uint32_t kAtomBytes = 8 * kRowBytes; // 8-row swizzle atom = SBO
    static constexpr int kStages = FP8 ? 3 : 2;
    static constexpr int kQBytes = kBlockM * kDimQK * kElem;
    static constexpr int kKBytes = kBlockN * kDimQK * kElem;
    static constexpr int kVBytes = kBlockN * kDimV * kElem;
    static constexpr int kStageBytes = kKBytes + kVBytes * (FP8 ? 2 : 1); // fp8: + staging
    static constexpr int kBarrierOffset = kQBytes + kStages * kStageBytes;
    static constexpr int kSmemBytes = kBarrierOffset + 256 + 1024; // barriers + alignment slack
    // setmaxnreg moves registers within the CTA's launch allocation (384 x 168 = 64512):
    // 128 * producer + 256 * consumer must not exceed it, or the increase waits forever.
    static constexpr int kProducerRegs = FP8 ? 40 : 24;
    static constexpr int kConsumerRegs = FP8 ? 232 : 240;
    static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= kThreads * 168, "register budget");
};

// ---- shared-memory barrier and TMA helpers (PTX) ----
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity)
{
    asm volatile(
        "{\n.reg .pred done;\n"
        "wait_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra wait_%=;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap *map, int c0, int c1, int c2, uint32_t bar)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
                 : "memory");
}
// Makes generic-proxy shared-memory writes visible to wgmma (async proxy).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }

__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ uint32_t pack_e4m3x4(float a, float b, float c, float d)
{
    uint16_t lo, hi;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(b), "f"(a));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(d), "f"(c));
    return (uint32_t)lo | ((uint32_t)hi << 16);
}

// e4m3 V transpose, one work item = 4 keys x 16 dims. Keys are taken in the order the e4m3
// A-operand fragment of P expects: position p = 16h + 4q + j of a 32-key group holds key
// 16h + 8(j/2) + 2q + (j%2), which is where the S accumulator layout puts them, so P needs no
// shuffles. Source: staging tile [128 keys][128 bytes], 128-byte swizzle (TMA). Destination:
// Vt [128 dims][128 positions] as two 64-position blocks with the 64-byte swizzle. Keys at or
// past valid_keys are written as zeros.
__device__ __forceinline__ void transpose_v_fp8_item(uint32_t stage, uint32_t vt, int item, int valid_keys)
{
    const int pquad = item & 31, dgroup = item >> 5;
    const int kb = 32 * (pquad >> 3) + 16 * ((pquad >> 2) & 1) + 2 * (pquad & 3);
    const int pos = 4 * pquad;
    const uint32_t blk_base = vt + (uint32_t)((pos >> 6) * kDimV * 64);
    const int chunk = (pos & 63) >> 4, within = pos & 15;
    // Two halves of 8 dims each keep the producer's register use low (it runs with 40).
#pragma unroll 1
    for (int half = 0; half < 2; half++) {
        uint32_t x[4][2];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int key = kb + (j >> 1) * 8 + (j & 1);
            const uint32_t addr = stage + (uint32_t)(key * 128 + ((dgroup ^ (key & 7)) << 4) + half * 8);
            asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(x[j][0]), "=r"(x[j][1]) : "r"(addr));
            if (key >= valid_keys) x[j][0] = x[j][1] = 0u; // past the request's end
        }
#pragma unroll
        for (int w = 0; w < 2; w++) {
            const uint32_t lo01 = __byte_perm(x[0][w], x[1][w], 0x5140), hi01 = __byte_perm(x[0][w], x[1][w], 0x7362);
            const uint32_t lo23 = __byte_perm(x[2][w], x[3][w], 0x5140), hi23 = __byte_perm(x[2][w], x[3][w], 0x7362);
            const uint32_t out[4] = {__byte_perm(lo01, lo23, 0x5410), __byte_perm(lo01, lo23, 0x7632),
                                     __byte_perm(hi01, hi23, 0x5410), __byte_perm(hi01, hi23, 0x7632)};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int dim = dgroup * 16 + half * 8 + 4 * w + i;
                const uint32_t addr = blk_base + (uint32_t)(dim * 64 + ((chunk ^ ((dim >> 1) & 3)) << 4) + within);
                asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(out[i]) : "memory");
            }
        }
    }
}

struct PrefillParams {
    const int32_t *cu_seqlens_q, *cu_seqlens_kv;
    uint16_t *out;
    float *lse;
    int num_heads;
    int total_q, total_kv;
    float scale_log2; // bmm1_scale * log2(e)
    float bmm2_scale;
};

template <bool FP8, bool CAUSAL>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                   const __grid_constant__ CUtensorMap tm_v, const PrefillParams p)
{
    using C = PrefillCfg<FP8>;
    constexpr int S = C::kStages;
    extern __shared__ uint8_t smem_raw[];
    const uint32_t smem_base = ((uint32_t)__cvta_generic_to_shared(smem_raw) + 1023u) & ~1023u;
    const uint32_t sQ = smem_base;
    const uint32_t sStage0 = sQ + C::kQBytes; // stage s at sStage0 + s * kStageBytes: K, V(t), [staging]
    const uint32_t bar0 = smem_base + C::kBarrierOffset;
    // Barriers: q_full, k_full[S], v_full[S] (V ready for P V: loaded, or transposed for fp8),
    // stage_full[S] (fp8 staging tile landed), empty_k[S] / empty_v[S] (both consumers done
    // with the stage's K / V; released separately because S_j finishes a turn before P_j V_j).
    const uint32_t bar_q = bar0;
    auto bar_k = [&](int s) { return bar0 + 8u * (uint32_t)(1 + s); };
    auto bar_v = [&](int s) { return bar0 + 8u * (uint32_t)(1 + S + s); };
    auto bar_stage = [&](int s) { return bar0 + 8u * (uint32_t)(1 + 2 * S + s); };
    auto bar_empty_k = [&](int s) { return bar0 + 8u * (uint32_t)(1 + 3 * S + s); };
    auto bar_empty_v = [&](int s) { return bar0 + 8u * (uint32_t)(1 + 4 * S + s); };

    // Query tiles of one head are neighbours in launch order, so the CTAs that stream the
    // same K/V run together and share it through L2 (one head's K/V is read from HBM about
    // once instead of once per tile); within a head the heaviest (latest) tiles go first.
    const int tile = gridDim.x - 1 - blockIdx.x;
    const int head = blockIdx.y;
    const int b = blockIdx.z;
    // Clamped so unchecked index data (skip_index_check) never reads or writes out of bounds.
    const int q_start = max(0, p.cu_seqlens_q[b]);
    const int lq = max(0, min(p.cu_seqlens_q[b + 1], p.total_q) - q_start);
    const int kv_start = max(0, p.cu_seqlens_kv[b]);
    const int lkv = max(0, min(p.cu_seqlens_kv[b + 1], p.total_kv) - kv_start);
    const int q0 = tile * kBlockM;
    if (q0 >= lq) return; // whole CTA, before any barrier

    // Keys [0, key_end) can be visible to some row of this CTA.
    int key_end = lkv;
    if (CAUSAL) key_end = min(lkv, lkv - lq + q0 + kBlockM);
    const int num_tiles = key_end > 0 ? (key_end + kBlockN - 1) / kBlockN : 0;

    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    if (tid == 0) {
        mbar_init(bar_q, 1);
        for (int s = 0; s < S; s++) {
            mbar_init(bar_k(s), 1);
            mbar_init(bar_v(s), FP8 ? kTransposers : 1); // fp8: every transposer's part
            mbar_init(bar_stage(s), 1);
            mbar_init(bar_empty_k(s), 8);        // the 8 consumer warps
            mbar_init(bar_empty_v(s), 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) {
        // ---------------- producer ----------------
        setmaxnreg_dec<C::kProducerRegs>();
        const int t = tid;
        if (num_tiles == 0) return;
        if (t == 0) {
            // Loader: runs up to S tiles ahead, gated only by the consumers' releases.
            mbar_expect_tx(bar_q, C::kQBytes);
            for (int c = 0; c < 3; c++)
                tma_load_3d(sQ + (uint32_t)(c * kBlockM * C::kRowBytes), &tm_q, c * 64, head, q_start + q0, bar_q);
            for (int j = 0; j < num_tiles; j++) {
                const int s = j % S;
                const uint32_t round = (uint32_t)(j / S);
                const uint32_t sK = sStage0 + (uint32_t)(s * C::kStageBytes), sV = sK + C::kKBytes;
                const int token = kv_start + j * kBlockN;
                if (j >= S) mbar_wait(bar_empty_k(s), (round - 1) & 1);
                mbar_expect_tx(bar_k(s), C::kKBytes);
                for (int c = 0; c < 3; c++)
                    tma_load_3d(sK + (uint32_t)(c * kBlockN * C::kRowBytes), &tm_k, c * 64, head, token, bar_k(s));
                if (j >= S) mbar_wait(bar_empty_v(s), (round - 1) & 1);
                if (!FP8) {
                    // A tile reaching past the request's end lands on the stage barrier instead:
                    // the finisher warp zeroes its foreign rows before releasing it to P V.
                    const uint32_t bar = j * kBlockN + kBlockN > lkv ? bar_stage(s) : bar_v(s);
                    mbar_expect_tx(bar, C::kVBytes);
                    for (int c = 0; c < 2; c++)
                        tma_load_3d(sV + (uint32_t)(c * kBlockN * 128), &tm_v, c * 64, head, token, bar);
                } else {
                    mbar_expect_tx(bar_stage(s), C::kVBytes);
                    tma_load_3d(sV + C::kVBytes, &tm_v, 0, head, token, bar_stage(s));
                }
            }
            return;
        }
        // V rows past the request's end (the next request's rows, which P weights by exactly
        // 0) are zeroed before P V reads them: 0 * NaN or 0 * inf from another request's data
        // would otherwise leak NaN into this one.
        if constexpr (FP8) {
            // Transposers (warps 1..3): staging tile -> Vt as soon as it lands; separate from
            // the loader so the next tiles' copies are already in flight meanwhile.
            if (t < 32) return;
            for (int j = 0; j < num_tiles; j++) {
                const int s = j % S;
                const uint32_t sV = sStage0 + (uint32_t)(s * C::kStageBytes) + C::kKBytes;
                mbar_wait(bar_stage(s), (uint32_t)(j / S) & 1);
                for (int item = t - 32; item < 256; item += kTransposers)
                    transpose_v_fp8_item(sV + C::kVBytes, sV, item, lkv - j * kBlockN);
                fence_proxy_async();
                mbar_arrive(bar_v(s));
            }
        } else {
            // Finisher (warp 1): only the last tile can reach past the request's end.
            const int j = num_tiles - 1, valid = lkv - j * kBlockN;
            if (t < 32 || t >= 64 || valid >= kBlockN) return;
            const int s = j % S, lane = t - 32;
            const uint32_t sV = sStage0 + (uint32_t)(s * C::kStageBytes) + C::kKBytes;
            mbar_wait(bar_stage(s), 0); // the only use of this barrier in the bf16 kernel
            for (int idx = lane; idx < (kBlockN - valid) * 16; idx += 32) {
                const int row = valid + (idx >> 4), c = idx & 15;
                const uint32_t addr = sV + (uint32_t)((c >> 3) * kBlockN * 128 + row * 128 + (c & 7) * 16);
                asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0u) : "memory");
            }
            fence_proxy_async();
            __syncwarp();
            if (lane == 0) mbar_arrive(bar_v(s));
        }
        return;
    }

    // ---------------- consumers ----------------
    setmaxnreg_inc<C::kConsumerRegs>();
    const int cw = wg - 1; // consumer warpgroup 0/1: rows [64 cw, 64 cw + 64) of the tile
    const int t = tid & 127, warp = t >> 5, lane = t & 31;
    const int H = p.num_heads;
    const int wg_row0 = q0 + cw * 64;
    const int diag = lkv - lq + wg_row0; // causal: warpgroup-local row r sees keys <= diag + r
    const int r0 = warp * 16 + (lane >> 2); // the thread's rows r0, r0 + 8 (wgmma layout)
    const int qd = lane & 3;

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; i++) o[i] = 0.0f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    // fp8: P is scaled by 2^8 before the e4m3 cast so small probabilities keep precision
    // (max 256 < 448); the same factor is in row_sum, so it cancels.
    const float p_bias = FP8 ? 8.0f : 0.0f;

    // Schedule (FlashAttention-3 style): in turn j a warpgroup issues S_j = Q K_j^T and
    // O += P_{j-1} V_{j-1} back to back, hands the tensor cores to the other warpgroup (named
    // barriers 1/2 alternate the turns), then runs the softmax of S_j while its own P V and
    // the other warpgroup's MMAs execute. Turns: n (one per tile) + 1 (the last P V).
    constexpr int kPWords = FP8 ? kBlockN / 32 : kBlockN / 16;
    float s_acc[64];
    uint32_t pa[kPWords][4];
    const int my_bar = 1 + cw, other_bar = 2 - cw;
    auto named_sync = [](int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); };
    auto named_arrive = [](int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); };
    auto pa_fence = [&]() {
#pragma unroll
        for (int i = 0; i < kPWords; i++)
#pragma unroll
            for (int k = 0; k < 4; k++) asm volatile("" : "+r"(pa[i][k])::"memory");
    };

    // The turn's MMAs are issued from straight-line code (no branch around a wgmma), so
    // ptxas keeps them asynchronous: turn 0 (S_0), turns 1..n-1 (S_j and P_{j-1} V_{j-1}),
    // turn n (P_{n-1} V_{n-1}).
    auto stage_k = [&](int j) { return sStage0 + (uint32_t)((j % S) * C::kStageBytes); };
    auto parity_of = [&](int j) { return (uint32_t)(j / S) & 1; };
    auto pack_p = [&]() {
        // P from the probabilities the last softmax left in s_acc.
#pragma unroll
        for (int ks = 0; ks < kPWords; ks++) {
            if (!FP8) {
                pa[ks][0] = pack_bf16x2(s_acc[8 * ks + 0], s_acc[8 * ks + 1]);
                pa[ks][1] = pack_bf16x2(s_acc[8 * ks + 2], s_acc[8 * ks + 3]);
                pa[ks][2] = pack_bf16x2(s_acc[8 * ks + 4], s_acc[8 * ks + 5]);
                pa[ks][3] = pack_bf16x2(s_acc[8 * ks + 6], s_acc[8 * ks + 7]);
            } else {
                const float *x = s_acc + 16 * ks;
                pa[ks][0] = pack_e4m3x4(x[0], x[1], x[4], x[5]);
                pa[ks][1] = pack_e4m3x4(x[2], x[3], x[6], x[7]);
                pa[ks][2] = pack_e4m3x4(x[8], x[9], x[12], x[13]);
                pa[ks][3] = pack_e4m3x4(x[10], x[11], x[14], x[15]);
            }
        }
    };
    auto issue_s = [&](uint32_t sK) {
        constexpr int kSteps = kDimQK * C::kElem / 32; // 32 bytes of K per wgmma
        constexpr int kStepsPerBlock = C::kRowBytes / 32;
#pragma unroll
        for (int ks = 0; ks < kSteps; ks++) {
            const int blk = ks / kStepsPerBlock;
            const uint32_t off = (uint32_t)((ks % kStepsPerBlock) * 32);
            const uint64_t da = smem_desc(sQ + (uint32_t)(blk * kBlockM * C::kRowBytes + cw * 64 * C::kRowBytes) + off, 16,
                                          C::kAtomBytes, C::kSwizzle);
            const uint64_t db = smem_desc(sK + (uint32_t)(blk * kBlockN * C::kRowBytes) + off, 16, C::kAtomBytes,
                                          C::kSwizzle);
            if (FP8)
                wgmma_e4m3_ss(s_acc, da, db, ks > 0);
            else
                wgmma_bf16_ss(s_acc, da, db, ks > 0);
        }
        wgmma_commit();
    };
    auto issue_pv = [&](uint32_t sV) {
#pragma unroll
        for (int ks = 0; ks < kPWords; ks++) {
            if (!FP8) {
                // V tile: [128 keys][2 blocks of 64 dims], N-major; LBO = dim-block stride.
                const uint64_t db = smem_desc(sV + (uint32_t)(ks * 16 * 128), kBlockN * 128, 1024, 1);
                wgmma_bf16_rs_tb(o, pa[ks], db, 1);
            } else {
                const uint64_t db = smem_desc(sV + (uint32_t)((ks >> 1) * kDimV * 64 + (ks & 1) * 32), 16, 512, 2);
                wgmma_e4m3_rs(o, pa[ks], db, 1);
            }
        }
        wgmma_commit();
    };
    auto begin_turn = [&]() {
        named_sync(my_bar);
        reg_fence(s_acc);
        reg_fence(o);
        pa_fence();
        wgmma_fence();
    };
    auto release = [&](uint32_t bar) {
        __syncwarp();
        if (lane == 0) mbar_arrive(bar);
    };
    auto softmax = [&](int j, float (&alpha)[2]) {
        const int kbase = j * kBlockN;
        // Mask keys past the request's end (rows of the next request or TMA zero fill) and,
        // when causal, above the diagonal.
        const bool need_mask = (kbase + kBlockN > lkv) || (CAUSAL && kbase + kBlockN - 1 > diag);
        if (need_mask) {
#pragma unroll
            for (int i = 0; i < 16; i++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kbase + i * 8 + 2 * qd + (e & 1);
                    const int row = r0 + (e >> 1) * 8;
                    bool visible = key < lkv;
                    if (CAUSAL) visible = visible && key <= diag + row;
                    if (!visible) s_acc[i * 4 + e] = -INFINITY;
                }
            }
        }
        // Online softmax, in log2 units scaled by bmm1_scale.
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = -INFINITY;
#pragma unroll
            for (int i = 0; i < 16; i++) mx = fmaxf(mx, fmaxf(s_acc[i * 4 + 2 * r], s_acc[i * 4 + 2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(row_max[r], mx * p.scale_log2);
            // A row that has seen no key yet keeps m = -inf; use 0 so exp2 gives 0, not NaN.
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;
            alpha[r] = fast_exp2(row_max[r] - m_use);
            row_max[r] = m_new;
            const float neg = p_bias - m_use;
            float sum = 0.0f;
#pragma unroll
            for (int i = 0; i < 16; i++) {
                s_acc[i * 4 + 2 * r] = fast_exp2(fmaf(s_acc[i * 4 + 2 * r], p.scale_log2, neg));
                s_acc[i * 4 + 2 * r + 1] = fast_exp2(fmaf(s_acc[i * 4 + 2 * r + 1], p.scale_log2, neg));
                sum += s_acc[i * 4 + 2 * r] + s_acc[i * 4 + 2 * r + 1];
            }
            row_sum[r] = row_sum[r] * alpha[r] + sum;
        }
    };

    if (num_tiles > 0) {
        mbar_wait(bar_q, 0);
        if (cw == 1) named_arrive(1); // warpgroup 0 takes the first turn
        float alpha[2];
        // Turn 0: S_0 (O is still zero, so its rescale is skipped).
        mbar_wait(bar_k(0), 0);
        begin_turn();
        issue_s(stage_k(0));
        named_arrive(other_bar);
        wgmma_wait<0>();
        reg_fence(s_acc);
        release(bar_empty_k(0));
        softmax(0, alpha);
        // Turns 1..n-1: S_j and P_{j-1} V_{j-1}; softmax of S_j overlaps P V and the other
        // warpgroup's MMAs.
        for (int j = 1; j < num_tiles; j++) {
            pack_p();
            mbar_wait(bar_k(j % S), parity_of(j));
            mbar_wait(bar_v((j - 1) % S), parity_of(j - 1));
            begin_turn();
            issue_s(stage_k(j));
            issue_pv(stage_k(j - 1) + C::kKBytes);
            named_arrive(other_bar);
            wgmma_wait<1>(); // S_j done; P_{j-1} V_{j-1} may still run
            reg_fence(s_acc);
            release(bar_empty_k(j % S));
            softmax(j, alpha);
            wgmma_wait<0>();
            reg_fence(o);
            pa_fence();
            release(bar_empty_v((j - 1) % S));
            // O holds tiles < j relative to the previous max: move it to the new one.
#pragma unroll
            for (int i = 0; i < 16; i++) {
                o[i * 4 + 0] *= alpha[0];
                o[i * 4 + 1] *= alpha[0];
                o[i * 4 + 2] *= alpha[1];
                o[i * 4 + 3] *= alpha[1];
            }
        }
        // Turn n: the last P V. Warpgroup 1 skips its final hand-over so no barrier is left
        // half-arrived at exit.
        pack_p();
        mbar_wait(bar_v((num_tiles - 1) % S), parity_of(num_tiles - 1));
        begin_turn();
        issue_pv(stage_k(num_tiles - 1) + C::kKBytes);
        if (cw == 0) named_arrive(other_bar);
        wgmma_wait<0>();
        reg_fence(o);
        pa_fence();
        release(bar_empty_v((num_tiles - 1) % S));
    }

    // Epilogue: full row sums, normalise, write bf16 output and LSE.
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = row_sum[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int row = wg_row0 + r0 + r * 8;
        const float inv = l > 0.0f ? p.bmm2_scale / l : 0.0f;
        if (row < lq) {
            uint16_t *orow = p.out + ((int64_t)(q_start + row) * H + head) * kDimV;
#pragma unroll
            for (int i = 0; i < 16; i++) {
                const uint32_t v2 = pack_bf16x2(o[i * 4 + 2 * r] * inv, o[i * 4 + 2 * r + 1] * inv);
                *reinterpret_cast<uint32_t *>(orow + i * 8 + 2 * qd) = v2;
            }
            if (p.lse && qd == 0) {
                // row_max is in scaled log2 units and the sums carry the 2^p_bias factor.
                const float lse = l > 0.0f ? (row_max[r] + log2f(l) - p_bias) * 0.69314718055994531f : -INFINITY;
                p.lse[(int64_t)(q_start + row) * H + head] = lse;
            }
        }
    }
}

template <bool FP8, bool CAUSAL> static cudaError_t set_prefill_attributes()
{
    return cudaFuncSetAttribute(prefill_kernel<FP8, CAUSAL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                PrefillCfg<FP8>::kSmemBytes);
}

template <bool FP8, bool CAUSAL>
static cudaError_t launch_prefill(const CUtensorMap &q, const CUtensorMap &k, const CUtensorMap &v,
                                  const PrefillParams &prm, dim3 grid, cudaStream_t stream)
{
    cudaError_t err = set_prefill_attributes<FP8, CAUSAL>();
    if (err != cudaSuccess) return err;
    prefill_kernel<FP8, CAUSAL><<<grid, kThreads, PrefillCfg<FP8>::kSmemBytes, stream>>>(q, k, v, prm);
    return cudaGetLastError();
}

// A [tokens, H, width] tensor viewed by TMA as 3-D (width, H, tokens); box = box_w x 1 x 128.
static bool encode_map(CUtensorMap *map, const void *base, bool fp8, int width, int heads, int64_t tokens,
                       int box_w, CUtensorMapSwizzle swizzle)
{
    PFN_cuTensorMapEncodeTiled_v12000 encode = mla_tensor_map_encoder();
    if (!encode) return false;
    const uint64_t es = fp8 ? 1 : 2;
    const cuuint64_t dims[3] = {(cuuint64_t)width, (cuuint64_t)heads, (cuuint64_t)tokens};
    const cuuint64_t strides[2] = {(cuuint64_t)width * es, (cuuint64_t)width * es * (cuuint64_t)heads};
    const cuuint32_t box[3] = {(cuuint32_t)box_w, 1, (cuuint32_t)kBlockN};
    const cuuint32_t elem_strides[3] = {1, 1, 1};
    return encode(map, fp8 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3,
                  const_cast<void *>(base), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

} // namespace mla_sm90

using namespace mla_sm90;

extern "C" int mla_cuda_prefill(const mla_cuda_device_info *dev, const mla_prefill_problem *p)
{
    (void)dev;
    if (p->qk_dim != kDimQK || p->v_dim != kDimV) return (int)cudaErrorNotSupported;
    if (p->dtype != MLA_DTYPE_BF16 && p->dtype != MLA_DTYPE_FP8_E4M3) return (int)cudaErrorNotSupported;
    if (p->batch <= 0 || p->total_q <= 0 || p->num_heads <= 0) return (int)cudaSuccess;
    // max_seqlen_q is exact or an upper bound; with neither, total_q bounds every request.
    int max_q = p->max_seqlen_q > 0 ? p->max_seqlen_q : p->total_q;
    if (max_q > p->total_q) max_q = p->total_q;
    const int q_tiles = (max_q + kBlockM - 1) / kBlockM;
    if (p->num_heads > 65535 || p->batch > 65535) return (int)cudaErrorInvalidConfiguration;
    // TMA needs 16-byte aligned bases (row strides are multiples of 16 bytes by shape).
    if (((uintptr_t)p->q | (uintptr_t)p->k | (uintptr_t)p->v) % 16 != 0 && p->total_kv > 0)
        return (int)cudaErrorMisalignedAddress;

    const bool fp8 = p->dtype == MLA_DTYPE_FP8_E4M3;
    const CUtensorMapSwizzle sw = fp8 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_128B;
    // With no keys at all the K/V maps are never used; describe q instead of a null tensor.
    const void *kbase = p->total_kv > 0 ? p->k : p->q, *vbase = p->total_kv > 0 ? p->v : p->q;
    const int64_t kv_tokens = p->total_kv > 0 ? p->total_kv : 1;
    CUtensorMap tm_q, tm_k, tm_v;
    bool ok = encode_map(&tm_q, p->q, fp8, kDimQK, p->num_heads, p->total_q, 64, sw) &&
              encode_map(&tm_k, kbase, fp8, kDimQK, p->num_heads, kv_tokens, 64, sw) &&
              (fp8 ? encode_map(&tm_v, vbase, true, kDimV, p->num_heads, kv_tokens, 128, CU_TENSOR_MAP_SWIZZLE_128B)
                   : encode_map(&tm_v, vbase, false, kDimV, p->num_heads, kv_tokens, 64, CU_TENSOR_MAP_SWIZZLE_128B));
    if (!ok) return (int)cudaErrorInvalidValue;

    PrefillParams prm;
    prm.cu_seqlens_q = p->cu_seqlens_q;
    prm.cu_seqlens_kv = p->cu_seqlens_kv;
    prm.out = static_cast<uint16_t *>(p->out);
    prm.lse = p->lse;
    prm.num_heads = p->num_heads;
    prm.total_q = p->total_q;
    prm.total_kv = p->total_kv;
    prm.scale_log2 = p->bmm1_scale * 1.4426950408889634f;
    prm.bmm2_scale = p->bmm2_scale;

    const dim3 grid((unsigned)q_tiles, (unsigned)p->num_heads, (unsigned)p->batch);
    cudaStream_t stream = static_cast<cudaStream_t>(p->stream);
    cudaError_t err;
    if (fp8)
        err = p->causal ? launch_prefill<true, true>(tm_q, tm_k, tm_v, prm, grid, stream)
                        : launch_prefill<true, false>(tm_q, tm_k, tm_v, prm, grid, stream);
    else
        err = p->causal ? launch_prefill<false, true>(tm_q, tm_k, tm_v, prm, grid, stream)
                        : launch_prefill<false, false>(tm_q, tm_k, tm_v, prm, grid, stream);
    return (int)err;
}

extern "C" int mla_cuda_prefill_warmup(const mla_cuda_device_info *dev)
{
    (void)dev;
    // Raising the shared-memory limit also forces the module to load, so the first real call
    // pays for neither; LSE is a run-time argument of the same kernels. The tensor-map
    // encoder is looked up once here as well.
    if (!mla_tensor_map_encoder()) return (int)cudaErrorSymbolNotFound;
    cudaError_t err;
    if ((err = set_prefill_attributes<false, false>()) != cudaSuccess) return (int)err;
    if ((err = set_prefill_attributes<false, true>()) != cudaSuccess) return (int)err;
    if ((err = set_prefill_attributes<true, false>()) != cudaSuccess) return (int)err;
    if ((err = set_prefill_attributes<true, true>()) != cudaSuccess) return (int)err;
    cudaFuncAttributes attr;
    if ((err = cudaFuncGetAttributes(&attr, prefill_kernel<false, false>)) != cudaSuccess) return (int)err;
    if ((err = cudaFuncGetAttributes(&attr, prefill_kernel<false, true>)) != cudaSuccess) return (int)err;
    if ((err = cudaFuncGetAttributes(&attr, prefill_kernel<true, false>)) != cudaSuccess) return (int)err;
    if ((err = cudaFuncGetAttributes(&attr, prefill_kernel<true, true>)) != cudaSuccess) return (int)err;
    return 0;
}

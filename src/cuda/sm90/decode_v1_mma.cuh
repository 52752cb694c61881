// Split-KV MLA decode, version 1: mma.sync (m16n8k16) tensor-core math, cp.async loads.
// Used for every shape except fp8 caches with H * q_len <= 16 (decode_v2_fp8reg.cuh).
//
// One CTA = (part of the key work, block of M query rows); NT/32 warps. Rows are the
// request's (query token, head) pairs flattened (row = token * H + head), so small head counts
// fold query tokens into M for free. Per block of BN keys:
//   fp8 cache : cp.async the raw BN x 576 fp8 tile (zero-filled where keys are masked), convert
//               once to an fp16 tile in smem (integer bit moves, values x 2^-8, exact; the
//               factor is folded into the scales), fp16 MMA (Q and P in fp16).
//   bf16 cache: cp.async straight into a swizzled bf16 tile, bf16 MMA.
// S = Q K^T: warp (rg, cg) computes rows rg*16..+16 x keys cg*KW..+KW over all 576 dims.
// Softmax: per-warp row max exchanged through smem inside the row group (named barrier);
// P (16-bit) goes to smem; O[rg rows, cg*512/WC ..] += P V with V = first 512 columns of the
// same tile (ldmatrix.trans). Masked keys are zero-filled in smem (no NaN can reach the PV
// product) and their scores set to -inf by select. Each cache byte is loaded from global
// memory once per CTA; with several head blocks (H * q_len > 64) the CTAs of one part read
// the same keys at about the same time, so the second read is normally an L2 hit.
#pragma once
#include "mla_cuda.h"
#include "../common/decode_split.cuh"

#include <cuda.h> // CUtensorMap
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

namespace mla_decode_v1 {

constexpr int kDqk = 576, kDv = 512;
constexpr int kRow16 = kDqk * 2;   // bytes of a 16-bit row (72 chunks of 16 bytes)
constexpr int kRow8 = kDqk;        // bytes of an fp8 row (36 chunks)

struct Params {
    const void *q;
    const uint8_t *kv;
    const int32_t *block_table;
    const int32_t *seq_lens;
    uint16_t *out;
    float *lse;
    uint32_t *err;
    mla_decode_sched s;
    int batch, q_len, heads, rows, page_size, page_shift, num_pages, max_pages, causal, q_fp8;
    float scale_log2; // bmm1_scale * log2(e)
    float bmm2;
    // The cache as a [pages * page_size, 576] byte tensor for TMA (version 2's kConvTma form
    // only; unset otherwise): [0] 128-byte x 32-row boxes, 128-byte swizzle (dims 0..511);
    // [1] 64-byte x 32-row boxes, 64-byte swizzle (the rope dims).
    CUtensorMap kv_tma[2];
};

// BN keys per block, NT threads: (64, 256) with one CTA per SM ("wide", the first version),
// or (32, 128) with two CTAs per SM ("narrow", M = 16 or 32: one CTA's MMAs hide the other's
// barriers, conversion and softmax).
template <bool FP8, int M, int BN_, int NT_> struct Cfg {
    static constexpr int BN = BN_, NT = NT_;
    static constexpr int WR = M / 16;        // row groups of 16 rows
    static constexpr int WC = NT / 32 / WR;  // warps per row group
    static constexpr int KW = BN / WC;       // keys of S per warp
    static constexpr int NTS = KW / 8;       // n-tiles of S per warp
    static constexpr int NTO = (kDv / WC) / 8; // n-tiles of O per warp
    static constexpr int NS = FP8 && M == 16 ? 3 : 2;     // load stages
    static constexpr int kMinBlocks = NT == 128 ? 2 : 1;   // CTAs per SM
    static constexpr int kQ = M * kRow16;
    static constexpr int kTile = FP8 ? BN * kRow16 : 0;   // converted fp16 tile
    static constexpr int kStage = FP8 ? BN * kRow8 : BN * kRow16;
    static constexpr int kP = M * BN * 2;
    static constexpr int offQ = 0;
    static constexpr int offTile = offQ + kQ;
    static constexpr int offStage = offTile + kTile;
    static constexpr int offP = offStage + NS * kStage;
    static constexpr int offRedMax = offP + kP;
    static constexpr int offRedSum = offRedMax + WC * M * 4;
    static constexpr int offFlags = offRedSum + WC * M * 4;
    static constexpr int kSmem = offFlags + 16;
};

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldsm_x4(uint32_t *r, uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t *r, uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
template <bool F16>
__device__ __forceinline__ void mma16816(float *d, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    if constexpr (F16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                     "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void named_bar(int id, int threads)
{
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint16_t v)
{
    uint32_t r;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(r) : "h"(v));
    return r;
}
// Four e4m3 bytes to two f16x2 words holding the values times 2^-8, exactly: f16 bits
// sign << 15 | (byte & 0x7f) << 7 put the e4m3 exponent and mantissa in place (bias 15 vs 7),
// for normals and subnormals alike. Integer ops only: the cvt e4m3x2 -> f16x2 instruction
// ran at a fraction of the ALU rate and bounded the kernel. (An e4m3 NaN becomes a finite
// value; masked keys are zero-filled, so no NaN from a page tail can reach the output.)
__device__ __forceinline__ void e4m3x4_to_f16x4_scaled(uint32_t w, uint32_t &lo, uint32_t &hi)
{
    const uint32_t m = w & 0x7f7f7f7fu, s = w & 0x80808080u;
    lo = __byte_perm(m, 0u, 0x4140) * 128u + __byte_perm(s, 0u, 0x1404);
    hi = __byte_perm(m, 0u, 0x4342) * 128u + __byte_perm(s, 0u, 0x3424);
}
// Scale the fp8 kernel's K and V carry (see e4m3x4_to_f16x4_scaled), undone in the scores
// and the output.
constexpr float kFp8TileScale = 256.0f;

// Two floats to a packed 16-bit pair (lo in the low half).
template <bool F16> __device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    if constexpr (F16) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    } else {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&h);
    }
}
__device__ __forceinline__ float bf16_bits_to_float(uint32_t v) { return __uint_as_float(v << 16); }

// Swizzled byte offset of 16-byte chunk `c` of row `r` in a 16-bit tile of 1152-byte rows:
// ldmatrix reads 8 consecutive rows at one logical chunk; the xor spreads them over banks.
__device__ __forceinline__ uint32_t tile_off(int r, int c) { return r * kRow16 + ((c ^ (r & 7)) << 4); }
// P rows are BN*2 bytes (8 or 4 chunks); the xor keeps 8 consecutive rows on distinct banks.
template <int BN> __device__ __forceinline__ uint32_t p_off(int r, int c)
{
    return BN == 64 ? r * 128 + ((c ^ (r & 7)) << 4) : r * 64 + ((c ^ ((r >> 1) & 3)) << 4);
}

// Walks the (request, key block) sequence of one part.
struct Cursor {
    int b, blk, hi;
};
__device__ __forceinline__ void cursor_range(const Params &p, int part, int tau, int b, Cursor &c)
{
    const int s0 = p.s.req_start[b] + MLA_DECODE_OVERHEAD;
    const int nb = p.s.num_blocks[b];
    c.b = b;
    c.blk = max(0, part * tau - s0);
    c.hi = min(nb, (part + 1) * tau - s0);
}
__device__ __forceinline__ void cursor_next(const Params &p, int part, int tau, Cursor &c)
{
    if (c.b >= p.batch) return;
    if (++c.blk < c.hi) return;
    const int nb = c.b + 1;
    if (nb < p.batch && p.s.first_part[nb] <= part) cursor_range(p, part, tau, nb, c);
    else c.b = p.batch;
}

// Part `part`'s first cursor from the scheduler's start record (one 16-byte load, instead of
// part_begin and then the request's range); returns that request's seq_eff. c.b = batch for an
// empty part.
__device__ __forceinline__ int part_first_cursor(const Params &p, int part, Cursor &c)
{
    const int4 r = reinterpret_cast<const int4 *>(p.s.part_start)[part];
    c.b = r.x;
    c.blk = r.y;
    c.hi = r.z;
    return r.w;
}

// Index data of the next block to load, fetched one block ahead so that the global-load
// latency of seq_len / block-table reads stays off the load-issue path.
struct Pref {
    int seq, idx0, idx1;
};
// seq() gives the request's seq_eff; it is called only for a cursor inside the batch.
template <int BN, typename Seq>
__device__ __forceinline__ Pref prefetch_block_with(const Params &p, const Cursor &c, Seq seq)
{
    Pref f = {0, -1, -1};
    if (c.b < p.batch) {
        f.seq = seq();
        const int key0 = c.blk * BN;
        const int32_t *row = p.block_table + (size_t)c.b * p.max_pages + (key0 >> p.page_shift);
        if (key0 < f.seq) f.idx0 = row[0];
        if (BN > p.page_size && key0 + p.page_size < f.seq) f.idx1 = row[1];
    }
    return f;
}
template <int BN> __device__ __forceinline__ Pref prefetch_block(const Params &p, const Cursor &c)
{
    return prefetch_block_with<BN>(p, c, [&] { return p.s.seq_eff[c.b]; });
}
// The same when the request's seq_eff is already known (a CTA's first block, from its start
// record), so that the block-table load does not wait for a seq_eff load.
template <int BN> __device__ __forceinline__ Pref prefetch_block_seq(const Params &p, const Cursor &c, int seq)
{
    return prefetch_block_with<BN>(p, c, [=] { return seq; });
}

// Valid pages of the key block starting at key0 (bit k: page k of the block holds keys below
// seq_len and its index is in range). A needed page with an out-of-range index is flagged
// (by the thread passing report: thread 0 unless the caller's loader threads exclude it).
// Shared by every decode kernel's loader.
template <int BN>
__device__ __forceinline__ int block_page_mask(const Params &p, int key0, const Pref &f,
                                               bool report = threadIdx.x == 0)
{
    int ok = 0;
    if (key0 < f.seq) {
        if (f.idx0 >= 0 && f.idx0 < p.num_pages) ok |= 1;
        else if (report && p.err) atomicOr(p.err, MLA_DEVERR_PAGE_INDEX);
    }
    if (BN > p.page_size && key0 + p.page_size < f.seq) {
        if (f.idx1 >= 0 && f.idx1 < p.num_pages) ok |= 2;
        else if (report && p.err) atomicOr(p.err, MLA_DEVERR_PAGE_INDEX);
    }
    return ok;
}

// Issues the cp.async copies of key block c into `stage` and commits one group (an empty
// group when the cursor is done, so group counting stays uniform). Keys past seq_len and
// keys on pages with an out-of-range index are zero-filled, never read. Records in *flags
// which of the block's pages are valid (bit k: page k of the block).
template <bool FP8, int BN, int NT>
__device__ __forceinline__ void issue_block(const Params &p, const Cursor &c, const Pref &f,
                                            uint8_t *stage, int *flags)
{
    if (c.b < p.batch) {
        const int seq = f.seq;
        const int key0 = c.blk * BN;
        const int ok = block_page_mask<BN>(p, key0, f);
        const int pidx0 = f.idx0, pidx1 = f.idx1;
        const int first_page = key0 >> p.page_shift;
        if (threadIdx.x == 0) *flags = ok;
        const uint32_t sbase = smem_u32(stage);
        constexpr int kChunks = FP8 ? 36 : 72;
        constexpr int kRowBytes = FP8 ? kRow8 : kRow16;
#pragma unroll
        for (int i = 0; i < BN * kChunks / NT; i++) {
            const int q = threadIdx.x + i * NT;
            const int r = q / kChunks, ch = q % kChunks;
            const int key = key0 + r;
            const int k = (key >> p.page_shift) - first_page; // page of the block: 0 or 1
            const bool valid = key < seq && ((ok >> k) & 1);
            const uint8_t *src = p.kv;
            if (valid)
                src += ((size_t)(k ? pidx1 : pidx0) * p.page_size + (key & (p.page_size - 1))) * kRowBytes + ch * 16;
            const uint32_t dst = FP8 ? sbase + r * kRow8 + ch * 16 : sbase + tile_off(r, ch);
            cp_async16(dst, src, valid ? 16 : 0);
        }
    }
    cp_async_commit();
}

// bf16 pair -> f16x2, saturating at 65504 (documented limit of the fp8-cache kernels).
__device__ __forceinline__ uint32_t bf16x2_to_f16x2_sat(uint32_t w)
{
    const float lo = fminf(fmaxf(bf16_bits_to_float(w & 0xffff), -65504.f), 65504.f);
    const float hi = fminf(fmaxf(bf16_bits_to_float(w >> 16), -65504.f), 65504.f);
    return pack2<true>(lo, hi);
}

// 8 query dims (one 16-byte chunk) in the kernels' 16-bit type: fp16 (F16, the fp8-cache
// kernels) or bf16. raw holds 8 bf16 dims, or 8 e4m3 dims in raw.x/raw.y when fp8q.
template <bool F16> __device__ __forceinline__ uint4 q_chunk_16bit(uint4 raw, bool fp8q)
{
    uint32_t h[4];
    if (fp8q) {
        h[0] = e4m3x2_to_f16x2((uint16_t)(raw.x & 0xffff));
        h[1] = e4m3x2_to_f16x2((uint16_t)(raw.x >> 16));
        h[2] = e4m3x2_to_f16x2((uint16_t)(raw.y & 0xffff));
        h[3] = e4m3x2_to_f16x2((uint16_t)(raw.y >> 16));
        if constexpr (!F16) {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 f = __half22float2(*reinterpret_cast<__half2 *>(&h[j]));
                h[j] = pack2<false>(f.x, f.y);
            }
        }
    } else {
        if constexpr (!F16) return raw;
        h[0] = bf16x2_to_f16x2_sat(raw.x);
        h[1] = bf16x2_to_f16x2_sat(raw.y);
        h[2] = bf16x2_to_f16x2_sat(raw.z);
        h[3] = bf16x2_to_f16x2_sat(raw.w);
    }
    return make_uint4(h[0], h[1], h[2], h[3]);
}

// Q rows [hb*M, hb*M+M) of request b, converted by q_chunk_16bit; store(r, ch, v) places
// chunk ch (of 72) of row r, rows past the request's rows are zero. Padding rows read a valid
// row instead of branching, and kBatch chunks per thread are loaded before any is converted:
// a loop that branched per chunk serialized its loads (bench/NOTES.md, batch-1 stall
// profile). Larger batches spill in the 255-register kernels; callers pick kBatch by
// ptxas spill counts. tid: the thread's index among the NT loading threads (threadIdx.x
// unless they are not the CTA's first NT threads, as in decode_bf16_swap.cuh's second math
// warpgroup).
template <bool F16, int M, int NT, int kBatch, class Store>
__device__ __forceinline__ void load_q_rows(const Params &p, int b, int hb, Store store, int tid = (int)threadIdx.x)
{
    constexpr int kChunks = M * 72, kN = (kChunks + NT - 1) / NT, kB = kN < kBatch ? kN : kBatch;
    const bool fp8q = p.q_fp8 != 0;
    const uint8_t *q = (const uint8_t *)p.q;
    const size_t esz = fp8q ? 1 : 2;
#pragma unroll 1
    for (int i0 = 0; i0 < kN; i0 += kB) {
        uint4 raw[kB];
#pragma unroll
        for (int j = 0; j < kB && i0 + j < kN; j++) {
            const int u = tid + (i0 + j) * NT;
            const int r = u / 72, ch = u % 72;
            const int gr = min(hb * M + r, p.rows - 1);
            const uint8_t *src = q + (((size_t)b * p.rows + gr) * kDqk + ch * 8) * esz;
            raw[j] = make_uint4(0, 0, 0, 0);
            if (kChunks % NT == 0 || u < kChunks) {
                if (fp8q) {
                    const uint2 x = __ldg(reinterpret_cast<const uint2 *>(src));
                    raw[j].x = x.x;
                    raw[j].y = x.y;
                } else {
                    raw[j] = __ldg(reinterpret_cast<const uint4 *>(src));
                }
            }
        }
#pragma unroll
        for (int j = 0; j < kB && i0 + j < kN; j++) {
            const int u = tid + (i0 + j) * NT;
            const int r = u / 72, ch = u % 72;
            if (kChunks % NT == 0 || u < kChunks) {
                const uint4 v = hb * M + r < p.rows ? q_chunk_16bit<F16>(raw[j], fp8q) : make_uint4(0, 0, 0, 0);
                store(r, ch, v);
            }
        }
    }
}

// Q rows of request b into the swizzled 16-bit tile (fp16 for the fp8-cache kernel, bf16
// otherwise).
template <bool FP8, int M, int NT>
__device__ __forceinline__ void load_q(const Params &p, int b, int hb, uint8_t *sq)
{
    load_q_rows<FP8, M, NT, (M == 16 ? 3 : 1)>(p, b, hb, [&](int r, int ch, uint4 v) {
        *reinterpret_cast<uint4 *>(sq + tile_off(r, ch)) = v;
    });
}

template <bool FP8, int M, int BN, int NT>
__global__ void __launch_bounds__(NT, (NT == 128 ? 2 : 1)) decode_kernel(const __grid_constant__ Params p)
{
    using C = Cfg<FP8, M, BN, NT>;
    extern __shared__ __align__(128) uint8_t smem[];
    uint8_t *sQ = smem + C::offQ;
    uint8_t *sStage = smem + C::offStage;
    uint8_t *sTile = FP8 ? smem + C::offTile : nullptr;
    uint8_t *sP = smem + C::offP;
    float *sRedMax = reinterpret_cast<float *>(smem + C::offRedMax);
    float *sRedSum = reinterpret_cast<float *>(smem + C::offRedSum);
    int *sFlags = reinterpret_cast<int *>(smem + C::offFlags);

    const int part = blockIdx.x, hb = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int rg = warp / C::WC, cg = warp % C::WC;
    const int g = lane >> 2, t = lane & 3;
    // Launched as a programmatic dependent of the scheduler: wait for its results, and let
    // the combine kernel get scheduled as soon as every CTA is running.
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    const int tau = *p.s.tau;
    const float qk_scale = p.scale_log2 * (FP8 ? kFp8TileScale : 1.0f);
    const float v_scale = FP8 ? kFp8TileScale : 1.0f;

    Cursor cons;
    const int seq0 = part_first_cursor(p, part, cons);
    if (cons.b >= p.batch) return; // empty part (uniform over the CTA)
    Cursor prod = cons;
    Pref pref = prefetch_block_seq<BN>(p, prod, seq0);
    // Prologue: fp8 keeps NS blocks in flight (a stage frees as soon as it is converted);
    // bf16 computes from the stage itself, so NS-1 ahead.
    int nprod = 0;
    for (; nprod < (FP8 ? C::NS : C::NS - 1); nprod++) {
        issue_block<FP8, BN, NT>(p, prod, pref, sStage + nprod * C::kStage, &sFlags[nprod]);
        cursor_next(p, part, tau, prod);
        pref = prefetch_block<BN>(p, prod);
    }

    float o[C::NTO][4];
#pragma unroll
    for (int i = 0; i < C::NTO; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    int lim_row[2] = {0, 0}; // exclusive key limit of this thread's two rows
    bool new_req = true;
    const int r_lo = rg * 16 + g; // this thread's rows: r_lo and r_lo + 8
    const uint32_t qbase = smem_u32(sQ), pbase = smem_u32(sP);

    for (int j = 0; cons.b < p.batch; j++) {
        const int stage = j % C::NS;
        __syncthreads(); // everyone is done with block j-1 (tile, stage, P, Q)
        if constexpr (!FP8) {
            const int ps = nprod % C::NS;
            issue_block<FP8, BN, NT>(p, prod, pref, sStage + ps * C::kStage, &sFlags[ps]);
            cursor_next(p, part, tau, prod);
        pref = prefetch_block<BN>(p, prod);
            nprod++;
        }
        if (new_req) {
            load_q<FP8, M, NT>(p, cons.b, hb, sQ);
            // A length clamped to the table capacity counts as that length (causal too).
            const int seq = p.s.seq_eff[cons.b];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int gr = hb * M + r_lo + h * 8;
                int lim = seq;
                if (p.causal) {
                    const int tok = min(gr, p.rows - 1) / p.heads;
                    lim = seq - p.q_len + tok + 1;
                }
                lim_row[h] = lim;
            }
            new_req = false;
        }
        cp_async_wait<C::NS - 1>(); // block j landed (this thread's copies)
        __syncthreads(); // block j's copies (all threads) and Q visible
        const int pmask = sFlags[stage]; // read before the stage is reissued

        const uint8_t *tile;
        if constexpr (FP8) {
            // fp8 stage -> fp16 tile (values x 2^-8); masked rows were zero-filled and stay zero.
            const uint8_t *src = sStage + stage * C::kStage;
#pragma unroll
            for (int u = tid; u < BN * 36; u += NT) {
                const int r = u / 36, ch = u % 36;
                const uint4 raw = *reinterpret_cast<const uint4 *>(src + r * kRow8 + ch * 16);
                const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
                uint32_t h[8];
#pragma unroll
                for (int k = 0; k < 4; k++) e4m3x4_to_f16x4_scaled(w[k], h[2 * k], h[2 * k + 1]);
                *reinterpret_cast<uint4 *>(sTile + tile_off(r, 2 * ch)) = make_uint4(h[0], h[1], h[2], h[3]);
                *reinterpret_cast<uint4 *>(sTile + tile_off(r, 2 * ch + 1)) = make_uint4(h[4], h[5], h[6], h[7]);
            }
            __syncthreads(); // tile ready, stage free
            issue_block<FP8, BN, NT>(p, prod, pref, sStage + stage * C::kStage, &sFlags[stage]);
            cursor_next(p, part, tau, prod);
        pref = prefetch_block<BN>(p, prod);
            nprod++;
            tile = sTile;
        } else {
            tile = sStage + stage * C::kStage;
        }
        const uint32_t kbase = smem_u32(tile);

        // ---- S = Q K^T for rows rg*16.., keys cg*KW.. ----
        float s[C::NTS][4];
#pragma unroll
        for (int i = 0; i < C::NTS; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
        const int qrow = rg * 16 + (lane & 15);
        // Independent accumulator chains over k (summed at the end): one dependent chain
        // of 36 MMAs would leave the tensor pipe waiting on MMA latency.
        constexpr int NCH = C::NTS == 1 ? 4 : C::NTS == 2 ? 2 : 1;
        float sc[NCH][C::NTS][4];
#pragma unroll
        for (int c = 0; c < NCH; c++)
#pragma unroll
            for (int i = 0; i < C::NTS; i++) sc[c][i][0] = sc[c][i][1] = sc[c][i][2] = sc[c][i][3] = 0.f;
        if constexpr (C::NTS == 1) {
            const int key = cg * 8 + (lane & 7);
#pragma unroll 3
            for (int ks = 0; ks < 36; ks += 4) {
                uint32_t a[4][4], bb[2][4];
#pragma unroll
                for (int u = 0; u < 4; u++) ldsm_x4(a[u], qbase + tile_off(qrow, 2 * (ks + u) + (lane >> 4)));
                ldsm_x4(bb[0], kbase + tile_off(key, 2 * ks + (lane >> 3)));
                ldsm_x4(bb[1], kbase + tile_off(key, 2 * ks + 4 + (lane >> 3)));
#pragma unroll
                for (int u = 0; u < 4; u++)
                    mma16816<FP8>(sc[u][0], a[u], bb[u >> 1][2 * (u & 1)], bb[u >> 1][2 * (u & 1) + 1]);
            }
        } else {
#pragma unroll 2
            for (int k0 = 0; k0 < 36; k0 += NCH) {
#pragma unroll
                for (int u = 0; u < NCH; u++) {
                    const int ks = k0 + u;
                    uint32_t a[4];
                    ldsm_x4(a, qbase + tile_off(qrow, 2 * ks + (lane >> 4)));
#pragma unroll
                    for (int np = 0; np < C::NTS / 2; np++) {
                        const int key = cg * C::KW + np * 16 + ((lane >> 4) << 3) + (lane & 7);
                        uint32_t bb[4];
                        ldsm_x4(bb, kbase + tile_off(key, 2 * ks + ((lane >> 3) & 1)));
                        mma16816<FP8>(sc[u][2 * np], a, bb[0], bb[1]);
                        mma16816<FP8>(sc[u][2 * np + 1], a, bb[2], bb[3]);
                    }
                }
            }
        }
#pragma unroll
        for (int c = 0; c < NCH; c++)
#pragma unroll
            for (int i = 0; i < C::NTS; i++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[i][e] += sc[c][i][e];

        // ---- mask, scale, row max over the row group ----
        const int key0 = cons.blk * BN;
        const int page0 = key0 >> p.page_shift;
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < C::NTS; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int kl = cg * C::KW + nt * 8 + 2 * t + (e & 1);
                const bool valid = key0 + kl < lim_row[e >> 1] && ((pmask >> (((key0 + kl) >> p.page_shift) - page0)) & 1);
                const float v = valid ? s[nt][e] * qk_scale : -INFINITY;
                s[nt][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        }
        if (t == 0) {
            sRedMax[cg * M + r_lo] = mx[0];
            sRedMax[cg * M + r_lo + 8] = mx[1];
        }
        named_bar(1 + rg, C::WC * 32);
        float alpha[2], ref[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float m = m_run[h];
#pragma unroll
            for (int w = 0; w < C::WC; w++) m = fmaxf(m, sRedMax[w * M + r_lo + h * 8]);
            ref[h] = m == -INFINITY ? 0.f : m;
            alpha[h] = fast_exp2(m_run[h] - ref[h]);
            m_run[h] = m;
        }
        // ---- P = exp2(S - m) to smem, running sums, rescale O ----
        float ls[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < C::NTS; nt++) {
            const float p0 = fast_exp2(s[nt][0] - ref[0]), p1 = fast_exp2(s[nt][1] - ref[0]);
            const float p2 = fast_exp2(s[nt][2] - ref[1]), p3 = fast_exp2(s[nt][3] - ref[1]);
            ls[0] += p0 + p1;
            ls[1] += p2 + p3;
            const int kc = (cg * C::KW + nt * 8) >> 3; // 16-byte chunk of the P row
            *reinterpret_cast<uint32_t *>(sP + p_off<BN>(r_lo, kc) + 4 * t) = pack2<FP8>(p0, p1);
            *reinterpret_cast<uint32_t *>(sP + p_off<BN>(r_lo + 8, kc) + 4 * t) = pack2<FP8>(p2, p3);
        }
        l_run[0] = l_run[0] * alpha[0] + ls[0];
        l_run[1] = l_run[1] * alpha[1] + ls[1];
#pragma unroll
        for (int i = 0; i < C::NTO; i++) {
            o[i][0] *= alpha[0];
            o[i][1] *= alpha[0];
            o[i][2] *= alpha[1];
            o[i][3] *= alpha[1];
        }
        named_bar(1 + rg, C::WC * 32);

        // ---- O += P V ----
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            uint32_t a[4];
            const int prow = rg * 16 + (lane & 15);
            ldsm_x4(a, pbase + p_off<BN>(prow, 2 * kk + (lane >> 4)));
            const int vkey = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
            for (int np = 0; np < C::NTO / 2; np++) {
                uint32_t bb[4];
                ldsm_x4_t(bb, kbase + tile_off(vkey, cg * C::NTO + 2 * np + (lane >> 4)));
                mma16816<FP8>(o[2 * np], a, bb[0], bb[1]);
                mma16816<FP8>(o[2 * np + 1], a, bb[2], bb[3]);
            }
        }

        // ---- end of this request's piece: normalize and write ----
        const int b = cons.b;
        const bool last = cons.blk + 1 >= cons.hi;
        cursor_next(p, part, tau, cons);
        if (last) {
            float lsum[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float v = l_run[h];
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                lsum[h] = v;
            }
            if (t == 0) {
                sRedSum[cg * M + r_lo] = lsum[0];
                sRedSum[cg * M + r_lo + 8] = lsum[1];
            }
            named_bar(1 + rg, C::WC * 32);
            const int nsplit = p.s.num_splits[b];
            const int slot = p.s.slot_base[b] + part - p.s.first_part[b];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                float L = 0.f;
#pragma unroll
                for (int w = 0; w < C::WC; w++) L += sRedSum[w * M + r_lo + h * 8];
                const float inv = L > 0.f ? v_scale / L : 0.f;
                const float lse = L > 0.f ? (m_run[h] + log2f(L)) * 0.69314718055994531f : -INFINITY;
                const int gr = hb * M + r_lo + h * 8;
                if (gr < p.rows) {
                    const size_t row = (size_t)b * p.rows + gr;
                    if (nsplit == 1) {
                        const float sc = inv * p.bmm2;
                        uint16_t *dst = p.out + row * kDv + cg * (kDv / C::WC) + 2 * t;
#pragma unroll
                        for (int i = 0; i < C::NTO; i++)
                            *reinterpret_cast<uint32_t *>(dst + i * 8) =
                                pack2<false>(o[i][2 * h] * sc, o[i][2 * h + 1] * sc);
                        if (p.lse && cg == 0 && t == 0) p.lse[row] = lse;
                    } else {
                        const size_t prow2 = (size_t)slot * p.rows + gr;
                        float *dst = p.s.part_o + prow2 * kDv + cg * (kDv / C::WC) + 2 * t;
#pragma unroll
                        for (int i = 0; i < C::NTO; i++)
                            *reinterpret_cast<float2 *>(dst + i * 8) =
                                make_float2(o[i][2 * h] * inv, o[i][2 * h + 1] * inv);
                        if (cg == 0 && t == 0) p.s.part_lse[prow2] = lse;
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < C::NTO; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
            m_run[0] = m_run[1] = -INFINITY;
            l_run[0] = l_run[1] = 0.f;
            new_req = true;
        }
    }
    cp_async_wait<0>(); // no copy may outlive the CTA's shared memory
}

} // namespace mla_decode_v1

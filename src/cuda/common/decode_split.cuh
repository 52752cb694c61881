// Split-KV decode: the workspace layout and the scheduler/combine launchers shared by the
// decode kernels (src/cuda/sm90/decode*.cu), the scheduler (decode_schedule.cu) and the
// combine kernel (combine.cu).
//
// Work model. A request b with n_b key blocks (block_n keys each, at least one) costs
// n_b + overhead units. The units of all requests, laid end to end, are cut into num_parts
// equal spans of tau units; part p owns the key blocks whose units fall in its span. So part
// p processes a run of consecutive requests, the first and last possibly in part. A request
// covered by one part is written straight to the output; one covered by several parts
// ("splits") writes one partial (O / l, LSE) per part into a workspace slot and the combine
// kernel merges them. O / l is float32, or float16 where the launcher says so (the fp8-cache
// kernel for H * q_len <= 16: |O / l| <= 448 there, and half the partial bytes); float16
// partials use the first half of the same region. Everything is computed on the GPU from
// seq_lens; launch shapes depend only on (batch, q_len, heads, SM count).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime.h>

#define MLA_DECODE_OVERHEAD 2    // per-request cost in blocks (Q load, epilogue, combine)
#define MLA_DECODE_MAX_PARTS 1024
// A request of more splits than this is merged by extra combine CTAs that share it out (the
// heavy-request list below), not by its own few narrow CTAs.
#define MLA_DECODE_HEAVY_SPLITS 24

// Device pointers into the workspace (all int32 except the float partials).
typedef struct mla_decode_sched {
    int *part_start;  // [num_parts][4] part p's first piece: request (batch when the part is
                      // empty), first key block, key-block end, the request's seq_eff; one
                      // 16-byte load starts a decode CTA
    int *tau;         // [1] units per part
    int *req_start;   // [batch] first unit of request b
    int *num_blocks;  // [batch] key blocks of request b (>= 1)
    int *seq_eff;     // [batch] seq_len clamped into [0, max_pages_per_seq * page_size]
    int *first_part;  // [batch] first part touching request b
    int *num_splits;  // [batch] parts touching request b
    int *slot_base;   // [batch] first partial slot of request b (when num_splits > 1)
    float *part_lse;  // [max_slots, rows]
    float *part_o;    // [max_slots, rows, dv] (float16 elements when the partials are half)
} mla_decode_sched;

typedef struct mla_decode_split_layout {
    int batch, rows, dv, num_parts, max_slots;
    size_t off_lse, off_o, total_bytes;
} mla_decode_split_layout;

static inline size_t mla_align256(size_t x) { return (x + 255) & ~(size_t)255; }

// The heavy-request list, [1 + batch] ints after slot_base, filled by the scheduler: the
// count of requests of more than MLA_DECODE_HEAVY_SPLITS splits, then their indices. Not a
// field of mla_decode_sched, whose size is part of every decode kernel's parameters (one more
// pointer there changed the SASS of v7 and of several v2 forms).
static inline __host__ __device__ int *mla_decode_heavy_list(const mla_decode_sched &s, int batch)
{
    return s.slot_base + batch;
}

// rows = q_len * heads (query rows of one request).
static inline mla_decode_split_layout mla_decode_split_layout_make(int batch, int rows, int dv,
                                                                   int num_parts)
{
    mla_decode_split_layout L;
    L.batch = batch;
    L.rows = rows;
    L.dv = dv;
    L.num_parts = num_parts;
    // Each part holds at most two split pieces (its first and last request), and there are
    // at most batch + num_parts - 1 pieces in all.
    L.max_slots = num_parts + (batch < num_parts ? batch : num_parts);
    // part_start first (16-byte aligned), then tau, six per-request arrays and the heavy list
    const size_t ints = 4 * (size_t)num_parts + 1 + 6 * (size_t)batch + 1 + (size_t)batch;
    L.off_lse = mla_align256(ints * 4);
    L.off_o = mla_align256(L.off_lse + (size_t)L.max_slots * rows * 4);
    L.total_bytes = L.off_o + (size_t)L.max_slots * rows * dv * 4;
    return L;
}

// The plan's int arrays at `plan` (the first L->off_lse bytes of the layout), the partials in
// `ws` at their layout offsets. Both are the workspace unless the caller keeps a separate plan.
static inline mla_decode_sched mla_decode_sched_at(void *plan, void *ws, const mla_decode_split_layout *L)
{
    mla_decode_sched s;
    int *w = (int *)plan;
    s.part_start = w;
    s.tau = w + 4 * L->num_parts;
    s.req_start = s.tau + 1;
    s.num_blocks = s.req_start + L->batch;
    s.seq_eff = s.num_blocks + L->batch;
    s.first_part = s.seq_eff + L->batch;
    s.num_splits = s.first_part + L->batch;
    s.slot_base = s.num_splits + L->batch;
    s.part_lse = (float *)((char *)ws + L->off_lse);
    s.part_o = (float *)((char *)ws + L->off_o);
    return s;
}

static inline mla_decode_sched mla_decode_sched_from(void *ws, const mla_decode_split_layout *L)
{
    return mla_decode_sched_at(ws, ws, L);
}

// Fills the schedule from seq_lens (one CTA). Flags MLA_DEVERR_SEQ_LEN for seq_len < 0 or
// beyond max_keys (then clamps). align_uniform: for batches of up to 1024 requests that all
// have the same number of key blocks, parts of whole requests when that costs at most 1/16
// more per part than the even split (no request split, nothing to combine); opt-in
// (MLA_DECODE_ALIGN=1, src/cuda/sm90/decode.cu) until measured.
cudaError_t mla_launch_decode_schedule(const int32_t *seq_lens, int batch, int max_keys,
                                       int block_n, int num_parts, int align_uniform,
                                       uint32_t *device_error_flags, const mla_decode_sched *s,
                                       cudaStream_t stream);

// A launch on `stream` as a programmatic dependent of the grid before it (PDL): the kernel may
// start while that grid finishes and must wait for it (griddepcontrol.wait) before touching
// memory that grid writes or reads. attr must outlive the launch call.
static inline cudaLaunchConfig_t mla_pdl_launch_config(dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                                       cudaLaunchAttribute *attr)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    attr->id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr->val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cfg;
}

// Merges the partials of split requests into out (bf16, scaled by bmm2_scale) and lse;
// half_partials: part_o holds float16 values.
cudaError_t mla_launch_decode_combine(const mla_decode_sched *s, int batch, int rows, int dv,
                                      int num_parts, bool half_partials, float bmm2_scale,
                                      void *out, float *lse, cudaStream_t stream);

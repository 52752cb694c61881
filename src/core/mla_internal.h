/*
 * Internal interface between the base backend (src/core) and kernel sets (src/cpu,
 * src/cuda). The base backend validates every argument (shapes, dtypes, devices, index
 * contents), resolves scales, and owns the workspace; a kernel set only computes.
 * Adding a kernel set = one file that fills an mla_kernel_set + one line in registry.c.
 */
#ifndef MLA_INTERNAL_H
#define MLA_INTERNAL_H

#include "mla.h"

#include <stdarg.h>

#define MLA_KERNEL_SET_API_VERSION 1

/* ---- errors: every failing path sets the per-thread message and returns the status ---- */
#if defined(__GNUC__)
#define MLA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MLA_PRINTF(a, b)
#endif
mla_status mla_set_error(mla_status status, const char *fmt, ...) MLA_PRINTF(2, 3);
void mla_clear_error(void);
void mla_log(int level, const char *fmt, ...) MLA_PRINTF(2, 3);

/* ---- resolved problem descriptions handed to hooks (all validated) ---- */
typedef struct mla_decode_problem {
    int batch, q_len, num_heads;
    int kv_lora_rank, rope_dim; /* D_qk = kv_lora_rank + rope_dim, D_v = kv_lora_rank */
    int page_size, num_pages, max_pages_per_seq;
    int max_seq_len;            /* upper bound on seq_lens (from args or block table width) */
    long long total_keys;       /* sum of seq_lens when read on the host, else 0: picks forms */
    int causal;
    int fp8_math;               /* mla_config.decode_fp8_math: e4m3 P allowed (fp8 q and cache) */
    mla_dtype q_dtype, kv_dtype;
    float bmm1_scale;           /* q_scale * k_scale * softmax_scale (k_scale only for fp8) */
    float bmm2_scale;           /* v_scale * o_scale (v_scale = k_scale for fp8, else 1) */
    const void *q;              /* contiguous [batch, q_len, H, D_qk] */
    const void *kv_cache;       /* contiguous [num_pages, page_size, D_qk] */
    const int32_t *block_table; /* [batch, max_pages_per_seq] */
    const int32_t *seq_lens;    /* [batch] */
    void *out;                  /* bf16 [batch, q_len, H, D_v] */
    float *lse;                 /* NULL or [batch, q_len, H] */
    void *workspace;            /* >= decode_workspace_size(batch, q_len) bytes */
    size_t workspace_bytes;
    void *plan;                 /* NULL, or decode_plan_size(batch, q_len) bytes of device
                                 * memory: run_decode_plan writes the split schedule there and
                                 * run_decode uses it instead of scheduling */
    void *stream;
} mla_decode_problem;

typedef struct mla_prefill_problem {
    int batch, num_heads;
    int qk_dim, v_dim;          /* 192, 128 */
    int total_q, total_kv;
    int max_seqlen_q, max_seqlen_kv; /* exact maxima when index checks ran, else bounds */
    int causal;
    mla_dtype dtype;            /* of q, k, v */
    float bmm1_scale;           /* q_scale * k_scale * softmax_scale (scales only for fp8) */
    float bmm2_scale;           /* v_scale * o_scale (v_scale only for fp8) */
    const void *q, *k, *v;      /* contiguous */
    const int32_t *cu_seqlens_q, *cu_seqlens_kv;
    void *out;                  /* bf16 [total_q, H, v_dim] */
    float *lse;                 /* NULL or [total_q, H] */
    void *stream;
} mla_prefill_problem;

typedef struct mla_merge_problem {
    int tokens, num_heads, dim;
    mla_dtype in_dtype_a, in_dtype_b, out_dtype; /* bf16 or f32 */
    const void *o_a, *o_b;
    const float *lse_a, *lse_b;
    void *o;
    float *lse;                 /* NULL when not wanted */
    void *stream;
} mla_merge_problem;

typedef struct mla_cache_write_problem {
    int n, kv_lora_rank, rope_dim, page_size, num_pages;
    mla_dtype in_dtype;         /* of c_kv and k_pe (bf16 or f32) */
    mla_dtype slot_dtype;       /* i32 or i64 */
    mla_dtype kv_dtype;
    float inv_k_scale;          /* 1/k_scale for fp8, 1 for bf16 */
    const void *c_kv, *k_pe;    /* contiguous [n, kv_lora_rank], [n, rope] */
    const void *slots;
    void *kv_cache;
    void *stream;
} mla_cache_write_problem;

typedef struct mla_quantize_problem {
    int64_t n;
    mla_dtype in_dtype;
    float inv_scale;
    const void *input;
    uint8_t *output;
    void *stream;
} mla_quantize_problem;

typedef struct mla_kv_pack_problem {
    int n, num_heads, nope_dim, rope_dim, v_dim;
    mla_dtype out_dtype;        /* bf16 or fp8_e4m3 */
    float inv_k_scale, inv_v_scale;
    const void *k_nope; int64_t k_nope_stride_n, k_nope_stride_h; /* elements */
    const void *k_pe;   int64_t k_pe_stride_n;
    const void *v;      int64_t v_stride_n, v_stride_h;
    void *k_out, *v_out;
    void *stream;
} mla_kv_pack_problem;

/* Serving layer (src/core/serving*.c): metadata built from a req_to_token map. Rows
 * batch..capacity-1 are inactive (seq_len 0); slots past the batch's new tokens are -1. */
typedef struct mla_metadata_problem {
    int batch, capacity;        /* requests; rows of block_table / seq_lens_out */
    int q_len;                  /* uniform new tokens per request, or 0: extend_lens */
    int seq_len_offset;         /* added to every seq_len (multi-step draft step s) */
    int page_size, max_pages_per_seq;
    int req_capacity;           /* columns of req_to_token */
    const int32_t *req_to_token, *req_pool_indices, *seq_lens, *extend_lens;
    int32_t *block_table;       /* [capacity, max_pages_per_seq]; -1 for a bad page */
    int32_t *seq_lens_out;      /* [capacity] */
    int32_t *cu_seqlens_q, *cu_seqlens_kv; /* [batch + 1] */
    int32_t *slots;             /* [slot_capacity] */
    int slot_capacity;
    void *stream;
} mla_metadata_problem;

/* Paged rows -> contiguous bf16 rows (value * k_scale for fp8), see mla_gather_cache. */
typedef struct mla_gather_problem {
    int batch, rows, row_dim, page_size, num_pages, max_pages_per_seq;
    mla_dtype kv_dtype;
    float k_scale;              /* 1 for a bf16 cache */
    const void *kv_cache;
    const int32_t *block_table, *token_start, *cu_rows;
    uint16_t *out;              /* bf16 [rows, row_dim] */
    void *stream;
} mla_gather_problem;

/* ---- the hooks a kernel set supplies ---- */
typedef struct mla_kernel_set {
    int api_version; /* MLA_KERNEL_SET_API_VERSION */
    const char *name;
    const char *description;
    mla_device_type device_type;

    /* Fills caps with what the kernels support. */
    void (*get_capabilities)(mla_capabilities *caps);
    /* Is it usable on this machine (any device)? Writes why not into reason. */
    int (*is_available)(char *reason, size_t reason_size);
    /* (optional) Checks the specific device of cfg (e.g. its SM architecture). */
    mla_status (*check_device)(const mla_config *cfg);

    /* (optional) Creates private state in *state; loads and warms every kernel variant the
     * config can use. */
    mla_status (*create)(const mla_config *cfg, void **state);
    void (*destroy)(void *state);

    /* Device memory (CPU: malloc/free). alloc must return zero-filled memory. */
    mla_status (*alloc)(const mla_config *cfg, size_t bytes, void **ptr);
    void (*free)(const mla_config *cfg, void *ptr);
    /* (optional, device kernel sets) synchronous copy device->host, and whether `stream` is
     * being captured into a graph (index checks are skipped then). */
    mla_status (*copy_to_host)(const mla_config *cfg, void *dst, const void *src, size_t bytes,
                               void *stream);
    int (*stream_is_capturing)(void *stream);
    /* (optional) read-and-clear sticky device error flags (synchronizes). */
    mla_status (*device_errors)(void *state, uint32_t *flags);

    /* Decode workspace bytes for (batch, q_len); the base backend enforces at least the
     * DESIGN.md rule on device kernel sets. NULL = 0. */
    size_t (*decode_workspace_size)(void *state, const mla_config *cfg, int batch, int q_len);

    mla_status (*run_decode)(void *state, const mla_decode_problem *p);
    /* (optional) A decode plan built once and reused by several run_decode calls: its bytes
     * for (batch, q_len) (0 or NULL: the kernel set plans nothing ahead), and the step that
     * writes it into p->plan from p->seq_lens (only the shape fields, seq_lens, plan and
     * stream of p are set). */
    size_t (*decode_plan_size)(void *state, const mla_config *cfg, int batch, int q_len);
    mla_status (*run_decode_plan)(void *state, const mla_decode_problem *p);
    mla_status (*run_prefill)(void *state, const mla_prefill_problem *p);
    mla_status (*run_merge_state)(void *state, const mla_merge_problem *p);
    mla_status (*run_kv_cache_write)(void *state, const mla_cache_write_problem *p);
    mla_status (*run_quantize_fp8)(void *state, const mla_quantize_problem *p);
    mla_status (*run_kv_pack)(void *state, const mla_kv_pack_problem *p);

    /* (optional) Serving layer, device kernel sets only (host memory needs none of these).
     * copy_async: any direction (host<->device, device<->device), ordered on `stream`.
     * graph_*: capture the work queued on `stream` into an executable graph, launch it,
     * destroy it. Without graph hooks, capture is emulated (see mla_graph_capture). */
    mla_status (*copy_async)(const mla_config *cfg, void *dst, const void *src, size_t bytes,
                             void *stream);
    mla_status (*run_build_metadata)(const mla_config *cfg, const mla_metadata_problem *p);
    mla_status (*run_gather_cache)(const mla_config *cfg, const mla_gather_problem *p);
    mla_status (*graph_begin)(const mla_config *cfg, void *stream);
    mla_status (*graph_end)(const mla_config *cfg, void *stream, void **graph);
    mla_status (*graph_launch)(const mla_config *cfg, void *graph, void *stream);
    void (*graph_destroy)(const mla_config *cfg, void *graph);
} mla_kernel_set;

/* Kernel sets known to the registry (registry.c lists them). */
extern const mla_kernel_set mla_cpu_kernel_set;
extern const mla_kernel_set mla_hopper_kernel_set;
/* Capabilities of the hopper kernels (src/cuda/hopper_caps.c, also in CPU-only builds). */
void mla_hopper_capabilities(mla_capabilities *caps);
/* Registry lookup by name (NULL when unknown). */
const mla_kernel_set *mla_find_kernel_set(const char *name);

/* Re-aims a decode plan at `batch` <= the batch it was created for, keeping its memory (which
 * CUDA graphs may have captured); it is then unbuilt. The serving layer's plans use it. */
mla_status mla_decode_plan_set_batch(mla_decode_plan *plan, int batch);
/* mla_decode_plan_build for a caller that holds the seq_lens' values on the host
 * (host_lens[batch], equal to the tensor; NULL: read them back when index checks run). */
mla_status mla_decode_plan_build_known(mla_decode_plan *plan, const mla_tensor *seq_lens,
                                       const int32_t *host_lens, void *stream);

/* ---- helpers shared by kernel sets ---- */
/* Hardware-style conversions, used by the CPU kernels (defined in src/core/convert.c). */
static inline float mla_load_as_float(const void *base, mla_dtype dtype, int64_t i);

/* Number of worker threads the CPU kernels use (MLA_NUM_THREADS env, default: online CPUs
 * capped at 64). */
int mla_cpu_num_threads(void);
/* Runs fn(ctx, i) for i in [0, n) over the worker threads; returns when all are done. */
void mla_parallel_for(int64_t n, void (*fn)(void *ctx, int64_t i), void *ctx);

static inline float mla_load_as_float(const void *base, mla_dtype dtype, int64_t i)
{
    switch (dtype) {
    case MLA_DTYPE_BF16: return mla_bf16_to_float(((const uint16_t *)base)[i]);
    case MLA_DTYPE_FP16: return mla_fp16_to_float(((const uint16_t *)base)[i]);
    case MLA_DTYPE_FP8_E4M3: return mla_fp8_e4m3_to_float(((const uint8_t *)base)[i]);
    case MLA_DTYPE_F32: return ((const float *)base)[i];
    case MLA_DTYPE_I32: return (float)((const int32_t *)base)[i];
    case MLA_DTYPE_I64: return (float)((const int64_t *)base)[i];
    }
    return 0.0f;
}

#endif /* MLA_INTERNAL_H */

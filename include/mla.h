/*
 * libmla — paged Multi-head Latent Attention (MLA) for serving DeepSeek-style models.
 *
 * One public header. Sections, simple to advanced:
 *   1. status codes and messages
 *   2. dtypes, devices, tensor descriptors, scalar conversions
 *   3. configuration and backends (registry, capabilities, config check)
 *   4. operations: decode, prefill, merge_state, kv_cache_write, quantize_fp8, kv_pack
 *
 * Every function validates its arguments and returns an mla_status; the library never
 * aborts or exits. On failure, mla_last_error() returns a per-thread message that names
 * the offending argument and value.
 *
 * Layouts, scales and FP8 rules follow DESIGN.md (see README.md for a summary):
 *   KV cache   [num_pages, page_size, kv_lora_rank + qk_rope_head_dim]  (row = c_kv || k_pe)
 *   decode q   [batch, q_len, heads, kv_lora_rank + qk_rope_head_dim]   bf16 or fp8_e4m3
 *   decode out [batch, q_len, heads, kv_lora_rank]                      bf16
 *   prefill q/k [total, heads, qk_nope_head_dim + qk_rope_head_dim], v [total, heads, v_head_dim]
 */
#ifndef MLA_H
#define MLA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MLA_VERSION_MAJOR 0
#define MLA_VERSION_MINOR 1
#define MLA_VERSION_PATCH 0

/* "0.1.0" */
const char *mla_version_string(void);

/* ---------------------------------------------------------------------------------------
 * 1. Status
 * ------------------------------------------------------------------------------------- */
typedef enum mla_status {
    MLA_OK = 0,
    MLA_ERR_INVALID_ARGUMENT = 1, /* a value outside its allowed set (message names both) */
    MLA_ERR_NULL_POINTER = 2,     /* a required pointer was NULL */
    MLA_ERR_SHAPE_MISMATCH = 3,   /* tensor shapes/dtypes disagree with the config or each other */
    MLA_ERR_UNSUPPORTED = 4,      /* valid request this backend does not implement */
    MLA_ERR_OUT_OF_RANGE = 5,     /* index data (page, slot, seq_len, cu_seqlens) out of range */
    MLA_ERR_WORKSPACE_TOO_SMALL = 6,
    MLA_ERR_NONFINITE = 7,        /* NaN/Inf where finite data is required */
    MLA_ERR_BACKEND_UNAVAILABLE = 8,
    MLA_ERR_NOT_FOUND = 9,        /* unknown backend name */
    MLA_ERR_OUT_OF_MEMORY = 10,
    MLA_ERR_DEVICE = 11,          /* CUDA runtime/driver error (message has the CUDA text) */
    MLA_ERR_INTERNAL = 12
} mla_status;

/* Short fixed description of a status ("invalid argument"); never NULL. */
const char *mla_status_string(mla_status status);

/* Detail message of the last failing call on this thread ("" if none). Valid until the
 * next libmla call on the same thread. */
const char *mla_last_error(void);

/* Log sink for notices (page-size adjustment, ignored k_scale, ...). Default: stderr with a
 * "libmla: " prefix. Pass NULL to restore the default. level: 0 info, 1 warning. */
typedef void (*mla_log_fn)(int level, const char *message, void *user);
void mla_set_log_callback(mla_log_fn fn, void *user);

/* ---------------------------------------------------------------------------------------
 * 2. Dtypes, devices, tensors
 * ------------------------------------------------------------------------------------- */
typedef enum mla_dtype {
    MLA_DTYPE_BF16 = 0,
    MLA_DTYPE_FP16 = 1,
    MLA_DTYPE_FP8_E4M3 = 2,
    MLA_DTYPE_F32 = 3,
    MLA_DTYPE_I32 = 4,
    MLA_DTYPE_I64 = 5
} mla_dtype;

size_t mla_dtype_size(mla_dtype dtype);      /* 0 for an unknown dtype */
const char *mla_dtype_name(mla_dtype dtype); /* "bf16", "fp16", "fp8_e4m3", "f32", "i32", "i64" */

typedef enum mla_device_type { MLA_DEVICE_CPU = 0, MLA_DEVICE_CUDA = 1 } mla_device_type;

typedef struct mla_device {
    mla_device_type type;
    int index; /* CUDA ordinal; 0 for the CPU */
} mla_device;

#define MLA_MAX_DIMS 4

/* A view of memory. Strides are in elements. A tensor whose data is NULL is "absent"
 * (allowed only where an argument is documented optional). Unless documented otherwise an
 * operation requires its tensors to be contiguous (row-major). */
typedef struct mla_tensor {
    void *data;
    mla_dtype dtype;
    int ndim;
    int64_t shape[MLA_MAX_DIMS];
    int64_t strides[MLA_MAX_DIMS];
    mla_device device;
} mla_tensor;

/* A contiguous tensor descriptor over `data` (ndim 1..4). */
mla_tensor mla_tensor_contiguous(void *data, mla_dtype dtype, mla_device device, int ndim,
                                 const int64_t *shape);
int64_t mla_tensor_numel(const mla_tensor *t); /* -1 when the product overflows int64 */
int mla_tensor_is_contiguous(const mla_tensor *t);

/* Scalar conversions, bit-exact with the kernels (DESIGN.md "FP8 e4m3 rules"):
 * round to nearest even, finite values beyond +-448 saturate to +-448, +-inf saturates
 * to +-448, NaN stays NaN. Like Hopper's cvt instructions, every NaN becomes one canonical
 * code with the sign dropped: fp8 0x7f, bf16 0x7fff, fp16 0x7fff (checked over all 2^32
 * floats on the device by tests/gpu/convert_exhaustive.cu). */
uint8_t mla_float_to_fp8_e4m3(float x);
float mla_fp8_e4m3_to_float(uint8_t v);
uint16_t mla_float_to_bf16(float x); /* round to nearest even */
float mla_bf16_to_float(uint16_t v);
uint16_t mla_float_to_fp16(float x);
float mla_fp16_to_float(uint16_t v);

/* ---------------------------------------------------------------------------------------
 * 3. Configuration and backends
 * ------------------------------------------------------------------------------------- */

/* Per-layer scales. bmm1 = q_scale * k_scale * softmax_scale (k_scale only with an fp8
 * cache), bmm2 = v_scale * o_scale (v_scale = k_scale: V shares the cache rows). */
typedef struct mla_scales {
    float softmax_scale;
    float q_scale; /* dequant scale of an fp8 query (1 for bf16) */
    float k_scale; /* dequant scale of the fp8 cache / fp8 prefill K */
    float v_scale; /* dequant scale of V (decode: ignored, k_scale is used) */
    float o_scale; /* multiplies the output */
} mla_scales;

typedef struct mla_config {
    size_t struct_size; /* sizeof(mla_config): set by mla_config_init, lets the struct grow */
    int num_heads;         /* H: 1..128 */
    int kv_lora_rank;      /* 512 */
    int qk_rope_head_dim;  /* 64 */
    int qk_nope_head_dim;  /* 128 (prefill) */
    int v_head_dim;        /* 128 (prefill) */
    int page_size;         /* tokens per page; adjusted into the backend's set by the check */
    mla_dtype kv_cache_dtype;
    mla_scales scales;     /* defaults for calls that pass no scales */
    int has_k_scale;       /* the checkpoint supplied k_scale (warned about with a bf16 cache) */
    int max_q_len;         /* largest decode q_len to be used: 1..8 (sizes the workspace) */
    int max_batch;         /* largest decode batch (sizes the workspace); 0 = grow on demand */
    mla_device device;
    /* 1: skip the host-side check of index contents (block tables, seq_lens, cu_seqlens,
     * slots) that live in device memory. Kernels still never read or write out of bounds
     * (bad pages are skipped and flagged, see mla_backend_device_errors). Checks are skipped
     * automatically while a CUDA stream is being captured. The lengths the check reads also
     * pick "hopper"'s decode kernel for an fp8 cache with H * q_len 17..32 (by the keys of the
     * whole call); without them (or a plan built with them) it goes by the batch size. */
    int skip_index_check;
    /* 1: decode with an fp8 query and an fp8 cache may run on fp8 tensor-core math, P (the
     * softmax probabilities) rounded to e4m3 for P V. "hopper" then takes its e4m3 kernel where
     * H * q_len >= 64 (1.26-1.37x faster than the default on an H200 at H = 128); the cost is
     * accuracy: P keeps 3 mantissa bits, up to ~2.5e-2 relative L2 error on 32k-key rows
     * against ~1e-2 with the default 16-bit P. 0 (default): P stays 16-bit. Other shapes and
     * dtypes, and the "cpu" backend (exact math), compute as with 0. Only 0 and 1 are valid. */
    int decode_fp8_math;
} mla_config;

/* DeepSeek-V3 defaults: H=128, 512/64/128/128, page 64, fp8_e4m3 cache, softmax scale
 * 1/sqrt(192) * (0.1 ln 40 + 1)^2, unit q/k/v/o scales, max_q_len 1, CPU device. */
void mla_config_init(mla_config *cfg);

typedef struct mla_capabilities {
    int min_heads, max_heads;
    int page_sizes[4];
    int num_page_sizes;
    uint32_t kv_cache_dtypes; /* bitmask of (1u << mla_dtype) */
    uint32_t query_dtypes;    /* decode query dtypes */
    uint32_t prefill_dtypes;  /* prefill q/k/v dtypes */
    int kv_lora_rank;         /* required value; 0 = any in 1..max_head_dim */
    int qk_rope_head_dim;
    int qk_nope_head_dim;
    int v_head_dim;
    int max_head_dim;         /* bound on any dim when the above are 0 */
    int max_q_len;
    int min_sm_arch;          /* e.g. 90: kernels built for sm_90a (compute capability 9.0 only); 0 = CPU */
    mla_device_type device_type;
} mla_capabilities;

typedef struct mla_backend_info {
    const char *name;
    const char *description;
    int available;          /* usable on this machine */
    char reason[256];       /* why not, when !available */
    mla_capabilities caps;
} mla_backend_info;

/* Registered backends: "cpu" always, "hopper" (sm_90a) when built with CUDA. */
int mla_backend_count(void);
mla_status mla_backend_get_info(int index, mla_backend_info *info);
mla_status mla_backend_find(const char *name, mla_backend_info *info);

/* Checks cfg against backend `name` before anything is allocated: architecture, page_size
 * (auto-adjusted into the supported set, with a notice through the log sink), kv_cache_dtype,
 * heads and dims, max_q_len. Warns once per process if has_k_scale is set with a
 * non-fp8 cache (the k_scale is then ignored). */
mla_status mla_config_check(const char *backend_name, mla_config *cfg);

typedef struct mla_backend mla_backend;

/* Runs mla_config_check, then creates the backend (allocates state, warms up kernels). */
mla_status mla_backend_create(const char *name, const mla_config *cfg, mla_backend **out);
void mla_backend_destroy(mla_backend *backend); /* NULL is a no-op */
const char *mla_backend_name(const mla_backend *backend);
/* The config as adjusted by the check. */
const mla_config *mla_backend_config(const mla_backend *backend);

/* Sticky flags set by device kernels that met bad index data they could not report
 * synchronously (bit 0: page index out of range, bit 1: seq_len beyond block table,
 * bit 2: slot out of range). Synchronizes the device, returns and clears the flags. Always
 * 0 on the CPU backend (which reports such errors as the call's status). */
mla_status mla_backend_device_errors(mla_backend *backend, uint32_t *flags);
#define MLA_DEVERR_PAGE_INDEX 1u
#define MLA_DEVERR_SEQ_LEN 2u
#define MLA_DEVERR_SLOT 4u

/* ---------------------------------------------------------------------------------------
 * 4. Operations. All tensors live on the backend's device. `stream` is a cudaStream_t for
 * CUDA backends (NULL = legacy default stream) and ignored on the CPU. A NULL `scales`
 * means the backend config's scales.
 * ------------------------------------------------------------------------------------- */

typedef struct mla_decode_args {
    mla_tensor q;           /* [batch, q_len, H, kv_lora_rank+rope] bf16, or fp8_e4m3 (q_scale) */
    mla_tensor kv_cache;    /* [num_pages, page_size, kv_lora_rank+rope], cfg.kv_cache_dtype */
    mla_tensor block_table; /* i32 [batch, max_pages_per_seq] */
    mla_tensor seq_lens;    /* i32 [batch]: KV length including the q_len new tokens, >= 0 */
    mla_tensor out;         /* bf16 [batch, q_len, H, kv_lora_rank] */
    mla_tensor lse;         /* optional f32 [batch, q_len, H], natural log, -inf if no key */
    void *workspace;        /* optional: NULL uses the backend's cached per-device workspace;
                             * a caller's buffer must be 16-byte aligned */
    size_t workspace_bytes; /* must be >= mla_decode_workspace_size(...) when workspace given */
    int max_seq_len;        /* optional upper bound on seq_lens (0 = unknown) */
    int no_causal_mask;     /* 1: every query token sees all seq_len keys (default causal) */
    const mla_scales *scales;
    void *stream;
    const struct mla_decode_plan *plan; /* optional: a plan built for this batch (below);
                                         * NULL plans inside the call */
} mla_decode_args;

/* Rows whose causal window holds no key (seq_len < q_len - i) get zero output and -inf LSE. */
mla_status mla_decode(mla_backend *backend, const mla_decode_args *args);

/* Decode plans: the split-KV schedule of one batch, built once and used by every layer's
 * mla_decode of that forward step (as FlashMLA's tile-scheduler metadata or FlashInfer's plan),
 * so that the scheduling step (one small kernel, ~3 us on an H200) runs once per step instead
 * of once per layer. A plan is for one backend, batch, q_len and block-table width
 * (max_pages_per_seq); mla_decode refuses any other with MLA_ERR_INVALID_ARGUMENT. The
 * seq_lens of every call that uses it must hold the values it was built from: when index
 * checks ran for both the build and the call (mla_config.skip_index_check = 0, outside graph
 * capture) mla_decode compares them and refuses a difference; otherwise a call with other
 * lengths computes with the planned ones (kernels still stay inside the block table). Build
 * and use a plan on one stream, in order; rebuilding it while queued calls still use it is
 * safe on that stream.
 * On the CPU backend a plan holds no schedule (mla_decode plans nothing there) but the same
 * checks apply. */
typedef struct mla_decode_plan mla_decode_plan;
/* batch in 1..2^24, q_len in 1..caps.max_q_len, max_pages_per_seq >= 1. Allocates the plan's
 * device memory (do it outside graph capture). */
mla_status mla_decode_plan_create(mla_backend *backend, int batch, int q_len, int max_pages_per_seq,
                                  mla_decode_plan **out);
/* Builds the plan from seq_lens (i32 [batch] on the backend's device), queued on `stream`;
 * graph-capturable. Checks the lengths against the block-table capacity when index checks
 * run (and remembers them for mla_decode's comparison). A failed build leaves the plan
 * unbuilt. */
mla_status mla_decode_plan_build(mla_decode_plan *plan, const mla_tensor *seq_lens, void *stream);
/* NULL is a no-op. Destroy a plan before its backend, and not while queued work uses it. */
void mla_decode_plan_destroy(mla_decode_plan *plan);

/* Workspace bytes a caller-supplied buffer needs for decode of up to `batch` requests of
 * `q_len` tokens (the backend's cached workspace is sized by the same rule). At least
 * num_sms * H * q_len * (kv_lora_rank + 1) * 4 on GPU backends; 0 on the CPU. */
mla_status mla_decode_workspace_size(const mla_backend *backend, int batch, int q_len,
                                     size_t *bytes);

typedef struct mla_prefill_args {
    mla_tensor q;            /* [total_q, H, qk_nope+rope] bf16 or fp8_e4m3 (q_scale) */
    mla_tensor k;            /* [total_kv, H, qk_nope+rope] same dtype as q (k_scale) */
    mla_tensor v;            /* [total_kv, H, v_head_dim] same dtype as q (v_scale) */
    mla_tensor cu_seqlens_q; /* i32 [batch+1], non-decreasing, starts at 0 */
    mla_tensor cu_seqlens_kv;/* i32 [batch+1] */
    int max_seqlen_q;        /* optional upper bounds (0 = unknown) */
    int max_seqlen_kv;
    int causal;              /* bottom-right aligned: q row i of a request with lq, lkv sees
                              * keys [0, lkv - lq + i] */
    mla_tensor out;          /* bf16 [total_q, H, v_head_dim] */
    mla_tensor lse;          /* optional f32 [total_q, H] */
    const mla_scales *scales;
    void *stream;
} mla_prefill_args;

mla_status mla_prefill(mla_backend *backend, const mla_prefill_args *args);

typedef struct mla_merge_state_args {
    mla_tensor o_a, lse_a;  /* [tokens, H, dim] bf16 or f32; lse f32 [tokens, H] */
    mla_tensor o_b, lse_b;
    mla_tensor o;           /* [tokens, H, dim] bf16 or f32; may alias o_a or o_b */
    mla_tensor lse;         /* optional f32 [tokens, H]; may alias lse_a or lse_b */
    void *stream;
} mla_merge_state_args;

/* (o_a, lse_a) ⊕ (o_b, lse_b): attention over the union of two disjoint key sets. A side with
 * lse = -inf contributes nothing; both -inf gives zero output and -inf lse. */
mla_status mla_merge_state(mla_backend *backend, const mla_merge_state_args *args);

typedef struct mla_kv_cache_write_args {
    mla_tensor c_kv;     /* [n, kv_lora_rank] bf16 or f32 */
    mla_tensor k_pe;     /* [n, qk_rope_head_dim] bf16 or f32 */
    mla_tensor slots;    /* i32 or i64 [n]: slot = page * page_size + offset; < 0 = skip */
    mla_tensor kv_cache; /* [num_pages, page_size, kv_lora_rank+rope] cfg.kv_cache_dtype */
    const mla_scales *scales; /* fp8 cache: stored value = round_e4m3(x / k_scale) */
    void *stream;
} mla_kv_cache_write_args;

/* Slots out of range or written twice are refused (MLA_ERR_OUT_OF_RANGE / INVALID_ARGUMENT)
 * before anything is written. Non-finite input rows are refused (MLA_ERR_NONFINITE) before
 * anything is written on the CPU; on CUDA (where checking would mean reading device data
 * back) they are stored by the FP8 rules: +-inf -> +-448, NaN -> NaN. */
mla_status mla_kv_cache_write(mla_backend *backend, const mla_kv_cache_write_args *args);

typedef struct mla_quantize_fp8_args {
    mla_tensor input;  /* any shape, bf16/fp16/f32, contiguous */
    mla_tensor output; /* fp8_e4m3, same number of elements, contiguous */
    float scale;       /* output = round_e4m3(input / scale); scale > 0 and finite */
    void *stream;
} mla_quantize_fp8_args;

mla_status mla_quantize_fp8(mla_backend *backend, const mla_quantize_fp8_args *args);

typedef struct mla_kv_pack_args {
    mla_tensor k_nope; /* [N, H, qk_nope] bf16, last dim contiguous, other strides free */
    mla_tensor k_pe;   /* [N, 1, rope] or [N, rope] bf16, broadcast over heads */
    mla_tensor v;      /* [N, H, v_head_dim] bf16, last dim contiguous */
    mla_tensor k_out;  /* [N, H, qk_nope+rope] bf16 or fp8_e4m3, contiguous */
    mla_tensor v_out;  /* [N, H, v_head_dim] same dtype as k_out, contiguous */
    float k_scale, v_scale; /* fp8 outputs: round_e4m3(x / scale); ignored for bf16 */
    void *stream;
} mla_kv_pack_args;

/* k_out = concat(k_nope, broadcast k_pe) and v_out = v, cast/quantized in one pass. */
mla_status mla_kv_pack(mla_backend *backend, const mla_kv_pack_args *args);

/* ---------------------------------------------------------------------------------------
 * 5. Serving layer
 *
 * What an inference engine's attention backend does around the kernels, done once here so
 * every kernel set inherits it: batch metadata from a req_to_token map, the forward modes
 * (decode, target_verify, draft_extend, extend with a chunked prefix), the write of the new
 * tokens into the KV cache, fp8 quantization of the query, a multi-step draft helper and
 * CUDA-graph capture/replay. Everything below is built from the operations of section 4, so
 * it works on every backend (the CPU backend included, which runs it on the host).
 *
 * Terms. A *request pool* row r of req_to_token holds the cache slots of request r's tokens:
 * req_to_token[r][t] = page * page_size + offset is where token t lives. Tokens of one page
 * must be consecutive in it (slot % page_size == t % page_size, one page per page_size-aligned
 * run of tokens): that is what lets a block table describe the request. A forward batch names
 * its requests by pool row (req_pool_indices) and gives each one's KV length *after* this
 * forward (seq_lens: cached prefix + the new tokens). New tokens are always the last ones:
 * request b's new tokens are at positions [seq_lens[b] - new_b, seq_lens[b]).
 *
 * Token-major tensors. Forward calls take queries and outputs as [tokens, H, dim] with the
 * new tokens of request 0 first, then request 1, ...: decode has batch rows, target_verify
 * batch * q_len, draft_extend and extend sum(extend_lens).
 * ------------------------------------------------------------------------------------- */

typedef enum mla_forward_mode {
    MLA_FORWARD_DECODE = 0,        /* one new token per request */
    MLA_FORWARD_TARGET_VERIFY = 1, /* q_len = draft tokens + 1 per request (1..max_q_len of the
                                    * backend's capabilities), causal among them, full prefix */
    MLA_FORWARD_DRAFT_EXTEND = 2,  /* 1..max_q_len new tokens per request (ragged), causal */
    MLA_FORWARD_EXTEND = 3         /* prefill: any number of new tokens over a cached prefix */
} mla_forward_mode;

/* "decode", "target_verify", "draft_extend", "extend"; "unknown" otherwise. */
const char *mla_forward_mode_name(mla_forward_mode mode);

/* Batch metadata: block tables, KV lengths, cumulative lengths and the cache slots of the new
 * tokens, in fixed-size buffers on the backend's device (allocated once, at creation, for
 * `max_batch` requests), so a CUDA graph that reads them can be replayed after a rebuild.
 * One object describes one batch at a time; use one per concurrently prepared batch. */
typedef struct mla_batch_metadata mla_batch_metadata;

/* max_batch: 1..2^20 requests per forward. max_context: 1..2^30 tokens, the largest KV length
 * of a request (sizes the block table: ceil(max_context / page_size) pages per request).
 * The backend must outlive the metadata. */
mla_status mla_metadata_create(mla_backend *backend, int max_batch, int max_context,
                               mla_batch_metadata **out);
void mla_metadata_destroy(mla_batch_metadata *metadata); /* NULL is a no-op */

typedef struct mla_metadata_args {
    mla_forward_mode mode;
    mla_tensor req_to_token;     /* i32 [max_reqs, req_capacity] on the backend's device */
    mla_tensor req_pool_indices; /* i32 [batch] rows of req_to_token, 0 <= . < max_reqs */
    mla_tensor seq_lens;         /* i32 [batch] KV length after this forward (prefix + new) */
    mla_tensor extend_lens;      /* i32 [batch] new tokens per request: required for
                                  * draft_extend (1..max_q_len) and extend (0..seq_len);
                                  * must be absent for decode and target_verify */
    int q_len;                   /* decode: 1 (0 means 1); target_verify: draft tokens + 1;
                                  * ignored by the ragged modes */
    /* Optional host copies of seq_lens / extend_lens (int32 [batch]), equal to the tensors.
     * CUDA backends use them for exact maximum lengths and for the ragged modes' host-side
     * bookkeeping; without them they copy the tensors back (a synchronizing read), and when
     * they may not (cfg.skip_index_check, stream capture) draft_extend and extend fail. The
     * CPU backend reads the tensors directly. */
    const int32_t *host_seq_lens;
    const int32_t *host_extend_lens;
    void *stream;
} mla_metadata_args;

/* Builds the metadata of one batch (1..max_batch requests; 0 is allowed and gives an empty
 * batch). Rows batch..max_batch-1 are marked inactive (KV length 0, no cache slots), so a
 * graph captured for max_batch computes nothing for them. Checks, whenever the index data
 * can be read on the host (always on the CPU; on CUDA unless cfg.skip_index_check is set or
 * the stream is capturing): pool indices in range, seq_lens in [new tokens, min(max_context,
 * req_capacity)], extend_lens in their range, and every slot of every used req_to_token row
 * non-negative and page-aligned (message names request, token, slot and page_size). CUDA
 * backends build on the device with a kernel; a misaligned or negative page there becomes a
 * -1 block-table entry that the attention kernels skip and flag (mla_backend_device_errors).
 * For decode and target_verify the build also builds a decode plan (section 4) that every
 * forward call of the batch (one per layer) uses, so the split-KV scheduling runs once per
 * build instead of once per layer; while a graph exists over the metadata it plans the graph's
 * max_batch rows. The metadata's seq_lens must not change between a build and its forwards
 * (with index checks on, a forward refuses a change). */
mla_status mla_metadata_build(mla_batch_metadata *metadata, const mla_metadata_args *args);

/* Views of the built metadata (valid until the next build or destroy), for callers that run
 * mla_decode / mla_prefill themselves. Tensors live on the backend's device. */
typedef struct mla_metadata_view {
    mla_forward_mode mode;
    int batch;              /* requests of the last build */
    int max_batch;          /* rows of block_table / seq_lens (rows >= batch are inactive) */
    int q_len;              /* decode modes: new tokens per request; ragged modes: longest */
    int num_new_tokens;     /* rows of the token-major tensors of this batch */
    int max_seq_len;        /* longest seq_len, or the block-table capacity when unknown */
    int max_pages_per_seq;
    mla_tensor block_table; /* i32 [max_batch, max_pages_per_seq] (page-aligned) */
    mla_tensor seq_lens;    /* i32 [max_batch] */
    mla_tensor cu_seqlens_q;  /* i32 [batch + 1] new tokens */
    mla_tensor cu_seqlens_kv; /* i32 [batch + 1] seq_lens */
    mla_tensor new_slots;   /* i32 [num_new_tokens] cache slot of each new token */
    /* decode and target_verify: the build's decode plan, for an mla_decode over the first
     * decode_plan_batch rows of block_table / seq_lens with q_len tokens (batch, or max_batch
     * while a graph exists over the metadata); NULL (and 0) when the build made none (ragged
     * modes, an empty batch, a first build of that q_len during stream capture). */
    const mla_decode_plan *decode_plan;
    int decode_plan_batch;
} mla_metadata_view;
mla_status mla_metadata_get(const mla_batch_metadata *metadata, mla_metadata_view *view);

/* Up-projection of prefix rows for extend (the latent -> per-head GEMM is the model's): the
 * library gathers a chunk of cached prefix rows (dequantized: value * k_scale, rounded to
 * bf16) into `latent`, the callback writes their K and V. All three are library buffers on
 * the backend's device, valid during the call; device work must be ordered on `stream`.
 * Return MLA_OK, or a status that the extend call then returns (message naming the chunk). */
typedef struct mla_prefix_chunk {
    int chunk_index;            /* 0, 1, ...: prefix positions [index * chunk_size, ...) */
    int batch;
    int num_rows;               /* rows of latent / k / v */
    const int32_t *host_cu_rows;      /* [batch + 1] request b owns rows [cu[b], cu[b+1]) */
    const int32_t *host_token_start;  /* [batch] position of request b's first row */
    mla_tensor latent;          /* bf16 [num_rows, kv_lora_rank + rope]: c_kv || k_pe */
    mla_tensor k;               /* bf16 [num_rows, H, qk_nope + rope]: to be written */
    mla_tensor v;               /* bf16 [num_rows, H, v_head_dim]: to be written */
    void *stream;
} mla_prefix_chunk;
typedef mla_status (*mla_prefix_kv_fn)(void *user, const mla_prefix_chunk *chunk);

/* Arguments of the forward calls. Absent tensors have data == NULL. */
typedef struct mla_forward_args {
    /* decode modes: q [tokens, H, kv_lora_rank + rope] bf16 or fp8_e4m3 (q_scale), out bf16
     * [tokens, H, kv_lora_rank]. extend: q bf16 [tokens, H, qk_nope + rope], out bf16
     * [tokens, H, v_head_dim]. lse: optional f32 [tokens, H], natural log. */
    mla_tensor q;
    mla_tensor out;
    mla_tensor lse;
    /* Optional: the new tokens' latent, written into kv_cache at their slots before the
     * attention (fp8 cache: round_e4m3(x / k_scale)). c_kv bf16/f32 [tokens, kv_lora_rank],
     * k_pe same dtype [tokens, rope]. Both or neither. */
    mla_tensor c_kv;
    mla_tensor k_pe;
    mla_tensor kv_cache;        /* [num_pages, page_size, kv_lora_rank + rope] */
    /* decode modes: 1 quantizes a bf16 q to fp8 (scale q_scale) before attention; 0 does so
     * only when the kernel set takes no bf16 query. */
    int quantize_q;
    /* extend only: the new tokens' K bf16 [tokens, H, qk_nope + rope] and V bf16 [tokens, H,
     * v_head_dim], and the prefix K/V, from exactly one of
     *   prefix_kv (callback, called once per chunk of prefix_chunk_size positions per request,
     *   0 = 4096), or
     *   prefix_k / prefix_v: bf16 [sum of prefix lengths, H, ...], request-major,
     * or neither when no request of the batch has a prefix. */
    mla_tensor k;
    mla_tensor v;
    mla_prefix_kv_fn prefix_kv;
    void *prefix_kv_user;
    int prefix_chunk_size;
    mla_tensor prefix_k;
    mla_tensor prefix_v;
    const mla_scales *scales;   /* NULL: the backend config's */
    void *stream;
} mla_forward_args;

/* Each forward call checks that `metadata` was last built for its mode, validates the
 * tensors against it, writes the new tokens into the cache (when c_kv/k_pe are given) and
 * attends. Decode: mla_decode with q_len 1. Target verify: q_len new tokens per request,
 * token i of request b sees keys [0, seq_lens[b] - q_len + i]. Draft extend: ragged new
 * tokens, each sees its prefix and the new tokens up to itself (run as a decode over
 * front-padded q_len = longest, then unpadded). Extend: causal attention of the new tokens
 * among themselves + non-causal attention over the prefix (in chunks, each with LSE), merged
 * with mla_merge_state; needs bf16 q/k/v. */
mla_status mla_forward_decode(mla_backend *backend, mla_batch_metadata *metadata,
                              const mla_forward_args *args);
mla_status mla_forward_target_verify(mla_backend *backend, mla_batch_metadata *metadata,
                                     const mla_forward_args *args);
mla_status mla_forward_draft_extend(mla_backend *backend, mla_batch_metadata *metadata,
                                    const mla_forward_args *args);
mla_status mla_forward_extend(mla_backend *backend, mla_batch_metadata *metadata,
                              const mla_forward_args *args);

/* Gathers tokens [token_start[b], token_start[b] + cu_rows[b+1] - cu_rows[b]) of each request
 * from the paged cache through its block table into contiguous rows, dequantized (fp8:
 * value * k_scale) and rounded to bf16. Used by extend; public for engines that project the
 * prefix themselves. */
typedef struct mla_gather_cache_args {
    mla_tensor kv_cache;    /* [num_pages, page_size, kv_lora_rank + rope] */
    mla_tensor block_table; /* i32 [batch, max_pages_per_seq] */
    mla_tensor token_start; /* i32 [batch], >= 0 */
    mla_tensor cu_rows;     /* i32 [batch + 1], non-decreasing, cu_rows[0] = 0 */
    mla_tensor out;         /* bf16 [cu_rows[batch], kv_lora_rank + rope] */
    const mla_scales *scales;
    void *stream;
} mla_gather_cache_args;
mla_status mla_gather_cache(mla_backend *backend, const mla_gather_cache_args *args);

/* Multi-step draft (EAGLE/MTP with one token per step): num_steps decode steps that share
 * the backend (cache, workspace) and are prepared together. Step s decodes the s-th draft
 * token, so its KV lengths are seq_lens + s; req_to_token must already hold slots for every
 * draft position. Each step has its own metadata (so each can have its own CUDA graph). */
typedef struct mla_multistep_draft mla_multistep_draft;
mla_status mla_multistep_draft_create(mla_backend *backend, int num_steps, int max_batch,
                                      int max_context, mla_multistep_draft **out);
void mla_multistep_draft_destroy(mla_multistep_draft *draft); /* NULL is a no-op */
/* args->mode must be MLA_FORWARD_DECODE and args->seq_lens the lengths of step 0. */
mla_status mla_multistep_draft_build(mla_multistep_draft *draft, const mla_metadata_args *args);
/* The metadata of step `step` (0..num_steps-1), for mla_forward_decode; NULL when out of
 * range. Owned by the draft object. */
mla_batch_metadata *mla_multistep_draft_metadata(mla_multistep_draft *draft, int step);

/* CUDA graphs for decode and target_verify. Capture records one forward call for
 * metadata's max_batch requests of q_len tokens on `args->stream` (which must be a
 * non-default stream on CUDA backends); every tensor of args must be sized for max_batch
 * (tokens = max_batch * q_len) and stays in use by the graph. Replay rebuilds the metadata
 * for a batch of 1..max_batch requests (or, with args NULL, uses the metadata as last built,
 * e.g. by mla_multistep_draft_build) and launches the graph; the caller first writes the new
 * q (and c_kv / k_pe) into the captured buffers. Rows < batch of out/lse are bit-identical
 * to the eager forward call on the same inputs; rows >= batch are unspecified (but inside the
 * captured buffers). While a graph exists over a metadata object, eager decode and
 * target_verify calls on it run with the graph's shape too (max_batch rows, inactive ones
 * masked, through internal scratch), since split-KV kernels may divide work by the whole
 * batch; that is what makes them agree bit for bit. On a backend without graphs (the CPU)
 * capture records the call (running it once over the all-inactive batch: zeros in out, -inf
 * in lse) and replay runs it for max_batch rows with the inactive rows masked, the same
 * semantics. Capture leaves the metadata unbuilt. The metadata must outlive its graphs; use
 * one stream per metadata object (none of these objects is safe to share between threads). */
typedef struct mla_graph mla_graph;
mla_status mla_graph_capture(mla_backend *backend, mla_batch_metadata *metadata,
                             mla_forward_mode mode, int q_len, const mla_forward_args *args,
                             mla_graph **out);
/* args->mode and q_len must match the capture; `stream`: where to launch (NULL = the
 * capture stream). */
mla_status mla_graph_replay(mla_graph *graph, const mla_metadata_args *args, void *stream);
void mla_graph_destroy(mla_graph *graph); /* NULL is a no-op */

#ifdef __cplusplus
}
#endif
#endif /* MLA_H */

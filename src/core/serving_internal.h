/* Shared by the serving-layer files (serving.c, metadata.c, chunked_prefix.c, graph.c): the
 * batch metadata object and the helpers that move memory on the backend's device. */
#ifndef MLA_SERVING_INTERNAL_H
#define MLA_SERVING_INTERNAL_H

#include "tensor_check.h"

/* Grow-on-demand scratch buffers owned by a metadata object (device memory). */
enum {
    MLA_SCRATCH_Q_FP8,      /* quantized query */
    MLA_SCRATCH_PAD_Q,      /* draft_extend: front-padded q, out, lse */
    MLA_SCRATCH_PAD_OUT,
    MLA_SCRATCH_PAD_LSE,
    MLA_SCRATCH_EXT_O,      /* extend: partial outputs / LSEs, accumulators */
    MLA_SCRATCH_EXT_LSE,
    MLA_SCRATCH_CHUNK_O,
    MLA_SCRATCH_CHUNK_LSE,
    MLA_SCRATCH_ACC_O,
    MLA_SCRATCH_ACC_LSE,
    MLA_SCRATCH_LATENT,     /* extend: gathered prefix rows and their K/V */
    MLA_SCRATCH_CHUNK_K,
    MLA_SCRATCH_CHUNK_V,
    MLA_SCRATCH_CHUNK_IDX,  /* extend: token_start + cu_rows + cu_prefix (i32) */
    MLA_SCRATCH_COUNT
};

typedef struct mla_scratch {
    void *ptr;
    size_t bytes;
} mla_scratch;

struct mla_batch_metadata {
    mla_backend *backend;
    const mla_kernel_set *ks;
    mla_config cfg;            /* the backend's (device, page_size, dims) */
    mla_capabilities caps;
    int capacity;              /* max_batch */
    int max_context;
    int max_pages_per_seq;
    int slot_capacity;
    /* device buffers, fixed while a graph uses them */
    int32_t *block_table;      /* [capacity, max_pages_per_seq] */
    int32_t *seq_lens;         /* [capacity] */
    int32_t *cu_seqlens_q;     /* [capacity + 1] */
    int32_t *cu_seqlens_kv;    /* [capacity + 1] */
    int32_t *slots;            /* [slot_capacity] */
    /* the last build */
    int built;
    mla_forward_mode mode;
    int batch, q_len, num_new_tokens, max_seq_len;
    int host_known;            /* host_seq_lens / host_extend_lens hold this batch's values */
    int64_t max_slot;          /* largest slot the batch refers to; -1 when not read (no checks) */
    int32_t *host_seq_lens;    /* [capacity] (after seq_len_offset) */
    int32_t *host_extend_lens; /* [capacity] */
    int graph_users;           /* graphs captured over these buffers: no reallocation */
    /* Decode plans of the decode modes: one per q_len ([caps.max_q_len + 1]), sized for
     * capacity requests, made on first use and kept until destroy (graphs capture their
     * memory). The last build planned plan_rows requests of plan_q_len tokens (0: none). */
    mla_decode_plan **plans;
    int plan_rows, plan_q_len;
    mla_scratch scratch[MLA_SCRATCH_COUNT];
};

/* Kernel set behind a backend (by its registered name). */
const mla_kernel_set *mla_serving_kernel_set(const mla_backend *be);
int mla_serving_on_host(const mla_kernel_set *ks);

/* Copy of `bytes` between any two locations of the backend's device or the host. */
mla_status mla_serving_copy(const mla_batch_metadata *md, void *dst, const void *src,
                            size_t bytes, void *stream);
/* Device -> host, synchronous. */
mla_status mla_serving_to_host(const mla_batch_metadata *md, void *dst, const void *src,
                               size_t bytes, void *stream);
/* Makes scratch[which] hold at least `bytes`. The fp8-query buffer cannot move while graphs
 * use the metadata (they read it); that growth is refused. */
mla_status mla_serving_scratch(mla_batch_metadata *md, int which, size_t bytes, void **ptr);

/* Builds metadata on the host (the CPU backend's path and the device fallback). Inputs were
 * validated by check_metadata_indices when they could be. */
void mla_host_build_metadata(const mla_metadata_problem *p);
void mla_host_gather_cache(const mla_gather_problem *p);

/* Validates host copies of the index data of one build. req_to_token_row(ctx, r, n, buf)
 * fills buf with the first n slots of pool row r. *max_slot: the largest slot read (-1 when no
 * row was read). */
typedef mla_status (*mla_row_reader)(void *ctx, int row, int n, int32_t *buf);
mla_status mla_check_metadata_indices(const char *op, mla_forward_mode mode, int batch,
                                      int q_len, int seq_len_offset, int max_q_len,
                                      const int32_t *req_pool_indices, const int32_t *seq_lens,
                                      const int32_t *extend_lens, int max_reqs,
                                      int req_capacity, int max_context, int page_size,
                                      mla_row_reader read_row, void *read_ctx,
                                      int64_t *max_slot);

/* Plans the split-KV schedule of `rows` requests of q_len tokens from the metadata's
 * seq_lens (rows 0 plans nothing), so that every forward call of the build can skip it.
 * host_lens: those seq_lens on the host ([rows]), or NULL to read them back for the checks. */
mla_status mla_serving_plan_decode(mla_batch_metadata *md, int rows, int q_len,
                                   const int32_t *host_lens, void *stream);
/* The plan of the last build when it covers a decode over `rows` requests of q_len tokens. */
const mla_decode_plan *mla_serving_decode_plan(const mla_batch_metadata *md, int rows, int q_len);

/* backend, metadata and args non-NULL, and the metadata made for this backend. */
mla_status mla_serving_check_call(mla_backend *be, mla_batch_metadata *md,
                                  const mla_forward_args *a, const char *op);
/* Checks of a forward call that writes the cache: the c_kv/k_pe pair (both or neither,
 * [tokens, ...]), kv_cache (optional when cache_optional), and out, lse and kv_cache disjoint
 * from every input and each other. Run before anything is written. */
mla_status mla_serving_check_writes(const mla_batch_metadata *md, const mla_forward_args *a,
                                    const char *op, int64_t tokens, int cache_optional);

/* Forward over the metadata's first `batch` rows (the graph code passes max_batch).
 * `workspace` may be NULL (the backend's cached one). */
mla_status mla_forward_uniform(mla_backend *be, mla_batch_metadata *md, const char *op,
                               mla_forward_mode mode, const mla_forward_args *a, int batch,
                               void *workspace, size_t workspace_bytes);

/* Tensor helpers. */
mla_tensor mla_view2(void *data, mla_dtype dt, mla_device dev, int64_t a, int64_t b);
mla_tensor mla_view3(void *data, mla_dtype dt, mla_device dev, int64_t a, int64_t b, int64_t c);
mla_tensor mla_view4(void *data, mla_dtype dt, mla_device dev, int64_t a, int64_t b, int64_t c,
                     int64_t d);

#endif

/* CUDA graphs for decode and target_verify. Capture records one forward call over the
 * metadata's max_batch rows with every row inactive (KV length 0, no cache slots); replay
 * rebuilds the metadata in the same buffers (outside the graph) and launches it, so rows of
 * requests not in the batch compute nothing and write nothing to the cache. Kernel sets
 * without graph hooks (the CPU) get the same semantics by running the recorded call. */
#include "serving_internal.h"

#include <stdlib.h>
#include <string.h>

struct mla_graph {
    mla_backend *backend;
    const mla_kernel_set *ks;
    mla_batch_metadata *md;
    mla_forward_mode mode;
    int q_len;
    mla_forward_args args; /* the captured buffers */
    mla_scales scales;
    void *stream;
    void *exec;            /* device graph; NULL when emulated */
    void *workspace;       /* graph-owned, so no other call can move it */
    size_t workspace_bytes;
};

static int has_graph_hooks(const mla_kernel_set *ks)
{
    return ks->graph_begin && ks->graph_end && ks->graph_launch && ks->graph_destroy;
}

/* Marks every row of the metadata inactive and records the state the capture sees. */
static mla_status metadata_all_inactive(mla_batch_metadata *md, mla_forward_mode mode, int q_len,
                                        void *stream)
{
    const size_t rows = (size_t)md->capacity, slots = (size_t)md->capacity * q_len;
    int32_t *zeros = calloc(rows + 1, 4);
    int32_t *neg = malloc(slots * 4);
    mla_status st = MLA_OK;
    if (!zeros || !neg) st = mla_set_error(MLA_ERR_OUT_OF_MEMORY, "mla_graph_capture: out of host memory");
    if (st == MLA_OK) {
        for (size_t i = 0; i < slots; i++) neg[i] = -1;
        st = mla_serving_copy(md, md->seq_lens, zeros, rows * 4, stream);
    }
    if (st == MLA_OK) st = mla_serving_copy(md, md->cu_seqlens_q, zeros, (rows + 1) * 4, stream);
    if (st == MLA_OK) st = mla_serving_copy(md, md->cu_seqlens_kv, zeros, (rows + 1) * 4, stream);
    if (st == MLA_OK) st = mla_serving_copy(md, md->slots, neg, slots * 4, stream);
    free(zeros);
    free(neg);
    if (st != MLA_OK) return st;
    memset(md->host_seq_lens, 0, rows * 4);
    /* The captured forward reads this plan's memory; every build while the graph exists
     * re-plans it for max_batch rows. */
    MLA_TRY(mla_serving_plan_decode(md, md->capacity, q_len, md->host_seq_lens, stream));
    md->built = 1;
    md->mode = mode;
    md->batch = md->capacity;
    md->q_len = q_len;
    md->num_new_tokens = md->capacity * q_len;
    md->max_seq_len = 0;
    md->host_known = 1;
    return MLA_OK;
}

void mla_graph_destroy(mla_graph *g)
{
    if (!g) return;
    if (g->exec) g->ks->graph_destroy(&g->md->cfg, g->exec);
    if (g->workspace) g->ks->free(&g->md->cfg, g->workspace);
    g->md->graph_users--;
    free(g);
}

mla_status mla_graph_capture(mla_backend *be, mla_batch_metadata *md, mla_forward_mode mode,
                             int q_len, const mla_forward_args *a, mla_graph **out)
{
    static const char op[] = "mla_graph_capture";
    mla_clear_error();
    if (!out) return mla_set_error(MLA_ERR_NULL_POINTER, "%s: out is NULL", op);
    *out = NULL;
    MLA_TRY(mla_serving_check_call(be, md, a, op));
    if (mode == MLA_FORWARD_DECODE) {
        if (q_len == 0) q_len = 1;
        if (q_len != 1)
            return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: q_len = %d for decode, must be 1",
                                 op, q_len);
    } else if (mode == MLA_FORWARD_TARGET_VERIFY) {
        if (q_len < 1 || q_len > md->caps.max_q_len)
            return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                                 "%s: q_len = %d for target_verify is outside [1, %d]", op, q_len,
                                 md->caps.max_q_len);
    } else {
        return mla_set_error(MLA_ERR_UNSUPPORTED,
                             "%s: mode %s cannot be captured (decode and target_verify can)", op,
                             mla_forward_mode_name(mode));
    }
    const mla_kernel_set *ks = md->ks;
    const int device_graph = has_graph_hooks(ks);
    if (!device_graph && !mla_serving_on_host(ks))
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: backend '%s' provides no graph hooks", op,
                             ks->name);
    if (device_graph && a->stream == NULL)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: args->stream is NULL; CUDA cannot capture the legacy default "
                             "stream, pass a stream created with cudaStreamCreate",
                             op);
    mla_graph *g = calloc(1, sizeof *g);
    if (!g) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    g->backend = be;
    g->ks = ks;
    g->md = md;
    g->mode = mode;
    g->q_len = q_len;
    g->args = *a;
    g->stream = a->stream;
    if (a->scales) {
        g->scales = *a->scales;
        g->args.scales = &g->scales;
    }
    md->graph_users++;

    size_t ws = 0;
    mla_status st = mla_decode_workspace_size(be, md->capacity, q_len, &ws);
    if (st == MLA_OK && ws > 0) {
        st = ks->alloc(&md->cfg, ws, &g->workspace);
        if (st == MLA_OK) g->workspace_bytes = ws;
    }
    /* Buffers that must exist before capture (a graph cannot allocate): the fp8 query. */
    if (st == MLA_OK) {
        const mla_config *c = &md->cfg;
        const int wants_fp8 = a->q.dtype != MLA_DTYPE_FP8_E4M3 &&
                              (a->quantize_q || !(md->caps.query_dtypes & MLA_DT(MLA_DTYPE_BF16)));
        void *unused;
        if (wants_fp8)
            st = mla_serving_scratch(md, MLA_SCRATCH_Q_FP8,
                                     (size_t)md->capacity * q_len * c->num_heads *
                                         (c->kv_lora_rank + c->qk_rope_head_dim),
                                     &unused);
    }
    if (st == MLA_OK) st = metadata_all_inactive(md, mode, q_len, a->stream);
    if (st == MLA_OK && device_graph) {
        st = ks->graph_begin(&md->cfg, a->stream);
        if (st == MLA_OK) {
            mla_status run = mla_forward_uniform(be, md, op, mode, &g->args, md->capacity,
                                                 g->workspace, g->workspace_bytes);
            char msg[512] = "";
            if (run != MLA_OK) snprintf(msg, sizeof msg, "%s", mla_last_error());
            st = ks->graph_end(&md->cfg, a->stream, &g->exec); /* always ends the capture */
            if (run != MLA_OK) {
                if (g->exec) ks->graph_destroy(&md->cfg, g->exec);
                g->exec = NULL;
                st = mla_set_error(run, "%s: the captured forward failed: %s", op, msg);
            }
        }
    } else if (st == MLA_OK) {
        /* Emulated: run once over the all-inactive batch, which validates the buffers and
         * writes nothing but zeros into out/lse. */
        st = mla_forward_uniform(be, md, op, mode, &g->args, md->capacity, g->workspace,
                                 g->workspace_bytes);
    }
    md->built = 0; /* a replay or forward builds first */
    if (st != MLA_OK) {
        mla_graph_destroy(g);
        return st;
    }
    *out = g;
    return MLA_OK;
}

mla_status mla_graph_replay(mla_graph *g, const mla_metadata_args *a, void *stream)
{
    static const char op[] = "mla_graph_replay";
    mla_clear_error();
    if (!g) return mla_set_error(MLA_ERR_NULL_POINTER, "%s: graph is NULL", op);
    mla_batch_metadata *md = g->md;
    if (a) {
        if (a->mode != g->mode)
            return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                                 "%s: args->mode = %s, the graph was captured for %s", op,
                                 mla_forward_mode_name(a->mode), mla_forward_mode_name(g->mode));
        const int q_len = a->mode == MLA_FORWARD_DECODE && a->q_len == 0 ? 1 : a->q_len;
        if (q_len != g->q_len)
            return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                                 "%s: args->q_len = %d, the graph was captured for q_len %d", op,
                                 a->q_len, g->q_len);
        MLA_TRY(mla_metadata_build(md, a));
    } else if (!md->built || md->mode != g->mode || md->q_len != g->q_len) {
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: args is NULL but the metadata was not built for %s with q_len "
                             "%d",
                             op, mla_forward_mode_name(g->mode), g->q_len);
    }
    if (!stream) stream = g->stream;
    if (g->exec) return g->ks->graph_launch(&md->cfg, g->exec, stream);
    mla_forward_args run = g->args;
    run.stream = stream;
    return mla_forward_uniform(g->backend, md, op, g->mode, &run, md->capacity, g->workspace,
                               g->workspace_bytes);
}

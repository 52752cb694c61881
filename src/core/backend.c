/* The base backend: creation, the per-device workspace cache, and every operation's argument
 * validation before the kernel set's hook runs. Kernel sets only compute. */
#include "tensor_check.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One workspace buffer per device, shared by every backend on it, grown on demand. */
typedef struct workspace_entry {
    mla_device device;
    const mla_kernel_set *owner; /* whose alloc/free manage the buffer */
    mla_config owner_cfg;
    void *ptr;
    size_t bytes;
    int refs;
    struct workspace_entry *next;
} workspace_entry;

static pthread_mutex_t workspace_lock = PTHREAD_MUTEX_INITIALIZER;
static workspace_entry *workspaces;

struct mla_backend {
    const mla_kernel_set *ks;
    mla_config cfg;
    mla_capabilities caps;
    void *state;
    workspace_entry *workspace;
};

static workspace_entry *workspace_ref(const mla_kernel_set *ks, const mla_config *cfg)
{
    pthread_mutex_lock(&workspace_lock);
    workspace_entry *e = workspaces;
    while (e && !(e->device.type == cfg->device.type && e->device.index == cfg->device.index))
        e = e->next;
    if (!e && (e = calloc(1, sizeof *e)) != NULL) {
        e->device = cfg->device;
        e->owner = ks;
        e->owner_cfg = *cfg;
        e->next = workspaces;
        workspaces = e;
    }
    if (e) e->refs++;
    pthread_mutex_unlock(&workspace_lock);
    return e;
}

static void workspace_unref(workspace_entry *w)
{
    if (!w) return;
    pthread_mutex_lock(&workspace_lock);
    if (--w->refs == 0) {
        workspace_entry **p = &workspaces;
        while (*p != w) p = &(*p)->next;
        *p = w->next;
        if (w->ptr) w->owner->free(&w->owner_cfg, w->ptr);
        free(w);
    }
    pthread_mutex_unlock(&workspace_lock);
}

/* Makes the device's workspace at least `needed` bytes. Called with workspace_lock held. A
 * buffer cannot move while a CUDA graph is being captured (the graph would keep the old
 * address), so growth is refused then. */
static mla_status workspace_reserve(mla_backend *be, size_t needed, void *stream)
{
    workspace_entry *w = be->workspace;
    if (w->bytes >= needed) return MLA_OK;
    if (be->ks->stream_is_capturing && be->ks->stream_is_capturing(stream))
        return mla_set_error(MLA_ERR_WORKSPACE_TOO_SMALL,
                             "the cached workspace must grow to %zu bytes during CUDA graph "
                             "capture; set cfg.max_batch (or run once) before capturing",
                             needed);
    size_t grow = w->bytes + w->bytes / 2;
    size_t bytes = needed > grow ? needed : grow;
    if (w->ptr) w->owner->free(&w->owner_cfg, w->ptr);
    w->ptr = NULL;
    w->bytes = 0;
    void *p = NULL;
    mla_status st = w->owner->alloc(&w->owner_cfg, bytes, &p);
    if (st != MLA_OK) return st;
    w->ptr = p;
    w->bytes = bytes;
    return MLA_OK;
}

mla_status mla_backend_create(const char *name, const mla_config *cfg_in, mla_backend **out)
{
    mla_clear_error();
    if (!out) return mla_set_error(MLA_ERR_NULL_POINTER, "mla_backend_create: out is NULL");
    *out = NULL;
    if (!cfg_in) return mla_set_error(MLA_ERR_NULL_POINTER, "mla_backend_create: cfg is NULL");
    mla_config cfg = *cfg_in;
    MLA_TRY(mla_config_check(name, &cfg));
    const mla_kernel_set *ks = mla_find_kernel_set(name);
    if (ks->api_version != MLA_KERNEL_SET_API_VERSION)
        return mla_set_error(MLA_ERR_INTERNAL, "kernel set '%s' has API version %d, expected %d",
                             name, ks->api_version, MLA_KERNEL_SET_API_VERSION);
    mla_backend *be = calloc(1, sizeof *be);
    if (!be) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "mla_backend_create: out of host memory");
    be->ks = ks;
    be->cfg = cfg;
    ks->get_capabilities(&be->caps);
    if (ks->create) {
        mla_status st = ks->create(&be->cfg, &be->state);
        if (st != MLA_OK) {
            free(be);
            return st;
        }
    }
    be->workspace = workspace_ref(ks, &be->cfg);
    if (!be->workspace) {
        mla_backend_destroy(be);
        return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "mla_backend_create: out of host memory");
    }
    /* Size the workspace for the largest decode up front when the caller says how large, so
     * graph capture never meets a growth. */
    if (cfg.max_batch > 0 && ks->decode_workspace_size) {
        size_t need = ks->decode_workspace_size(be->state, &be->cfg, cfg.max_batch, cfg.max_q_len);
        pthread_mutex_lock(&workspace_lock);
        mla_status st = workspace_reserve(be, need, NULL);
        pthread_mutex_unlock(&workspace_lock);
        if (st != MLA_OK) {
            mla_backend_destroy(be);
            return st;
        }
    }
    *out = be;
    return MLA_OK;
}

void mla_backend_destroy(mla_backend *be)
{
    if (!be) return;
    workspace_unref(be->workspace);
    if (be->ks->destroy) be->ks->destroy(be->state);
    free(be);
}

const char *mla_backend_name(const mla_backend *be) { return be ? be->ks->name : NULL; }
const mla_config *mla_backend_config(const mla_backend *be) { return be ? &be->cfg : NULL; }

mla_status mla_backend_device_errors(mla_backend *be, uint32_t *flags)
{
    mla_clear_error();
    if (!be || !flags)
        return mla_set_error(MLA_ERR_NULL_POINTER, "mla_backend_device_errors: %s is NULL",
                             be ? "flags" : "backend");
    *flags = 0;
    if (!be->ks->device_errors) return MLA_OK;
    return be->ks->device_errors(be->state, flags);
}

mla_status mla_decode_workspace_size(const mla_backend *be, int batch, int q_len, size_t *bytes)
{
    mla_clear_error();
    if (!be || !bytes)
        return mla_set_error(MLA_ERR_NULL_POINTER, "mla_decode_workspace_size: %s is NULL",
                             be ? "bytes" : "backend");
    *bytes = 0;
    if (batch < 0 || q_len < 1 || q_len > be->caps.max_q_len)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "mla_decode_workspace_size: batch = %d must be >= 0 and q_len = %d in "
                             "[1, %d]",
                             batch, q_len, be->caps.max_q_len);
    if (be->ks->decode_workspace_size)
        *bytes = be->ks->decode_workspace_size(be->state, &be->cfg, batch, q_len);
    return MLA_OK;
}

/* ---- index data: read on the host (copied from the device when needed) ---- */

/* Whether the contents of index tensors get checked on the host for this call. */
static int index_check_enabled(const mla_backend *be, void *stream)
{
    if (be->ks->device_type == MLA_DEVICE_CPU) return 1; /* free: the data is here */
    if (be->cfg.skip_index_check || !be->ks->copy_to_host) return 0;
    return !(be->ks->stream_is_capturing && be->ks->stream_is_capturing(stream));
}

/* Host view of a small index tensor; *owned is set when it must be freed. */
static mla_status index_to_host(const mla_backend *be, const mla_tensor *t, void *stream,
                                const void **host, void **owned)
{
    *owned = NULL;
    if (be->ks->device_type == MLA_DEVICE_CPU) {
        *host = t->data;
        return MLA_OK;
    }
    size_t bytes = (size_t)mla_tensor_numel(t) * mla_dtype_size(t->dtype);
    void *buf = malloc(bytes ? bytes : 1);
    if (!buf) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "index check: out of host memory");
    mla_status st = be->ks->copy_to_host(&be->cfg, buf, t->data, bytes, stream);
    if (st != MLA_OK) {
        free(buf);
        return st;
    }
    *host = buf;
    *owned = buf;
    return MLA_OK;
}

static const mla_scales *resolve_scales(const mla_backend *be, const mla_scales *s)
{
    return s ? s : &be->cfg.scales;
}

/* ---- decode ---- */

/* seq_lens[b] = s against a block table max_pages wide (decode calls and plan builds). */
static mla_status check_seq_len(const char *op, int b, int s, int max_pages, int page_size)
{
    const int64_t capacity = (int64_t)max_pages * page_size;
    if (s < 0)
        return mla_set_error(MLA_ERR_OUT_OF_RANGE, "%s: seq_lens[%d] = %d is negative", op, b, s);
    if (s > capacity)
        return mla_set_error(MLA_ERR_OUT_OF_RANGE,
                             "%s: seq_lens[%d] = %d exceeds the block table capacity %lld "
                             "(%d pages of %d tokens)",
                             op, b, s, (long long)capacity, max_pages, page_size);
    return MLA_OK;
}

static mla_status check_decode_indices(const char *op, const int32_t *seq_lens,
                                       const int32_t *block_table, int batch, int max_pages,
                                       int page_size, int num_pages, int max_seq_len_arg,
                                       int *max_seen, long long *total)
{
    *max_seen = 0;
    *total = 0;
    for (int b = 0; b < batch; b++) {
        int s = seq_lens[b];
        MLA_TRY(check_seq_len(op, b, s, max_pages, page_size));
        if (max_seq_len_arg > 0 && s > max_seq_len_arg)
            return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                                 "%s: seq_lens[%d] = %d exceeds max_seq_len = %d", op, b, s,
                                 max_seq_len_arg);
        if (s > *max_seen) *max_seen = s;
        *total += s;
        int pages = (s + page_size - 1) / page_size;
        for (int j = 0; j < pages; j++) {
            int32_t pg = block_table[(int64_t)b * max_pages + j];
            if (pg < 0 || pg >= num_pages)
                return mla_set_error(MLA_ERR_OUT_OF_RANGE,
                                     "%s: block_table[%d][%d] = %d is outside [0, %d) (page %d of "
                                     "a sequence of %d tokens)",
                                     op, b, j, pg, num_pages, j, s);
        }
    }
    return MLA_OK;
}

/* ---- decode plans ---- */

static size_t plan_bytes(const mla_backend *be, int batch, int q_len)
{
    return be->ks->decode_plan_size && be->ks->run_decode_plan
               ? be->ks->decode_plan_size(be->state, &be->cfg, batch, q_len)
               : 0;
}

struct mla_decode_plan {
    mla_backend *be;
    int batch, q_len, max_pages; /* what it serves now (max_pages: block-table width) */
    int alloc_batch;             /* what mem was sized for (the serving layer re-aims plans) */
    void *mem;                   /* device schedule; NULL where the kernel set plans nothing */
    int built;
    int32_t *lens;               /* the seq_lens of the last build when they were checked */
};

mla_status mla_decode_plan_create(mla_backend *be, int batch, int q_len, int max_pages_per_seq,
                                  mla_decode_plan **out)
{
    static const char op[] = "mla_decode_plan_create";
    mla_clear_error();
    if (!be || !out)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op, be ? "out" : "backend");
    *out = NULL;
    if (batch < 1 || batch > (1 << 24))
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: batch = %d is outside [1, 2^24]", op, batch);
    if (q_len < 1 || q_len > be->caps.max_q_len)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: q_len = %d is outside [1, %d]", op, q_len,
                             be->caps.max_q_len);
    if (max_pages_per_seq < 1 || (int64_t)max_pages_per_seq * be->cfg.page_size > INT32_MAX)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: max_pages_per_seq = %d must be >= 1 with a capacity "
                             "(x page_size %d) below 2^31",
                             op, max_pages_per_seq, be->cfg.page_size);
    mla_decode_plan *pl = calloc(1, sizeof *pl);
    if (!pl) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    pl->be = be;
    pl->batch = pl->alloc_batch = batch;
    pl->q_len = q_len;
    pl->max_pages = max_pages_per_seq;
    const size_t bytes = plan_bytes(be, batch, q_len);
    if (bytes) {
        mla_status st = be->ks->alloc(&be->cfg, bytes, &pl->mem);
        if (st != MLA_OK) {
            free(pl);
            return st;
        }
    }
    *out = pl;
    return MLA_OK;
}

mla_status mla_decode_plan_set_batch(mla_decode_plan *pl, int batch)
{
    if (batch < 1 || batch > pl->alloc_batch ||
        plan_bytes(pl->be, batch, pl->q_len) > plan_bytes(pl->be, pl->alloc_batch, pl->q_len))
        return mla_set_error(MLA_ERR_INTERNAL,
                             "mla_decode_plan_set_batch: batch %d does not fit a plan made for %d",
                             batch, pl->alloc_batch);
    pl->batch = batch;
    pl->built = 0;
    free(pl->lens);
    pl->lens = NULL;
    return MLA_OK;
}

void mla_decode_plan_destroy(mla_decode_plan *pl)
{
    if (!pl) return;
    if (pl->mem) pl->be->ks->free(&pl->be->cfg, pl->mem);
    free(pl->lens);
    free(pl);
}

/* The build; host_lens: the seq_lens' values when the caller already holds them (no read
 * back from the device for the checks), else NULL. */
static mla_status build_plan(mla_decode_plan *pl, const mla_tensor *seq_lens, const int32_t *host_lens,
                             void *stream)
{
    static const char op[] = "mla_decode_plan_build";
    if (!pl || !seq_lens)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op, pl ? "seq_lens" : "plan");
    mla_backend *be = pl->be;
    const mla_config *cfg = &be->cfg;
    pl->built = 0;
    MLA_TRY(mla_check_tensor(seq_lens, op, "seq_lens", &cfg->device, MLA_DT(MLA_DTYPE_I32), 1,
                             (int64_t[]){pl->batch}, 0));
    free(pl->lens);
    pl->lens = NULL;
    if (index_check_enabled(be, stream)) {
        const void *sl = host_lens;
        void *owned = NULL;
        if (!sl) MLA_TRY(index_to_host(be, seq_lens, stream, &sl, &owned));
        const int32_t *v = sl;
        mla_status st = MLA_OK;
        for (int b = 0; b < pl->batch && st == MLA_OK; b++)
            st = check_seq_len(op, b, v[b], pl->max_pages, cfg->page_size);
        if (st == MLA_OK) {
            pl->lens = malloc((size_t)pl->batch * sizeof *pl->lens);
            if (pl->lens) memcpy(pl->lens, v, (size_t)pl->batch * sizeof *pl->lens);
            else st = mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
        }
        free(owned);
        if (st != MLA_OK) return st;
    }
    if (pl->mem) {
        mla_decode_problem p = {
            .batch = pl->batch,
            .q_len = pl->q_len,
            .num_heads = cfg->num_heads,
            .kv_lora_rank = cfg->kv_lora_rank,
            .rope_dim = cfg->qk_rope_head_dim,
            .page_size = cfg->page_size,
            .max_pages_per_seq = pl->max_pages,
            .max_seq_len = pl->max_pages * cfg->page_size,
            .causal = 1,                 /* the schedule depends on neither causal nor */
            .q_dtype = MLA_DTYPE_BF16,   /* the query dtype; any supported value */
            .kv_dtype = cfg->kv_cache_dtype,
            .seq_lens = seq_lens->data,
            .plan = pl->mem,
            .stream = stream,
        };
        MLA_TRY(be->ks->run_decode_plan(be->state, &p));
    }
    pl->built = 1;
    return MLA_OK;
}

mla_status mla_decode_plan_build(mla_decode_plan *pl, const mla_tensor *seq_lens, void *stream)
{
    mla_clear_error();
    return build_plan(pl, seq_lens, NULL, stream);
}

mla_status mla_decode_plan_build_known(mla_decode_plan *pl, const mla_tensor *seq_lens,
                                       const int32_t *host_lens, void *stream)
{
    return build_plan(pl, seq_lens, host_lens, stream);
}

/* A call's plan against the call: same backend, same batch / q_len / block-table width, built. */
static mla_status check_decode_plan(const char *op, const mla_backend *be, const mla_decode_plan *pl,
                                    int64_t batch, int64_t q_len, int64_t max_pages)
{
    if (pl->be != be)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: the plan belongs to another backend", op);
    if (pl->batch != batch || pl->q_len != q_len || pl->max_pages != max_pages)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: the plan is for batch %d, q_len %d and a block table %d pages "
                             "wide; this call has batch %lld, q_len %lld, %lld pages",
                             op, pl->batch, pl->q_len, pl->max_pages, (long long)batch,
                             (long long)q_len, (long long)max_pages);
    if (!pl->built)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: the plan is not built (mla_decode_plan_build, or its last build failed)", op);
    return MLA_OK;
}

mla_status mla_decode(mla_backend *be, const mla_decode_args *a)
{
    static const char op[] = "mla_decode";
    mla_clear_error();
    if (!be || !a)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op, be ? "args" : "backend");
    const mla_config *cfg = &be->cfg;
    const mla_device *dev = &cfg->device;
    const int H = cfg->num_heads, R = cfg->kv_lora_rank, Dqk = R + cfg->qk_rope_head_dim;
    const int64_t any = -1;

    MLA_TRY(mla_check_tensor(&a->q, op, "q", dev, be->caps.query_dtypes, 4,
                             (int64_t[]){any, any, H, Dqk}, 0));
    const int64_t B = a->q.shape[0], L = a->q.shape[1];
    if (L < 1 || L > be->caps.max_q_len)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: q_len = %lld is outside [1, %d]", op,
                             (long long)L, be->caps.max_q_len);
    if (B > (1 << 24))
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: batch = %lld exceeds 2^24", op, (long long)B);
    MLA_TRY(mla_check_tensor(&a->kv_cache, op, "kv_cache", dev, MLA_DT(cfg->kv_cache_dtype), 3,
                             (int64_t[]){any, cfg->page_size, Dqk}, 0));
    MLA_TRY(mla_check_tensor(&a->block_table, op, "block_table", dev, MLA_DT(MLA_DTYPE_I32), 2,
                             (int64_t[]){B, any}, 0));
    MLA_TRY(mla_check_tensor(&a->seq_lens, op, "seq_lens", dev, MLA_DT(MLA_DTYPE_I32), 1,
                             (int64_t[]){B}, 0));
    MLA_TRY(mla_check_tensor(&a->out, op, "out", dev, MLA_DT(MLA_DTYPE_BF16), 4,
                             (int64_t[]){B, L, H, R}, 0));
    MLA_TRY(mla_check_tensor(&a->lse, op, "lse", dev, MLA_DT(MLA_DTYPE_F32), 3,
                             (int64_t[]){B, L, H}, MLA_CHECK_OPTIONAL));
    {
        const mla_tensor *outs[] = {&a->out, &a->lse};
        const char *const out_names[] = {"out", "lse"};
        const mla_tensor *ins[] = {&a->q, &a->kv_cache, &a->block_table, &a->seq_lens};
        const char *const in_names[] = {"q", "kv_cache", "block_table", "seq_lens"};
        MLA_TRY(mla_check_outputs_disjoint(op, outs, out_names, 2, ins, in_names, 4));
    }
    const int64_t num_pages = a->kv_cache.shape[0], max_pages = a->block_table.shape[1];
    if (num_pages > INT32_MAX || max_pages * cfg->page_size > INT32_MAX)
        return mla_set_error(MLA_ERR_UNSUPPORTED,
                             "%s: kv_cache pages (%lld) or block table capacity (%lld tokens) "
                             "exceed 2^31-1",
                             op, (long long)num_pages, (long long)(max_pages * cfg->page_size));
    if (a->max_seq_len < 0)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: max_seq_len = %d is negative", op,
                             a->max_seq_len);
    if (a->no_causal_mask != 0 && a->no_causal_mask != 1)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: no_causal_mask = %d must be 0 or 1",
                             op, a->no_causal_mask);
    const mla_scales *s = resolve_scales(be, a->scales);
    MLA_TRY(mla_check_scales(op, s));
    if (a->workspace == NULL && a->workspace_bytes != 0)
        return mla_set_error(MLA_ERR_NULL_POINTER,
                             "%s: workspace_bytes = %zu but workspace is NULL", op,
                             a->workspace_bytes);
    /* The GPU kernels read the workspace with 16-byte loads (cudaMalloc gives 256-byte
     * alignment; an offset into a larger buffer may not). */
    if (a->workspace && ((uintptr_t)a->workspace & 15u) != 0)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: workspace %p is not 16-byte aligned", op, a->workspace);
    if (a->plan) MLA_TRY(check_decode_plan(op, be, a->plan, B, L, max_pages));
    if (B == 0) return MLA_OK;

    int capacity = (int)(max_pages * cfg->page_size);
    int bound = a->max_seq_len > 0 && a->max_seq_len < capacity ? a->max_seq_len : capacity;
    /* The sum of seq_lens where the host knows it (the backend picks kernel forms by it). */
    long long total_keys = 0;
    if (index_check_enabled(be, a->stream)) {
        const void *sl, *bt;
        void *sl_owned, *bt_owned;
        MLA_TRY(index_to_host(be, &a->seq_lens, a->stream, &sl, &sl_owned));
        mla_status st = index_to_host(be, &a->block_table, a->stream, &bt, &bt_owned);
        int max_seen = 0;
        if (st == MLA_OK)
            st = check_decode_indices(op, sl, bt, (int)B, (int)max_pages, cfg->page_size,
                                      (int)num_pages, a->max_seq_len, &max_seen, &total_keys);
        if (st == MLA_OK && a->plan && a->plan->lens) {
            const int32_t *now = sl;
            for (int b = 0; b < (int)B; b++)
                if (now[b] != a->plan->lens[b]) {
                    st = mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                                       "%s: seq_lens[%d] = %d differs from the %d the plan was "
                                       "built from (rebuild it with mla_decode_plan_build, or "
                                       "the batch metadata that made it)",
                                       op, b, now[b], a->plan->lens[b]);
                    break;
                }
        }
        free(sl_owned);
        free(bt_owned);
        if (st != MLA_OK) return st;
        if (a->max_seq_len == 0) bound = max_seen;
    } else if (a->plan && a->plan->lens) {
        for (int b = 0; b < (int)B; b++) total_keys += a->plan->lens[b];
    }

    const int fp8_kv = cfg->kv_cache_dtype == MLA_DTYPE_FP8_E4M3;
    const int fp8_q = a->q.dtype == MLA_DTYPE_FP8_E4M3;
    mla_decode_problem p = {
        .batch = (int)B,
        .q_len = (int)L,
        .num_heads = H,
        .kv_lora_rank = R,
        .rope_dim = cfg->qk_rope_head_dim,
        .page_size = cfg->page_size,
        .num_pages = (int)num_pages,
        .max_pages_per_seq = (int)max_pages,
        .max_seq_len = bound,
        .total_keys = total_keys,
        .causal = !a->no_causal_mask,
        .fp8_math = cfg->decode_fp8_math,
        .q_dtype = a->q.dtype,
        .kv_dtype = cfg->kv_cache_dtype,
        .bmm1_scale = s->softmax_scale * (fp8_q ? s->q_scale : 1.0f) * (fp8_kv ? s->k_scale : 1.0f),
        .bmm2_scale = s->o_scale * (fp8_kv ? s->k_scale : 1.0f),
        .q = a->q.data,
        .kv_cache = a->kv_cache.data,
        .block_table = a->block_table.data,
        .seq_lens = a->seq_lens.data,
        .out = a->out.data,
        .lse = a->lse.data,
        .plan = a->plan ? a->plan->mem : NULL,
        .stream = a->stream,
    };
    size_t needed = be->ks->decode_workspace_size
                        ? be->ks->decode_workspace_size(be->state, cfg, (int)B, (int)L)
                        : 0;
    if (a->workspace) {
        if (a->workspace_bytes < needed)
            return mla_set_error(MLA_ERR_WORKSPACE_TOO_SMALL,
                                 "%s: workspace_bytes = %zu is less than the %zu bytes needed for "
                                 "batch %lld, q_len %lld (see mla_decode_workspace_size)",
                                 op, a->workspace_bytes, needed, (long long)B, (long long)L);
        p.workspace = a->workspace;
        p.workspace_bytes = a->workspace_bytes;
        return be->ks->run_decode(be->state, &p);
    }
    /* The cached workspace stays locked until the kernels are queued, so a concurrent growth
     * cannot free it underneath this launch. */
    pthread_mutex_lock(&workspace_lock);
    mla_status st = workspace_reserve(be, needed, a->stream);
    if (st == MLA_OK) {
        p.workspace = be->workspace->ptr;
        p.workspace_bytes = be->workspace->bytes;
        st = be->ks->run_decode(be->state, &p);
    }
    pthread_mutex_unlock(&workspace_lock);
    return st;
}

/* ---- prefill ---- */

static mla_status check_cu_seqlens(const char *op, const char *name, const int32_t *cu, int batch,
                                   int64_t total, int *max_len)
{
    *max_len = 0;
    if (cu[0] != 0)
        return mla_set_error(MLA_ERR_OUT_OF_RANGE, "%s: %s[0] = %d, must be 0", op, name, cu[0]);
    for (int b = 0; b < batch; b++) {
        if (cu[b + 1] < cu[b])
            return mla_set_error(MLA_ERR_OUT_OF_RANGE,
                                 "%s: %s is decreasing at %d (%d > %d)", op, name, b + 1, cu[b],
                                 cu[b + 1]);
        if (cu[b + 1] - cu[b] > *max_len) *max_len = cu[b + 1] - cu[b];
    }
    if (cu[batch] != total)
        return mla_set_error(MLA_ERR_OUT_OF_RANGE,
                             "%s: %s[%d] = %d, must equal the number of rows (%lld)", op, name,
                             batch, cu[batch], (long long)total);
    return MLA_OK;
}

mla_status mla_prefill(mla_backend *be, const mla_prefill_args *a)
{
    static const char op[] = "mla_prefill";
    mla_clear_error();
    if (!be || !a)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op, be ? "args" : "backend");
    const mla_config *cfg = &be->cfg;
    const mla_device *dev = &cfg->device;
    const int H = cfg->num_heads, Dqk = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim,
              Dv = cfg->v_head_dim;
    const int64_t any = -1;
    MLA_TRY(mla_check_tensor(&a->q, op, "q", dev, be->caps.prefill_dtypes, 3,
                             (int64_t[]){any, H, Dqk}, 0));
    MLA_TRY(mla_check_tensor(&a->k, op, "k", dev, MLA_DT(a->q.dtype), 3,
                             (int64_t[]){any, H, Dqk}, 0));
    const int64_t total_q = a->q.shape[0], total_kv = a->k.shape[0];
    MLA_TRY(mla_check_tensor(&a->v, op, "v", dev, MLA_DT(a->q.dtype), 3,
                             (int64_t[]){total_kv, H, Dv}, 0));
    MLA_TRY(mla_check_tensor(&a->cu_seqlens_q, op, "cu_seqlens_q", dev, MLA_DT(MLA_DTYPE_I32), 1,
                             NULL, 0));
    const int64_t B = a->cu_seqlens_q.shape[0] - 1;
    if (B < 0)
        return mla_set_error(MLA_ERR_SHAPE_MISMATCH, "%s: cu_seqlens_q must hold batch+1 >= 1 entries",
                             op);
    MLA_TRY(mla_check_tensor(&a->cu_seqlens_kv, op, "cu_seqlens_kv", dev, MLA_DT(MLA_DTYPE_I32), 1,
                             (int64_t[]){B + 1}, 0));
    MLA_TRY(mla_check_tensor(&a->out, op, "out", dev, MLA_DT(MLA_DTYPE_BF16), 3,
                             (int64_t[]){total_q, H, Dv}, 0));
    MLA_TRY(mla_check_tensor(&a->lse, op, "lse", dev, MLA_DT(MLA_DTYPE_F32), 2,
                             (int64_t[]){total_q, H}, MLA_CHECK_OPTIONAL));
    if (total_q > INT32_MAX || total_kv > INT32_MAX || B > (1 << 24))
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: more than 2^31-1 rows or 2^24 requests", op);
    {
        const mla_tensor *outs[] = {&a->out, &a->lse};
        const char *const out_names[] = {"out", "lse"};
        const mla_tensor *ins[] = {&a->q, &a->k, &a->v, &a->cu_seqlens_q, &a->cu_seqlens_kv};
        const char *const in_names[] = {"q", "k", "v", "cu_seqlens_q", "cu_seqlens_kv"};
        MLA_TRY(mla_check_outputs_disjoint(op, outs, out_names, 2, ins, in_names, 5));
    }
    if (a->causal != 0 && a->causal != 1)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: causal = %d must be 0 or 1", op,
                             a->causal);
    if (a->max_seqlen_q < 0 || a->max_seqlen_kv < 0)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: max_seqlen_q/kv must be >= 0", op);
    const mla_scales *s = resolve_scales(be, a->scales);
    MLA_TRY(mla_check_scales(op, s));
    if (B == 0 || total_q == 0) return MLA_OK;

    int max_q = a->max_seqlen_q > 0 ? a->max_seqlen_q : (int)total_q;
    int max_kv = a->max_seqlen_kv > 0 ? a->max_seqlen_kv : (int)total_kv;
    if (index_check_enabled(be, a->stream)) {
        const void *cq, *ck;
        void *cq_owned, *ck_owned;
        MLA_TRY(index_to_host(be, &a->cu_seqlens_q, a->stream, &cq, &cq_owned));
        mla_status st = index_to_host(be, &a->cu_seqlens_kv, a->stream, &ck, &ck_owned);
        int mq = 0, mk = 0;
        if (st == MLA_OK) st = check_cu_seqlens(op, "cu_seqlens_q", cq, (int)B, total_q, &mq);
        if (st == MLA_OK) st = check_cu_seqlens(op, "cu_seqlens_kv", ck, (int)B, total_kv, &mk);
        free(cq_owned);
        free(ck_owned);
        if (st != MLA_OK) return st;
        if ((a->max_seqlen_q > 0 && mq > a->max_seqlen_q) ||
            (a->max_seqlen_kv > 0 && mk > a->max_seqlen_kv))
            return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                                 "%s: longest sequences (q %d, kv %d) exceed max_seqlen_q = %d / "
                                 "max_seqlen_kv = %d",
                                 op, mq, mk, a->max_seqlen_q, a->max_seqlen_kv);
        max_q = mq;
        max_kv = mk;
    }
    const int fp8 = a->q.dtype == MLA_DTYPE_FP8_E4M3;
    mla_prefill_problem p = {
        .batch = (int)B,
        .num_heads = H,
        .qk_dim = Dqk,
        .v_dim = Dv,
        .total_q = (int)total_q,
        .total_kv = (int)total_kv,
        .max_seqlen_q = max_q,
        .max_seqlen_kv = max_kv,
        .causal = a->causal,
        .dtype = a->q.dtype,
        .bmm1_scale = s->softmax_scale * (fp8 ? s->q_scale * s->k_scale : 1.0f),
        .bmm2_scale = s->o_scale * (fp8 ? s->v_scale : 1.0f),
        .q = a->q.data,
        .k = a->k.data,
        .v = a->v.data,
        .cu_seqlens_q = a->cu_seqlens_q.data,
        .cu_seqlens_kv = a->cu_seqlens_kv.data,
        .out = a->out.data,
        .lse = a->lse.data,
        .stream = a->stream,
    };
    return be->ks->run_prefill(be->state, &p);
}

/* ---- merge_state ---- */

/* An output may be exactly one of the inputs (in place) but not partly overlap any. */
static mla_status check_alias(const char *op, const mla_tensor *out, const char *out_name,
                              const mla_tensor *in, const char *in_name)
{
    if (out->data == in->data && out->dtype == in->dtype) return MLA_OK;
    return mla_check_no_overlap(op, out, out_name, in, in_name);
}

mla_status mla_merge_state(mla_backend *be, const mla_merge_state_args *a)
{
    static const char op[] = "mla_merge_state";
    mla_clear_error();
    if (!be || !a)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op, be ? "args" : "backend");
    const mla_device *dev = &be->cfg.device;
    const uint32_t odt = MLA_DT(MLA_DTYPE_BF16) | MLA_DT(MLA_DTYPE_F32);
    MLA_TRY(mla_check_tensor(&a->o_a, op, "o_a", dev, odt, 3, NULL, 0));
    const int64_t T = a->o_a.shape[0], H = a->o_a.shape[1], D = a->o_a.shape[2];
    MLA_TRY(mla_check_tensor(&a->o_b, op, "o_b", dev, odt, 3, (int64_t[]){T, H, D}, 0));
    MLA_TRY(mla_check_tensor(&a->lse_a, op, "lse_a", dev, MLA_DT(MLA_DTYPE_F32), 2,
                             (int64_t[]){T, H}, 0));
    MLA_TRY(mla_check_tensor(&a->lse_b, op, "lse_b", dev, MLA_DT(MLA_DTYPE_F32), 2,
                             (int64_t[]){T, H}, 0));
    MLA_TRY(mla_check_tensor(&a->o, op, "o", dev, odt, 3, (int64_t[]){T, H, D}, 0));
    MLA_TRY(mla_check_tensor(&a->lse, op, "lse", dev, MLA_DT(MLA_DTYPE_F32), 2, (int64_t[]){T, H},
                             MLA_CHECK_OPTIONAL));
    if (T * H * D > INT32_MAX)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: more than 2^31-1 elements", op);
    MLA_TRY(check_alias(op, &a->o, "o", &a->o_a, "o_a"));
    MLA_TRY(check_alias(op, &a->o, "o", &a->o_b, "o_b"));
    MLA_TRY(mla_check_no_overlap(op, &a->o, "o", &a->lse_a, "lse_a"));
    MLA_TRY(mla_check_no_overlap(op, &a->o, "o", &a->lse_b, "lse_b"));
    MLA_TRY(check_alias(op, &a->lse, "lse", &a->lse_a, "lse_a"));
    MLA_TRY(check_alias(op, &a->lse, "lse", &a->lse_b, "lse_b"));
    MLA_TRY(mla_check_no_overlap(op, &a->lse, "lse", &a->o_a, "o_a"));
    MLA_TRY(mla_check_no_overlap(op, &a->lse, "lse", &a->o_b, "o_b"));
    MLA_TRY(mla_check_no_overlap(op, &a->lse, "lse", &a->o, "o"));
    if (T == 0 || H == 0 || D == 0) return MLA_OK;
    mla_merge_problem p = {
        .tokens = (int)T,
        .num_heads = (int)H,
        .dim = (int)D,
        .in_dtype_a = a->o_a.dtype,
        .in_dtype_b = a->o_b.dtype,
        .out_dtype = a->o.dtype,
        .o_a = a->o_a.data,
        .o_b = a->o_b.data,
        .lse_a = a->lse_a.data,
        .lse_b = a->lse_b.data,
        .o = a->o.data,
        .lse = a->lse.data,
        .stream = a->stream,
    };
    if (!be->ks->run_merge_state)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: backend '%s' has no merge_state", op,
                             be->ks->name);
    return be->ks->run_merge_state(be->state, &p);
}

/* ---- kv_cache_write ---- */

static int64_t slot_at(const void *slots, mla_dtype dt, int64_t i)
{
    return dt == MLA_DTYPE_I64 ? ((const int64_t *)slots)[i] : ((const int32_t *)slots)[i];
}

/* Range and duplicate check in one pass: a bitmap of the cache's slots (one bit each, calloc'd
 * so untouched pages cost nothing) instead of a sort — this runs on every GPU cache write. */
static mla_status check_slots(const char *op, const void *slots, mla_dtype dt, int64_t n,
                              int64_t num_slots)
{
    uint8_t *seen = calloc((size_t)(num_slots / 8 + 1), 1);
    if (!seen) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
    mla_status st = MLA_OK;
    for (int64_t i = 0; i < n && st == MLA_OK; i++) {
        int64_t s = slot_at(slots, dt, i);
        if (s < 0) continue;
        if (s >= num_slots)
            st = mla_set_error(MLA_ERR_OUT_OF_RANGE,
                               "%s: slots[%lld] = %lld is outside the cache's %lld slots", op,
                               (long long)i, (long long)s, (long long)num_slots);
        else if (seen[s >> 3] & (1u << (s & 7)))
            st = mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                               "%s: slot %lld is written twice in one call (again at slots[%lld])",
                               op, (long long)s, (long long)i);
        else
            seen[s >> 3] |= (uint8_t)(1u << (s & 7));
    }
    free(seen);
    return st;
}

static mla_status check_finite_rows(const char *op, const char *name, const mla_tensor *t,
                                    const void *slots, mla_dtype slot_dt)
{
    const int64_t n = t->shape[0], w = t->shape[1];
    for (int64_t i = 0; i < n; i++) {
        if (slot_at(slots, slot_dt, i) < 0) continue;
        for (int64_t j = 0; j < w; j++) {
            float x = mla_load_as_float(t->data, t->dtype, i * w + j);
            if (!isfinite(x))
                return mla_set_error(MLA_ERR_NONFINITE,
                                     "%s: %s[%lld][%lld] is %s; nothing was written", op, name,
                                     (long long)i, (long long)j, isnan(x) ? "NaN" : "infinite");
        }
    }
    return MLA_OK;
}

mla_status mla_kv_cache_write(mla_backend *be, const mla_kv_cache_write_args *a)
{
    static const char op[] = "mla_kv_cache_write";
    mla_clear_error();
    if (!be || !a)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op, be ? "args" : "backend");
    const mla_config *cfg = &be->cfg;
    const mla_device *dev = &cfg->device;
    const int R = cfg->kv_lora_rank, P = cfg->qk_rope_head_dim;
    const uint32_t in_dt = MLA_DT(MLA_DTYPE_BF16) | MLA_DT(MLA_DTYPE_F32);
    MLA_TRY(mla_check_tensor(&a->c_kv, op, "c_kv", dev, in_dt, 2, (int64_t[]){-1, R}, 0));
    const int64_t n = a->c_kv.shape[0];
    MLA_TRY(mla_check_tensor(&a->k_pe, op, "k_pe", dev, MLA_DT(a->c_kv.dtype), 2,
                             (int64_t[]){n, P}, 0));
    MLA_TRY(mla_check_tensor(&a->slots, op, "slots", dev,
                             MLA_DT(MLA_DTYPE_I32) | MLA_DT(MLA_DTYPE_I64), 1, (int64_t[]){n}, 0));
    MLA_TRY(mla_check_tensor(&a->kv_cache, op, "kv_cache", dev, MLA_DT(cfg->kv_cache_dtype), 3,
                             (int64_t[]){-1, cfg->page_size, R + P}, 0));
    MLA_TRY(mla_check_no_overlap(op, &a->kv_cache, "kv_cache", &a->c_kv, "c_kv"));
    MLA_TRY(mla_check_no_overlap(op, &a->kv_cache, "kv_cache", &a->k_pe, "k_pe"));
    MLA_TRY(mla_check_no_overlap(op, &a->kv_cache, "kv_cache", &a->slots, "slots"));
    const mla_scales *s = resolve_scales(be, a->scales);
    MLA_TRY(mla_check_scales(op, s));
    const int64_t num_pages = a->kv_cache.shape[0];
    if (n > INT32_MAX || num_pages > INT32_MAX)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: more than 2^31-1 rows or pages", op);
    if (n == 0) return MLA_OK;
    if (index_check_enabled(be, a->stream)) {
        const void *slots;
        void *owned;
        MLA_TRY(index_to_host(be, &a->slots, a->stream, &slots, &owned));
        mla_status st = check_slots(op, slots, a->slots.dtype, n, num_pages * cfg->page_size);
        /* Host data can be checked for NaN/Inf before anything is written. */
        if (st == MLA_OK && be->ks->device_type == MLA_DEVICE_CPU) {
            st = check_finite_rows(op, "c_kv", &a->c_kv, slots, a->slots.dtype);
            if (st == MLA_OK) st = check_finite_rows(op, "k_pe", &a->k_pe, slots, a->slots.dtype);
        }
        free(owned);
        if (st != MLA_OK) return st;
    }
    const int fp8 = cfg->kv_cache_dtype == MLA_DTYPE_FP8_E4M3;
    mla_cache_write_problem p = {
        .n = (int)n,
        .kv_lora_rank = R,
        .rope_dim = P,
        .page_size = cfg->page_size,
        .num_pages = (int)num_pages,
        .in_dtype = a->c_kv.dtype,
        .slot_dtype = a->slots.dtype,
        .kv_dtype = cfg->kv_cache_dtype,
        .inv_k_scale = fp8 ? 1.0f / s->k_scale : 1.0f,
        .c_kv = a->c_kv.data,
        .k_pe = a->k_pe.data,
        .slots = a->slots.data,
        .kv_cache = a->kv_cache.data,
        .stream = a->stream,
    };
    return be->ks->run_kv_cache_write(be->state, &p);
}

/* ---- quantize_fp8 ---- */

mla_status mla_quantize_fp8(mla_backend *be, const mla_quantize_fp8_args *a)
{
    static const char op[] = "mla_quantize_fp8";
    mla_clear_error();
    if (!be || !a)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op, be ? "args" : "backend");
    const mla_device *dev = &be->cfg.device;
    const uint32_t in_dt = MLA_DT(MLA_DTYPE_BF16) | MLA_DT(MLA_DTYPE_FP16) | MLA_DT(MLA_DTYPE_F32);
    if (a->input.ndim < 1 || a->input.ndim > MLA_MAX_DIMS)
        return mla_set_error(MLA_ERR_SHAPE_MISMATCH, "%s: input has %d dims, expected 1..4", op,
                             a->input.ndim);
    MLA_TRY(mla_check_tensor(&a->input, op, "input", dev, in_dt, a->input.ndim, NULL, 0));
    if (a->output.ndim < 1 || a->output.ndim > MLA_MAX_DIMS)
        return mla_set_error(MLA_ERR_SHAPE_MISMATCH, "%s: output has %d dims, expected 1..4", op,
                             a->output.ndim);
    MLA_TRY(mla_check_tensor(&a->output, op, "output", dev, MLA_DT(MLA_DTYPE_FP8_E4M3),
                             a->output.ndim, NULL, 0));
    const int64_t n = mla_tensor_numel(&a->input);
    if (mla_tensor_numel(&a->output) != n)
        return mla_set_error(MLA_ERR_SHAPE_MISMATCH,
                             "%s: output has %lld elements, input %lld", op,
                             (long long)mla_tensor_numel(&a->output), (long long)n);
    MLA_TRY(mla_check_no_overlap(op, &a->output, "output", &a->input, "input"));
    MLA_TRY(mla_check_scale(op, "scale", a->scale));
    if (n == 0) return MLA_OK;
    mla_quantize_problem p = {
        .n = n,
        .in_dtype = a->input.dtype,
        .inv_scale = 1.0f / a->scale,
        .input = a->input.data,
        .output = a->output.data,
        .stream = a->stream,
    };
    return be->ks->run_quantize_fp8(be->state, &p);
}

/* ---- kv_pack ---- */

mla_status mla_kv_pack(mla_backend *be, const mla_kv_pack_args *a)
{
    static const char op[] = "mla_kv_pack";
    mla_clear_error();
    if (!be || !a)
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: %s is NULL", op, be ? "args" : "backend");
    const mla_config *cfg = &be->cfg;
    const mla_device *dev = &cfg->device;
    const int H = cfg->num_heads, Dn = cfg->qk_nope_head_dim, Dr = cfg->qk_rope_head_dim,
              Dv = cfg->v_head_dim;
    const uint32_t bf16 = MLA_DT(MLA_DTYPE_BF16);
    MLA_TRY(mla_check_tensor(&a->k_nope, op, "k_nope", dev, bf16, 3, (int64_t[]){-1, H, Dn},
                             MLA_CHECK_LAST_DIM_CONTIGUOUS));
    const int64_t N = a->k_nope.shape[0];
    int64_t pe_stride_n;
    if (a->k_pe.ndim == 2) {
        MLA_TRY(mla_check_tensor(&a->k_pe, op, "k_pe", dev, bf16, 2, (int64_t[]){N, Dr},
                                 MLA_CHECK_LAST_DIM_CONTIGUOUS));
        pe_stride_n = a->k_pe.strides[0];
    } else {
        MLA_TRY(mla_check_tensor(&a->k_pe, op, "k_pe", dev, bf16, 3, (int64_t[]){N, 1, Dr},
                                 MLA_CHECK_LAST_DIM_CONTIGUOUS));
        pe_stride_n = a->k_pe.strides[0];
    }
    MLA_TRY(mla_check_tensor(&a->v, op, "v", dev, bf16, 3, (int64_t[]){N, H, Dv},
                             MLA_CHECK_LAST_DIM_CONTIGUOUS));
    const uint32_t out_dt = bf16 | MLA_DT(MLA_DTYPE_FP8_E4M3);
    MLA_TRY(mla_check_tensor(&a->k_out, op, "k_out", dev, out_dt, 3, (int64_t[]){N, H, Dn + Dr}, 0));
    MLA_TRY(mla_check_tensor(&a->v_out, op, "v_out", dev, MLA_DT(a->k_out.dtype), 3,
                             (int64_t[]){N, H, Dv}, 0));
    {
        /* Strided inputs are compared by the spans they may touch. */
        const mla_tensor *outs[] = {&a->k_out, &a->v_out};
        const char *const out_names[] = {"k_out", "v_out"};
        const mla_tensor *ins[] = {&a->k_nope, &a->k_pe, &a->v};
        const char *const in_names[] = {"k_nope", "k_pe", "v"};
        MLA_TRY(mla_check_outputs_disjoint(op, outs, out_names, 2, ins, in_names, 3));
    }
    const int fp8 = a->k_out.dtype == MLA_DTYPE_FP8_E4M3;
    if (fp8) {
        MLA_TRY(mla_check_scale(op, "k_scale", a->k_scale));
        MLA_TRY(mla_check_scale(op, "v_scale", a->v_scale));
    }
    if (N > INT32_MAX) return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: more than 2^31-1 rows", op);
    if (N == 0) return MLA_OK;
    mla_kv_pack_problem p = {
        .n = (int)N,
        .num_heads = H,
        .nope_dim = Dn,
        .rope_dim = Dr,
        .v_dim = Dv,
        .out_dtype = a->k_out.dtype,
        .inv_k_scale = fp8 ? 1.0f / a->k_scale : 1.0f,
        .inv_v_scale = fp8 ? 1.0f / a->v_scale : 1.0f,
        .k_nope = a->k_nope.data,
        .k_nope_stride_n = a->k_nope.strides[0],
        .k_nope_stride_h = a->k_nope.strides[1],
        .k_pe = a->k_pe.data,
        .k_pe_stride_n = pe_stride_n,
        .v = a->v.data,
        .v_stride_n = a->v.strides[0],
        .v_stride_h = a->v.strides[1],
        .k_out = a->k_out.data,
        .v_out = a->v_out.data,
        .stream = a->stream,
    };
    return be->ks->run_kv_pack(be->state, &p);
}

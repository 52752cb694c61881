/* One host problem uploaded to a backend's device, and the library calls that run on it. */
#include "cli.h"

#include <string.h>

mla_status cli_backend_create(const char *name, int heads, int page_size, mla_dtype kv_dtype,
                              int max_q_len, int skip_index_check, int fp8_math, mla_backend **out)
{
    mla_backend_info info;
    mla_status st = mla_backend_find(name, &info);
    if (st != MLA_OK) return st;
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = heads;
    cfg.page_size = page_size;
    cfg.kv_cache_dtype = kv_dtype;
    cfg.max_q_len = max_q_len;
    cfg.skip_index_check = skip_index_check;
    cfg.decode_fp8_math = fp8_math;
    cfg.device.type = info.caps.device_type;
    cfg.device.index = 0;
    return mla_backend_create(name, &cfg, out);
}

static mla_tensor tensor(const cli_device_buffer *b, mla_dtype dtype, int ndim, int64_t d0,
                         int64_t d1, int64_t d2, int64_t d3)
{
    const int64_t shape[4] = {d0, d1, d2, d3};
    mla_device dev = {b->on_gpu ? MLA_DEVICE_CUDA : MLA_DEVICE_CPU, 0};
    return mla_tensor_contiguous(b->ptr, dtype, dev, ndim, shape);
}

int cli_decode_upload(const cli_decode_problem *p, int on_gpu, cli_decode_buffers *d)
{
    memset(d, 0, sizeof *d);
    d->on_gpu = on_gpu;
    size_t bt_bytes = sizeof(int32_t) * p->batch * p->max_pages_per_seq;
    if (cli_buffer_alloc(&d->q, on_gpu, p->q_bytes, "decode q") ||
        cli_buffer_alloc(&d->cache, on_gpu, p->cache_bytes, "kv cache") ||
        cli_buffer_alloc(&d->block_table, on_gpu, bt_bytes, "block table") ||
        cli_buffer_alloc(&d->seq_lens, on_gpu, sizeof(int32_t) * p->batch, "seq_lens") ||
        cli_buffer_alloc(&d->out, on_gpu, 2 * p->out_elems, "decode out") ||
        cli_buffer_alloc(&d->lse, on_gpu, sizeof(float) * p->lse_elems, "decode lse") ||
        cli_buffer_alloc(&d->c_kv, on_gpu, 2 * (size_t)p->num_tokens * CLI_KV_LORA_RANK, "c_kv") ||
        cli_buffer_alloc(&d->k_pe, on_gpu, 2 * (size_t)p->num_tokens * CLI_ROPE_DIM, "k_pe") ||
        cli_buffer_alloc(&d->slots, on_gpu, sizeof(int32_t) * p->num_tokens, "slots") ||
        cli_buffer_upload(&d->q, p->q, "decode q") ||
        cli_buffer_upload(&d->cache, p->cache_init, "kv cache") ||
        cli_buffer_upload(&d->block_table, p->block_table, "block table") ||
        cli_buffer_upload(&d->seq_lens, p->seq_lens, "seq_lens") ||
        cli_buffer_upload(&d->c_kv, p->c_kv, "c_kv") ||
        cli_buffer_upload(&d->k_pe, p->k_pe, "k_pe") ||
        cli_buffer_upload(&d->slots, p->slots, "slots")) {
        cli_decode_buffers_free(d);
        return -1;
    }
    return 0;
}

void cli_decode_buffers_free(cli_decode_buffers *d)
{
    cli_device_buffer *all[] = {&d->q,   &d->cache, &d->block_table, &d->seq_lens, &d->out,
                                &d->lse, &d->c_kv,  &d->k_pe,        &d->slots};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) cli_buffer_free(all[i]);
}

mla_status cli_decode_write_cache(mla_backend *be, const cli_decode_problem *p,
                                  cli_decode_buffers *d)
{
    mla_kv_cache_write_args a;
    memset(&a, 0, sizeof a);
    a.c_kv = tensor(&d->c_kv, MLA_DTYPE_BF16, 2, p->num_tokens, CLI_KV_LORA_RANK, 0, 0);
    a.k_pe = tensor(&d->k_pe, MLA_DTYPE_BF16, 2, p->num_tokens, CLI_ROPE_DIM, 0, 0);
    a.slots = tensor(&d->slots, MLA_DTYPE_I32, 1, p->num_tokens, 0, 0, 0);
    a.kv_cache = tensor(&d->cache, p->kv_dtype, 3, p->num_pages, p->page_size,
                        CLI_DECODE_QK_DIM, 0);
    a.scales = &p->scales;
    return mla_kv_cache_write(be, &a);
}

mla_status cli_decode_run(mla_backend *be, const cli_decode_problem *p, cli_decode_buffers *d,
                          int poison, int with_lse)
{
    if (poison && (cli_buffer_fill(&d->out, 0xff, "decode out") ||
                   cli_buffer_fill(&d->lse, 0xff, "decode lse")))
        return MLA_ERR_DEVICE;
    mla_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = tensor(&d->q, p->q_dtype, 4, p->batch, p->q_len, p->heads, CLI_DECODE_QK_DIM);
    a.kv_cache = tensor(&d->cache, p->kv_dtype, 3, p->num_pages, p->page_size,
                        CLI_DECODE_QK_DIM, 0);
    a.block_table = tensor(&d->block_table, MLA_DTYPE_I32, 2, p->batch, p->max_pages_per_seq, 0,
                           0);
    a.seq_lens = tensor(&d->seq_lens, MLA_DTYPE_I32, 1, p->batch, 0, 0, 0);
    a.out = tensor(&d->out, MLA_DTYPE_BF16, 4, p->batch, p->q_len, p->heads, CLI_KV_LORA_RANK);
    if (with_lse) a.lse = tensor(&d->lse, MLA_DTYPE_F32, 3, p->batch, p->q_len, p->heads, 0);
    for (int b = 0; b < p->batch; b++)
        if (p->seq_lens[b] > a.max_seq_len) a.max_seq_len = p->seq_lens[b];
    a.no_causal_mask = !p->causal;
    a.scales = &p->scales;
    return mla_decode(be, &a);
}

int cli_prefill_upload(const cli_prefill_problem *p, int on_gpu, cli_prefill_buffers *d)
{
    memset(d, 0, sizeof *d);
    d->on_gpu = on_gpu;
    size_t cu_bytes = sizeof(int32_t) * (p->batch + 1);
    if (cli_buffer_alloc(&d->q, on_gpu, p->q_bytes, "prefill q") ||
        cli_buffer_alloc(&d->k, on_gpu, p->k_bytes, "prefill k") ||
        cli_buffer_alloc(&d->v, on_gpu, p->v_bytes, "prefill v") ||
        cli_buffer_alloc(&d->cu_q, on_gpu, cu_bytes, "cu_seqlens_q") ||
        cli_buffer_alloc(&d->cu_kv, on_gpu, cu_bytes, "cu_seqlens_kv") ||
        cli_buffer_alloc(&d->out, on_gpu, 2 * p->out_elems, "prefill out") ||
        cli_buffer_alloc(&d->lse, on_gpu, sizeof(float) * p->lse_elems, "prefill lse") ||
        cli_buffer_upload(&d->q, p->q, "prefill q") ||
        cli_buffer_upload(&d->k, p->k, "prefill k") ||
        cli_buffer_upload(&d->v, p->v, "prefill v") ||
        cli_buffer_upload(&d->cu_q, p->cu_seqlens_q, "cu_seqlens_q") ||
        cli_buffer_upload(&d->cu_kv, p->cu_seqlens_kv, "cu_seqlens_kv")) {
        cli_prefill_buffers_free(d);
        return -1;
    }
    return 0;
}

void cli_prefill_buffers_free(cli_prefill_buffers *d)
{
    cli_device_buffer *all[] = {&d->q, &d->k, &d->v, &d->cu_q, &d->cu_kv, &d->out, &d->lse};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) cli_buffer_free(all[i]);
}

mla_status cli_prefill_run(mla_backend *be, const cli_prefill_problem *p,
                           cli_prefill_buffers *d, int poison, int with_lse)
{
    if (poison && (cli_buffer_fill(&d->out, 0xff, "prefill out") ||
                   cli_buffer_fill(&d->lse, 0xff, "prefill lse")))
        return MLA_ERR_DEVICE;
    mla_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = tensor(&d->q, p->dtype, 3, p->total_q, p->heads, CLI_PREFILL_QK_DIM, 0);
    a.k = tensor(&d->k, p->dtype, 3, p->total_kv, p->heads, CLI_PREFILL_QK_DIM, 0);
    a.v = tensor(&d->v, p->dtype, 3, p->total_kv, p->heads, CLI_V_DIM, 0);
    a.cu_seqlens_q = tensor(&d->cu_q, MLA_DTYPE_I32, 1, p->batch + 1, 0, 0, 0);
    a.cu_seqlens_kv = tensor(&d->cu_kv, MLA_DTYPE_I32, 1, p->batch + 1, 0, 0, 0);
    a.max_seqlen_q = p->max_seqlen_q;
    a.max_seqlen_kv = p->max_seqlen_kv;
    a.causal = p->causal;
    a.out = tensor(&d->out, MLA_DTYPE_BF16, 3, p->total_q, p->heads, CLI_V_DIM, 0);
    if (with_lse) a.lse = tensor(&d->lse, MLA_DTYPE_F32, 2, p->total_q, p->heads, 0, 0);
    a.scales = &p->scales;
    return mla_prefill(be, &a);
}

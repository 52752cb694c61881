/* Random DeepSeek-V3-like decode and prefill problems in host memory, shared by check and
 * bench. Values are fresh random numbers from a seeded generator (never zeros); the KV cache
 * is described by the rows to write into it, so the tool exercises mla_kv_cache_write. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Dequant scales for fp8 data: powers of two so x / scale and x * (1 / scale) agree, and the
 * random ranges below land in e4m3's normal range without saturating. */
#define CLI_Q_SCALE_FP8 (1.0f / 128.0f) /* q in [-1, 1] */
#define CLI_K_SCALE_FP8 (1.0f / 64.0f)  /* cache / k in [-2, 2] */
#define CLI_V_SCALE_FP8 (1.0f / 128.0f) /* prefill v in [-1, 1] */

/* Poison for cache rows that are never written: large finite values (448 in e4m3, 32768 in
 * bf16), so a kernel that reads past seq_len or through a padding block-table entry visibly
 * corrupts its output. */
#define CLI_POISON_FP8 0x7e
#define CLI_POISON_BF16 0x4700

void cli_rng_seed(cli_rng *rng, uint64_t seed)
{
    rng->state = seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    if (rng->state == 0) rng->state = 1;
}

/* splitmix64: any seed, including 0, gives a good sequence. */
uint64_t cli_rng_u64(cli_rng *rng)
{
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

float cli_rng_uniform(cli_rng *rng, float lo, float hi)
{
    double u = (double)(cli_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(lo + (hi - lo) * u);
}

int cli_rng_int(cli_rng *rng, int lo, int hi_inclusive)
{
    uint64_t span = (uint64_t)((int64_t)hi_inclusive - lo + 1);
    return lo + (int)(cli_rng_u64(rng) % span);
}

int64_t cli_visible_keys(int64_t len_q, int64_t len_kv, int64_t row, int causal)
{
    if (!causal) return len_kv;
    int64_t n = len_kv - len_q + row + 1;
    return n < 0 ? 0 : (n > len_kv ? len_kv : n);
}

double cli_decode_visible_pairs(const cli_decode_problem *p)
{
    double pairs = 0;
    for (int b = 0; b < p->batch; b++)
        for (int i = 0; i < p->q_len; i++)
            pairs += (double)cli_visible_keys(p->q_len, p->seq_lens[b], i, p->causal);
    return pairs;
}

double cli_prefill_visible_pairs(const cli_prefill_problem *p)
{
    double pairs = 0;
    for (int b = 0; b < p->batch; b++) {
        int lq = p->cu_seqlens_q[b + 1] - p->cu_seqlens_q[b];
        int lkv = p->cu_seqlens_kv[b + 1] - p->cu_seqlens_kv[b];
        for (int i = 0; i < lq; i++) pairs += (double)cli_visible_keys(lq, lkv, i, p->causal);
    }
    return pairs;
}

/* Refuses a problem that cannot fit in host memory (Linux overcommit would let the mallocs
 * succeed and the process die later while filling them). */
static int fits_in_host_memory(double bytes, const char *what)
{
    long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page_size <= 0) return 1;
    double limit = 0.8 * (double)pages * (double)page_size;
    if (bytes <= limit) return 1;
    fprintf(stderr,
            "mla: the %s problem needs about %.1f GiB of host memory; this machine has %.1f GiB "
            "(use smaller --batch / --seq-len / --prefill-len)\n",
            what, bytes / (1 << 30), (double)pages * (double)page_size / (1 << 30));
    return 0;
}

static void *alloc_or_report(size_t bytes, const char *what)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) fprintf(stderr, "mla: out of host memory allocating %zu bytes for %s\n", bytes, what);
    return p;
}

/* n random values in [lo, hi] stored as bf16, or as fp8 e4m3 of value / fp8_scale. */
static void fill_random(void *dst, size_t n, mla_dtype dtype, float lo, float hi,
                        float fp8_scale, cli_rng *rng)
{
    if (dtype == MLA_DTYPE_FP8_E4M3) {
        uint8_t *d = dst;
        for (size_t i = 0; i < n; i++)
            d[i] = mla_float_to_fp8_e4m3(cli_rng_uniform(rng, lo, hi) / fp8_scale);
    } else {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = mla_float_to_bf16(cli_rng_uniform(rng, lo, hi));
    }
}

static void shuffle_ints(int32_t *v, int n, cli_rng *rng)
{
    for (int i = n - 1; i > 0; i--) {
        int j = cli_rng_int(rng, 0, i);
        int32_t t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* The cache the scalar conversions of mla.h predict: each written row is c_kv || k_pe,
 * stored as round_e4m3(x / k_scale) for fp8 or as the bf16 value itself. */
static void build_expected_cache(cli_decode_problem *p)
{
    size_t elem = mla_dtype_size(p->kv_dtype);
    memcpy(p->cache_expected, p->cache_init, p->cache_bytes);
    for (int64_t t = 0; t < p->num_tokens; t++) {
        uint8_t *row = p->cache_expected + (size_t)p->slots[t] * CLI_DECODE_QK_DIM * elem;
        for (int c = 0; c < CLI_DECODE_QK_DIM; c++) {
            uint16_t x = c < CLI_KV_LORA_RANK ? p->c_kv[t * CLI_KV_LORA_RANK + c]
                                              : p->k_pe[t * CLI_ROPE_DIM + c - CLI_KV_LORA_RANK];
            if (p->kv_dtype == MLA_DTYPE_FP8_E4M3)
                row[c] = mla_float_to_fp8_e4m3(mla_bf16_to_float(x) / p->scales.k_scale);
            else
                memcpy(row + 2 * c, &x, 2);
        }
    }
}

int cli_decode_problem_make(cli_decode_problem *p, int batch, int q_len, int heads,
                            int page_size, const int *seq_lens, mla_dtype q_dtype,
                            mla_dtype kv_dtype, int causal, float softmax_scale, cli_rng *rng)
{
    memset(p, 0, sizeof *p);
    p->batch = batch;
    p->q_len = q_len;
    p->heads = heads;
    p->page_size = page_size;
    p->causal = causal;
    p->q_dtype = q_dtype;
    p->kv_dtype = kv_dtype;
    p->scales = (mla_scales){
        .softmax_scale = softmax_scale,
        .q_scale = q_dtype == MLA_DTYPE_FP8_E4M3 ? CLI_Q_SCALE_FP8 : 1.0f,
        .k_scale = kv_dtype == MLA_DTYPE_FP8_E4M3 ? CLI_K_SCALE_FP8 : 1.0f,
        .v_scale = kv_dtype == MLA_DTYPE_FP8_E4M3 ? CLI_K_SCALE_FP8 : 1.0f,
        .o_scale = 1.0f,
    };

    int used_pages = 0;
    for (int b = 0; b < batch; b++) {
        int pages = (seq_lens[b] + page_size - 1) / page_size;
        used_pages += pages;
        if (pages > p->max_pages_per_seq) p->max_pages_per_seq = pages;
        p->num_tokens += seq_lens[b];
    }
    if (p->max_pages_per_seq == 0) p->max_pages_per_seq = 1;
    p->num_pages = used_pages + 2; /* two spare pages stay poisoned */

    size_t kv_elem = mla_dtype_size(kv_dtype);
    p->q_bytes = (size_t)batch * q_len * heads * CLI_DECODE_QK_DIM * mla_dtype_size(q_dtype);
    p->cache_bytes = (size_t)p->num_pages * page_size * CLI_DECODE_QK_DIM * kv_elem;
    p->out_elems = (size_t)batch * q_len * heads * CLI_KV_LORA_RANK;
    p->lse_elems = (size_t)batch * q_len * heads;
    /* inputs, two caches, and the outputs and references the check keeps beside them */
    double host_bytes = (double)p->q_bytes + 2.0 * p->cache_bytes +
                        (double)p->num_tokens * (CLI_DECODE_QK_DIM * 2 + 4) +
                        (double)p->out_elems * 14 + (double)p->cache_bytes;
    if (!fits_in_host_memory(host_bytes, "decode")) return -1;

    p->seq_lens = alloc_or_report(sizeof(int32_t) * batch, "seq_lens");
    p->block_table = alloc_or_report(sizeof(int32_t) * batch * p->max_pages_per_seq, "block table");
    p->q = alloc_or_report(p->q_bytes, "decode q");
    p->c_kv = alloc_or_report(sizeof(uint16_t) * p->num_tokens * CLI_KV_LORA_RANK, "c_kv");
    p->k_pe = alloc_or_report(sizeof(uint16_t) * p->num_tokens * CLI_ROPE_DIM, "k_pe");
    p->slots = alloc_or_report(sizeof(int32_t) * p->num_tokens, "slots");
    p->cache_init = alloc_or_report(p->cache_bytes, "kv cache");
    p->cache_expected = alloc_or_report(p->cache_bytes, "expected kv cache");
    int32_t *pages = alloc_or_report(sizeof(int32_t) * p->num_pages, "page permutation");
    if (!p->seq_lens || !p->block_table || !p->q || !p->c_kv || !p->k_pe || !p->slots ||
        !p->cache_init || !p->cache_expected || !pages) {
        free(pages);
        cli_decode_problem_free(p);
        return -1;
    }

    /* Pages in random order, so paging bugs cannot hide behind a contiguous cache; padding
     * entries of the block table point at a poisoned spare page. */
    for (int i = 0; i < p->num_pages; i++) pages[i] = i;
    shuffle_ints(pages, p->num_pages, rng);
    int next_page = 0;
    int64_t token = 0;
    for (int b = 0; b < batch; b++) {
        p->seq_lens[b] = seq_lens[b];
        int32_t *row = p->block_table + (size_t)b * p->max_pages_per_seq;
        int pages_b = (seq_lens[b] + page_size - 1) / page_size;
        for (int j = 0; j < p->max_pages_per_seq; j++)
            row[j] = j < pages_b ? pages[next_page++] : pages[p->num_pages - 1];
        for (int t = 0; t < seq_lens[b]; t++)
            p->slots[token++] = row[t / page_size] * page_size + t % page_size;
    }
    free(pages);

    fill_random(p->q, p->q_bytes / mla_dtype_size(q_dtype), q_dtype, -1.0f, 1.0f,
                p->scales.q_scale, rng);
    fill_random(p->c_kv, (size_t)p->num_tokens * CLI_KV_LORA_RANK, MLA_DTYPE_BF16, -2.0f, 2.0f,
                1.0f, rng);
    fill_random(p->k_pe, (size_t)p->num_tokens * CLI_ROPE_DIM, MLA_DTYPE_BF16, -2.0f, 2.0f,
                1.0f, rng);
    if (kv_dtype == MLA_DTYPE_FP8_E4M3) {
        memset(p->cache_init, CLI_POISON_FP8, p->cache_bytes);
    } else {
        uint16_t poison = CLI_POISON_BF16;
        for (size_t i = 0; i < p->cache_bytes / 2; i++) memcpy(p->cache_init + 2 * i, &poison, 2);
    }
    build_expected_cache(p);
    return 0;
}

void cli_decode_problem_free(cli_decode_problem *p)
{
    free(p->seq_lens);
    free(p->block_table);
    free(p->q);
    free(p->c_kv);
    free(p->k_pe);
    free(p->slots);
    free(p->cache_init);
    free(p->cache_expected);
    memset(p, 0, sizeof *p);
}

int cli_prefill_problem_make(cli_prefill_problem *p, int batch, int heads, const int *q_lens,
                             const int *kv_lens, mla_dtype dtype, int causal,
                             float softmax_scale, cli_rng *rng)
{
    memset(p, 0, sizeof *p);
    p->batch = batch;
    p->heads = heads;
    p->causal = causal;
    p->dtype = dtype;
    int fp8 = dtype == MLA_DTYPE_FP8_E4M3;
    p->scales = (mla_scales){
        .softmax_scale = softmax_scale,
        .q_scale = fp8 ? CLI_Q_SCALE_FP8 : 1.0f,
        .k_scale = fp8 ? CLI_K_SCALE_FP8 : 1.0f,
        .v_scale = fp8 ? CLI_V_SCALE_FP8 : 1.0f,
        .o_scale = 1.0f,
    };
    p->cu_seqlens_q = alloc_or_report(sizeof(int32_t) * (batch + 1), "cu_seqlens_q");
    p->cu_seqlens_kv = alloc_or_report(sizeof(int32_t) * (batch + 1), "cu_seqlens_kv");
    if (!p->cu_seqlens_q || !p->cu_seqlens_kv) {
        cli_prefill_problem_free(p);
        return -1;
    }
    p->cu_seqlens_q[0] = p->cu_seqlens_kv[0] = 0;
    for (int b = 0; b < batch; b++) {
        p->cu_seqlens_q[b + 1] = p->cu_seqlens_q[b] + q_lens[b];
        p->cu_seqlens_kv[b + 1] = p->cu_seqlens_kv[b] + kv_lens[b];
        if (q_lens[b] > p->max_seqlen_q) p->max_seqlen_q = q_lens[b];
        if (kv_lens[b] > p->max_seqlen_kv) p->max_seqlen_kv = kv_lens[b];
    }
    p->total_q = p->cu_seqlens_q[batch];
    p->total_kv = p->cu_seqlens_kv[batch];
    size_t elem = mla_dtype_size(dtype);
    p->q_bytes = (size_t)p->total_q * heads * CLI_PREFILL_QK_DIM * elem;
    p->k_bytes = (size_t)p->total_kv * heads * CLI_PREFILL_QK_DIM * elem;
    p->v_bytes = (size_t)p->total_kv * heads * CLI_V_DIM * elem;
    p->out_elems = (size_t)p->total_q * heads * CLI_V_DIM;
    p->lse_elems = (size_t)p->total_q * heads;
    double host_bytes = (double)(p->q_bytes + p->k_bytes + p->v_bytes) + 12.0 * p->out_elems;
    if (!fits_in_host_memory(host_bytes, "prefill")) {
        cli_prefill_problem_free(p);
        return -1;
    }
    p->q = alloc_or_report(p->q_bytes, "prefill q");
    p->k = alloc_or_report(p->k_bytes, "prefill k");
    p->v = alloc_or_report(p->v_bytes, "prefill v");
    if (!p->q || !p->k || !p->v) {
        cli_prefill_problem_free(p);
        return -1;
    }
    fill_random(p->q, p->q_bytes / elem, dtype, -1.0f, 1.0f, p->scales.q_scale, rng);
    fill_random(p->k, p->k_bytes / elem, dtype, -2.0f, 2.0f, p->scales.k_scale, rng);
    fill_random(p->v, p->v_bytes / elem, dtype, -1.0f, 1.0f, p->scales.v_scale, rng);
    return 0;
}

void cli_prefill_problem_free(cli_prefill_problem *p)
{
    free(p->cu_seqlens_q);
    free(p->cu_seqlens_kv);
    free(p->q);
    free(p->k);
    free(p->v);
    memset(p, 0, sizeof *p);
}

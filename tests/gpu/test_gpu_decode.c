/* GPU decode ("hopper") against the CPU backend ("cpu") on the same inputs, through the
 * public API. Fresh random data per case, GPU outputs poisoned (0xff bytes: bf16 NaN, f32
 * NaN) before every run, every element compared.
 *
 * Tolerances (GPU vs the CPU backend's bf16 output, both from the same quantized cache):
 *   out: ||gpu - cpu|| / ||cpu|| < 1e-2 and per element |err| <= 2e-2 |ref| + 1e-2 max|ref|.
 *        The fp8-cache kernel dequantizes the cache exactly into fp16 and keeps Q in fp16
 *        (exact for fp8 Q and bf16 Q with |q| < 65504), so the same bound holds for both cache
 *        dtypes; the error comes from P rounded to 16 bits and the bf16 outputs.
 *   lse: per element |err| <= 1e-3 |ref| + 1e-3; -inf must match exactly.
 *   fp8 math (mla_config.decode_fp8_math or MLA_DECODE_VARIANT=v10, with an fp8 query and an
 *        fp8 cache, H * q_len >= 64): P
 *        is rounded to e4m3 for P V, so the bound is that path's own error: the float64 oracle
 *        is run exact and with P rounded the same way (oracle_decode_args.p_e4m3), and the
 *        kernel's error against the exact result may be at most 1.5x the rounded oracle's
 *        (relative L2, + 2e-3) and per element at most 2x its largest error + the usual bound.
 *        The LSE uses unrounded sums: same tolerance as above.
 * Rows that see no key must be exactly zero with lse -inf (checked through the reference). */
#include "../test.h"
#include "../oracle.h"
#include "../../src/cuda/mla_cuda.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const oracle_tolerance out_tol = {.rel_l2 = 1e-2, .elem_rel = 2e-2, .abs_frac = 1e-2, .abs = 0};
static const oracle_tolerance lse_tol = {.rel_l2 = 1e-3, .elem_rel = 1e-3, .abs_frac = 0, .abs = 1e-3};

typedef struct gdecode_case {
    int batch, q_len, heads, page;
    mla_dtype kv_dtype, q_dtype;
    int with_lse, no_causal;
    const int *seq_lens;       /* [batch] */
    int bad_page_req;          /* >= 0: that request's page 0 index is set out of range */
    int over_capacity_req;     /* >= 0: that request's seq_len exceeds the table capacity */
    int own_workspace;         /* pass a caller buffer of exactly mla_decode_workspace_size */
    float kv_amp;              /* > 0: cache values in [-kv_amp, kv_amp] instead of [-1, 1] */
    float q_amp;               /* > 0: query values in [-q_amp, q_amp] instead of [-2, 2] */
    uint32_t expect_flags;
    int fp8_math;              /* mla_config.decode_fp8_math */
    int check_switch;          /* also run with the other decode_fp8_math on the same inputs:
                                * bit-identical unless exactly one of the two takes fp8 math */
    int in_order_pages;        /* pages handed out in order: a request's consecutive pages are
                                * adjacent cache rows (the TMA loaders' one-box path at page 32) */
    int grow_scores;           /* oracle_plant_growing_scores: a row's maximum moves inside
                                * requests (rescales mid-request, jumps below and above 2^8) */
    int index_check;           /* the host check of index contents on (off by default, so that
                                * bad pages reach the kernels): the hopper backend then knows
                                * the call's total keys, which picks the 17..32-row fp8 kernel */
    const char *same_as_form;  /* a form (NAME=VALUE[,...]) whose output on the same inputs must
                                * be bit-identical to this case's: the kernel the case took */
    const char *differs_from_form; /* one whose output must differ (another kernel's rounding) */
} gdecode_case;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static mla_tensor host_tensor(void *data, mla_dtype dt, int ndim, int64_t a, int64_t b, int64_t c, int64_t d)
{
    int64_t shape[4] = {a, b, c, d};
    return mla_tensor_contiguous(data, dt, (mla_device){MLA_DEVICE_CPU, 0}, ndim, shape);
}

static mla_tensor dev_tensor(void *data, mla_dtype dt, int ndim, int64_t a, int64_t b, int64_t c, int64_t d)
{
    int64_t shape[4] = {a, b, c, d};
    return mla_tensor_contiguous(data, dt, (mla_device){MLA_DEVICE_CUDA, 0}, ndim, shape);
}

static void *to_device(const void *src, size_t bytes)
{
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess) return NULL;
    if (bytes && src) cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice);
    return d;
}

static void config_for(mla_config *cfg, const gdecode_case *c, mla_device_type dev)
{
    mla_config_init(cfg);
    cfg->num_heads = c->heads;
    cfg->page_size = c->page;
    cfg->kv_cache_dtype = c->kv_dtype;
    cfg->max_q_len = 8;
    cfg->skip_index_check = !c->index_check; /* bad pages must reach the kernels */
    cfg->scales.k_scale = c->kv_dtype == MLA_DTYPE_FP8_E4M3 ? 0.375f : 1.0f;
    cfg->scales.q_scale = c->q_dtype == MLA_DTYPE_FP8_E4M3 ? 0.5f : 1.0f;
    cfg->scales.o_scale = 1.25f;
    cfg->has_k_scale = c->kv_dtype == MLA_DTYPE_FP8_E4M3;
    cfg->decode_fp8_math = c->fp8_math;
    cfg->device = (mla_device){dev, 0};
}

static void report(const char *label, const char *what, const oracle_report *r)
{
    if (!r->ok) oracle_print_report(what, r);
    CHECK_MSG(r->ok, "%s: %s mismatch (bad %lld, nan %lld, poison %lld, rel %.3g)", label, what,
              (long long)r->bad_count, (long long)r->nan_count, (long long)r->poison_count,
              r->rel_l2);
}

/* Whether this case runs the fp8-math kernel (decode_v10_fp8mma.cuh), whose P is e4m3:
 * MLA_DECODE_VARIANT=v10, or decode_fp8_math with the default variant (an unset or unknown
 * MLA_DECODE_VARIANT, or "v2"; another named variant wins, src/cuda/sm90/decode.cu). */
static int runs_fp8_math(const gdecode_case *c)
{
    static const char *const others[] = {"v1", "wide", "v3", "v6", "v7"};
    const char *v = getenv("MLA_DECODE_VARIANT");
    int by_cfg = c->fp8_math;
    for (int i = 0; v && i < 5; i++)
        if (!strcmp(v, others[i])) by_cfg = 0;
    const int on = by_cfg || (v && !strcmp(v, "v10"));
    return on && c->q_dtype == MLA_DTYPE_FP8_E4M3 && c->kv_dtype == MLA_DTYPE_FP8_E4M3 &&
           c->q_len * c->heads >= 64;
}

/* What one GPU run is checked against: the reference (computed once per case) and the
 * host buffers the outputs are copied into. */
typedef struct gpu_check_buffers {
    uint16_t *out;
    float *lse;
    const double *ref_out; /* the reference as the comparisons take it, widened once per case */
    const double *ref_lse;
    int64_t out_elems, rows;
    oracle_tolerance tol;
    int fp8_math;
} gpu_check_buffers;

/* One decode on `gpu` with the device tensors of `a` (outputs poisoned first; a caller-owned
 * workspace of exactly the reported size, poisoned too, when the case asks for one), then the
 * error flags and every element against the reference. */
static void gpu_decode_and_check(mla_backend *gpu, const gdecode_case *c, const char *label, mla_decode_args *a,
                                 const gpu_check_buffers *k)
{
    void *d_ws = NULL;
    uint32_t flags = 0;
    mla_backend_device_errors(gpu, &flags); /* clear */
    cudaMemset(a->out.data, 0xff, (size_t)k->out_elems * 2);
    if (c->with_lse) cudaMemset(a->lse.data, 0xff, (size_t)k->rows * sizeof(float));
    a->workspace = NULL;
    a->workspace_bytes = 0;
    if (c->own_workspace) {
        size_t ws = 0;
        CHECK_STATUS(mla_decode_workspace_size(gpu, c->batch, c->q_len, &ws), MLA_OK);
        cudaMalloc(&d_ws, ws);
        cudaMemset(d_ws, 0xff, ws); /* stale metadata must not matter */
        a->workspace = d_ws;
        a->workspace_bytes = ws;
    }
    CHECK_STATUS(mla_decode(gpu, a), MLA_OK);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    cudaMemcpy(k->out, a->out.data, (size_t)k->out_elems * 2, cudaMemcpyDeviceToHost);
    if (c->with_lse) cudaMemcpy(k->lse, a->lse.data, (size_t)k->rows * sizeof(float), cudaMemcpyDeviceToHost);
    CHECK_STATUS(mla_backend_device_errors(gpu, &flags), MLA_OK);
    CHECK_MSG(flags == c->expect_flags, "%s: device error flags 0x%x, expected 0x%x", label, flags,
              c->expect_flags);

    oracle_report r = oracle_compare_bf16(k->out, k->ref_out, k->out_elems, k->tol);
    report(label, "out", &r);
    if (k->fp8_math)
        printf("    %s: fp8-math kernel rel L2 %.3e (bound %.3e)\n", label, r.rel_l2, k->tol.rel_l2);
    if (c->with_lse) {
        r = oracle_compare_f32(k->lse, k->ref_lse, k->rows, lse_tol);
        report(label, "lse", &r);
    }
    a->workspace = NULL;
    a->workspace_bytes = 0;
    cudaFree(d_ws);
}

/* MLA_TEST_DECODE_FORMS: decode forms to run on every case after the default, each against
 * the same reference (one oracle pass checks them all; the switches are read once per process
 * otherwise, so each form re-reads them through mla_cuda_decode_reread_switches and gets a
 * backend of its own). Forms are separated by ';', a form's switches by ',', e.g.
 *   MLA_TEST_DECODE_FORMS="MLA_DECODE_V2_CONV=lazy;MLA_DECODE_V2_CONV=swap8,MLA_DECODE_FP8_ROWS32=seesaw8"
 * A form that changes whether the case takes fp8 math (MLA_DECODE_VARIANT) is skipped for it,
 * since the tolerance was derived for the default. */
#define MAX_FORM_SWITCHES 8
typedef struct form_switches {
    int n;
    char name[MAX_FORM_SWITCHES][64];
    char *saved[MAX_FORM_SWITCHES]; /* the value before the form, NULL: unset */
} form_switches;

static int form_parse_apply(const char *form, form_switches *fs)
{
    fs->n = 0;
    const char *p = form;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *eq = memchr(p, '=', (size_t)(e - p));
        if (!eq || eq == p || eq - p >= 64 || fs->n == MAX_FORM_SWITCHES) return 0;
        char value[64];
        size_t vlen = (size_t)(e - eq - 1);
        while (vlen && eq[vlen] == ' ') vlen--;
        if (vlen >= sizeof value) return 0;
        memcpy(fs->name[fs->n], p, (size_t)(eq - p));
        fs->name[fs->n][eq - p] = 0;
        memcpy(value, eq + 1, vlen);
        value[vlen] = 0;
        const char *old = getenv(fs->name[fs->n]);
        fs->saved[fs->n] = old ? strdup(old) : NULL;
        setenv(fs->name[fs->n], value, 1);
        fs->n++;
        p = e;
    }
    mla_cuda_decode_reread_switches();
    return fs->n > 0;
}

static void form_restore(form_switches *fs)
{
    for (int i = fs->n - 1; i >= 0; i--) {
        if (fs->saved[i]) setenv(fs->name[i], fs->saved[i], 1);
        else unsetenv(fs->name[i]);
        free(fs->saved[i]);
    }
    fs->n = 0;
    mla_cuda_decode_reread_switches();
}

/* The case's output `out` (its backend's, in d_out's shape) against the same inputs through a
 * backend made under `form`: bit-identical when want_same, else different. The two outputs of
 * one kernel on one schedule agree to the bit; two kernels round differently somewhere. */
static void compare_with_form(const gdecode_case *c, const char *label, const mla_decode_args *a, void *d_out,
                              const uint16_t *out, int64_t out_elems, const char *form, int want_same)
{
    form_switches fs;
    const int ok = form_parse_apply(form, &fs);
    CHECK_MSG(ok, "%s: cannot read the form '%s'", label, form);
    mla_config cfg;
    config_for(&cfg, c, MLA_DEVICE_CUDA);
    mla_backend *gpu = NULL;
    if (ok) CHECK_STATUS(mla_backend_create("hopper", &cfg, &gpu), MLA_OK);
    uint16_t *out2 = xmalloc((size_t)out_elems * 2);
    if (gpu) {
        cudaMemset(d_out, 0xff, (size_t)out_elems * 2);
        CHECK_STATUS(mla_decode(gpu, a), MLA_OK);
        CHECK(cudaDeviceSynchronize() == cudaSuccess);
        cudaMemcpy(out2, d_out, (size_t)out_elems * 2, cudaMemcpyDeviceToHost);
        const int same = memcmp(out, out2, (size_t)out_elems * 2) == 0;
        CHECK_MSG(same == want_same, "%s: output under %s is %s, expected %s", label, form,
                  same ? "bit-identical" : "different", want_same ? "bit-identical (the same kernel)" : "different");
    }
    free(out2);
    mla_backend_destroy(gpu);
    form_restore(&fs);
}

static void run_extra_forms(const gdecode_case *c, const char *label, mla_decode_args *a, const gpu_check_buffers *k)
{
    const char *list = getenv("MLA_TEST_DECODE_FORMS");
    if (!list || !*list) return;
    char *copy = strdup(list), *save = NULL;
    int checked = 0;
    for (char *form = strtok_r(copy, ";", &save); form; form = strtok_r(NULL, ";", &save)) {
        form_switches fs;
        const int ok = form_parse_apply(form, &fs);
        CHECK_MSG(ok, "MLA_TEST_DECODE_FORMS: cannot read the form '%s' (want NAME=VALUE[,NAME=VALUE])", form);
        if (!ok) {
            form_restore(&fs);
            continue;
        }
        char flabel[256];
        snprintf(flabel, sizeof flabel, "%s [%s]", label, form);
        if (runs_fp8_math(c) != k->fp8_math) {
            printf("    %s: skipped (the form changes whether the case takes fp8 math)\n", flabel);
        } else {
            mla_config cfg;
            config_for(&cfg, c, MLA_DEVICE_CUDA);
            mla_backend *gpu = NULL;
            CHECK_STATUS(mla_backend_create("hopper", &cfg, &gpu), MLA_OK);
            if (gpu) {
                gpu_decode_and_check(gpu, c, flabel, a, k);
                checked++;
            }
            mla_backend_destroy(gpu);
        }
        form_restore(&fs);
    }
    printf("    %s: %d extra form(s) checked\n", label, checked);
    free(copy);
}

static void run_gpu_decode_case(const gdecode_case *c, const char *label)
{
    const int fp8_math = runs_fp8_math(c);
    oracle_tolerance tol = out_tol;
    const int B = c->batch, L = c->q_len, H = c->heads, R = 512, D = 576, P = c->page;
    int max_len = 1;
    for (int b = 0; b < B; b++) max_len = c->seq_lens[b] > max_len ? c->seq_lens[b] : max_len;
    const int max_pages = (max_len + P - 1) / P + 1; /* one spare (garbage) entry per row */
    int total_pages = 0;
    for (int b = 0; b < B; b++) total_pages += (c->seq_lens[b] + P - 1) / P;
    /* a few pages nobody owns (NaN-filled), plus spares for the over-capacity request */
    const int num_pages = total_pages + 3 + (c->over_capacity_req >= 0 ? max_pages : 0);
    const size_t esz = mla_dtype_size(c->kv_dtype);
    const size_t row_bytes = (size_t)D * esz;

    /* Pages handed out in a shuffled order (or in order). */
    int *perm = xmalloc((size_t)num_pages * sizeof(int));
    for (int i = 0; i < num_pages; i++) perm[i] = i;
    for (int i = num_pages - 1; i > 0 && !c->in_order_pages; i--) {
        int j = mla_test_rand_int(0, i), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int32_t *table = xmalloc((size_t)B * max_pages * sizeof(int32_t));
    int32_t *seq = xmalloc((size_t)B * sizeof(int32_t));
    int32_t *seq_ref = xmalloc((size_t)B * sizeof(int32_t));
    int next = 0;
    for (int b = 0; b < B; b++) {
        const int np = (c->seq_lens[b] + P - 1) / P;
        for (int j = 0; j < max_pages; j++)
            table[(size_t)b * max_pages + j] = j < np ? perm[next++] : (j & 1 ? -7 : 1 << 30);
        seq[b] = seq_ref[b] = c->seq_lens[b];
    }
    if (c->over_capacity_req >= 0) {
        /* The kernel clamps to the table capacity; the reference gets the clamped length and
         * a real page in the spare entry. */
        const int o = c->over_capacity_req, np = (c->seq_lens[o] + P - 1) / P;
        seq[o] = max_pages * P + 100;
        seq_ref[o] = max_pages * P;
        for (int j = np; j < max_pages; j++) table[(size_t)o * max_pages + j] = perm[next++];
    }
    if (c->bad_page_req >= 0) table[(size_t)c->bad_page_req * max_pages] = num_pages + 5;
    uint8_t *cache = xmalloc((size_t)num_pages * P * row_bytes);
    const float amp = c->kv_amp > 0.0f ? c->kv_amp : 1.0f;
    oracle_fill(c->kv_dtype, cache, NULL, (int64_t)num_pages * P * D, -amp, amp);
    /* NaN in every row nobody may read: tails of partial pages and unowned pages. */
    {
        char *owned = calloc((size_t)num_pages * P, 1);
        for (int b = 0; b < B; b++)
            for (int k = 0; k < seq_ref[b]; k++) {
                const int pg = table[(size_t)b * max_pages + k / P];
                if (pg >= 0 && pg < num_pages) owned[(size_t)pg * P + k % P] = 1;
            }
        for (int64_t r = 0; r < (int64_t)num_pages * P; r++) {
            if (owned[r]) continue;
            for (int d = 0; d < D; d++) {
                if (esz == 1) cache[r * D + d] = 0x7f;
                else ((uint16_t *)cache)[r * D + d] = 0x7fc0;
            }
        }
        free(owned);
    }

    const int64_t q_elems = (int64_t)B * L * H * D, out_elems = (int64_t)B * L * H * R;
    const int64_t rows = (int64_t)B * L * H;
    void *q = xmalloc((size_t)q_elems * mla_dtype_size(c->q_dtype));
    const float q_amp = c->q_amp > 0.0f ? c->q_amp : 2.0f;
    oracle_fill(c->q_dtype, q, NULL, q_elems, -q_amp, q_amp);

    /* ---- CPU reference ---- */
    mla_config cfg;
    config_for(&cfg, c, MLA_DEVICE_CPU);
    if (c->grow_scores) {
        const oracle_plant_args pa = {
            .batch = B, .q_len = L, .heads = H, .dqk = D, .dv = R, .page_size = P, .max_pages = max_pages,
            .q_dtype = c->q_dtype, .kv_dtype = c->kv_dtype, .q = q, .kv = cache, .kv_deq = NULL,
            .block_table = table, .seq_lens = seq_ref,
            .bmm1 = (double)cfg.scales.softmax_scale * cfg.scales.q_scale * cfg.scales.k_scale,
        };
        oracle_plant_growing_scores(&pa);
    }
    mla_backend *cpu = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &cpu), MLA_OK);
    uint16_t *ref_out = xmalloc((size_t)out_elems * 2);
    float *ref_lse = xmalloc((size_t)rows * sizeof(float));
    mla_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = host_tensor(q, c->q_dtype, 4, B, L, H, D);
    a.kv_cache = host_tensor(cache, c->kv_dtype, 3, num_pages, P, D, 0);
    a.block_table = host_tensor(table, MLA_DTYPE_I32, 2, B, max_pages, 0, 0);
    a.seq_lens = host_tensor(seq_ref, MLA_DTYPE_I32, 1, B, 0, 0, 0);
    a.out = host_tensor(ref_out, MLA_DTYPE_BF16, 4, B, L, H, R);
    a.lse = host_tensor(ref_lse, MLA_DTYPE_F32, 3, B, L, H, 0);
    a.no_causal_mask = c->no_causal;
    if (c->bad_page_req < 0 && !fp8_math) {
        if (cpu) CHECK_STATUS(mla_decode(cpu, &a), MLA_OK);
    } else {
        /* The CPU backend refuses a bad page even without index checks; the float64 oracle
         * skips it, which is the behaviour the kernel must have. (Also the fp8-math bound.) */
        const int64_t cache_elems = (int64_t)num_pages * P * D;
        float *q_f = xmalloc((size_t)q_elems * sizeof(float));
        float *kv_f = xmalloc((size_t)cache_elems * sizeof(float));
        for (int64_t i = 0; i < q_elems; i++)
            q_f[i] = c->q_dtype == MLA_DTYPE_BF16 ? mla_bf16_to_float(((uint16_t *)q)[i])
                                                  : mla_fp8_e4m3_to_float(((uint8_t *)q)[i]);
        for (int64_t i = 0; i < cache_elems; i++)
            kv_f[i] = esz == 2 ? mla_bf16_to_float(((uint16_t *)cache)[i]) : mla_fp8_e4m3_to_float(cache[i]);
        double *o64 = xmalloc((size_t)out_elems * sizeof(double)), *l64 = xmalloc((size_t)rows * sizeof(double));
        oracle_decode_args oa = {
            .batch = B, .q_len = L, .heads = H, .dqk = D, .dv = R, .page_size = P,
            .num_pages = num_pages, .max_pages = max_pages, .causal = !c->no_causal,
            .q = q_f, .kv = kv_f, .block_table = table, .seq_lens = seq_ref,
            .bmm1 = (double)cfg.scales.softmax_scale * cfg.scales.q_scale * cfg.scales.k_scale,
            .bmm2 = (double)cfg.scales.o_scale * cfg.scales.k_scale, .out = o64, .lse = l64,
        };
        oracle_decode(&oa);
        if (fp8_math) { /* the bound from the e4m3-P path's own error against the exact result */
            double *oq = xmalloc((size_t)out_elems * sizeof(double)), *lq = xmalloc((size_t)rows * sizeof(double));
            oracle_decode_args qa = oa;
            qa.out = oq;
            qa.lse = lq;
            qa.p_e4m3 = 1;
            oracle_decode(&qa);
            double num = 0, den = 0, emax = 0;
            for (int64_t i = 0; i < out_elems; i++) {
                const double e = fabs(oq[i] - o64[i]);
                num += e * e;
                den += o64[i] * o64[i];
                emax = e > emax ? e : emax;
            }
            const double erel = den > 0 ? sqrt(num / den) : 0;
            tol.rel_l2 = 1.5 * erel + 2e-3;
            tol.abs = 2.0 * emax;
            printf("    %s: fp8-math bound: e4m3-P oracle rel L2 %.3e, max |err| %.3e\n", label, erel, emax);
            free(oq);
            free(lq);
        }
        for (int64_t i = 0; i < out_elems; i++) ref_out[i] = mla_float_to_bf16((float)o64[i]);
        for (int64_t i = 0; i < rows; i++) ref_lse[i] = (float)l64[i];
        free(q_f); free(kv_f); free(o64); free(l64);
    }
    mla_backend_destroy(cpu);

    /* ---- GPU ---- */
    config_for(&cfg, c, MLA_DEVICE_CUDA);
    mla_backend *gpu = NULL;
    CHECK_STATUS(mla_backend_create("hopper", &cfg, &gpu), MLA_OK);
    uint16_t *out = xmalloc((size_t)out_elems * 2);
    float *lse = xmalloc((size_t)rows * sizeof(float));
    void *d_q = to_device(q, (size_t)q_elems * mla_dtype_size(c->q_dtype));
    void *d_cache = to_device(cache, (size_t)num_pages * P * row_bytes);
    void *d_table = to_device(table, (size_t)B * max_pages * sizeof(int32_t));
    void *d_seq = to_device(seq, (size_t)B * sizeof(int32_t));
    void *d_out = NULL, *d_lse = NULL;
    cudaMalloc(&d_out, (size_t)out_elems * 2);
    cudaMalloc(&d_lse, (size_t)rows * sizeof(float));
    CHECK(d_q && d_cache && d_table && d_seq && d_out && d_lse);
    if (gpu && d_q && d_cache && d_table && d_seq && d_out && d_lse) {
        a.q = dev_tensor(d_q, c->q_dtype, 4, B, L, H, D);
        a.kv_cache = dev_tensor(d_cache, c->kv_dtype, 3, num_pages, P, D, 0);
        a.block_table = dev_tensor(d_table, MLA_DTYPE_I32, 2, B, max_pages, 0, 0);
        a.seq_lens = dev_tensor(d_seq, MLA_DTYPE_I32, 1, B, 0, 0, 0);
        a.out = dev_tensor(d_out, MLA_DTYPE_BF16, 4, B, L, H, R);
        a.lse = c->with_lse ? dev_tensor(d_lse, MLA_DTYPE_F32, 3, B, L, H, 0) : (mla_tensor){0};
        double *ref_wide = xmalloc((size_t)out_elems * sizeof(double)), *lse_wide = xmalloc((size_t)rows * sizeof(double));
        for (int64_t i = 0; i < out_elems; i++) ref_wide[i] = mla_bf16_to_float(ref_out[i]);
        for (int64_t i = 0; i < rows; i++) lse_wide[i] = ref_lse[i];
        const gpu_check_buffers bufs = {.out = out, .lse = lse, .ref_out = ref_wide, .ref_lse = lse_wide,
                                        .out_elems = out_elems, .rows = rows, .tol = tol, .fp8_math = fp8_math};
        gpu_decode_and_check(gpu, c, label, &a, &bufs);
        if (c->check_switch) { /* the same inputs through a backend with the other setting */
            gdecode_case o = *c;
            o.fp8_math = !c->fp8_math;
            mla_config cfg2;
            config_for(&cfg2, &o, MLA_DEVICE_CUDA);
            mla_backend *gpu2 = NULL;
            CHECK_STATUS(mla_backend_create("hopper", &cfg2, &gpu2), MLA_OK);
            uint16_t *out2 = xmalloc((size_t)out_elems * 2);
            if (gpu2) {
                uint32_t flags = 0;
                cudaMemset(d_out, 0xff, (size_t)out_elems * 2);
                CHECK_STATUS(mla_decode(gpu2, &a), MLA_OK);
                CHECK(cudaDeviceSynchronize() == cudaSuccess);
                cudaMemcpy(out2, d_out, (size_t)out_elems * 2, cudaMemcpyDeviceToHost);
                CHECK_STATUS(mla_backend_device_errors(gpu2, &flags), MLA_OK);
                const int differs = memcmp(out, out2, (size_t)out_elems * 2) != 0;
                const int expect = runs_fp8_math(c) != runs_fp8_math(&o);
                CHECK_MSG(differs == expect, "%s: outputs with decode_fp8_math %d and %d are %s, expected %s",
                          label, c->fp8_math, o.fp8_math, differs ? "different" : "bit-identical",
                          expect ? "different (one takes fp8 math)" : "bit-identical (the same kernel)");
            }
            free(out2);
            mla_backend_destroy(gpu2);
        }
        if (c->same_as_form) compare_with_form(c, label, &a, d_out, out, out_elems, c->same_as_form, 1);
        if (c->differs_from_form) compare_with_form(c, label, &a, d_out, out, out_elems, c->differs_from_form, 0);
        run_extra_forms(c, label, &a, &bufs);
        free(ref_wide);
        free(lse_wide);
    }
    cudaFree(d_q); cudaFree(d_cache); cudaFree(d_table); cudaFree(d_seq);
    cudaFree(d_out); cudaFree(d_lse);
    mla_backend_destroy(gpu);
    free(perm); free(table); free(seq); free(seq_ref); free(cache); free(q);
    free(ref_out); free(ref_lse); free(out); free(lse);
}

static gdecode_case base_case(int batch, int q_len, int heads, int page, mla_dtype kv,
                              const int *lens)
{
    gdecode_case c = {
        .batch = batch, .q_len = q_len, .heads = heads, .page = page, .kv_dtype = kv,
        .q_dtype = MLA_DTYPE_BF16, .with_lse = 1, .seq_lens = lens, .bad_page_req = -1,
        .over_capacity_req = -1,
    };
    return c;
}

/* Lengths around block and page edges, one token, and empty. */
static const int edge_lens[] = {1, 63, 64, 65, 0, 130, 33};
#define NUM_EDGE ((int)(sizeof edge_lens / sizeof edge_lens[0]))

static void sweep(mla_dtype kv)
{
    static const int hl[][2] = {{1, 1}, {1, 8}, {16, 1}, {16, 2}, {16, 4}, {16, 8}, {32, 1}, {24, 1},
                                {64, 1}, {64, 4}, {128, 1}, {128, 2}, {128, 8}, {96, 1}, {5, 3}};
    static const int pages[] = {32, 64};
    for (size_t i = 0; i < sizeof hl / sizeof hl[0]; i++)
        for (int p = 0; p < 2; p++) {
            gdecode_case c = base_case(NUM_EDGE, hl[i][1], hl[i][0], pages[p], kv, edge_lens);
            c.with_lse = (int)(i + p) % 2 == 0;
            char label[128];
            snprintf(label, sizeof label, "gpu decode %s cache H %d q_len %d page %d",
                     mla_dtype_name(kv), c.heads, c.q_len, c.page);
            run_gpu_decode_case(&c, label);
        }
}

TEST(gpu_decode_fp8_cache_heads_q_len_pages)
{
    sweep(MLA_DTYPE_FP8_E4M3);
}

TEST(gpu_decode_bf16_cache_heads_q_len_pages)
{
    sweep(MLA_DTYPE_BF16);
}

TEST(gpu_decode_long_sequences)
{
    static const int lens_a[] = {32768, 4097, 1};
    static const int lens_b[] = {32768};
    static const int lens_c[] = {4097, 4097};
    for (int kv = 0; kv < 2; kv++) {
        const mla_dtype dt = kv ? MLA_DTYPE_BF16 : MLA_DTYPE_FP8_E4M3;
        gdecode_case c = base_case(3, 1, 16, kv ? 32 : 64, dt, lens_a);
        run_gpu_decode_case(&c, kv ? "long bf16 H16" : "long fp8 H16");
        /* 32 rows: with an fp8 cache two 16-row head blocks of the swap kernel */
        c = base_case(3, 1, 32, 64, dt, lens_a);
        c.with_lse = 1;
        run_gpu_decode_case(&c, kv ? "long bf16 H32" : "long fp8 H32");
        c = base_case(1, 1, 128, 64, dt, lens_b);
        run_gpu_decode_case(&c, kv ? "long bf16 H128 batch 1" : "long fp8 H128 batch 1");
        c = base_case(2, 4, 64, 64, dt, lens_c);
        c.with_lse = 0;
        run_gpu_decode_case(&c, kv ? "4097 bf16 H64 q_len 4" : "4097 fp8 H64 q_len 4");
    }
}

TEST(gpu_decode_uneven_batches)
{
    /* Very uneven lengths across a batch larger than the part count: exercises the scheduler
     * (requests split across parts, parts spanning many requests). */
    for (int rep = 0; rep < 3; rep++) {
        /* 1100 requests: more than one chunk of the scheduler's 1024 threads */
        const int B = rep == 2 ? 1100 : rep ? 300 : 40;
        int *lens = xmalloc((size_t)B * sizeof(int));
        for (int b = 0; b < B; b++) {
            int r = mla_test_rand_int(0, 9);
            lens[b] = r == 0 ? 0 : r < 8 || rep == 2 ? mla_test_rand_int(1, 200) : mla_test_rand_int(1000, 6000);
        }
        if (rep == 2) { /* two long ones, ~35 and ~26 splits: heavy requests (merged by the
                         * combine's worker CTAs) listed by the scheduler's multi-pass path */
            lens[5] = 40000;
            lens[B - 3] = 30000;
        }
        gdecode_case c = base_case(B, rep ? 1 : 2, 16, 64, MLA_DTYPE_FP8_E4M3, lens);
        run_gpu_decode_case(&c, rep == 2 ? "uneven batch 1100" : rep ? "uneven batch 300" : "uneven batch 40 q_len 2");
        if (rep == 1) { /* 32 rows from 96 requests, no host index check: the fp8 32-row
                         * seesaw by the batch rule */
            c = base_case(B, 1, 32, 32, MLA_DTYPE_FP8_E4M3, lens);
            run_gpu_decode_case(&c, "uneven batch 300 fp8 H32");
        }
        if (rep == 2) {
            free(lens);
            break;
        }
        c = base_case(B, 1, rep ? 64 : 32, 32, MLA_DTYPE_BF16, lens);
        c.with_lse = rep;
        run_gpu_decode_case(&c, rep ? "uneven batch 300 bf16 H64" : "uneven batch 40 bf16 H32");
        free(lens);
    }
}

TEST(gpu_decode_mid_batches)
{
    /* Batches of 18-37 requests on 264 parts expect 8-15 splits per request: the combine's
     * narrow shape with two rounds of splits (src/cuda/common/combine.cu). */
    static const int batches[] = {24, 32};
    for (int i = 0; i < 2; i++) {
        const int B = batches[i];
        int *lens = xmalloc((size_t)B * sizeof(int));
        for (int b = 0; b < B; b++) lens[b] = mla_test_rand_int(1500, 4200);
        gdecode_case c = base_case(B, 1, 16, 64, MLA_DTYPE_FP8_E4M3, lens);
        c.with_lse = i;
        run_gpu_decode_case(&c, i ? "batch 32 fp8 H16" : "batch 24 fp8 H16");
        c = base_case(B, 1, 16, 64, MLA_DTYPE_BF16, lens);
        c.with_lse = !i;
        run_gpu_decode_case(&c, i ? "batch 32 bf16 H16" : "batch 24 bf16 H16");
        free(lens);
    }
}

TEST(gpu_decode_uniform_batches)
{
    /* Every request of a batch the same length: by default (MLA_DECODE_ALIGN unset or 1; gpu-check
     * part 5 runs these with 0, the even split) the scheduler gives
     * each part whole requests when that costs at most 1/16 more than the even split
     * (decode_schedule.cu, uniform_tau), otherwise they are split as usual. On 132 SMs: 64 x
     * 2000 keys at 128 rows (66 parts: 34 units per request against an even 33) and 256 x 2000
     * at 16 rows (264 parts) align; 40 requests do not (34 against 21). */
    static int lens64[64], lens256[256];
    for (int b = 0; b < 64; b++) lens64[b] = 2000;
    for (int b = 0; b < 256; b++) lens256[b] = 2000;
    gdecode_case c = base_case(64, 1, 128, 64, MLA_DTYPE_FP8_E4M3, lens64);
    run_gpu_decode_case(&c, "uniform 64 x 2000 fp8 H128");
    c.q_dtype = MLA_DTYPE_FP8_E4M3;
    c.fp8_math = 1;
    c.with_lse = 0;
    run_gpu_decode_case(&c, "uniform 64 x 2000 fp8 q fp8 math H128");
    c = base_case(64, 2, 64, 32, MLA_DTYPE_BF16, lens64);
    run_gpu_decode_case(&c, "uniform 64 x 2000 bf16 H64 q_len 2");
    c = base_case(256, 1, 16, 64, MLA_DTYPE_FP8_E4M3, lens256);
    run_gpu_decode_case(&c, "uniform 256 x 2000 fp8 H16");
    c = base_case(256, 2, 16, 64, MLA_DTYPE_FP8_E4M3, lens256); /* 32 rows: the fp8 seesaw */
    c.with_lse = 0;
    run_gpu_decode_case(&c, "uniform 256 x 2000 fp8 H16 q_len 2");
    c = base_case(40, 1, 128, 64, MLA_DTYPE_FP8_E4M3, lens64);
    run_gpu_decode_case(&c, "uniform 40 x 2000 fp8 H128 (split as usual)");
}

TEST(gpu_decode_one_long_among_short)
{
    /* One long request among 63 short ones (the uneven case, scaled down): the long
     * one is split over most of the 264 parts, so the combine's narrow shape (chosen from the
     * batch: ~5 splits expected) merges well over 100 splits in rounds, while the short ones
     * take one or two parts each and share parts with each other and with the long one. */
    const int B = 64;
    int *lens = xmalloc((size_t)B * sizeof(int));
    for (int b = 0; b < B; b++) lens[b] = mla_test_rand_int(800, 1200);
    lens[mla_test_rand_int(0, B - 1)] = mla_test_rand_int(30000, 40000);
    gdecode_case c = base_case(B, 1, 16, 64, MLA_DTYPE_FP8_E4M3, lens);
    run_gpu_decode_case(&c, "one long among 63 short fp8 H16");
    free(lens);
}

TEST(gpu_decode_heavy_requests_across_shapes)
{
    /* Two requests of many splits (~60-90 of the 264 parts) among 48 short ones: the combine's
     * worker CTAs merge them, one item per (request, query row, column chunk) with the whole
     * CTA. The worker CTA has the narrow shape's block: 1, 2 or 4 warps for 1-4 query rows
     * (3 rows round up to 4, one warp idle), 8 warps above; bf16 caches give float32
     * partials, fp8 caches with H * q_len <= 16 float16 ones. */
    static const struct { int heads, q_len, bf16; } shapes[] = {
        {1, 1, 0}, {3, 1, 1}, {2, 2, 0}, {16, 1, 1}, {32, 2, 0},
    };
    const int B = 50;
    int *lens = xmalloc((size_t)B * sizeof(int));
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        for (int b = 0; b < B; b++) lens[b] = mla_test_rand_int(200, 1200);
        lens[mla_test_rand_int(0, 24)] = mla_test_rand_int(28000, 32000);
        lens[mla_test_rand_int(25, B - 1)] = mla_test_rand_int(18000, 22000);
        gdecode_case c = base_case(B, shapes[k].q_len, shapes[k].heads, 64,
                                   shapes[k].bf16 ? MLA_DTYPE_BF16 : MLA_DTYPE_FP8_E4M3, lens);
        c.with_lse = k != 2;
        char label[96];
        snprintf(label, sizeof label, "heavy requests H%d q_len %d %s", shapes[k].heads, shapes[k].q_len,
                 shapes[k].bf16 ? "bf16" : "fp8");
        run_gpu_decode_case(&c, label);
    }
    free(lens);
}

TEST(gpu_decode_growing_scores)
{
    /* One row per request whose maximum grows along the sequence (oracle.h,
     * oracle_plant_growing_scores: steps of 3 to 13 in log2 units): every kernel's online
     * softmax rescales mid-request, with jumps below and above 2^8 (the swap kernel's lazy
     * reference takes both branches), and the split parts of one request see different
     * maxima, so the combine merges partials whose LSEs differ by up to ~30. */
    static const int lens[] = {4097, 1000, 130, 9000, 64, 777};
    const mla_dtype F8 = MLA_DTYPE_FP8_E4M3, B16 = MLA_DTYPE_BF16;
    const struct { int heads, q_len; mla_dtype kv, q; int fp8_math; } k[] = {
        {16, 1, F8, B16, 0}, {16, 1, B16, B16, 0}, {32, 1, F8, B16, 0}, {16, 2, F8, F8, 0},
        {8, 2, B16, B16, 0}, {16, 4, F8, B16, 0}, {64, 1, F8, B16, 0}, {128, 1, F8, B16, 0},
        {128, 1, B16, B16, 0}, {128, 1, F8, F8, 1},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        gdecode_case c = base_case(6, k[i].q_len, k[i].heads, 64, k[i].kv, lens);
        c.q_dtype = k[i].q;
        c.fp8_math = k[i].fp8_math;
        c.grow_scores = 1;
        char label[128];
        snprintf(label, sizeof label, "growing scores %s cache %s q H %d q_len %d%s", mla_dtype_name(c.kv_dtype),
                 mla_dtype_name(c.q_dtype), c.heads, c.q_len, c.fp8_math ? " fp8 math" : "");
        run_gpu_decode_case(&c, label);
    }
    /* 32 rows with an fp8 cache from 96 requests, no host index check: the seesaw
     * (decode_fp8_seesaw32.cuh) by the batch rule */
    int many[100];
    for (int b = 0; b < 100; b++) many[b] = mla_test_rand_int(100, 1600);
    gdecode_case c = base_case(100, 1, 32, 64, MLA_DTYPE_FP8_E4M3, many);
    c.grow_scores = 1;
    run_gpu_decode_case(&c, "growing scores fp8 cache H 32 batch 100");
}

TEST(gpu_decode_rows32_by_total_keys)
{
    /* fp8-cache rows 17..32 pick their kernel by the keys of the whole call when the host
     * knows them (decode.cu fp8_seesaw32_auto; the index check on, so the backend sums
     * seq_lens): 40 requests of 8.2k-8.4k keys (>= 320k in all) take the 32-row seesaw with its
     * lazy softmax, with a bf16 and an fp8 query (S^T in e4m3 wgmma), where the batch rule
     * would take head blocks; 120 short requests take two 16-row head blocks of the swap
     * kernel, where the batch rule would take the seesaw. */
    int lens[120];
    for (int b = 0; b < 40; b++) lens[b] = mla_test_rand_int(8200, 8400);
    for (int q8 = 0; q8 < 2; q8++) {
        gdecode_case c = base_case(40, 1, 32, 64, MLA_DTYPE_FP8_E4M3, lens);
        c.index_check = 1;
        if (q8) c.q_dtype = MLA_DTYPE_FP8_E4M3;
        run_gpu_decode_case(&c, q8 ? "320k+ keys H32 fp8 q" : "320k+ keys H32 bf16 q");
    }
    for (int b = 0; b < 120; b++) lens[b] = mla_test_rand_int(1, 1500);
    gdecode_case c = base_case(120, 1, 32, 32, MLA_DTYPE_FP8_E4M3, lens);
    c.index_check = 1;
    c.q_dtype = MLA_DTYPE_FP8_E4M3;
    run_gpu_decode_case(&c, "120 short requests H32 fp8 q");
}

TEST(gpu_decode_rows32_pick_on_device)
{
    /* MLA_DECODE_FP8_ROWS32=pick with the total left on the device (index check off): both the
     * head-block grid and the 32-row seesaw's grid are launched, and each CTA reads the call's
     * key blocks from the schedule; only the rule's side may write. 40 requests of 8.2k-8.4k
     * keys (>= 320k: the seesaw's side), with a bf16 and an fp8 query; 120 short requests and
     * one of 9k (99k keys: the head blocks' side, though batch x 9k passes the rule, so the
     * host cannot settle it); q_len 2 H16 over 24 requests of 14k-15k (rows 32, causal, the
     * seesaw's side). Outputs are poisoned before each run: a side that wrote nothing fails.
     * Which side ran: the output is bit-identical to that form forced (same schedule, same
     * kernel) and differs from the other form forced. */
    static const char seesaw[] = "MLA_DECODE_FP8_ROWS32=lazy8", heads[] = "MLA_DECODE_FP8_ROWS32=heads";
    form_switches fs;
    CHECK(form_parse_apply("MLA_DECODE_FP8_ROWS32=pick", &fs));
    int lens[121];
    for (int b = 0; b < 40; b++) lens[b] = mla_test_rand_int(8200, 8400);
    for (int q8 = 0; q8 < 2; q8++) {
        gdecode_case c = base_case(40, 1, 32, 64, MLA_DTYPE_FP8_E4M3, lens);
        if (q8) c.q_dtype = MLA_DTYPE_FP8_E4M3;
        c.same_as_form = seesaw;
        c.differs_from_form = heads;
        run_gpu_decode_case(&c, q8 ? "pick: 320k+ keys H32 fp8 q" : "pick: 320k+ keys H32 bf16 q");
    }
    for (int b = 0; b < 120; b++) lens[b] = mla_test_rand_int(1, 1500);
    lens[120] = 9000;
    gdecode_case c = base_case(121, 1, 32, 64, MLA_DTYPE_FP8_E4M3, lens);
    c.q_dtype = MLA_DTYPE_FP8_E4M3;
    c.same_as_form = heads;
    c.differs_from_form = seesaw;
    run_gpu_decode_case(&c, "pick: 121 requests, 99k keys H32 fp8 q");
    for (int b = 0; b < 24; b++) lens[b] = mla_test_rand_int(14000, 15000);
    c = base_case(24, 2, 16, 32, MLA_DTYPE_FP8_E4M3, lens);
    c.q_dtype = MLA_DTYPE_FP8_E4M3;
    c.same_as_form = seesaw;
    c.differs_from_form = heads;
    run_gpu_decode_case(&c, "pick: 24 requests q_len 2 H16 page 32");
    form_restore(&fs);
}

TEST(gpu_decode_full_range_cache_values)
{
    /* Cache values over the whole e4m3 range (+-448): the fp8-cache kernels may keep split
     * partials (O / l, bounded by the largest |V|) in float16, whose range this spans. The
     * bf16 cache goes past float16's range (2e5 > 65504): its partials must stay float32. A
     * 32k request among short ones is split over many parts (wide combine); 40 short requests
     * split over few (narrow combine). The query is scaled down so that the scores' spread
     * stays ~16 in log2 units (sigma = 8 q_amp kv_amp * bmm1 * log2 e, bmm1 = 0.0722 * 0.375
     * for fp8, 0.0722 for bf16): a few keys dominate each row, so |O / l| reaches a large
     * share of kv_amp, while near-ties stay rare and the float32 score sums stay small
     * (with q in [-2, 2] the bf16 sums reach ~1e7, where float32 rounding moves a score by
     * ~0.3 in log2 units and a near-tie would fail the element check). */
    static const int lens_long[] = {32768, 4097, 1};
    static const int lens_one[] = {32768};
    int lens_many[40];
    for (int b = 0; b < 40; b++) lens_many[b] = mla_test_rand_int(1, 3000);
    for (int kv = 0; kv < 2; kv++) {
        const mla_dtype dt = kv ? MLA_DTYPE_BF16 : MLA_DTYPE_FP8_E4M3;
        const float amp = kv ? 2e5f : 448.0f, q_amp = kv ? 1e-4f : 0.11f;
        gdecode_case c = base_case(3, 1, 16, 64, dt, lens_long);
        c.kv_amp = amp;
        c.q_amp = q_amp;
        run_gpu_decode_case(&c, kv ? "full range bf16 H16 long" : "full range fp8 H16 long");
        c = base_case(40, 1, 16, 64, dt, lens_many);
        c.kv_amp = amp;
        c.q_amp = q_amp;
        run_gpu_decode_case(&c, kv ? "full range bf16 H16 batch 40" : "full range fp8 H16 batch 40");
        c = base_case(1, 1, 128, 64, dt, lens_one);
        c.kv_amp = amp;
        c.q_amp = q_amp;
        run_gpu_decode_case(&c, kv ? "full range bf16 H128 batch 1" : "full range fp8 H128 batch 1");
    }
}

TEST(gpu_decode_fp8_query)
{
    static const int lens[] = {700, 64, 1, 2000};
    for (int kv = 0; kv < 2; kv++) {
        gdecode_case c = base_case(4, 2, 128, 64, kv ? MLA_DTYPE_BF16 : MLA_DTYPE_FP8_E4M3, lens);
        c.q_dtype = MLA_DTYPE_FP8_E4M3;
        run_gpu_decode_case(&c, kv ? "fp8 q bf16 cache" : "fp8 q fp8 cache");
        c = base_case(4, 1, 16, 32, kv ? MLA_DTYPE_BF16 : MLA_DTYPE_FP8_E4M3, lens);
        c.q_dtype = MLA_DTYPE_FP8_E4M3;
        run_gpu_decode_case(&c, kv ? "fp8 q bf16 cache H16" : "fp8 q fp8 cache H16");
    }
    /* H * q_len <= 16 with an fp8 cache: the v2 kernel, whose fp8-query form
     * (MLA_DECODE_V2_CONV=q8) takes Q and K into e4m3 MMAs as they are. Padding rows (1, 8
     * and 16 rows), q_len 2 with the causal mask, and a request split over many parts. */
    static const int lens_long[] = {32768, 4097, 63, 65};
    /* and 17..32 rows (two head blocks, or the 32-row seesaw under MLA_DECODE_FP8_ROWS32), on
     * shorter requests: these tests also run under the sanitizers */
    static const int lens_mid[] = {6000, 2049, 63, 65};
    static const int hl[][2] = {{1, 1}, {4, 2}, {8, 2}, {16, 1}, {16, 2}, {32, 1}, {24, 1}};
    for (int i = 0; i < 7; i++) {
        gdecode_case c = base_case(4, hl[i][1], hl[i][0], 64, MLA_DTYPE_FP8_E4M3, i < 4 ? lens_long : lens_mid);
        c.q_dtype = MLA_DTYPE_FP8_E4M3;
        c.with_lse = i % 2;
        char label[96];
        snprintf(label, sizeof label, "fp8 q fp8 cache H %d q_len %d long", hl[i][0], hl[i][1]);
        run_gpu_decode_case(&c, label);
    }
}

/* fp8 query with an fp8 cache at H * q_len >= 64: the rows the fp8-math kernel takes under
 * MLA_DECODE_VARIANT=v10 (the default kernel otherwise): heads and q_len, pages 32 and 64,
 * block and page edges, a long request split over many parts, no causal mask, a bad page. */
TEST(gpu_decode_fp8_query_wide_rows)
{
    static const int lens[] = {1, 63, 64, 65, 0, 4097, 130};
    static const int lens_long[] = {32768, 65, 1000};
    static const int hl[][2] = {{128, 1}, {64, 1}, {128, 2}, {16, 4}, {64, 8}, {96, 1}};
    static const int pages[] = {32, 64};
    for (size_t i = 0; i < sizeof hl / sizeof hl[0]; i++)
        for (int p = 0; p < 2; p++) {
            gdecode_case c = base_case(7, hl[i][1], hl[i][0], pages[p], MLA_DTYPE_FP8_E4M3, lens);
            c.q_dtype = MLA_DTYPE_FP8_E4M3;
            c.with_lse = (int)(i + p) % 2 == 0;
            c.no_causal = i == 4 && p == 1;
            char label[128];
            snprintf(label, sizeof label, "fp8 q fp8 cache H %d q_len %d page %d%s", c.heads, c.q_len, c.page,
                     c.no_causal ? " no causal" : "");
            run_gpu_decode_case(&c, label);
        }
    gdecode_case c = base_case(3, 1, 128, 64, MLA_DTYPE_FP8_E4M3, lens_long);
    c.q_dtype = MLA_DTYPE_FP8_E4M3;
    run_gpu_decode_case(&c, "fp8 q fp8 cache H 128 long");
    c = base_case(3, 2, 64, 32, MLA_DTYPE_FP8_E4M3, lens_long);
    c.q_dtype = MLA_DTYPE_FP8_E4M3;
    c.bad_page_req = 1;
    c.expect_flags = MLA_DEVERR_PAGE_INDEX;
    run_gpu_decode_case(&c, "fp8 q fp8 cache H 64 q_len 2 bad page");
    /* Many short requests per part (~9 blocks per CTA on 132 SMs): request ends inside a
     * CTA's walk, with the K ring and the block pairs carried across them. */
    const int B = 256;
    int *many = xmalloc((size_t)B * sizeof(int));
    for (int b = 0; b < B; b++) many[b] = mla_test_rand_int(1, 260);
    c = base_case(B, 2, 64, 32, MLA_DTYPE_FP8_E4M3, many);
    c.q_dtype = MLA_DTYPE_FP8_E4M3;
    run_gpu_decode_case(&c, "fp8 q fp8 cache H 64 q_len 2, 256 short requests");
    free(many);
}

/* mla_config.decode_fp8_math: taken by fp8-query, fp8-cache calls with H * q_len >= 64 (the
 * e4m3-P bound applies there, and the output must differ from the same inputs without it: the
 * switch reaches the kernel), ignored elsewhere (bit-identical outputs). */
TEST(gpu_decode_fp8_math_switch)
{
    static const int lens[] = {1, 63, 64, 65, 0, 4097, 130};
    static const struct { int heads, q_len, page; mla_dtype q, kv; } shapes[] = {
        {128, 1, 64, MLA_DTYPE_FP8_E4M3, MLA_DTYPE_FP8_E4M3}, /* fp8 math */
        {16, 4, 32, MLA_DTYPE_FP8_E4M3, MLA_DTYPE_FP8_E4M3},  /* fp8 math, 64 folded rows */
        {64, 2, 64, MLA_DTYPE_FP8_E4M3, MLA_DTYPE_FP8_E4M3},  /* fp8 math */
        {16, 1, 64, MLA_DTYPE_FP8_E4M3, MLA_DTYPE_FP8_E4M3},  /* 16 rows: unchanged */
        {32, 1, 32, MLA_DTYPE_FP8_E4M3, MLA_DTYPE_FP8_E4M3},  /* 32 rows: unchanged */
        {128, 1, 64, MLA_DTYPE_BF16, MLA_DTYPE_FP8_E4M3},     /* bf16 query: unchanged */
        {128, 2, 64, MLA_DTYPE_FP8_E4M3, MLA_DTYPE_BF16},     /* bf16 cache: unchanged */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        gdecode_case c = base_case(7, shapes[i].q_len, shapes[i].heads, shapes[i].page, shapes[i].kv, lens);
        c.q_dtype = shapes[i].q;
        c.fp8_math = 1;
        c.check_switch = 1;
        c.with_lse = (int)i % 2 == 0;
        char label[128];
        snprintf(label, sizeof label, "decode_fp8_math 1: %s q %s cache H %d q_len %d", mla_dtype_name(c.q_dtype),
                 mla_dtype_name(c.kv_dtype), c.heads, c.q_len);
        run_gpu_decode_case(&c, label);
    }
}

/* A request's pages adjacent in the cache: v9 and v10 then move a 64-key block of two 32-key
 * pages as one 64-row box per column block (with shuffled pages that path is almost never
 * taken at page 32); v2 (per-half boxes at page 32) and v7 (bulk copies) run the same layout
 * for comparison. Lengths end inside the first and the second page of a block. */
TEST(gpu_decode_adjacent_pages)
{
    static const int lens[] = {1, 31, 33, 63, 64, 65, 4097, 130};
    static const struct { int heads, q_len, page; mla_dtype q, kv; int fp8_math; } shapes[] = {
        {16, 1, 32, MLA_DTYPE_BF16, MLA_DTYPE_FP8_E4M3, 0},      /* v2 */
        {128, 1, 32, MLA_DTYPE_FP8_E4M3, MLA_DTYPE_FP8_E4M3, 1}, /* v10 */
        {128, 1, 64, MLA_DTYPE_FP8_E4M3, MLA_DTYPE_FP8_E4M3, 1}, /* v10 */
        {64, 2, 32, MLA_DTYPE_BF16, MLA_DTYPE_BF16, 0},          /* v9 */
        {128, 1, 64, MLA_DTYPE_BF16, MLA_DTYPE_BF16, 0},         /* v9 */
        {128, 1, 32, MLA_DTYPE_BF16, MLA_DTYPE_FP8_E4M3, 0},     /* v7 */
        {16, 1, 32, MLA_DTYPE_BF16, MLA_DTYPE_BF16, 0},          /* bf16 swap, N = 16 */
        {32, 1, 64, MLA_DTYPE_BF16, MLA_DTYPE_BF16, 0},          /* bf16 swap, N = 32 */
        {32, 1, 32, MLA_DTYPE_BF16, MLA_DTYPE_FP8_E4M3, 0},      /* fp8, 32 rows */
        {16, 2, 64, MLA_DTYPE_FP8_E4M3, MLA_DTYPE_FP8_E4M3, 0},  /* fp8, 32 rows, fp8 query */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        gdecode_case c = base_case(8, shapes[i].q_len, shapes[i].heads, shapes[i].page, shapes[i].kv, lens);
        c.q_dtype = shapes[i].q;
        c.fp8_math = shapes[i].fp8_math;
        c.in_order_pages = 1;
        c.with_lse = (int)i % 2;
        char label[128];
        snprintf(label, sizeof label, "adjacent pages: %s q %s cache H %d q_len %d page %d", mla_dtype_name(c.q_dtype),
                 mla_dtype_name(c.kv_dtype), c.heads, c.q_len, c.page);
        run_gpu_decode_case(&c, label);
    }
}

TEST(gpu_decode_no_causal_mask)
{
    static const int lens[] = {3, 100, 1000};
    gdecode_case c = base_case(3, 4, 16, 64, MLA_DTYPE_FP8_E4M3, lens);
    c.no_causal = 1;
    run_gpu_decode_case(&c, "no causal mask fp8");
    c = base_case(3, 8, 64, 32, MLA_DTYPE_BF16, lens);
    c.no_causal = 1;
    run_gpu_decode_case(&c, "no causal mask bf16");
    c = base_case(3, 2, 8, 32, MLA_DTYPE_FP8_E4M3, lens); /* 16 rows: the v2 fp8 kernel */
    c.no_causal = 1;
    run_gpu_decode_case(&c, "no causal mask fp8 16 rows");
    c = base_case(3, 2, 16, 32, MLA_DTYPE_FP8_E4M3, lens); /* 32 rows: two swap head blocks */
    c.no_causal = 1;
    run_gpu_decode_case(&c, "no causal mask fp8 32 rows");
    c = base_case(3, 2, 16, 64, MLA_DTYPE_BF16, lens); /* 32 rows: the bf16 swap kernel, N = 32 */
    c.no_causal = 1;
    run_gpu_decode_case(&c, "no causal mask bf16 32 rows");
    c = base_case(3, 4, 3, 32, MLA_DTYPE_BF16, lens); /* 12 rows: the bf16 swap kernel, N = 16 */
    c.no_causal = 1;
    run_gpu_decode_case(&c, "no causal mask bf16 12 rows");
}

TEST(gpu_decode_bad_page_index_is_skipped_and_flagged)
{
    /* 16 heads: the narrow kernels; 32: the 32-row kernels; 128: the wgmma kernels (each loader
     * masks pages itself). */
    static const int lens[] = {300, 70, 5};
    static const int heads_list[] = {16, 32, 128}; /* 32: the fp8 32-row kernels */
    for (size_t hi = 0; hi < sizeof heads_list / sizeof heads_list[0]; hi++)
        for (int kv = 0; kv < 2; kv++)
            for (int page = 32; page <= 64; page *= 2) {
                const int heads = heads_list[hi];
                gdecode_case c = base_case(3, 1, heads, page, kv ? MLA_DTYPE_BF16 : MLA_DTYPE_FP8_E4M3, lens);
                c.bad_page_req = 0;
                c.expect_flags = MLA_DEVERR_PAGE_INDEX;
                char label[64];
                snprintf(label, sizeof label, "bad page %s H%d page %d", kv ? "bf16" : "fp8", heads, page);
                run_gpu_decode_case(&c, label);
            }
}

TEST(gpu_decode_seq_len_over_capacity_is_clamped_and_flagged)
{
    static const int lens[] = {200, 70};
    gdecode_case c = base_case(2, 2, 16, 64, MLA_DTYPE_FP8_E4M3, lens);
    c.over_capacity_req = 1;
    c.expect_flags = MLA_DEVERR_SEQ_LEN;
    run_gpu_decode_case(&c, "seq over capacity");
}

TEST(gpu_decode_caller_workspace)
{
    static const int lens[] = {5000, 10, 300, 0, 64};
    gdecode_case c = base_case(5, 3, 32, 64, MLA_DTYPE_FP8_E4M3, lens);
    c.own_workspace = 1;
    run_gpu_decode_case(&c, "caller workspace q_len 3 H 32");
    c = base_case(5, 1, 128, 32, MLA_DTYPE_BF16, lens);
    c.own_workspace = 1;
    run_gpu_decode_case(&c, "caller workspace H 128");
}

/* The CPU backend's twin of device decode args `a` (bf16 query, page-64 cache, no LSE): the
 * same shapes and scales over host copies, no workspace, stream or plan. */
static mla_decode_args host_twin(const mla_decode_args *a, void *q, void *cache, mla_dtype kv,
                                 int64_t num_pages, int32_t *table, int32_t *seq, uint16_t *out)
{
    const int64_t B = a->q.shape[0], L = a->q.shape[1], H = a->q.shape[2];
    mla_decode_args h = *a;
    h.q = host_tensor(q, MLA_DTYPE_BF16, 4, B, L, H, 576);
    h.kv_cache = host_tensor(cache, kv, 3, num_pages, 64, 576, 0);
    h.block_table = host_tensor(table, MLA_DTYPE_I32, 2, B, a->block_table.shape[1], 0, 0);
    h.seq_lens = host_tensor(seq, MLA_DTYPE_I32, 1, B, 0, 0, 0);
    h.out = host_tensor(out, MLA_DTYPE_BF16, 4, B, L, H, 512);
    memset(&h.lse, 0, sizeof h.lse);
    h.workspace = NULL;
    h.workspace_bytes = 0;
    h.stream = NULL;
    h.plan = NULL;
    return h;
}

/* The "hopper" backend for case c0's configuration and its CPU twin; 0 (and none) when
 * either cannot be created. */
static int gpu_cpu_pair(const gdecode_case *c0, mla_backend **gpu, mla_backend **cpu)
{
    mla_config cfg, ccfg;
    config_for(&cfg, c0, MLA_DEVICE_CUDA);
    config_for(&ccfg, c0, MLA_DEVICE_CPU);
    *gpu = *cpu = NULL;
    CHECK_STATUS(mla_backend_create("hopper", &cfg, gpu), MLA_OK);
    CHECK_STATUS(mla_backend_create("cpu", &ccfg, cpu), MLA_OK);
    if (*gpu && *cpu) return 1;
    mla_backend_destroy(*gpu);
    mla_backend_destroy(*cpu);
    return 0;
}

/* Runs the CPU twin of device args `a` over host copies (see host_twin) and compares the
 * device's output `out` (downloaded) with it. */
static void check_vs_cpu(mla_backend *cpu, const char *label, const mla_decode_args *a, void *q, void *cache,
                         mla_dtype kv, int64_t num_pages, int32_t *table, int32_t *seq, const uint16_t *out)
{
    const int64_t n = a->out.shape[0] * a->out.shape[1] * a->out.shape[2] * a->out.shape[3];
    uint16_t *ref_out = xmalloc((size_t)n * 2);
    double *ref = xmalloc((size_t)n * sizeof(double));
    mla_decode_args h = host_twin(a, q, cache, kv, num_pages, table, seq, ref_out);
    CHECK_STATUS(mla_decode(cpu, &h), MLA_OK);
    for (int64_t i = 0; i < n; i++) ref[i] = mla_bf16_to_float(ref_out[i]);
    oracle_report r = oracle_compare_bf16(out, ref, n, out_tol);
    report(label, "out", &r);
    free(ref_out);
    free(ref);
}

/* A random cache of num_pages 64-key pages (values in [-1, 1]) and a random bf16 query
 * [B, L, H, 576] (in [-2, 2]), on the host and uploaded. */
typedef struct rand_inputs {
    uint8_t *cache;
    uint16_t *q;
    void *d_cache, *d_q;
} rand_inputs;
static rand_inputs rand_inputs_make(mla_dtype kv, int64_t num_pages, int64_t B, int L, int H)
{
    const size_t cache_bytes = (size_t)num_pages * 64 * 576 * (kv == MLA_DTYPE_FP8_E4M3 ? 1 : 2);
    const int64_t q_elems = B * L * H * 576;
    rand_inputs in;
    in.cache = xmalloc(cache_bytes);
    oracle_fill(kv, in.cache, NULL, num_pages * 64 * 576, -1.0f, 1.0f);
    in.q = xmalloc((size_t)q_elems * 2);
    oracle_fill(MLA_DTYPE_BF16, in.q, NULL, q_elems, -2.0f, 2.0f);
    in.d_cache = to_device(in.cache, cache_bytes);
    in.d_q = to_device(in.q, (size_t)q_elems * 2);
    return in;
}
static void rand_inputs_free(rand_inputs *in)
{
    cudaFree(in->d_cache);
    cudaFree(in->d_q);
    free(in->cache);
    free(in->q);
}

/* Device decode args over those inputs: a [B, max_pages] block table, seq_lens and a
 * [B, L, H, 512] output at the given device pointers; no LSE, workspace, stream or plan. */
static mla_decode_args dev_decode_args(const rand_inputs *in, mla_dtype kv, int64_t num_pages, int64_t B, int L,
                                       int H, int max_pages, void *d_table, void *d_seq, void *d_out)
{
    mla_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = dev_tensor(in->d_q, MLA_DTYPE_BF16, 4, B, L, H, 576);
    a.kv_cache = dev_tensor(in->d_cache, kv, 3, num_pages, 64, 576, 0);
    a.block_table = dev_tensor(d_table, MLA_DTYPE_I32, 2, B, max_pages, 0, 0);
    a.seq_lens = dev_tensor(d_seq, MLA_DTYPE_I32, 1, B, 0, 0, 0);
    a.out = dev_tensor(d_out, MLA_DTYPE_BF16, 4, B, L, H, 512);
    return a;
}

TEST(gpu_decode_batch_above_grid_limit)
{
    /* 70000 requests: more than CUDA's 65535 on a grid's y dimension, where the narrow
     * combine puts the request, so it launches in chunks. Requests of up to 3 key blocks
     * (some split over two parts, also past request 65535) share a small page pool; one
     * head keeps the buffers small. Checked against the CPU backend. */
    const int B = 70000, L = 1, H = 1, P = 64, max_pages = 3, num_pages = 64;
    const gdecode_case c0 = base_case(B, L, H, P, MLA_DTYPE_FP8_E4M3, NULL);
    mla_backend *gpu, *cpu;
    if (!gpu_cpu_pair(&c0, &gpu, &cpu)) return;
    const int64_t out_elems = (int64_t)B * L * H * 512;
    rand_inputs in = rand_inputs_make(MLA_DTYPE_FP8_E4M3, num_pages, B, L, H);
    uint16_t *out = xmalloc((size_t)out_elems * 2);
    int32_t *table = xmalloc((size_t)B * max_pages * 4), *seq = xmalloc((size_t)B * 4);
    for (int b = 0; b < B; b++) {
        seq[b] = mla_test_rand_int(1, max_pages * P);
        for (int j = 0; j < max_pages; j++) table[(size_t)b * max_pages + j] = mla_test_rand_int(0, num_pages - 1);
    }
    void *d_table = to_device(table, (size_t)B * max_pages * 4), *d_seq = to_device(seq, (size_t)B * 4);
    void *d_out = to_device(NULL, (size_t)out_elems * 2);
    cudaMemset(d_out, 0xff, (size_t)out_elems * 2);
    mla_decode_args a = dev_decode_args(&in, MLA_DTYPE_FP8_E4M3, num_pages, B, L, H, max_pages, d_table, d_seq, d_out);
    CHECK_STATUS(mla_decode(gpu, &a), MLA_OK);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    cudaMemcpy(out, d_out, (size_t)out_elems * 2, cudaMemcpyDeviceToHost);
    check_vs_cpu(cpu, "batch 70000", &a, in.q, in.cache, MLA_DTYPE_FP8_E4M3, num_pages, table, seq, out);
    uint32_t flags = 0;
    CHECK_STATUS(mla_backend_device_errors(gpu, &flags), MLA_OK);
    CHECK_MSG(flags == 0, "device error flags 0x%x", flags);
    rand_inputs_free(&in);
    cudaFree(d_table); cudaFree(d_seq); cudaFree(d_out);
    free(out); free(table); free(seq);
    mla_backend_destroy(gpu);
    mla_backend_destroy(cpu);
}

/* Captured once into a CUDA graph, replayed with new seq_lens and block tables written into
 * the same buffers: the results must follow the new data (scheduling happens on the GPU). */
TEST(gpu_decode_cuda_graph_replay)
{
    const int B = 4, L = 2, H = 16, P = 64, max_pages = 40, num_pages = 200;
    const gdecode_case c0 = base_case(B, L, H, P, MLA_DTYPE_FP8_E4M3, NULL);
    mla_backend *gpu, *cpu;
    if (!gpu_cpu_pair(&c0, &gpu, &cpu)) return;
    const int64_t out_elems = (int64_t)B * L * H * 512;
    rand_inputs in = rand_inputs_make(MLA_DTYPE_FP8_E4M3, num_pages, B, L, H);
    int32_t table[4 * 40], seq[4];
    void *d_table = to_device(NULL, sizeof table), *d_seq = to_device(NULL, sizeof seq);
    void *d_out = to_device(NULL, (size_t)out_elems * 2), *d_ws = NULL;
    size_t ws = 0;
    CHECK_STATUS(mla_decode_workspace_size(gpu, B, L, &ws), MLA_OK);
    cudaMalloc(&d_ws, ws);
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    mla_decode_args a = dev_decode_args(&in, MLA_DTYPE_FP8_E4M3, num_pages, B, L, H, max_pages, d_table, d_seq, d_out);
    a.workspace = d_ws;
    a.workspace_bytes = ws;
    a.stream = stream;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
    CHECK_STATUS(mla_decode(gpu, &a), MLA_OK);
    CHECK(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
    CHECK(graph && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    uint16_t *out = xmalloc((size_t)out_elems * 2);
    for (int rep = 0; rep < 3 && exec; rep++) {
        for (int b = 0; b < B; b++) {
            seq[b] = mla_test_rand_int(rep == 1 ? 0 : 1, rep == 2 ? max_pages * P : 600);
            for (int j = 0; j < max_pages; j++) table[b * max_pages + j] = mla_test_rand_int(0, num_pages - 1);
        }
        cudaMemcpy(d_table, table, sizeof table, cudaMemcpyHostToDevice);
        cudaMemcpy(d_seq, seq, sizeof seq, cudaMemcpyHostToDevice);
        cudaMemset(d_out, 0xff, (size_t)out_elems * 2);
        CHECK(cudaGraphLaunch(exec, stream) == cudaSuccess);
        CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
        cudaMemcpy(out, d_out, (size_t)out_elems * 2, cudaMemcpyDeviceToHost);
        check_vs_cpu(cpu, "graph replay", &a, in.q, in.cache, MLA_DTYPE_FP8_E4M3, num_pages, table, seq, out);
    }
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
    rand_inputs_free(&in);
    cudaFree(d_table); cudaFree(d_seq); cudaFree(d_out); cudaFree(d_ws);
    free(out);
    mla_backend_destroy(gpu);
    mla_backend_destroy(cpu);
}

/* One decode plan shared by three "layers" (different queries and caches, the same batch):
 * built eagerly and then inside a CUDA graph together with the layers' decodes, replayed with
 * new seq_lens. Every layer's output is checked against the CPU backend. Then, on a backend
 * that checks index contents, a call whose seq_lens differ from the plan's is refused. */
static void plan_layers_case(int H, int L, mla_dtype kv, const char *label)
{
    enum { NL = 3 };
    const int B = 6, P = 64, max_pages = 256, num_pages = 1200;
    const gdecode_case c0 = base_case(B, L, H, P, kv, NULL);
    mla_backend *gpu, *cpu;
    if (!gpu_cpu_pair(&c0, &gpu, &cpu)) return;
    const int64_t out_elems = (int64_t)B * L * H * 512;
    rand_inputs in[NL];
    void *d_out[NL];
    for (int l = 0; l < NL; l++) {
        in[l] = rand_inputs_make(kv, num_pages, B, L, H);
        d_out[l] = to_device(NULL, (size_t)out_elems * 2);
    }
    int32_t *table = xmalloc((size_t)B * max_pages * 4), seq[6];
    void *d_table = to_device(NULL, (size_t)B * max_pages * 4), *d_seq = to_device(NULL, sizeof seq);
    size_t ws = 0;
    CHECK_STATUS(mla_decode_workspace_size(gpu, B, L, &ws), MLA_OK);
    void *d_ws = to_device(NULL, ws);
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    mla_decode_plan *plan = NULL;
    CHECK_STATUS(mla_decode_plan_create(gpu, B, L, max_pages, &plan), MLA_OK);
    mla_tensor seq_t = dev_tensor(d_seq, MLA_DTYPE_I32, 1, B, 0, 0, 0);
    mla_decode_args a[NL];
    for (int l = 0; l < NL; l++) {
        a[l] = dev_decode_args(&in[l], kv, num_pages, B, L, H, max_pages, d_table, d_seq, d_out[l]);
        a[l].workspace = l < 2 ? d_ws : NULL; /* layer 2: the backend's cached workspace */
        a[l].workspace_bytes = l < 2 ? ws : 0;
        a[l].stream = stream;
        a[l].plan = plan;
    }
    uint16_t *out = xmalloc((size_t)out_elems * 2);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    for (int rep = 0; rep < 3; rep++) {
        /* rep 0: eager build + layers; rep 1 captures the same sequence into a graph and
         * launches it; rep 2 launches it again after new seq_lens and tables. */
        for (int b = 0; b < B; b++) {
            seq[b] = b == 1 ? 0 : b == 3 ? mla_test_rand_int(8000, max_pages * P) : mla_test_rand_int(1, 900);
            for (int j = 0; j < max_pages; j++) table[b * max_pages + j] = mla_test_rand_int(0, num_pages - 1);
        }
        cudaMemcpy(d_table, table, (size_t)B * max_pages * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(d_seq, seq, sizeof seq, cudaMemcpyHostToDevice);
        for (int l = 0; l < NL; l++) cudaMemset(d_out[l], 0xff, (size_t)out_elems * 2);
        if (rep == 0) {
            CHECK_STATUS(mla_decode_plan_build(plan, &seq_t, stream), MLA_OK);
            for (int l = 0; l < NL; l++) CHECK_STATUS(mla_decode(gpu, &a[l]), MLA_OK);
        } else {
            if (rep == 1) {
                CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
                CHECK_STATUS(mla_decode_plan_build(plan, &seq_t, stream), MLA_OK);
                for (int l = 0; l < NL; l++) CHECK_STATUS(mla_decode(gpu, &a[l]), MLA_OK);
                CHECK(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
                CHECK(graph && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
            }
            if (!exec) break;
            CHECK(cudaGraphLaunch(exec, stream) == cudaSuccess);
        }
        CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
        for (int l = 0; l < NL; l++) {
            cudaMemcpy(out, d_out[l], (size_t)out_elems * 2, cudaMemcpyDeviceToHost);
            char what[96];
            snprintf(what, sizeof what, "%s rep %d layer %d", label, rep, l);
            check_vs_cpu(cpu, what, &a[l], in[l].q, in[l].cache, kv, num_pages, table, seq, out);
        }
    }
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);

    /* With index checks on, a call whose seq_lens differ from the plan's is refused. */
    mla_config chk;
    config_for(&chk, &c0, MLA_DEVICE_CUDA);
    chk.skip_index_check = 0;
    mla_backend *checked = NULL;
    mla_decode_plan *plan2 = NULL;
    CHECK_STATUS(mla_backend_create("hopper", &chk, &checked), MLA_OK);
    if (checked) {
        CHECK_STATUS(mla_decode_plan_create(checked, B, L, max_pages, &plan2), MLA_OK);
        CHECK_STATUS(mla_decode_plan_build(plan2, &seq_t, stream), MLA_OK);
        mla_decode_args c = a[0];
        c.plan = plan2;
        CHECK_STATUS(mla_decode(checked, &c), MLA_OK);
        seq[0] += 1;
        cudaMemcpy(d_seq, seq, sizeof seq, cudaMemcpyHostToDevice);
        CHECK_STATUS(mla_decode(checked, &c), MLA_ERR_INVALID_ARGUMENT);
        CHECK_MSG(strstr(mla_last_error(), "differs from"), "message: %s", mla_last_error());
        c.plan = plan; /* another backend's plan */
        CHECK_STATUS(mla_decode(checked, &c), MLA_ERR_INVALID_ARGUMENT);
        CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
    }
    mla_decode_plan_destroy(plan2);
    mla_backend_destroy(checked);

    mla_decode_plan_destroy(plan);
    cudaStreamDestroy(stream);
    for (int l = 0; l < NL; l++) {
        rand_inputs_free(&in[l]);
        cudaFree(d_out[l]);
    }
    cudaFree(d_table); cudaFree(d_seq); cudaFree(d_ws);
    free(table); free(out);
    mla_backend_destroy(gpu);
    mla_backend_destroy(cpu);
}

TEST(gpu_decode_plan_shared_by_layers)
{
    plan_layers_case(16, 1, MLA_DTYPE_FP8_E4M3, "plan H16 fp8");   /* the v2 kernel */
    plan_layers_case(128, 2, MLA_DTYPE_BF16, "plan H128 q_len 2 bf16");
}

/* GPU prefill ("hopper") against the CPU reference backend ("cpu") through the public API, on
 * identical random inputs: ragged batches (lengths 1, 63, 64, 65, 1000, 8192 and random),
 * q shorter than kv, q longer than kv (rows with no visible key), empty requests, H in
 * {1, 16, 128}, causal on/off, LSE on/off, bf16 and fp8 e4m3 with per-tensor scales. Outputs
 * are poisoned with NaN before every run and every element is compared.
 *
 * Tolerances (|gpu - cpu| <= atol + rtol * |cpu|, NaN never passes), with vmax = max |V|:
 *   bf16: atol 1e-2 * vmax, rtol 1e-2; relative L2 error < 5e-3. The GPU rounds P to bf16
 *         (2^-9 relative) before P V and both sides round the output to bf16.
 *   fp8:  atol 4e-2 * vmax, rtol 4e-2; relative L2 error < 2.5e-2. The GPU rounds P to e4m3
 *         (3 mantissa bits) before the fp8 P V product; the CPU keeps P in float.
 *   LSE:  |gpu - cpu| <= 2e-3 + 1e-3 |cpu|, plus for fp8 2^-12 * softmax_scale * |q| * max |k|
 *         (Euclidean norms of the dequantized row and of the request's keys, per head): e4m3
 *         tensor cores keep fewer accumulator bits than float32 (about 14, DeepSeek-V3's
 *         report), so a logit's error scales with the size of its dot product, which Cauchy-
 *         Schwarz bounds, not with the LSE (peaky rows with an LSE near 0 have failed the
 *         plain bound by 1e-3); bf16 S is exact in fp32. Rows without visible keys must be
 *         exactly -inf with exactly zero output. */
#include "../test.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DQK 192
#define DV 128

static mla_backend *backend_for(const char *name, int heads)
{
    /* One backend per (name, heads), kept for the whole run (creation warms kernels). */
    static struct {
        const char *name;
        int heads;
        mla_backend *be;
    } cache[8];
    static int n;
    for (int i = 0; i < n; i++)
        if (cache[i].heads == heads && strcmp(cache[i].name, name) == 0) return cache[i].be;
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = heads;
    if (strcmp(name, "hopper") == 0) cfg.device.type = MLA_DEVICE_CUDA;
    mla_backend *be = NULL;
    mla_status st = mla_backend_create(name, &cfg, &be);
    if (st != MLA_OK) {
        fprintf(stderr, "    cannot create backend %s (H=%d): %s: %s\n", name, heads,
                mla_status_string(st), mla_last_error());
        return NULL;
    }
    if (n < 8) {
        cache[n].name = name;
        cache[n].heads = heads;
        cache[n].be = be;
        n++;
    }
    return be;
}

static void *dev_copy(const void *host, size_t bytes)
{
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess) return NULL;
    if (bytes && cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
        cudaFree(d);
        return NULL;
    }
    return d;
}

typedef struct prefill_case {
    int batch;
    const int *lq, *lkv;
    int heads;
    int causal;
    int want_lse;
    mla_dtype dtype;
    float spread;     /* q/k values drawn from U(-spread, spread): larger = peakier softmax */
    int pass_max;     /* pass exact max_seqlen_q/kv (else 0 = unknown) */
    int nan_request;  /* >= 0: that request's K and V rows are all NaN (it must have lq = 0) */
} prefill_case;

typedef struct case_stats {
    double max_abs_err, rel_l2, max_lse_err;
    long long bad;
} case_stats;

/* Random input in the dtype: bf16 directly, fp8 as e4m3(x / scale). */
static void fill_random(uint8_t *buf, int64_t n, mla_dtype dt, float lo, float hi, float scale)
{
    for (int64_t i = 0; i < n; i++) {
        float x = mla_test_rand_uniform(lo, hi);
        if (dt == MLA_DTYPE_BF16)
            ((uint16_t *)buf)[i] = mla_float_to_bf16(x);
        else
            buf[i] = mla_float_to_fp8_e4m3(x / scale);
    }
}

/* For fp8: per (query token, head), softmax_scale * |q| * max over the request's keys of |k|
 * (dequantized Euclidean norms), the bound on |S| that the fp8 LSE tolerance scales with. */
static double *fp8_logit_bounds(const prefill_case *c, const uint8_t *q, const uint8_t *k,
                                const int32_t *cu_q, const int32_t *cu_kv, const mla_scales *sc)
{
    const int H = c->heads;
    double *bound = calloc((size_t)cu_q[c->batch] * H + 1, sizeof *bound);
    for (int b = 0; b < c->batch; b++)
        for (int h = 0; h < H; h++) {
            double kmax = 0;
            for (int t = cu_kv[b]; t < cu_kv[b + 1] && cu_q[b + 1] > cu_q[b]; t++) {
                double n2 = 0;
                for (int d = 0; d < DQK; d++) {
                    const double x = mla_fp8_e4m3_to_float(k[((size_t)t * H + h) * DQK + d]) * sc->k_scale;
                    n2 += x * x;
                }
                if (n2 > kmax) kmax = n2;
            }
            for (int t = cu_q[b]; t < cu_q[b + 1]; t++) {
                double n2 = 0;
                for (int d = 0; d < DQK; d++) {
                    const double x = mla_fp8_e4m3_to_float(q[((size_t)t * H + h) * DQK + d]) * sc->q_scale;
                    n2 += x * x;
                }
                bound[(size_t)t * H + h] = sc->softmax_scale * sqrt(n2 * kmax);
            }
        }
    return bound;
}

static case_stats run_case(const prefill_case *c)
{
    case_stats stats = {0, 0, 0, 0};
    mla_backend *cpu = backend_for("cpu", c->heads);
    mla_backend *gpu = backend_for("hopper", c->heads);
    CHECK(cpu != NULL && gpu != NULL);
    if (!cpu || !gpu) return stats;
    const int H = c->heads;
    const int fp8 = c->dtype == MLA_DTYPE_FP8_E4M3;
    const size_t es = fp8 ? 1 : 2;

    int32_t *cu_q = malloc(sizeof(int32_t) * (size_t)(c->batch + 1));
    int32_t *cu_kv = malloc(sizeof(int32_t) * (size_t)(c->batch + 1));
    cu_q[0] = cu_kv[0] = 0;
    int max_q = 0, max_kv = 0;
    for (int b = 0; b < c->batch; b++) {
        cu_q[b + 1] = cu_q[b] + c->lq[b];
        cu_kv[b + 1] = cu_kv[b] + c->lkv[b];
        if (c->lq[b] > max_q) max_q = c->lq[b];
        if (c->lkv[b] > max_kv) max_kv = c->lkv[b];
    }
    const int64_t tq = cu_q[c->batch], tkv = cu_kv[c->batch];

    mla_scales sc;
    mla_config cfg0;
    mla_config_init(&cfg0);
    sc = cfg0.scales;
    float vmax = 1.0f;
    if (fp8) {
        sc.q_scale = mla_test_rand_uniform(0.5f, 2.0f);
        sc.k_scale = mla_test_rand_uniform(0.5f, 2.0f);
        sc.v_scale = mla_test_rand_uniform(0.5f, 2.0f);
        sc.o_scale = mla_test_rand_uniform(0.5f, 1.5f);
        vmax = 1.0f * sc.o_scale;
    }
    size_t q_bytes = (size_t)tq * H * DQK * es, k_bytes = (size_t)tkv * H * DQK * es;
    size_t v_bytes = (size_t)tkv * H * DV * es;
    uint8_t *q = malloc(q_bytes ? q_bytes : 1), *k = malloc(k_bytes ? k_bytes : 1);
    uint8_t *v = malloc(v_bytes ? v_bytes : 1);
    fill_random(q, tq * H * DQK, c->dtype, -c->spread, c->spread, sc.q_scale);
    fill_random(k, tkv * H * DQK, c->dtype, -c->spread, c->spread, sc.k_scale);
    fill_random(v, tkv * H * DV, c->dtype, -1.0f, 1.0f, sc.v_scale);
    if (c->nan_request >= 0) {
        /* Another request's rows that no query of this call may read: a NaN there must not
         * reach any output (P is exactly 0 for them, but 0 * NaN is NaN). */
        int64_t r0 = cu_kv[c->nan_request], r1 = cu_kv[c->nan_request + 1];
        for (int64_t i = r0 * H * DQK; i < r1 * H * DQK; i++) {
            if (fp8) k[i] = 0x7f; else ((uint16_t *)k)[i] = 0x7fc0;
        }
        for (int64_t i = r0 * H * DV; i < r1 * H * DV; i++) {
            if (fp8) v[i] = 0x7f; else ((uint16_t *)v)[i] = 0x7fc0;
        }
    }

    size_t out_n = (size_t)tq * H * DV, lse_n = (size_t)tq * H;
    uint16_t *out_cpu = malloc(out_n * 2 + 2), *out_gpu = malloc(out_n * 2 + 2);
    float *lse_cpu = malloc(lse_n * 4 + 4), *lse_gpu = malloc(lse_n * 4 + 4);
    memset(out_cpu, 0xff, out_n * 2);
    for (size_t i = 0; i < lse_n; i++) lse_cpu[i] = NAN;

    mla_device hd = {MLA_DEVICE_CPU, 0}, dd = {MLA_DEVICE_CUDA, 0};
    int64_t sq[3] = {tq, H, DQK}, sk[3] = {tkv, H, DQK}, sv[3] = {tkv, H, DV}, so[3] = {tq, H, DV};
    int64_t sl[2] = {tq, H}, sb[1] = {c->batch + 1};
    mla_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = mla_tensor_contiguous(q, c->dtype, hd, 3, sq);
    a.k = mla_tensor_contiguous(k, c->dtype, hd, 3, sk);
    a.v = mla_tensor_contiguous(v, c->dtype, hd, 3, sv);
    a.cu_seqlens_q = mla_tensor_contiguous(cu_q, MLA_DTYPE_I32, hd, 1, sb);
    a.cu_seqlens_kv = mla_tensor_contiguous(cu_kv, MLA_DTYPE_I32, hd, 1, sb);
    a.max_seqlen_q = c->pass_max ? max_q : 0;
    a.max_seqlen_kv = c->pass_max ? max_kv : 0;
    a.causal = c->causal;
    a.out = mla_tensor_contiguous(out_cpu, MLA_DTYPE_BF16, hd, 3, so);
    if (c->want_lse) a.lse = mla_tensor_contiguous(lse_cpu, MLA_DTYPE_F32, hd, 2, sl);
    a.scales = &sc;
    CHECK_STATUS(mla_prefill(cpu, &a), MLA_OK);

    /* Same call on the GPU, outputs poisoned (bf16 0xffff and float NaN). */
    void *dq = dev_copy(q, q_bytes), *dk = dev_copy(k, k_bytes), *dv = dev_copy(v, v_bytes);
    void *dcq = dev_copy(cu_q, sizeof(int32_t) * (size_t)(c->batch + 1));
    void *dckv = dev_copy(cu_kv, sizeof(int32_t) * (size_t)(c->batch + 1));
    void *dout = NULL, *dlse = NULL;
    CHECK(cudaMalloc(&dout, out_n * 2 + 2) == cudaSuccess);
    CHECK(cudaMalloc(&dlse, lse_n * 4 + 4) == cudaSuccess);
    CHECK(dq && dk && dv && dcq && dckv && dout && dlse);
    if (dq && dk && dv && dcq && dckv && dout && dlse) {
        CHECK(cudaMemset(dout, 0xff, out_n * 2) == cudaSuccess);
        CHECK(cudaMemset(dlse, 0xff, lse_n * 4) == cudaSuccess); /* 0xffffffff is a NaN */
        mla_prefill_args g = a;
        g.q = mla_tensor_contiguous(dq, c->dtype, dd, 3, sq);
        g.k = mla_tensor_contiguous(dk, c->dtype, dd, 3, sk);
        g.v = mla_tensor_contiguous(dv, c->dtype, dd, 3, sv);
        g.cu_seqlens_q = mla_tensor_contiguous(dcq, MLA_DTYPE_I32, dd, 1, sb);
        g.cu_seqlens_kv = mla_tensor_contiguous(dckv, MLA_DTYPE_I32, dd, 1, sb);
        g.out = mla_tensor_contiguous(dout, MLA_DTYPE_BF16, dd, 3, so);
        memset(&g.lse, 0, sizeof g.lse);
        if (c->want_lse) g.lse = mla_tensor_contiguous(dlse, MLA_DTYPE_F32, dd, 2, sl);
        CHECK_STATUS(mla_prefill(gpu, &g), MLA_OK);
        CHECK(cudaDeviceSynchronize() == cudaSuccess);
        CHECK(cudaMemcpy(out_gpu, dout, out_n * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
        CHECK(cudaMemcpy(lse_gpu, dlse, lse_n * 4, cudaMemcpyDeviceToHost) == cudaSuccess);

        const double atol = (fp8 ? 4e-2 : 1e-2) * vmax, rtol = fp8 ? 4e-2 : 1e-2;
        double num = 0, den = 0;
        for (size_t i = 0; i < out_n; i++) {
            double r = mla_bf16_to_float(out_cpu[i]), x = mla_bf16_to_float(out_gpu[i]);
            double d = fabs(x - r);
            if (!(d <= atol + rtol * fabs(r))) {
                if (stats.bad < 4)
                    fprintf(stderr, "    out[%zu] (token %zu head %zu dim %zu): gpu %g cpu %g\n", i,
                            i / ((size_t)H * DV), (i / DV) % (size_t)H, i % DV, x, r);
                stats.bad++;
            }
            if (d > stats.max_abs_err || d != d) stats.max_abs_err = d != d ? INFINITY : d;
            num += (x - r) * (x - r);
            den += r * r;
        }
        stats.rel_l2 = den > 0 ? sqrt(num / den) : sqrt(num);
        if (!(stats.rel_l2 < (fp8 ? 2.5e-2 : 5e-3))) stats.bad++;
        if (c->want_lse) {
            double *logit_bound = fp8 ? fp8_logit_bounds(c, q, k, cu_q, cu_kv, &sc) : NULL;
            for (size_t i = 0; i < lse_n; i++) {
                double r = lse_cpu[i], x = lse_gpu[i];
                int ok;
                if (isinf(r) && r < 0) {
                    ok = isinf(x) && x < 0;
                    /* No visible key: the output row must be exactly zero. */
                    for (int d = 0; d < DV && ok; d++) ok = out_gpu[i * DV + d] == 0;
                } else {
                    double d = fabs(x - r);
                    ok = d <= 2e-3 + 1e-3 * fabs(r) + (logit_bound ? 0x1p-12 * logit_bound[i] : 0.0);
                    if (d > stats.max_lse_err || d != d) stats.max_lse_err = d != d ? INFINITY : d;
                }
                if (!ok) {
                    if (stats.bad < 4)
                        fprintf(stderr, "    lse[%zu] (token %zu head %zu): gpu %g cpu %g\n", i,
                                i / (size_t)H, i % (size_t)H, x, r);
                    stats.bad++;
                }
            }
            free(logit_bound);
        }
    }
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dcq);
    cudaFree(dckv);
    cudaFree(dout);
    cudaFree(dlse);
    free(q);
    free(k);
    free(v);
    free(out_cpu);
    free(out_gpu);
    free(lse_cpu);
    free(lse_gpu);
    free(cu_q);
    free(cu_kv);
    return stats;
}

static void check_case(const char *name, const prefill_case *c)
{
    case_stats s = run_case(c);
    fprintf(stderr, "    %-34s %s H=%-3d causal=%d lse=%d: max|err| %.3g rel_l2 %.3g lse_err %.3g%s\n",
            name, c->dtype == MLA_DTYPE_FP8_E4M3 ? "fp8 " : "bf16", c->heads, c->causal,
            c->want_lse, s.max_abs_err, s.rel_l2, s.max_lse_err, s.bad ? "  FAILED" : "");
    CHECK_MSG(s.bad == 0, "%s: %lld mismatches", name, s.bad);
}

/* Runs one shape over causal x lse x dtype. */
static void check_variants_nan(const char *name, int batch, const int *lq, const int *lkv, int H,
                               float spread, int nan_request)
{
    for (int dt = 0; dt < 2; dt++)
        for (int causal = 0; causal < 2; causal++)
            for (int lse = 0; lse < 2; lse++) {
                prefill_case c = {batch, lq, lkv, H, causal, lse,
                                  dt ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16, spread, (causal + lse) & 1,
                                  nan_request};
                check_case(name, &c);
            }
}

static void check_all_variants(const char *name, int batch, const int *lq, const int *lkv, int H,
                               float spread)
{
    check_variants_nan(name, batch, lq, lkv, H, spread, -1);
}

TEST(gpu_prefill_edge_lengths)
{
    if (!mla_test_require_backend("hopper")) return;
    static const int lq[] = {1, 63, 64, 65, 1, 129};
    check_all_variants("lengths 1,63,64,65,1,129", 6, lq, lq, 16, 2.0f);
}

TEST(gpu_prefill_q_shorter_than_kv)
{
    if (!mla_test_require_backend("hopper")) return;
    static const int lq[] = {100, 1, 64, 7}, lkv[] = {1000, 300, 64, 129};
    check_all_variants("q shorter than kv", 4, lq, lkv, 16, 2.0f);
}

TEST(gpu_prefill_rows_without_keys)
{
    if (!mla_test_require_backend("hopper")) return;
    /* q longer than kv (causal rows before the diagonal see nothing), empty kv, empty q. */
    static const int lq[] = {200, 5, 0, 70}, lkv[] = {50, 0, 10, 3};
    check_all_variants("rows without keys / empty", 4, lq, lkv, 16, 2.0f);
}

TEST(gpu_prefill_ragged_batch_16)
{
    if (!mla_test_require_backend("hopper")) return;
    int lq[16], lkv[16];
    for (int b = 0; b < 16; b++) {
        lq[b] = mla_test_rand_int(1, 300);
        lkv[b] = lq[b] + (b % 3 == 0 ? 0 : mla_test_rand_int(0, 400));
    }
    check_all_variants("ragged batch 16", 16, lq, lkv, 16, 2.0f);
}

TEST(gpu_prefill_heads_1_and_128)
{
    if (!mla_test_require_backend("hopper")) return;
    static const int lq1[] = {1000}, lq2[] = {130, 64}, lkv2[] = {257, 64};
    check_all_variants("H=1 len 1000", 1, lq1, lq1, 1, 2.0f);
    check_all_variants("H=128 ragged", 2, lq2, lkv2, 128, 2.0f);
}

TEST(gpu_prefill_peaky_and_flat_softmax)
{
    if (!mla_test_require_backend("hopper")) return;
    static const int lq[] = {300, 65}, lkv[] = {300, 500};
    check_all_variants("peaky softmax (|q|,|k| <= 6)", 2, lq, lkv, 16, 6.0f);
    check_all_variants("flat softmax (|q|,|k| <= 0.3)", 2, lq, lkv, 16, 0.3f);
}

TEST(gpu_prefill_long_8192)
{
    if (!mla_test_require_backend("hopper")) return;
    static const int lq[] = {8192};
    for (int dt = 0; dt < 2; dt++) {
        prefill_case c = {1, lq, lq, 1, 1, 1, dt ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16, 2.0f, 1, -1};
        check_case("len 8192 causal", &c);
    }
    static const int lq2[] = {1000}, lkv2[] = {8192};
    prefill_case c2 = {1, lq2, lkv2, 2, 0, 1, MLA_DTYPE_BF16, 2.0f, 0, -1};
    check_case("q 1000 over kv 8192 non-causal", &c2);
}

TEST(gpu_prefill_foreign_nan_not_leaked)
{
    if (!mla_test_require_backend("hopper")) return;
    /* Request 1 has keys but no queries and holds NaN in K and V; requests 0 and 2 end inside
     * a 128-key tile, so the GPU loads request 1's rows (and request 2 reads past the tensor's
     * end, which TMA fills with zeros). */
    static const int lq[] = {65, 0, 30}, lkv[] = {65, 200, 100};
    check_variants_nan("foreign NaN rows", 3, lq, lkv, 16, 2.0f, 1);
}

/* Prefill benchmark of the "hopper" backend through the public API.
 *
 * For each case: random inputs (never zeros), warm-up, then `reps` timed calls, each between
 * two CUDA events; the median is reported. FLOPs are exact: 2 * H * (192 + 128) per visible
 * (query, key) pair, summed over rows (causal rows see lkv - lq + i + 1 keys). The tensor-core
 * ceiling is measured in the same run with an 8192^3 cuBLASLt GEMM (bf16 and fp8 e4m3 inputs,
 * fp32 accumulate, bf16 output), and each case is reported as a fraction of it.
 *
 * Usage: prefill [--reps N] [--quick]   (--quick: only the two headline 8k cases) */
#include "mla.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MLA_HAVE_CUDA
int main(void)
{
    printf("prefill bench: built without CUDA, nothing to measure\n");
    return 0;
}
#else
#include "bench_common.h"

#define DQK 192
#define DV 128

/* ---- one prefill case ---- */
typedef struct bench_case {
    const char *name;
    int batch, lq, lkv, heads, causal;
    mla_dtype dtype;
} bench_case;

typedef struct bench_result {
    double ms, tflops;
    int ok;
} bench_result;

static bench_result run_case(mla_backend *be, const bench_case *c, int reps)
{
    bench_result r = {0, 0, 0};
    const int H = c->heads;
    const size_t es = mla_dtype_size(c->dtype);
    const int64_t tq = (int64_t)c->batch * c->lq, tkv = (int64_t)c->batch * c->lkv;
    int32_t *cu_q = malloc(sizeof(int32_t) * (size_t)(c->batch + 1));
    int32_t *cu_kv = malloc(sizeof(int32_t) * (size_t)(c->batch + 1));
    double pairs = 0;
    for (int b = 0; b <= c->batch; b++) {
        cu_q[b] = b * c->lq;
        cu_kv[b] = b * c->lkv;
    }
    for (int i = 0; i < c->lq; i++) {
        int64_t vis = c->causal ? (int64_t)c->lkv - c->lq + i + 1 : c->lkv;
        if (vis < 0) vis = 0;
        if (vis > c->lkv) vis = c->lkv;
        pairs += (double)vis;
    }
    const double flops = pairs * c->batch * 2.0 * H * (DQK + DV);
    void *q = NULL, *k = NULL, *v = NULL, *out = NULL, *lse = NULL, *dcq = NULL, *dckv = NULL;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float *t = malloc(sizeof(float) * (size_t)reps);
    if (cudaMalloc(&q, (size_t)tq * H * DQK * es) || cudaMalloc(&k, (size_t)tkv * H * DQK * es) ||
        cudaMalloc(&v, (size_t)tkv * H * DV * es) || cudaMalloc(&out, (size_t)tq * H * DV * 2) ||
        cudaMalloc(&lse, (size_t)tq * H * 4) || cudaMalloc(&dcq, sizeof(int32_t) * (size_t)(c->batch + 1)) ||
        cudaMalloc(&dckv, sizeof(int32_t) * (size_t)(c->batch + 1))) {
        fprintf(stderr, "%s: out of device memory\n", c->name);
        goto done;
    }
    if (fill_device(q, (size_t)tq * H * DQK * es, c->dtype, 2.0f) ||
        fill_device(k, (size_t)tkv * H * DQK * es, c->dtype, 2.0f) ||
        fill_device(v, (size_t)tkv * H * DV * es, c->dtype, 1.0f))
        goto done;
    cudaMemcpy(dcq, cu_q, sizeof(int32_t) * (size_t)(c->batch + 1), cudaMemcpyHostToDevice);
    cudaMemcpy(dckv, cu_kv, sizeof(int32_t) * (size_t)(c->batch + 1), cudaMemcpyHostToDevice);

    mla_device dd = {MLA_DEVICE_CUDA, 0};
    int64_t sq[3] = {tq, H, DQK}, sk[3] = {tkv, H, DQK}, sv[3] = {tkv, H, DV}, so[3] = {tq, H, DV};
    int64_t sl[2] = {tq, H}, sb[1] = {c->batch + 1};
    mla_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = mla_tensor_contiguous(q, c->dtype, dd, 3, sq);
    a.k = mla_tensor_contiguous(k, c->dtype, dd, 3, sk);
    a.v = mla_tensor_contiguous(v, c->dtype, dd, 3, sv);
    a.cu_seqlens_q = mla_tensor_contiguous(dcq, MLA_DTYPE_I32, dd, 1, sb);
    a.cu_seqlens_kv = mla_tensor_contiguous(dckv, MLA_DTYPE_I32, dd, 1, sb);
    a.max_seqlen_q = c->lq;
    a.max_seqlen_kv = c->lkv;
    a.causal = c->causal;
    a.out = mla_tensor_contiguous(out, MLA_DTYPE_BF16, dd, 3, so);
    a.lse = mla_tensor_contiguous(lse, MLA_DTYPE_F32, dd, 2, sl);
    for (int i = 0; i < 2 + reps; i++) {
        cudaEventRecord(e0, 0);
        mla_status st = mla_prefill(be, &a);
        cudaEventRecord(e1, 0);
        if (st != MLA_OK) {
            fprintf(stderr, "%s: mla_prefill: %s: %s\n", c->name, mla_status_string(st), mla_last_error());
            goto done;
        }
        if (cudaEventSynchronize(e1) != cudaSuccess) {
            fprintf(stderr, "%s: %s\n", c->name, cudaGetErrorString(cudaGetLastError()));
            goto done;
        }
        if (i >= 2) cudaEventElapsedTime(&t[i - 2], e0, e1);
    }
    /* Sanity: the output of the last run holds no NaN (a cheap guard, not the test). */
    {
        size_t n = (size_t)tq * H * DV;
        size_t sample = n < (1u << 22) ? n : (1u << 22);
        uint16_t *h = malloc(sample * 2);
        cudaMemcpy(h, out, sample * 2, cudaMemcpyDeviceToHost);
        r.ok = 1;
        for (size_t i = 0; i < sample; i++)
            if ((h[i] & 0x7fffu) > 0x7f80u) r.ok = 0;
        free(h);
    }
    qsort(t, (size_t)reps, sizeof(float), cmp_float);
    r.ms = t[reps / 2];
    r.tflops = flops / (r.ms * 1e-3) / 1e12;
done:
    cudaFree(q);
    cudaFree(k);
    cudaFree(v);
    cudaFree(out);
    cudaFree(lse);
    cudaFree(dcq);
    cudaFree(dckv);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    free(t);
    free(cu_q);
    free(cu_kv);
    return r;
}

int main(int argc, char **argv)
{
    int reps = 10, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0) quick = 1;
    }
    if (reps < 1) reps = 1;
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = 128;
    cfg.device.type = MLA_DEVICE_CUDA;
    mla_backend *be = NULL;
    mla_status st = mla_backend_create("hopper", &cfg, &be);
    if (st != MLA_OK) {
        printf("prefill bench: hopper backend unavailable: %s\n", mla_last_error());
        return 0;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    double peak_bf16 = gemm_tflops(0, 20), peak_fp8 = gemm_tflops(1, 20);
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    printf("cuBLASLt 8192^3 GEMM (same run): bf16 %.0f TFLOP/s, fp8 e4m3 %.0f TFLOP/s\n", peak_bf16, peak_fp8);

    static const bench_case cases[] = {
        {"8k causal (bar 500)", 1, 8192, 8192, 128, 1, MLA_DTYPE_BF16},
        {"8k causal (bar 800)", 1, 8192, 8192, 128, 1, MLA_DTYPE_FP8_E4M3},
        {"8k non-causal", 1, 8192, 8192, 128, 0, MLA_DTYPE_BF16},
        {"8k non-causal", 1, 8192, 8192, 128, 0, MLA_DTYPE_FP8_E4M3},
        {"ts: q8k / kv8k", 1, 8192, 8192, 128, 1, MLA_DTYPE_BF16},
        {"ts: q8k / kv32k", 1, 8192, 32768, 128, 1, MLA_DTYPE_BF16},
        {"ts: q8k / kv64k", 1, 8192, 65536, 128, 1, MLA_DTYPE_BF16},
        {"ts: b4 q512 / kv80k", 4, 512, 81920, 128, 1, MLA_DTYPE_BF16},
        {"ts: b4 q1024 / kv80k", 4, 1024, 81920, 128, 1, MLA_DTYPE_BF16},
        {"ts: q8k / kv8k", 1, 8192, 8192, 128, 1, MLA_DTYPE_FP8_E4M3},
        {"ts: q8k / kv32k", 1, 8192, 32768, 128, 1, MLA_DTYPE_FP8_E4M3},
        {"ts: q8k / kv64k", 1, 8192, 65536, 128, 1, MLA_DTYPE_FP8_E4M3},
        {"ts: b4 q512 / kv80k", 4, 512, 81920, 128, 1, MLA_DTYPE_FP8_E4M3},
        {"ts: b4 q1024 / kv80k", 4, 1024, 81920, 128, 1, MLA_DTYPE_FP8_E4M3},
        {"16 heads, 8k causal", 1, 8192, 8192, 16, 1, MLA_DTYPE_BF16},
    };
    const int ncases = quick ? 2 : (int)(sizeof cases / sizeof cases[0]);
    printf("\n| case | dtype | batch | q | kv | H | causal | ms (median of %d) | TFLOP/s | of GEMM peak |\n", reps);
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    int failed = 0;
    for (int i = 0; i < ncases; i++) {
        const bench_case *c = &cases[i];
        mla_backend *b = be;
        mla_backend *b16 = NULL;
        if (c->heads != 128) {
            mla_config c16 = cfg;
            c16.num_heads = c->heads;
            if (mla_backend_create("hopper", &c16, &b16) != MLA_OK) continue;
            b = b16;
        }
        bench_result r = run_case(b, c, reps);
        mla_backend_destroy(b16);
        int fp8 = c->dtype == MLA_DTYPE_FP8_E4M3;
        double peak = fp8 ? peak_fp8 : peak_bf16;
        if (r.ms <= 0 || !r.ok) failed = 1;
        printf("| %s | %s | %d | %d | %d | %d | %d | %.3f | %.0f | %.0f%%%s |\n", c->name,
               fp8 ? "fp8" : "bf16", c->batch, c->lq, c->lkv, c->heads, c->causal, r.ms, r.tflops,
               peak > 0 ? 100.0 * r.tflops / peak : 0.0, r.ok ? "" : " (NaN in output!)");
        fflush(stdout);
    }
    mla_backend_destroy(be);
    return failed;
}
#endif

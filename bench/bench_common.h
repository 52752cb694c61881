/* Pieces shared by the benchmark programs (CUDA builds only): random device fills, the two
 * ceilings measured in the same run (device-to-device copy bandwidth, 8192^3 cuBLASLt GEMM
 * rate) and a median helper. Header-only because every bench program is one .c file. */
#ifndef MLA_BENCH_COMMON_H
#define MLA_BENCH_COMMON_H

#include "mla.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FILL_CHUNK (64u << 20)

/* bench/clock_probe.cu: one multiprocessor's clock in MHz, read on `stream` behind its queued
 * work (0 when it cannot be read). */
double bench_sm_clock_mhz(cudaStream_t stream);

#define CUDA_OK(x)                                                                          \
    do {                                                                                    \
        cudaError_t e_ = (x);                                                               \
        if (e_ != cudaSuccess) {                                                            \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            return -1;                                                                      \
        }                                                                                   \
    } while (0)

/* xorshift; each bench seeds bench_rng itself so runs are repeatable. */
static uint64_t bench_rng = 0x9E3779B97F4A7C15ULL;
static inline uint32_t rand_u32(void)
{
    bench_rng ^= bench_rng << 13;
    bench_rng ^= bench_rng >> 7;
    bench_rng ^= bench_rng << 17;
    return (uint32_t)(bench_rng >> 32);
}
static inline float rand_uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rand_u32() >> 8) * (1.0 / 16777216.0));
}

/* Random bf16 / fp8 values in [-amp, amp]: one random host chunk, then doubled on the device. */
static inline int fill_device(void *dst, size_t bytes, mla_dtype dt, float amp)
{
    size_t chunk = bytes < FILL_CHUNK ? bytes : FILL_CHUNK;
    uint8_t *h = calloc(chunk, 1);
    if (!h) return -1;
    if (dt == MLA_DTYPE_FP8_E4M3) {
        for (size_t i = 0; i < chunk; i++) h[i] = mla_float_to_fp8_e4m3(rand_uniform(-amp, amp));
    } else {
        for (size_t i = 0; i + 1 < chunk; i += 2) {
            uint16_t b = mla_float_to_bf16(rand_uniform(-amp, amp));
            memcpy(h + i, &b, 2);
        }
    }
    cudaError_t e = cudaMemcpy(dst, h, chunk, cudaMemcpyHostToDevice);
    free(h);
    CUDA_OK(e);
    for (size_t done = chunk; done < bytes;) {
        size_t n = done < bytes - done ? done : bytes - done;
        CUDA_OK(cudaMemcpy((uint8_t *)dst + done, dst, n, cudaMemcpyDeviceToDevice));
        done += n;
    }
    return 0;
}

static inline int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Device-to-device copy bandwidth (bytes read + written) over a 2 GiB buffer. */
static inline double copy_gbps(void)
{
    const size_t n = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess) return -1;
    cudaMemset(a, 1, n);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float t[15];
    for (int i = 0; i < 18; i++) {
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        if (i >= 3) cudaEventElapsedTime(&t[i - 3], e0, e1);
    }
    qsort(t, 15, sizeof(float), cmp_float);
    cudaFree(a);
    cudaFree(b);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return 2.0 * n / (t[7] * 1e-3) / 1e9;
}

/* 8192^3 GEMM through cuBLASLt (TN, fp32 accumulate, bf16 out), median of `reps` after 3
 * warm-ups; -1 when unavailable. */
static inline double gemm_tflops(int fp8, int reps)
{
    const int m = 8192, n = 8192, k = 8192;
    const size_t es = fp8 ? 1 : 2;
    cublasLtHandle_t lt = NULL;
    void *A = NULL, *B = NULL, *D = NULL, *ws = NULL;
    const size_t ws_bytes = 64u << 20;
    double result = -1;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) goto done;
    if (cudaMalloc(&A, (size_t)m * k * es) || cudaMalloc(&B, (size_t)k * n * es) ||
        cudaMalloc(&D, (size_t)m * n * 2) || cudaMalloc(&ws, ws_bytes))
        goto done;
    mla_dtype dt = fp8 ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16;
    if (fill_device(A, (size_t)m * k * es, dt, 1.0f) || fill_device(B, (size_t)k * n * es, dt, 1.0f))
        goto done;
    cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    /* fp8 needs the "TN" form: A transposed, B not (both K-major). Same for bf16 here. */
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    cudaDataType_t at = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    cublasLtMatrixLayoutCreate(&la, at, k, m, k);
    cublasLtMatrixLayoutCreate(&lb, at, k, n, k);
    cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, m, n, m);
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                         sizeof ws_bytes);
    cublasLtMatmulHeuristicResult_t res;
    int nres = 0;
    if (cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &res, &nres) !=
            CUBLAS_STATUS_SUCCESS ||
        nres == 0)
        goto done;
    float alpha = 1.0f, beta = 0.0f;
    float *t = malloc(sizeof(float) * (size_t)reps);
    for (int i = 0; i < 3 + reps; i++) {
        cudaEventRecord(e0, 0);
        if (cublasLtMatmul(lt, op, &alpha, A, la, B, lb, &beta, D, lc, D, lc, &res.algo, ws, ws_bytes,
                           0) != CUBLAS_STATUS_SUCCESS) {
            free(t);
            goto done;
        }
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        if (i >= 3) cudaEventElapsedTime(&t[i - 3], e0, e1);
    }
    qsort(t, (size_t)reps, sizeof(float), cmp_float);
    result = 2.0 * m * n * (double)k / (t[reps / 2] * 1e-3) / 1e12;
    free(t);
done:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (op) cublasLtMatmulDescDestroy(op);
    if (lt) cublasLtDestroy(lt);
    cudaFree(A);
    cudaFree(B);
    cudaFree(D);
    cudaFree(ws);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return result;
}

#endif

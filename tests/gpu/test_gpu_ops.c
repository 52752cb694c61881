/* GPU element-wise operations ("hopper") against the CPU reference backend ("cpu") through the
 * public API, on identical random inputs, outputs poisoned before every run, every element
 * compared:
 *   quantize_fp8, kv_cache_write, kv_pack: bit-exact (same bytes as the CPU);
 *   merge_state: f32 output within 2e-6 * (|ref| + 1e-3), bf16 output within 1 bf16 ulp
 *   (the GPU's exp/log of the weights may round differently); lse within 1e-6 * (|ref| + 1);
 *   -inf rows exactly -inf with exactly zero output. NaN never passes. */
#include "../test.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static mla_backend *ops_backend(const char *name, int skip_index_check)
{
    static mla_backend *cache[2][2];
    int which = strcmp(name, "hopper") == 0;
    if (cache[which][skip_index_check]) return cache[which][skip_index_check];
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = 16;
    cfg.skip_index_check = skip_index_check;
    if (which) cfg.device.type = MLA_DEVICE_CUDA;
    mla_backend *be = NULL;
    mla_status st = mla_backend_create(name, &cfg, &be);
    if (st != MLA_OK) {
        fprintf(stderr, "    cannot create backend %s: %s: %s\n", name, mla_status_string(st),
                mla_last_error());
        return NULL;
    }
    cache[which][skip_index_check] = be;
    return be;
}

static int gpu_ready(void)
{
    return mla_test_require_backend("hopper") && ops_backend("cpu", 0) && ops_backend("hopper", 0);
}

static void *to_dev(const void *host, size_t bytes)
{
    void *d = NULL;
    if (cudaMalloc(&d, bytes ? bytes : 1) != cudaSuccess) return NULL;
    if (bytes && cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
        cudaFree(d);
        return NULL;
    }
    return d;
}

static int from_dev(void *host, const void *dev, size_t bytes)
{
    return cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
}

static void rand_bytes(void *p, size_t n)
{
    for (size_t i = 0; i < n; i++) ((uint8_t *)p)[i] = (uint8_t)mla_test_rand_u64();
}

static long long count_byte_diffs(const uint8_t *a, const uint8_t *b, size_t n, const char *what)
{
    long long bad = 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) {
            if (bad < 4) fprintf(stderr, "    %s byte %zu: gpu 0x%02x cpu 0x%02x\n", what, i, a[i], b[i]);
            bad++;
        }
    return bad;
}

/* ------------------------------------------------------------------------------------------ */
/* quantize_fp8: every bf16 and fp16 bit pattern, and a float sample with specials, two scales,
 * aligned (vector path) and offset by one element with an odd length (scalar path). */
static void quantize_case(mla_dtype in_dt, const void *host_in, int64_t n, float scale, int offset)
{
    mla_backend *cpu = ops_backend("cpu", 0), *gpu = ops_backend("hopper", 0);
    size_t es = mla_dtype_size(in_dt);
    mla_device hd = {MLA_DEVICE_CPU, 0}, dd = {MLA_DEVICE_CUDA, 0};
    int64_t m = n - offset;
    uint8_t *ref = malloc((size_t)n), *got = malloc((size_t)n);
    memset(ref, 0xAA, (size_t)n);
    mla_quantize_fp8_args a = {.scale = scale};
    a.input = mla_tensor_contiguous((void *)((const uint8_t *)host_in + offset * es), in_dt, hd, 1, &m);
    a.output = mla_tensor_contiguous(ref + offset, MLA_DTYPE_FP8_E4M3, hd, 1, &m);
    CHECK_STATUS(mla_quantize_fp8(cpu, &a), MLA_OK);
    uint8_t *din = to_dev(host_in, (size_t)n * es), *dout = NULL;
    CHECK(cudaMalloc((void **)&dout, (size_t)n + 1) == cudaSuccess);
    if (din && dout) {
        CHECK(cudaMemset(dout, 0xAA, (size_t)n) == cudaSuccess);
        mla_quantize_fp8_args g = a;
        g.input = mla_tensor_contiguous(din + offset * es, in_dt, dd, 1, &m);
        g.output = mla_tensor_contiguous(dout + offset, MLA_DTYPE_FP8_E4M3, dd, 1, &m);
        CHECK_STATUS(mla_quantize_fp8(gpu, &g), MLA_OK);
        CHECK(from_dev(got, dout, (size_t)n));
        long long bad = count_byte_diffs(got, ref, (size_t)n, "quantize");
        CHECK_MSG(bad == 0, "quantize_fp8 %s scale %g offset %d: %lld bytes differ",
                  mla_dtype_name(in_dt), scale, offset, bad);
    }
    cudaFree(din);
    cudaFree(dout);
    free(ref);
    free(got);
}

TEST(gpu_ops_quantize_fp8_all_16bit_patterns)
{
    if (!gpu_ready()) return;
    uint16_t *all = malloc(65536 * 2);
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    const float scales[3] = {1.0f, mla_test_rand_uniform(0.01f, 4.0f), 1.0f / 64};
    for (int s = 0; s < 3; s++)
        for (int off = 0; off < 2; off++) {
            quantize_case(MLA_DTYPE_BF16, all, 65536, scales[s], off);
            quantize_case(MLA_DTYPE_FP16, all, 65536, scales[s], off);
        }
    free(all);
}

TEST(gpu_ops_quantize_fp8_float_sample)
{
    if (!gpu_ready()) return;
    const int64_t n = (1 << 20) + 5;
    float *x = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)mla_test_rand_u64();
        /* Half raw bit patterns (every exponent, NaN and inf included), half values near the
         * e4m3 range and rounding boundaries. */
        if (i & 1) {
            memcpy(&x[i], &u, 4);
        } else {
            x[i] = mla_test_rand_uniform(-520.0f, 520.0f) * (float)ldexp(1.0, -(int)(u % 24));
        }
    }
    x[0] = 448.0f; x[2] = 464.0f; x[4] = -464.0f; x[6] = INFINITY; x[8] = -INFINITY; x[10] = NAN;
    x[12] = -NAN; x[14] = 0x1p-10f; x[16] = 0x1.8p-10f; x[18] = -0.0f;
    quantize_case(MLA_DTYPE_F32, x, n, 1.0f, 0);
    quantize_case(MLA_DTYPE_F32, x, n, mla_test_rand_uniform(0.05f, 3.0f), 1);
    free(x);
}

/* ------------------------------------------------------------------------------------------ */
/* kv_cache_write: random rows scattered to unique slots (some -1), whole cache compared. */
static void cache_write_case(mla_dtype in_dt, mla_dtype cache_dt, int slot64)
{
    mla_backend *cpu = ops_backend("cpu", 0), *gpu = ops_backend("hopper", 0);
    const int R = 512, P = 64, D = R + P, page = 64, pages = 37, n = 700;
    const int64_t cap = (int64_t)page * pages;
    size_t ies = mla_dtype_size(in_dt), ces = mla_dtype_size(cache_dt);
    uint8_t *ckv = malloc((size_t)n * R * ies), *kpe = malloc((size_t)n * P * ies);
    for (int64_t i = 0; i < (int64_t)n * R; i++) {
        float v = mla_test_rand_uniform(-600.0f, 600.0f) * (float)ldexp(1.0, -mla_test_rand_int(0, 14));
        if (in_dt == MLA_DTYPE_BF16) ((uint16_t *)ckv)[i] = mla_float_to_bf16(v); else ((float *)ckv)[i] = v;
    }
    for (int64_t i = 0; i < (int64_t)n * P; i++) {
        float v = mla_test_rand_uniform(-8.0f, 8.0f);
        if (in_dt == MLA_DTYPE_BF16) ((uint16_t *)kpe)[i] = mla_float_to_bf16(v); else ((float *)kpe)[i] = v;
    }
    /* Unique slots: a shuffled prefix of the cache's slots; every 7th token is padding (-1). */
    int64_t *perm = malloc((size_t)cap * sizeof(int64_t));
    for (int64_t i = 0; i < cap; i++) perm[i] = i;
    for (int64_t i = cap - 1; i > 0; i--) {
        int64_t j = (int64_t)(mla_test_rand_u64() % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    void *slots = malloc((size_t)n * 8);
    for (int i = 0; i < n; i++) {
        int64_t s = i % 7 == 3 ? -1 : perm[i];
        if (slot64) ((int64_t *)slots)[i] = s; else ((int32_t *)slots)[i] = (int32_t)s;
    }
    size_t cache_bytes = (size_t)cap * D * ces;
    uint8_t *cache_cpu = malloc(cache_bytes), *cache_gpu = malloc(cache_bytes);
    rand_bytes(cache_cpu, cache_bytes); /* untouched slots must keep these bytes */

    mla_device hd = {MLA_DEVICE_CPU, 0}, dd = {MLA_DEVICE_CUDA, 0};
    int64_t s_ckv[2] = {n, R}, s_kpe[2] = {n, P}, s_sl[1] = {n}, s_c[3] = {pages, page, D};
    mla_scales sc;
    mla_config c0;
    mla_config_init(&c0);
    sc = c0.scales;
    sc.k_scale = mla_test_rand_uniform(0.2f, 3.0f);
    mla_dtype sdt = slot64 ? MLA_DTYPE_I64 : MLA_DTYPE_I32;
    mla_kv_cache_write_args a = {.scales = &sc};
    a.c_kv = mla_tensor_contiguous(ckv, in_dt, hd, 2, s_ckv);
    a.k_pe = mla_tensor_contiguous(kpe, in_dt, hd, 2, s_kpe);
    a.slots = mla_tensor_contiguous(slots, sdt, hd, 1, s_sl);
    a.kv_cache = mla_tensor_contiguous(cache_cpu, cache_dt, hd, 3, s_c);
    void *d_ckv = to_dev(ckv, (size_t)n * R * ies), *d_kpe = to_dev(kpe, (size_t)n * P * ies);
    void *d_sl = to_dev(slots, (size_t)n * (slot64 ? 8 : 4)), *d_cache = to_dev(cache_cpu, cache_bytes);
    /* The cache dtype is part of the backend config: use per-dtype backends. */
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = 16;
    cfg.kv_cache_dtype = cache_dt;
    mla_backend *cpu_b = NULL, *gpu_b = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &cpu_b), MLA_OK);
    cfg.device.type = MLA_DEVICE_CUDA;
    CHECK_STATUS(mla_backend_create("hopper", &cfg, &gpu_b), MLA_OK);
    (void)cpu;
    (void)gpu;
    if (cpu_b && gpu_b && d_ckv && d_kpe && d_sl && d_cache) {
        CHECK_STATUS(mla_kv_cache_write(cpu_b, &a), MLA_OK);
        mla_kv_cache_write_args g = a;
        g.c_kv = mla_tensor_contiguous(d_ckv, in_dt, dd, 2, s_ckv);
        g.k_pe = mla_tensor_contiguous(d_kpe, in_dt, dd, 2, s_kpe);
        g.slots = mla_tensor_contiguous(d_sl, sdt, dd, 1, s_sl);
        g.kv_cache = mla_tensor_contiguous(d_cache, cache_dt, dd, 3, s_c);
        CHECK_STATUS(mla_kv_cache_write(gpu_b, &g), MLA_OK);
        CHECK(from_dev(cache_gpu, d_cache, cache_bytes));
        long long bad = count_byte_diffs(cache_gpu, cache_cpu, cache_bytes, "cache");
        CHECK_MSG(bad == 0, "kv_cache_write %s -> %s slots %s: %lld bytes differ", mla_dtype_name(in_dt),
                  mla_dtype_name(cache_dt), slot64 ? "i64" : "i32", bad);
        uint32_t flags = 123;
        CHECK_STATUS(mla_backend_device_errors(gpu_b, &flags), MLA_OK);
        CHECK_MSG(flags == 0, "device error flags 0x%x after a valid write", flags);
    }
    mla_backend_destroy(cpu_b);
    mla_backend_destroy(gpu_b);
    cudaFree(d_ckv);
    cudaFree(d_kpe);
    cudaFree(d_sl);
    cudaFree(d_cache);
    free(ckv);
    free(kpe);
    free(perm);
    free(slots);
    free(cache_cpu);
    free(cache_gpu);
}

TEST(gpu_ops_kv_cache_write_bit_exact)
{
    if (!gpu_ready()) return;
    for (int s64 = 0; s64 < 2; s64++) {
        cache_write_case(MLA_DTYPE_BF16, MLA_DTYPE_FP8_E4M3, s64);
        cache_write_case(MLA_DTYPE_F32, MLA_DTYPE_FP8_E4M3, s64);
        cache_write_case(MLA_DTYPE_BF16, MLA_DTYPE_BF16, s64);
        cache_write_case(MLA_DTYPE_F32, MLA_DTYPE_BF16, s64);
    }
}

TEST(gpu_ops_kv_cache_write_bad_slot_flagged_never_written)
{
    if (!gpu_ready()) return;
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = 16;
    cfg.skip_index_check = 1; /* let the bad slot reach the kernel */
    cfg.device.type = MLA_DEVICE_CUDA;
    mla_backend *gpu = NULL;
    CHECK_STATUS(mla_backend_create("hopper", &cfg, &gpu), MLA_OK);
    if (!gpu) return;
    const int R = 512, P = 64, D = R + P, page = 64, pages = 2, n = 3;
    uint16_t ckv[3 * 512], kpe[3 * 64];
    for (int i = 0; i < n * R; i++) ckv[i] = mla_float_to_bf16(mla_test_rand_uniform(-1, 1));
    for (int i = 0; i < n * P; i++) kpe[i] = mla_float_to_bf16(mla_test_rand_uniform(-1, 1));
    int32_t slots[3] = {5, page * pages, 1 << 30}; /* one good, two beyond the cache */
    size_t cache_bytes = (size_t)page * pages * D;
    uint8_t *before = malloc(cache_bytes), *after = malloc(cache_bytes);
    rand_bytes(before, cache_bytes);
    void *d_ckv = to_dev(ckv, sizeof ckv), *d_kpe = to_dev(kpe, sizeof kpe);
    void *d_sl = to_dev(slots, sizeof slots), *d_cache = to_dev(before, cache_bytes);
    mla_device dd = {MLA_DEVICE_CUDA, 0};
    int64_t s_ckv[2] = {n, R}, s_kpe[2] = {n, P}, s_sl[1] = {n}, s_c[3] = {pages, page, D};
    mla_kv_cache_write_args g = {0};
    g.c_kv = mla_tensor_contiguous(d_ckv, MLA_DTYPE_BF16, dd, 2, s_ckv);
    g.k_pe = mla_tensor_contiguous(d_kpe, MLA_DTYPE_BF16, dd, 2, s_kpe);
    g.slots = mla_tensor_contiguous(d_sl, MLA_DTYPE_I32, dd, 1, s_sl);
    g.kv_cache = mla_tensor_contiguous(d_cache, MLA_DTYPE_FP8_E4M3, dd, 3, s_c);
    CHECK_STATUS(mla_kv_cache_write(gpu, &g), MLA_OK);
    uint32_t flags = 0;
    CHECK_STATUS(mla_backend_device_errors(gpu, &flags), MLA_OK);
    CHECK_MSG(flags & MLA_DEVERR_SLOT, "flags 0x%x lack MLA_DEVERR_SLOT", flags);
    CHECK_STATUS(mla_backend_device_errors(gpu, &flags), MLA_OK);
    CHECK_MSG(flags == 0, "flags 0x%x not cleared by the read", flags);
    CHECK(from_dev(after, d_cache, cache_bytes));
    /* Only slot 5 changed, to the quantized row. */
    long long bad = 0;
    for (size_t i = 0; i < cache_bytes; i++) {
        size_t row = i / (size_t)D, d = i % (size_t)D;
        uint8_t want = before[i];
        if (row == 5) want = mla_float_to_fp8_e4m3(mla_bf16_to_float(d < 512 ? ckv[d] : kpe[d - 512]) * 1.0f);
        if (after[i] != want) bad++;
    }
    CHECK_MSG(bad == 0, "%lld cache bytes wrong after a write with bad slots", bad);
    cudaFree(d_ckv);
    cudaFree(d_kpe);
    cudaFree(d_sl);
    cudaFree(d_cache);
    free(before);
    free(after);
    mla_backend_destroy(gpu);
}

/* ------------------------------------------------------------------------------------------ */
/* kv_pack: k_nope and v are strided views into one [N, H, 256] projection output, k_pe a view
 * into an [N, 576] row (offset 512); outputs bf16 or fp8, compared byte for byte. */
static void kv_pack_case(int N, int H, mla_dtype out_dt, int pe_3d, int odd_strides)
{
    /* The head count is part of the backend config. */
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = H;
    mla_backend *cpu = NULL, *gpu = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &cpu), MLA_OK);
    cfg.device.type = MLA_DEVICE_CUDA;
    CHECK_STATUS(mla_backend_create("hopper", &cfg, &gpu), MLA_OK);
    if (!cpu || !gpu) {
        mla_backend_destroy(cpu);
        mla_backend_destroy(gpu);
        return;
    }
    const int NOPE = 128, ROPE = 64, DVV = 128, DK = NOPE + ROPE;
    /* odd_strides: rows padded by 3 elements (forces the element-wise GPU path). */
    const int64_t row_h = NOPE + DVV + (odd_strides ? 3 : 0), row_n = row_h * H + (odd_strides ? 5 : 0);
    const int64_t pe_row = 576 + (odd_strides ? 1 : 0);
    size_t kv_elems = (size_t)(N * row_n), pe_elems = (size_t)(N * pe_row);
    uint16_t *kv = malloc(kv_elems * 2), *pe = malloc(pe_elems * 2);
    for (size_t i = 0; i < kv_elems; i++) kv[i] = mla_float_to_bf16(mla_test_rand_uniform(-500, 500) * (float)ldexp(1.0, -mla_test_rand_int(0, 12)));
    for (size_t i = 0; i < pe_elems; i++) pe[i] = mla_float_to_bf16(mla_test_rand_uniform(-4, 4));
    size_t es = mla_dtype_size(out_dt);
    size_t kout_b = (size_t)N * H * DK * es, vout_b = (size_t)N * H * DVV * es;
    uint8_t *k_ref = malloc(kout_b), *v_ref = malloc(vout_b), *k_got = malloc(kout_b), *v_got = malloc(vout_b);
    memset(k_ref, 0xCD, kout_b);
    memset(v_ref, 0xCD, vout_b);

    mla_device hd = {MLA_DEVICE_CPU, 0}, dd = {MLA_DEVICE_CUDA, 0};
    mla_kv_pack_args a = {0};
    a.k_scale = mla_test_rand_uniform(0.1f, 3.0f);
    a.v_scale = mla_test_rand_uniform(0.1f, 3.0f);
    int64_t s3n[3] = {N, H, NOPE};
    a.k_nope = mla_tensor_contiguous(kv, MLA_DTYPE_BF16, hd, 3, s3n);
    a.k_nope.strides[0] = row_n;
    a.k_nope.strides[1] = row_h;
    int64_t s3v[3] = {N, H, DVV};
    a.v = mla_tensor_contiguous(kv + NOPE, MLA_DTYPE_BF16, hd, 3, s3v);
    a.v.strides[0] = row_n;
    a.v.strides[1] = row_h;
    if (pe_3d) {
        int64_t sp[3] = {N, 1, ROPE};
        a.k_pe = mla_tensor_contiguous(pe + 512, MLA_DTYPE_BF16, hd, 3, sp);
        a.k_pe.strides[0] = pe_row;
    } else {
        int64_t sp[2] = {N, ROPE};
        a.k_pe = mla_tensor_contiguous(pe + 512, MLA_DTYPE_BF16, hd, 2, sp);
        a.k_pe.strides[0] = pe_row;
    }
    int64_t sko[3] = {N, H, DK}, svo[3] = {N, H, DVV};
    a.k_out = mla_tensor_contiguous(k_ref, out_dt, hd, 3, sko);
    a.v_out = mla_tensor_contiguous(v_ref, out_dt, hd, 3, svo);
    CHECK_STATUS(mla_kv_pack(cpu, &a), MLA_OK);

    uint16_t *d_kv = to_dev(kv, kv_elems * 2), *d_pe = to_dev(pe, pe_elems * 2);
    uint8_t *d_k = NULL, *d_v = NULL;
    CHECK(cudaMalloc((void **)&d_k, kout_b) == cudaSuccess && cudaMalloc((void **)&d_v, vout_b) == cudaSuccess);
    if (d_kv && d_pe && d_k && d_v) {
        CHECK(cudaMemset(d_k, 0xEE, kout_b) == cudaSuccess && cudaMemset(d_v, 0xEE, vout_b) == cudaSuccess);
        mla_kv_pack_args g = a;
        g.k_nope.data = d_kv;
        g.v.data = d_kv + NOPE;
        g.k_pe.data = d_pe + 512;
        g.k_nope.device = g.v.device = g.k_pe.device = dd;
        g.k_out = mla_tensor_contiguous(d_k, out_dt, dd, 3, sko);
        g.v_out = mla_tensor_contiguous(d_v, out_dt, dd, 3, svo);
        CHECK_STATUS(mla_kv_pack(gpu, &g), MLA_OK);
        CHECK(from_dev(k_got, d_k, kout_b) && from_dev(v_got, d_v, vout_b));
        long long bad = count_byte_diffs(k_got, k_ref, kout_b, "k_out") + count_byte_diffs(v_got, v_ref, vout_b, "v_out");
        CHECK_MSG(bad == 0, "kv_pack N=%d H=%d %s pe_3d=%d odd=%d: %lld bytes differ", N, H,
                  mla_dtype_name(out_dt), pe_3d, odd_strides, bad);
    }
    cudaFree(d_kv);
    cudaFree(d_pe);
    cudaFree(d_k);
    cudaFree(d_v);
    free(kv);
    free(pe);
    free(k_ref);
    free(v_ref);
    free(k_got);
    free(v_got);
    mla_backend_destroy(cpu);
    mla_backend_destroy(gpu);
}

TEST(gpu_ops_kv_pack_bit_exact)
{
    if (!gpu_ready()) return;
    for (int fp8 = 0; fp8 < 2; fp8++) {
        mla_dtype dt = fp8 ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16;
        kv_pack_case(1, 16, dt, 1, 0);
        kv_pack_case(333, 16, dt, 0, 0);
        kv_pack_case(37, 128, dt, 1, 0);
        kv_pack_case(65, 1, dt, 0, 1);
        kv_pack_case(19, 16, dt, 1, 1);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* merge_state */
static void merge_case(int tokens, int H, int dim, mla_dtype da, mla_dtype db, mla_dtype dout,
                       int alias_a)
{
    mla_backend *cpu = ops_backend("cpu", 0), *gpu = ops_backend("hopper", 0);
    const int64_t rows = (int64_t)tokens * H, n = rows * dim;
    size_t ea = mla_dtype_size(da), eb = mla_dtype_size(db), eo = mla_dtype_size(dout);
    uint8_t *oa = malloc((size_t)n * ea), *ob = malloc((size_t)n * eb);
    float *la = malloc((size_t)rows * 4), *lb = malloc((size_t)rows * 4);
    for (int64_t r = 0; r < rows; r++) {
        int kind = mla_test_rand_int(0, 9);
        la[r] = kind == 0 ? -INFINITY : mla_test_rand_uniform(-20, 20);
        lb[r] = kind == 1 ? -INFINITY : kind == 2 ? la[r] : mla_test_rand_uniform(-20, 20);
        if (kind == 3) la[r] = lb[r] = -INFINITY;
        for (int d = 0; d < dim; d++) {
            float xa = mla_test_rand_uniform(-3, 3), xb = mla_test_rand_uniform(-3, 3);
            /* A side with lse = -inf holds garbage that must not leak into the output. */
            if (la[r] == -INFINITY) xa = NAN;
            if (lb[r] == -INFINITY) xb = NAN;
            if (da == MLA_DTYPE_F32) ((float *)oa)[r * dim + d] = xa; else ((uint16_t *)oa)[r * dim + d] = mla_float_to_bf16(xa);
            if (db == MLA_DTYPE_F32) ((float *)ob)[r * dim + d] = xb; else ((uint16_t *)ob)[r * dim + d] = mla_float_to_bf16(xb);
        }
    }
    mla_device hd = {MLA_DEVICE_CPU, 0}, dd = {MLA_DEVICE_CUDA, 0};
    int64_t so[3] = {tokens, H, dim}, sl[2] = {tokens, H};
    /* CPU reference on private copies (the GPU run may alias its own inputs). */
    uint8_t *o_ref = malloc((size_t)n * eo), *o_got = malloc((size_t)n * eo);
    float *l_ref = malloc((size_t)rows * 4), *l_got = malloc((size_t)rows * 4);
    memset(o_ref, 0xff, (size_t)n * eo);
    for (int64_t r = 0; r < rows; r++) l_ref[r] = NAN;
    mla_merge_state_args a = {0};
    a.o_a = mla_tensor_contiguous(oa, da, hd, 3, so);
    a.o_b = mla_tensor_contiguous(ob, db, hd, 3, so);
    a.lse_a = mla_tensor_contiguous(la, MLA_DTYPE_F32, hd, 2, sl);
    a.lse_b = mla_tensor_contiguous(lb, MLA_DTYPE_F32, hd, 2, sl);
    a.o = mla_tensor_contiguous(o_ref, dout, hd, 3, so);
    a.lse = mla_tensor_contiguous(l_ref, MLA_DTYPE_F32, hd, 2, sl);
    CHECK_STATUS(mla_merge_state(cpu, &a), MLA_OK);

    /* In place, o_a's buffer must also hold the (possibly wider) output. */
    uint8_t *d_oa = NULL, *d_ob = to_dev(ob, (size_t)n * eb);
    if (cudaMalloc((void **)&d_oa, (size_t)n * (ea > eo ? ea : eo)) == cudaSuccess &&
        cudaMemcpy(d_oa, oa, (size_t)n * ea, cudaMemcpyHostToDevice) != cudaSuccess) {
        cudaFree(d_oa);
        d_oa = NULL;
    }
    float *d_la = to_dev(la, (size_t)rows * 4), *d_lb = to_dev(lb, (size_t)rows * 4);
    uint8_t *d_o = NULL;
    float *d_l = NULL;
    if (alias_a) {
        d_o = d_oa; /* o aliases o_a and lse aliases lse_a */
        d_l = d_la;
    } else {
        CHECK(cudaMalloc((void **)&d_o, (size_t)n * eo) == cudaSuccess);
        CHECK(cudaMalloc((void **)&d_l, (size_t)rows * 4) == cudaSuccess);
        if (d_o) CHECK(cudaMemset(d_o, 0xff, (size_t)n * eo) == cudaSuccess);
        if (d_l) CHECK(cudaMemset(d_l, 0xff, (size_t)rows * 4) == cudaSuccess);
    }
    if (d_oa && d_ob && d_la && d_lb && d_o && d_l) {
        mla_merge_state_args g = a;
        g.o_a = mla_tensor_contiguous(d_oa, da, dd, 3, so);
        g.o_b = mla_tensor_contiguous(d_ob, db, dd, 3, so);
        g.lse_a = mla_tensor_contiguous(d_la, MLA_DTYPE_F32, dd, 2, sl);
        g.lse_b = mla_tensor_contiguous(d_lb, MLA_DTYPE_F32, dd, 2, sl);
        g.o = mla_tensor_contiguous(d_o, dout, dd, 3, so);
        g.lse = mla_tensor_contiguous(d_l, MLA_DTYPE_F32, dd, 2, sl);
        CHECK_STATUS(mla_merge_state(gpu, &g), MLA_OK);
        CHECK(from_dev(o_got, d_o, (size_t)n * eo) && from_dev(l_got, d_l, (size_t)rows * 4));
        long long bad = 0;
        for (int64_t r = 0; r < rows; r++) {
            int empty = l_ref[r] == -INFINITY;
            int ok = empty ? (l_got[r] == -INFINITY) : fabsf(l_got[r] - l_ref[r]) <= 1e-6f * (fabsf(l_ref[r]) + 1.0f);
            for (int d = 0; d < dim; d++) {
                int64_t i = r * dim + d;
                float x, y;
                if (dout == MLA_DTYPE_F32) {
                    x = ((float *)o_got)[i];
                    y = ((float *)o_ref)[i];
                    ok = ok && (empty ? x == 0.0f : fabsf(x - y) <= 2e-6f * (fabsf(y) + 1e-3f));
                } else {
                    uint16_t bx = ((uint16_t *)o_got)[i], by = ((uint16_t *)o_ref)[i];
                    x = mla_bf16_to_float(bx);
                    y = mla_bf16_to_float(by);
                    int diff = (int)bx - (int)by;
                    ok = ok && x == x && (empty ? x == 0.0f : (diff >= -1 && diff <= 1));
                }
            }
            if (!ok) {
                if (bad < 4) fprintf(stderr, "    merge row %lld: lse gpu %g cpu %g (la %g lb %g)\n", (long long)r, l_got[r], l_ref[r], la[r], lb[r]);
                bad++;
            }
        }
        CHECK_MSG(bad == 0, "merge_state %s+%s->%s dim %d alias %d: %lld rows wrong", mla_dtype_name(da),
                  mla_dtype_name(db), mla_dtype_name(dout), dim, alias_a, bad);
    }
    cudaFree(d_oa);
    cudaFree(d_ob);
    cudaFree(d_la);
    cudaFree(d_lb);
    if (!alias_a) {
        cudaFree(d_o);
        cudaFree(d_l);
    }
    free(oa);
    free(ob);
    free(la);
    free(lb);
    free(o_ref);
    free(o_got);
    free(l_ref);
    free(l_got);
}

TEST(gpu_ops_merge_state)
{
    if (!gpu_ready()) return;
    merge_case(100, 16, 128, MLA_DTYPE_F32, MLA_DTYPE_F32, MLA_DTYPE_F32, 0);
    merge_case(100, 16, 128, MLA_DTYPE_BF16, MLA_DTYPE_BF16, MLA_DTYPE_BF16, 0);
    merge_case(33, 16, 512, MLA_DTYPE_F32, MLA_DTYPE_BF16, MLA_DTYPE_BF16, 0);
    merge_case(7, 128, 128, MLA_DTYPE_BF16, MLA_DTYPE_F32, MLA_DTYPE_F32, 0);
    merge_case(50, 16, 128, MLA_DTYPE_F32, MLA_DTYPE_F32, MLA_DTYPE_F32, 1);    /* in place */
    merge_case(50, 16, 128, MLA_DTYPE_BF16, MLA_DTYPE_F32, MLA_DTYPE_BF16, 1);  /* in place */
    merge_case(9, 4, 100, MLA_DTYPE_BF16, MLA_DTYPE_BF16, MLA_DTYPE_BF16, 1);   /* odd dim, in place */
    /* An output aliasing an input of another width is refused by the base backend. */
}

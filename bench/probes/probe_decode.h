// Set-up shared by the decode probes (decode_trace.cu, v10_timeline.cu, v9_timeline.cu),
// included after the decode sources: one decode on device buffers (a random e4m3 cache
// without NaN codes or a random bf16 one, a random bf16 or e4m3 query, pages handed out in a
// shuffled order, page size 64) and the mla_decode_problem that runs it on its own stream.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                    \
    do {                                                                                         \
        cudaError_t e_ = (x);                                                                    \
        if (e_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));          \
            return 1;                                                                            \
        }                                                                                        \
    } while (0)

// The cache as random e4m3 bytes without NaN patterns or as bf16 values in [-1, 1) (kv_bf16;
// n_kv counts elements); the query as bf16 values in [-1, 1) or as e4m3 bytes like the cache.
__global__ void probe_fill(uint8_t *kv, size_t n_kv, int kv_bf16, void *q, size_t n_q, int q_fp8, uint32_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n_kv + n_q; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        uint8_t b = (uint8_t)h;
        if ((b & 0x7f) == 0x7f) b ^= 0x01;
        const float f = (float)(h & 0xffff) / 32768.0f - 1.0f;
        if (i < n_kv && kv_bf16) {
            ((uint16_t *)kv)[i] = (uint16_t)(__float_as_uint(f) >> 16);
        } else if (i < n_kv) {
            kv[i] = b;
        } else if (q_fp8) {
            ((uint8_t *)q)[i - n_kv] = b;
        } else {
            ((uint16_t *)q)[i - n_kv] = (uint16_t)(__float_as_uint(f) >> 16);
        }
    }
}

struct probe_decode {
    cudaDeviceProp prop;
    mla_cuda_device_info dev;
    mla_decode_problem pr;
    uint32_t *flags; // the launcher's device error flags
};

// B requests of seq keys (request 0: long_seq), H heads, q_len 1, causal; 0 on success.
static int probe_decode_setup(probe_decode *p, int B, int H, int seq, int long_seq, mla_dtype q_dtype,
                              mla_dtype kv_dtype, int fp8_math)
{
    CK(cudaGetDeviceProperties(&p->prop, 0));
    p->dev = {0, p->prop.multiProcessorCount, p->prop.major * 10 + p->prop.minor, p->prop.sharedMemPerBlockOptin};
    const int P = 64, max_len = seq > long_seq ? seq : long_seq, pages_per_seq = (max_len + P - 1) / P,
              num_pages = B * pages_per_seq;
    const int q_fp8 = q_dtype == MLA_DTYPE_FP8_E4M3, kv_bf16 = kv_dtype == MLA_DTYPE_BF16;
    const size_t n_kv = (size_t)num_pages * P * 576, n_q = (size_t)B * H * 576;
    uint8_t *kv;
    void *q, *out, *ws;
    int32_t *table, *lens;
    const size_t ws_bytes = mla_cuda_decode_workspace_size(&p->dev, B, 1, H, 512);
    CK(cudaMalloc(&kv, n_kv * (kv_bf16 ? 2 : 1)));
    CK(cudaMalloc(&q, n_q * (q_fp8 ? 1 : 2)));
    CK(cudaMalloc(&out, (size_t)B * H * 512 * 2));
    CK(cudaMalloc(&table, (size_t)num_pages * 4));
    CK(cudaMalloc(&lens, (size_t)B * 4));
    CK(cudaMalloc(&p->flags, 4));
    CK(cudaMalloc(&ws, ws_bytes));
    CK(cudaMemset(p->flags, 0, 4));
    probe_fill<<<1024, 256>>>(kv, n_kv, kv_bf16, q, n_q, q_fp8, 12345u);
    std::vector<int32_t> h_table(num_pages), h_lens(B, seq);
    h_lens[0] = long_seq;
    for (int i = 0; i < num_pages; i++) h_table[i] = i;
    srand(7);
    for (int i = num_pages - 1; i > 0; i--) std::swap(h_table[i], h_table[rand() % (i + 1)]);
    CK(cudaMemcpy(table, h_table.data(), h_table.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(lens, h_lens.data(), h_lens.size() * 4, cudaMemcpyHostToDevice));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    mla_decode_problem &pr = p->pr;
    pr = {};
    pr.batch = B;
    pr.q_len = 1;
    pr.num_heads = H;
    pr.kv_lora_rank = 512;
    pr.rope_dim = 64;
    pr.page_size = P;
    pr.num_pages = num_pages;
    pr.max_pages_per_seq = pages_per_seq;
    pr.max_seq_len = max_len;
    pr.causal = 1;
    pr.fp8_math = fp8_math;
    pr.q_dtype = q_dtype;
    pr.kv_dtype = kv_dtype;
    pr.bmm1_scale = 0.0625f;
    pr.bmm2_scale = 1.0f;
    pr.q = q;
    pr.kv_cache = kv;
    pr.block_table = table;
    pr.seq_lens = lens;
    pr.out = out;
    pr.workspace = ws;
    pr.workspace_bytes = ws_bytes;
    pr.stream = st;
    return 0;
}

// n calls on the problem's stream, then a synchronisation; 0 on success.
static int probe_decode_warm(probe_decode *p, int n)
{
    for (int i = 0; i < n; i++)
        if (mla_cuda_decode(&p->dev, &p->pr, p->flags) != 0) {
            fprintf(stderr, "decode failed\n");
            return 1;
        }
    CK(cudaStreamSynchronize((cudaStream_t)p->pr.stream));
    return 0;
}

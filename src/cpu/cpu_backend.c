/* The "cpu" kernel set: the reference every other backend is tested against, and the fallback
 * where no GPU is present. Host memory, worker threads from mla_parallel_for. */
#include "cpu_kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void cpu_get_capabilities(mla_capabilities *caps)
{
    memset(caps, 0, sizeof *caps);
    caps->min_heads = 1;
    caps->max_heads = 128;
    caps->page_sizes[0] = 32;
    caps->page_sizes[1] = 64;
    caps->num_page_sizes = 2;
    const uint32_t bf16_fp8 = (1u << MLA_DTYPE_BF16) | (1u << MLA_DTYPE_FP8_E4M3);
    caps->kv_cache_dtypes = bf16_fp8;
    caps->query_dtypes = bf16_fp8;
    caps->prefill_dtypes = bf16_fp8;
    /* Any dims up to max_head_dim: the reference is shape-generic. */
    caps->kv_lora_rank = 0;
    caps->qk_rope_head_dim = 0;
    caps->qk_nope_head_dim = 0;
    caps->v_head_dim = 0;
    caps->max_head_dim = 1024;
    caps->max_q_len = 8;
    caps->min_sm_arch = 0;
    caps->device_type = MLA_DEVICE_CPU;
}

static int cpu_is_available(char *reason, size_t reason_size)
{
    if (reason && reason_size) reason[0] = '\0';
    return 1;
}

static mla_status cpu_alloc(const mla_config *cfg, size_t bytes, void **ptr)
{
    (void)cfg;
    *ptr = calloc(1, bytes ? bytes : 1);
    if (!*ptr)
        return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "cpu backend: cannot allocate %zu bytes",
                             bytes);
    return MLA_OK;
}

static void cpu_free(const mla_config *cfg, void *ptr)
{
    (void)cfg;
    free(ptr);
}

static mla_status cpu_copy_to_host(const mla_config *cfg, void *dst, const void *src,
                                   size_t bytes, void *stream)
{
    (void)cfg;
    (void)stream;
    if (bytes) memmove(dst, src, bytes);
    return MLA_OK;
}

const mla_kernel_set mla_cpu_kernel_set = {
    .api_version = MLA_KERNEL_SET_API_VERSION,
    .name = "cpu",
    .description = "CPU reference kernels (float accumulation, pthreads)",
    .device_type = MLA_DEVICE_CPU,
    .get_capabilities = cpu_get_capabilities,
    .is_available = cpu_is_available,
    .check_device = NULL,
    .create = NULL,
    .destroy = NULL,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_to_host = cpu_copy_to_host,
    .stream_is_capturing = NULL,
    .device_errors = NULL,
    .decode_workspace_size = NULL,
    .run_decode = mla_cpu_run_decode,
    .run_prefill = mla_cpu_run_prefill,
    .run_merge_state = mla_cpu_run_merge_state,
    .run_kv_cache_write = mla_cpu_run_kv_cache_write,
    .run_quantize_fp8 = mla_cpu_run_quantize_fp8,
    .run_kv_pack = mla_cpu_run_kv_pack,
};

/* The registry of kernel sets, and the configuration check that runs before anything is
 * allocated. */
#include "tensor_check.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Adding a kernel set: one line here. */
static const mla_kernel_set *const kernel_sets[] = {
    &mla_cpu_kernel_set,
    &mla_hopper_kernel_set,
};
#define NUM_KERNEL_SETS ((int)(sizeof kernel_sets / sizeof kernel_sets[0]))

void mla_config_init(mla_config *cfg)
{
    if (!cfg) return;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->num_heads = 128;
    cfg->kv_lora_rank = 512;
    cfg->qk_rope_head_dim = 64;
    cfg->qk_nope_head_dim = 128;
    cfg->v_head_dim = 128;
    cfg->page_size = 64;
    cfg->kv_cache_dtype = MLA_DTYPE_FP8_E4M3;
    /* YaRN mscale for DeepSeek-V3 (factor 40, mscale_all_dim 1). */
    double mscale = 0.1 * log(40.0) + 1.0;
    cfg->scales.softmax_scale = (float)(mscale * mscale / sqrt(192.0));
    cfg->scales.q_scale = 1.0f;
    cfg->scales.k_scale = 1.0f;
    cfg->scales.v_scale = 1.0f;
    cfg->scales.o_scale = 1.0f;
    cfg->max_q_len = 1;
    cfg->device.type = MLA_DEVICE_CPU;
    cfg->device.index = 0;
}

int mla_backend_count(void) { return NUM_KERNEL_SETS; }

const mla_kernel_set *mla_find_kernel_set(const char *name)
{
    if (!name) return NULL;
    for (int i = 0; i < NUM_KERNEL_SETS; i++)
        if (strcmp(kernel_sets[i]->name, name) == 0) return kernel_sets[i];
    return NULL;
}

static void fill_info(const mla_kernel_set *ks, mla_backend_info *info)
{
    memset(info, 0, sizeof *info);
    info->name = ks->name;
    info->description = ks->description;
    ks->get_capabilities(&info->caps);
    info->available = ks->is_available(info->reason, sizeof info->reason);
    if (info->available) info->reason[0] = '\0';
}

mla_status mla_backend_get_info(int index, mla_backend_info *info)
{
    if (!info) return mla_set_error(MLA_ERR_NULL_POINTER, "mla_backend_get_info: info is NULL");
    if (index < 0 || index >= NUM_KERNEL_SETS)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "mla_backend_get_info: index %d is outside [0, %d)", index,
                             NUM_KERNEL_SETS);
    fill_info(kernel_sets[index], info);
    return MLA_OK;
}

static mla_status not_found(const char *op, const char *name)
{
    char names[256];
    size_t used = 0;
    names[0] = '\0';
    for (int i = 0; i < NUM_KERNEL_SETS && used < sizeof names; i++)
        used += (size_t)snprintf(names + used, sizeof names - used, "%s'%s'", i ? ", " : "",
                                 kernel_sets[i]->name);
    return mla_set_error(MLA_ERR_NOT_FOUND, "%s: no backend named '%s' (registered: %s)", op,
                         name, names);
}

mla_status mla_backend_find(const char *name, mla_backend_info *info)
{
    if (!name || !info)
        return mla_set_error(MLA_ERR_NULL_POINTER, "mla_backend_find: %s is NULL",
                             name ? "info" : "name");
    const mla_kernel_set *ks = mla_find_kernel_set(name);
    if (!ks) return not_found("mla_backend_find", name);
    fill_info(ks, info);
    return MLA_OK;
}

static pthread_once_t k_scale_warning_once = PTHREAD_ONCE_INIT;
static void warn_k_scale_ignored(void)
{
    mla_log(1, "the checkpoint supplies k_scale but the KV cache is not fp8_e4m3: k_scale is "
               "ignored (it applies only to an fp8 cache)");
}

static mla_status check_dim(const char *backend, const char *name, int value, int required,
                            int max_dim)
{
    if (required && value != required)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "backend '%s' supports %s = %d only (got %d)",
                             backend, name, required, value);
    if (value < 1 || value > max_dim)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s = %d is outside [1, %d]", name, value,
                             max_dim);
    return MLA_OK;
}

static int page_size_supported(const mla_capabilities *caps, int page_size)
{
    for (int i = 0; i < caps->num_page_sizes; i++)
        if (caps->page_sizes[i] == page_size) return 1;
    return 0;
}

/* The supported page size closest to the requested one (ties go to the larger). */
static int nearest_page_size(const mla_capabilities *caps, int page_size)
{
    int best = caps->page_sizes[0];
    for (int i = 1; i < caps->num_page_sizes; i++) {
        int d_new = abs(caps->page_sizes[i] - page_size), d_best = abs(best - page_size);
        if (d_new < d_best || (d_new == d_best && caps->page_sizes[i] > best))
            best = caps->page_sizes[i];
    }
    return best;
}

mla_status mla_config_check(const char *backend_name, mla_config *cfg)
{
    mla_clear_error();
    if (!backend_name || !cfg)
        return mla_set_error(MLA_ERR_NULL_POINTER, "mla_config_check: %s is NULL",
                             backend_name ? "cfg" : "backend_name");
    if (cfg->struct_size != sizeof *cfg)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "mla_config: struct_size is %zu, expected %zu (call mla_config_init "
                             "first)",
                             cfg->struct_size, sizeof *cfg);
    const mla_kernel_set *ks = mla_find_kernel_set(backend_name);
    if (!ks) return not_found("mla_config_check", backend_name);
    mla_capabilities caps;
    ks->get_capabilities(&caps);
    char reason[256] = "";
    if (!ks->is_available(reason, sizeof reason))
        return mla_set_error(MLA_ERR_BACKEND_UNAVAILABLE, "backend '%s' is unavailable: %s",
                             backend_name, reason);
    const char *want_dev = caps.device_type == MLA_DEVICE_CUDA ? "cuda" : "cpu";
    if (cfg->device.type != caps.device_type)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "backend '%s' runs on %s devices but cfg.device is %s:%d (set "
                             "cfg.device.type = MLA_DEVICE_%s)",
                             backend_name, want_dev,
                             cfg->device.type == MLA_DEVICE_CUDA ? "cuda" : "cpu",
                             cfg->device.index, caps.device_type == MLA_DEVICE_CUDA ? "CUDA" : "CPU");
    if (cfg->device.index < 0 || (caps.device_type == MLA_DEVICE_CPU && cfg->device.index != 0))
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "cfg.device.index %d is not a %s device",
                             cfg->device.index, want_dev);
    if (ks->check_device) MLA_TRY(ks->check_device(cfg));

    if (cfg->num_heads < caps.min_heads || cfg->num_heads > caps.max_heads)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "num_heads = %d is outside [%d, %d] for backend '%s'",
                             cfg->num_heads, caps.min_heads, caps.max_heads, backend_name);
    MLA_TRY(check_dim(backend_name, "kv_lora_rank", cfg->kv_lora_rank, caps.kv_lora_rank,
                      caps.max_head_dim));
    MLA_TRY(check_dim(backend_name, "qk_rope_head_dim", cfg->qk_rope_head_dim,
                      caps.qk_rope_head_dim, caps.max_head_dim));
    MLA_TRY(check_dim(backend_name, "qk_nope_head_dim", cfg->qk_nope_head_dim,
                      caps.qk_nope_head_dim, caps.max_head_dim));
    MLA_TRY(check_dim(backend_name, "v_head_dim", cfg->v_head_dim, caps.v_head_dim,
                      caps.max_head_dim));

    if (cfg->page_size <= 0 || cfg->page_size > 4096)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "page_size = %d is outside [1, 4096]",
                             cfg->page_size);
    if (!page_size_supported(&caps, cfg->page_size)) {
        int adjusted = nearest_page_size(&caps, cfg->page_size);
        mla_log(0, "backend '%s' supports page_size 32 or 64 only; page_size %d adjusted to %d",
                backend_name, cfg->page_size, adjusted);
        cfg->page_size = adjusted;
    }

    int dt = (int)cfg->kv_cache_dtype;
    if (dt < 0 || dt > MLA_DTYPE_I64 || !(caps.kv_cache_dtypes >> dt & 1u)) {
        if (caps.kv_cache_dtypes == (1u << MLA_DTYPE_FP8_E4M3))
            return mla_set_error(MLA_ERR_UNSUPPORTED,
                                 "backend '%s' requires kv_cache_dtype fp8_e4m3 (got %s)",
                                 backend_name, mla_dtype_size(cfg->kv_cache_dtype)
                                                   ? mla_dtype_name(cfg->kv_cache_dtype)
                                                   : "an unknown dtype");
        return mla_set_error(MLA_ERR_UNSUPPORTED,
                             "kv_cache_dtype %s is not supported by backend '%s' (supported: "
                             "fp8_e4m3%s)",
                             mla_dtype_size(cfg->kv_cache_dtype) ? mla_dtype_name(cfg->kv_cache_dtype)
                                                                 : "unknown",
                             backend_name,
                             caps.kv_cache_dtypes >> MLA_DTYPE_BF16 & 1u ? ", bf16" : "");
    }
    if (cfg->max_q_len < 1 || cfg->max_q_len > caps.max_q_len)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "max_q_len = %d is outside [1, %d]",
                             cfg->max_q_len, caps.max_q_len);
    if (cfg->decode_fp8_math != 0 && cfg->decode_fp8_math != 1)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "decode_fp8_math = %d: must be 0 or 1",
                             cfg->decode_fp8_math);
    if (cfg->max_batch < 0 || cfg->max_batch > (1 << 20))
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "max_batch = %d is outside [0, 2^20]",
                             cfg->max_batch);
    MLA_TRY(mla_check_scale("mla_config_check", "scales.softmax_scale", cfg->scales.softmax_scale));
    MLA_TRY(mla_check_scale("mla_config_check", "scales.q_scale", cfg->scales.q_scale));
    MLA_TRY(mla_check_scale("mla_config_check", "scales.k_scale", cfg->scales.k_scale));
    MLA_TRY(mla_check_scale("mla_config_check", "scales.v_scale", cfg->scales.v_scale));
    MLA_TRY(mla_check_scale("mla_config_check", "scales.o_scale", cfg->scales.o_scale));
    if (cfg->has_k_scale && cfg->kv_cache_dtype != MLA_DTYPE_FP8_E4M3)
        pthread_once(&k_scale_warning_once, warn_k_scale_ignored);
    return MLA_OK;
}

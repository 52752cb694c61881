/* CPU reference kernels (hooks of mla_cpu_kernel_set). Inputs arrive validated by the base
 * backend; the kernels still never read or write out of bounds on bad index data (bad pages
 * and slots are skipped). */
#ifndef MLA_CPU_KERNELS_H
#define MLA_CPU_KERNELS_H

#include "mla_internal.h"

mla_status mla_cpu_run_decode(void *state, const mla_decode_problem *p);
mla_status mla_cpu_run_prefill(void *state, const mla_prefill_problem *p);
mla_status mla_cpu_run_merge_state(void *state, const mla_merge_problem *p);
mla_status mla_cpu_run_kv_cache_write(void *state, const mla_cache_write_problem *p);
mla_status mla_cpu_run_quantize_fp8(void *state, const mla_quantize_problem *p);
mla_status mla_cpu_run_kv_pack(void *state, const mla_kv_pack_problem *p);

/* Stores x (already scaled) as dtype at element i: fp8 e4m3 / bf16 / fp16 / f32. */
static inline void mla_cpu_store_float(void *base, mla_dtype dtype, int64_t i, float x)
{
    switch (dtype) {
    case MLA_DTYPE_BF16: ((uint16_t *)base)[i] = mla_float_to_bf16(x); break;
    case MLA_DTYPE_FP16: ((uint16_t *)base)[i] = mla_float_to_fp16(x); break;
    case MLA_DTYPE_FP8_E4M3: ((uint8_t *)base)[i] = mla_float_to_fp8_e4m3(x); break;
    case MLA_DTYPE_F32: ((float *)base)[i] = x; break;
    case MLA_DTYPE_I32:
    case MLA_DTYPE_I64: break; /* never an output dtype of these kernels */
    }
}

#endif

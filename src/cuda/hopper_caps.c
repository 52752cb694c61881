/* What the hopper kernels support; shared by the CUDA build and the no-CUDA stub so both
 * report the same capabilities. */
#include "mla_internal.h"

#include <string.h>

void mla_hopper_capabilities(mla_capabilities *c)
{
    memset(c, 0, sizeof *c);
    c->min_heads = 1;
    c->max_heads = 128;
    c->page_sizes[0] = 32;
    c->page_sizes[1] = 64;
    c->num_page_sizes = 2;
    c->kv_cache_dtypes = 1u << MLA_DTYPE_FP8_E4M3 | 1u << MLA_DTYPE_BF16;
    c->query_dtypes = 1u << MLA_DTYPE_BF16 | 1u << MLA_DTYPE_FP8_E4M3;
    c->prefill_dtypes = 1u << MLA_DTYPE_BF16 | 1u << MLA_DTYPE_FP8_E4M3;
    c->kv_lora_rank = 512;
    c->qk_rope_head_dim = 64;
    c->qk_nope_head_dim = 128;
    c->v_head_dim = 128;
    c->max_head_dim = 512;
    c->max_q_len = 8;
    c->min_sm_arch = 90;
    c->device_type = MLA_DEVICE_CUDA;
}

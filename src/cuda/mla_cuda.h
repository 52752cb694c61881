/*
 * extern "C" launchers implemented in the .cu files, called by the hopper kernel set
 * (src/cuda/hopper_backend.c). Each returns 0 (cudaSuccess) or a cudaError_t value; the
 * problem structs are already validated by the base backend. Nothing here synchronizes,
 * allocates or reads device memory from the host (CUDA-graph safe).
 */
#ifndef MLA_CUDA_H
#define MLA_CUDA_H

#include "mla_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mla_cuda_device_info {
    int device;    /* CUDA ordinal */
    int num_sms;
    int sm_arch;   /* major*10 + minor */
    size_t max_smem_per_block_optin;
} mla_cuda_device_info;

/* Device-side sticky error flags (MLA_DEVERR_*), one uint32 in device memory owned by the
 * kernel set; kernels atomicOr into it when they meet bad index data. */

/* Split-KV decode + combine. Workspace layout is private to the launcher. */
size_t mla_cuda_decode_workspace_size(const mla_cuda_device_info *dev, int batch, int q_len,
                                      int num_heads, int kv_lora_rank);
int mla_cuda_decode(const mla_cuda_device_info *dev, const mla_decode_problem *p,
                    uint32_t *device_error_flags);
/* A decode plan (the split schedule alone) kept apart from the workspace: its bytes, and the
 * scheduling step writing it into p->plan. mla_cuda_decode with p->plan set skips that step. */
size_t mla_cuda_decode_plan_size(const mla_cuda_device_info *dev, int batch, int q_len,
                                 int num_heads, int fp8_kv);
int mla_cuda_decode_plan(const mla_cuda_device_info *dev, const mla_decode_problem *p,
                         uint32_t *device_error_flags);
/* Test hook: the MLA_DECODE_* switches are read once per process; after this the next call
 * reads them again (a backend created after it plans for the new forms; one created before
 * must not be used again). A call running at the same time may still see the old forms. */
void mla_cuda_decode_reread_switches(void);
/* Test hook: the split kernel mla_cuda_decode would pick for this problem where it picks one of
 * the fp8-cache forms for H * q_len <= 32 (the swap kernel's MLA_DECODE_V2_CONV value, e.g.
 * "lazy8", or "v2 mma.sync"; "seesaw32 lazy8", ...; "other" for the rest), and its head blocks
 * (two 16-row ones for 32 rows on the swap kernel), read on the host alone. */
const char *mla_cuda_decode_form(const mla_cuda_device_info *dev, const mla_decode_problem *p,
                                 int *head_blocks);

int mla_cuda_prefill(const mla_cuda_device_info *dev, const mla_prefill_problem *p);
int mla_cuda_merge_state(const mla_merge_problem *p);
int mla_cuda_kv_cache_write(const mla_cache_write_problem *p, uint32_t *device_error_flags);
int mla_cuda_quantize_fp8(const mla_quantize_problem *p);
int mla_cuda_kv_pack(const mla_kv_pack_problem *p);

/* Serving layer (src/cuda/common/metadata.cu): metadata from req_to_token, cache gather. */
int mla_cuda_build_metadata(const mla_metadata_problem *p);
int mla_cuda_gather_cache(const mla_gather_problem *p);

/* Loads every kernel variant (sets smem attributes, forces module load) so the first real
 * call does not pay for it. */
int mla_cuda_decode_warmup(const mla_cuda_device_info *dev);
int mla_cuda_prefill_warmup(const mla_cuda_device_info *dev);

#ifdef __cplusplus
}
#endif
#endif

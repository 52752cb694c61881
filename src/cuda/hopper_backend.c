/* Host side of the "hopper" kernel set (sm_90a): device checks, memory, device error flags,
 * and the hooks that call the extern "C" launchers. Every hook runs with the backend's device
 * current and restores the caller's device afterwards, so a backend on device 1 never touches
 * device 0. */
#include "mla_cuda.h"
#include "tensor_check.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct hopper_state {
    mla_cuda_device_info dev;
    uint32_t *device_error_flags; /* one word, MLA_DEVERR_* bits */
} hopper_state;

/* The kernels are built for sm_90a only, which runs on compute capability 9.0 exactly. */
static int device_is_sm90(int device, int *arch)
{
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
        return 0;
    *arch = major * 10 + minor;
    return major == 9 && minor == 0;
}

static int hopper_is_available(char *reason, size_t n)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        snprintf(reason, n, "no usable CUDA device (cudaGetDeviceCount: %s)", cudaGetErrorString(err));
        (void)cudaGetLastError();
        return 0;
    }
    int arch = 0;
    for (int d = 0; d < count; d++)
        if (device_is_sm90(d, &arch)) return 1;
    if (count == 0)
        snprintf(reason, n, "no CUDA device");
    else
        snprintf(reason, n, "needs an sm_90 (Hopper) GPU; device 0 is sm_%d", arch);
    return 0;
}

static mla_status hopper_check_device(const mla_config *cfg)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
    if (cfg->device.index >= count)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "cfg.device.index = %d but %d CUDA device(s) exist",
                             cfg->device.index, count);
    int arch = 0;
    if (!device_is_sm90(cfg->device.index, &arch))
        return mla_set_error(MLA_ERR_UNSUPPORTED,
                             "backend 'hopper' needs an sm_90 GPU; cuda:%d is sm_%d",
                             cfg->device.index, arch);
    return MLA_OK;
}

/* Makes cfg's device current; returns the previous one to restore. */
static int device_enter(int device)
{
    int prev = device;
    if (cudaGetDevice(&prev) != cudaSuccess) prev = device;
    if (prev != device) cudaSetDevice(device);
    return prev;
}

static void device_leave(int device, int prev)
{
    if (prev != device) cudaSetDevice(prev);
}

static mla_status cuda_status(const char *what, int rc)
{
    if (rc == cudaSuccess) return MLA_OK;
    (void)cudaGetLastError(); /* clear a non-sticky error so later calls can succeed */
    if (rc == cudaErrorNotSupported)
        return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: not implemented by the hopper kernels", what);
    if (rc == cudaErrorMemoryAllocation)
        return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "%s: %s", what, cudaGetErrorString((cudaError_t)rc));
    return mla_set_error(MLA_ERR_DEVICE, "%s: CUDA error %d: %s", what, rc,
                         cudaGetErrorString((cudaError_t)rc));
}

static mla_status hopper_create(const mla_config *cfg, void **out)
{
    hopper_state *s = calloc(1, sizeof *s);
    if (!s) return mla_set_error(MLA_ERR_OUT_OF_MEMORY, "hopper: out of host memory");
    int dev = cfg->device.index, prev = device_enter(dev);
    struct cudaDeviceProp prop;
    mla_status st = cuda_status("hopper: cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, dev));
    if (st == MLA_OK) {
        s->dev.device = dev;
        s->dev.num_sms = prop.multiProcessorCount;
        s->dev.sm_arch = prop.major * 10 + prop.minor;
        s->dev.max_smem_per_block_optin = prop.sharedMemPerBlockOptin;
        st = cuda_status("hopper: cudaMalloc(error flags)",
                         cudaMalloc((void **)&s->device_error_flags, sizeof(uint32_t)));
    }
    if (st == MLA_OK)
        st = cuda_status("hopper: cudaMemset", cudaMemset(s->device_error_flags, 0, sizeof(uint32_t)));
    /* Load every kernel variant now so the first request does not stall. */
    if (st == MLA_OK) st = cuda_status("hopper: decode warm-up", mla_cuda_decode_warmup(&s->dev));
    if (st == MLA_OK) st = cuda_status("hopper: prefill warm-up", mla_cuda_prefill_warmup(&s->dev));
    if (st != MLA_OK) {
        if (s->device_error_flags) cudaFree(s->device_error_flags);
        free(s);
        device_leave(dev, prev);
        return st;
    }
    device_leave(dev, prev);
    *out = s;
    return MLA_OK;
}

static void hopper_destroy(void *state)
{
    hopper_state *s = state;
    if (!s) return;
    int prev = device_enter(s->dev.device);
    cudaFree(s->device_error_flags);
    device_leave(s->dev.device, prev);
    free(s);
}

static mla_status hopper_alloc(const mla_config *cfg, size_t bytes, void **ptr)
{
    int prev = device_enter(cfg->device.index);
    *ptr = NULL;
    cudaError_t err = cudaMalloc(ptr, bytes ? bytes : 1);
    if (err == cudaSuccess) err = cudaMemset(*ptr, 0, bytes);
    if (err != cudaSuccess && *ptr) {
        cudaFree(*ptr);
        *ptr = NULL;
    }
    device_leave(cfg->device.index, prev);
    if (err != cudaSuccess) {
        char what[96];
        snprintf(what, sizeof what, "hopper: cudaMalloc(%zu bytes)", bytes);
        return cuda_status(what, err);
    }
    return MLA_OK;
}

static void hopper_free(const mla_config *cfg, void *ptr)
{
    int prev = device_enter(cfg->device.index);
    cudaFree(ptr);
    device_leave(cfg->device.index, prev);
}

static mla_status hopper_copy_to_host(const mla_config *cfg, void *dst, const void *src,
                                      size_t bytes, void *stream)
{
    int prev = device_enter(cfg->device.index);
    cudaError_t err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, (cudaStream_t)stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize((cudaStream_t)stream);
    device_leave(cfg->device.index, prev);
    return cuda_status("index check: copy to host", err);
}

static int hopper_stream_is_capturing(void *stream)
{
    enum cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing((cudaStream_t)stream, &status) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return status != cudaStreamCaptureStatusNone;
}

static mla_status hopper_device_errors(void *state, uint32_t *flags)
{
    hopper_state *s = state;
    int prev = device_enter(s->dev.device);
    cudaError_t err = cudaDeviceSynchronize();
    if (err == cudaSuccess)
        err = cudaMemcpy(flags, s->device_error_flags, sizeof *flags, cudaMemcpyDeviceToHost);
    if (err == cudaSuccess) err = cudaMemset(s->device_error_flags, 0, sizeof(uint32_t));
    device_leave(s->dev.device, prev);
    return cuda_status("mla_backend_device_errors", err);
}

static size_t hopper_decode_workspace_size(void *state, const mla_config *cfg, int batch, int q_len)
{
    hopper_state *s = state;
    size_t rule = (size_t)s->dev.num_sms * cfg->num_heads * q_len * (cfg->kv_lora_rank + 1) * 4;
    size_t need = mla_cuda_decode_workspace_size(&s->dev, batch, q_len, cfg->num_heads,
                                                 cfg->kv_lora_rank);
    return need > rule ? need : rule;
}

/* Each hook: the backend's device current, launch, translate the CUDA status. */
#define HOPPER_RUN(what, call)                                                         \
    do {                                                                               \
        hopper_state *s_ = state;                                                      \
        int prev_ = device_enter(s_->dev.device);                                      \
        int rc_ = (call);                                                              \
        if (rc_ == cudaSuccess) rc_ = (int)cudaGetLastError();                         \
        device_leave(s_->dev.device, prev_);                                           \
        return cuda_status(what, rc_);                                                 \
    } while (0)

/* The kernels load tiles with TMA and 16-byte vectors: base pointers must be 16-byte aligned
 * (a caller's sliced view may not be; say so instead of failing on the device). */
static mla_status check_aligned(const char *op, const char *name, const void *ptr)
{
    if (ptr && ((uintptr_t)ptr & 15u))
        return mla_set_error(MLA_ERR_UNSUPPORTED,
                             "%s: tensor '%s' at %p is not 16-byte aligned (the hopper kernels "
                             "need it); pass a copy or an aligned view",
                             op, name, ptr);
    return MLA_OK;
}

static mla_status hopper_run_decode(void *state, const mla_decode_problem *p)
{
    MLA_TRY(check_aligned("mla_decode", "q", p->q));
    MLA_TRY(check_aligned("mla_decode", "kv_cache", p->kv_cache));
    MLA_TRY(check_aligned("mla_decode", "out", p->out));
    HOPPER_RUN("mla_decode", mla_cuda_decode(&s_->dev, p, s_->device_error_flags));
}

static size_t hopper_decode_plan_size(void *state, const mla_config *cfg, int batch, int q_len)
{
    hopper_state *s = state;
    return mla_cuda_decode_plan_size(&s->dev, batch, q_len, cfg->num_heads,
                                     cfg->kv_cache_dtype == MLA_DTYPE_FP8_E4M3);
}

static mla_status hopper_run_decode_plan(void *state, const mla_decode_problem *p)
{
    HOPPER_RUN("mla_decode_plan_build", mla_cuda_decode_plan(&s_->dev, p, s_->device_error_flags));
}

static mla_status hopper_run_prefill(void *state, const mla_prefill_problem *p)
{
    MLA_TRY(check_aligned("mla_prefill", "q", p->q));
    MLA_TRY(check_aligned("mla_prefill", "k", p->k));
    MLA_TRY(check_aligned("mla_prefill", "v", p->v));
    MLA_TRY(check_aligned("mla_prefill", "out", p->out));
    HOPPER_RUN("mla_prefill", mla_cuda_prefill(&s_->dev, p));
}

static mla_status hopper_run_merge_state(void *state, const mla_merge_problem *p)
{
    HOPPER_RUN("mla_merge_state", mla_cuda_merge_state(p));
}

static mla_status hopper_run_kv_cache_write(void *state, const mla_cache_write_problem *p)
{
    HOPPER_RUN("mla_kv_cache_write", mla_cuda_kv_cache_write(p, s_->device_error_flags));
}

static mla_status hopper_run_quantize_fp8(void *state, const mla_quantize_problem *p)
{
    HOPPER_RUN("mla_quantize_fp8", mla_cuda_quantize_fp8(p));
}

static mla_status hopper_run_kv_pack(void *state, const mla_kv_pack_problem *p)
{
    HOPPER_RUN("mla_kv_pack", mla_cuda_kv_pack(p));
}

/* ---- serving-layer hooks (src/core/serving*.c, graph.c): copies, metadata, gather, graphs.
 * They take the config (not the state) and make its device current like the hooks above. ---- */
static mla_status hopper_copy_async(const mla_config *cfg, void *dst, const void *src, size_t bytes,
                                    void *stream)
{
    int prev = device_enter(cfg->device.index);
    cudaError_t err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, (cudaStream_t)stream);
    device_leave(cfg->device.index, prev);
    return cuda_status("serving: cudaMemcpyAsync", err);
}

static mla_status hopper_run_build_metadata(const mla_config *cfg, const mla_metadata_problem *p)
{
    int prev = device_enter(cfg->device.index);
    int rc = mla_cuda_build_metadata(p);
    device_leave(cfg->device.index, prev);
    return cuda_status("mla_metadata_build", rc);
}

static mla_status hopper_run_gather_cache(const mla_config *cfg, const mla_gather_problem *p)
{
    int prev = device_enter(cfg->device.index);
    int rc = mla_cuda_gather_cache(p);
    device_leave(cfg->device.index, prev);
    return cuda_status("mla_gather_cache", rc);
}

static mla_status hopper_graph_begin(const mla_config *cfg, void *stream)
{
    int prev = device_enter(cfg->device.index);
    /* Thread-local: other threads may keep using CUDA while this one captures. */
    cudaError_t err = cudaStreamBeginCapture((cudaStream_t)stream, cudaStreamCaptureModeThreadLocal);
    device_leave(cfg->device.index, prev);
    return cuda_status("mla_graph_capture: cudaStreamBeginCapture", err);
}

static mla_status hopper_graph_end(const mla_config *cfg, void *stream, void **exec)
{
    int prev = device_enter(cfg->device.index);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t instance = NULL;
    *exec = NULL;
    cudaError_t err = cudaStreamEndCapture((cudaStream_t)stream, &graph);
    if (err == cudaSuccess) err = cudaGraphInstantiate(&instance, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    device_leave(cfg->device.index, prev);
    if (err == cudaSuccess) *exec = instance;
    return cuda_status("mla_graph_capture: end capture / instantiate", err);
}

static mla_status hopper_graph_launch(const mla_config *cfg, void *exec, void *stream)
{
    int prev = device_enter(cfg->device.index);
    cudaError_t err = cudaGraphLaunch((cudaGraphExec_t)exec, (cudaStream_t)stream);
    device_leave(cfg->device.index, prev);
    return cuda_status("mla_graph_replay: cudaGraphLaunch", err);
}

static void hopper_graph_destroy(const mla_config *cfg, void *exec)
{
    int prev = device_enter(cfg->device.index);
    cudaGraphExecDestroy((cudaGraphExec_t)exec);
    device_leave(cfg->device.index, prev);
}

const mla_kernel_set mla_hopper_kernel_set = {
    .api_version = MLA_KERNEL_SET_API_VERSION,
    .name = "hopper",
    .description = "NVIDIA Hopper (sm_90a) CUDA kernels: split-KV decode, ragged prefill",
    .device_type = MLA_DEVICE_CUDA,
    .get_capabilities = mla_hopper_capabilities,
    .is_available = hopper_is_available,
    .check_device = hopper_check_device,
    .create = hopper_create,
    .destroy = hopper_destroy,
    .alloc = hopper_alloc,
    .free = hopper_free,
    .copy_to_host = hopper_copy_to_host,
    .stream_is_capturing = hopper_stream_is_capturing,
    .device_errors = hopper_device_errors,
    .decode_workspace_size = hopper_decode_workspace_size,
    .run_decode = hopper_run_decode,
    .decode_plan_size = hopper_decode_plan_size,
    .run_decode_plan = hopper_run_decode_plan,
    .run_prefill = hopper_run_prefill,
    .run_merge_state = hopper_run_merge_state,
    .run_kv_cache_write = hopper_run_kv_cache_write,
    .run_quantize_fp8 = hopper_run_quantize_fp8,
    .run_kv_pack = hopper_run_kv_pack,
    .copy_async = hopper_copy_async,
    .run_build_metadata = hopper_run_build_metadata,
    .run_gather_cache = hopper_run_gather_cache,
    .graph_begin = hopper_graph_begin,
    .graph_end = hopper_graph_end,
    .graph_launch = hopper_graph_launch,
    .graph_destroy = hopper_graph_destroy,
};

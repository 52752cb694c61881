/* Memory on the backend's device, timers and device properties. CUDA only when built with
 * MLA_HAVE_CUDA; a CPU backend uses plain host memory. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef MLA_HAVE_CUDA
#include <cuda_runtime_api.h>

static int cuda_failed(cudaError_t err, const char *call, const char *what)
{
    if (err == cudaSuccess) return 0;
    fprintf(stderr, "mla: %s (%s): CUDA error %s: %s\n", call, what, cudaGetErrorName(err),
            cudaGetErrorString(err));
    return -1;
}
#else
static int no_cuda(const char *what)
{
    fprintf(stderr, "mla: %s: this build has no CUDA support (nvcc was not found at build time)\n",
            what);
    return -1;
}
#endif

double cli_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cli_buffer_alloc(cli_device_buffer *b, int on_gpu, size_t bytes, const char *what)
{
    b->ptr = NULL;
    b->bytes = bytes;
    b->on_gpu = on_gpu;
    if (on_gpu) {
#ifdef MLA_HAVE_CUDA
        return cuda_failed(cudaMalloc(&b->ptr, bytes ? bytes : 1), "cudaMalloc", what);
#else
        return no_cuda(what);
#endif
    }
    b->ptr = malloc(bytes ? bytes : 1);
    if (!b->ptr) {
        fprintf(stderr, "mla: out of host memory allocating %zu bytes for %s\n", bytes, what);
        return -1;
    }
    return 0;
}

int cli_buffer_upload(cli_device_buffer *b, const void *src, const char *what)
{
    if (b->on_gpu) {
#ifdef MLA_HAVE_CUDA
        return cuda_failed(cudaMemcpy(b->ptr, src, b->bytes, cudaMemcpyHostToDevice),
                           "cudaMemcpy to device", what);
#else
        return no_cuda(what);
#endif
    }
    memcpy(b->ptr, src, b->bytes);
    return 0;
}

int cli_buffer_download(const cli_device_buffer *b, void *dst, const char *what)
{
    if (b->on_gpu) {
#ifdef MLA_HAVE_CUDA
        return cuda_failed(cudaMemcpy(dst, b->ptr, b->bytes, cudaMemcpyDeviceToHost),
                           "cudaMemcpy to host", what);
#else
        return no_cuda(what);
#endif
    }
    memcpy(dst, b->ptr, b->bytes);
    return 0;
}

int cli_buffer_fill(cli_device_buffer *b, uint8_t byte, const char *what)
{
    if (b->on_gpu) {
#ifdef MLA_HAVE_CUDA
        /* cudaMemset is asynchronous with respect to the host for device memory but ordered
         * on the legacy default stream, which the tool's library calls also use. */
        return cuda_failed(cudaMemset(b->ptr, byte, b->bytes), "cudaMemset", what);
#else
        return no_cuda(what);
#endif
    }
    memset(b->ptr, byte, b->bytes);
    return 0;
}

void cli_buffer_free(cli_device_buffer *b)
{
    if (!b->ptr) return;
#ifdef MLA_HAVE_CUDA
    if (b->on_gpu) {
        cudaFree(b->ptr);
        b->ptr = NULL;
        return;
    }
#endif
    if (!b->on_gpu) free(b->ptr);
    b->ptr = NULL;
}

int cli_device_synchronize(int on_gpu, const char *what)
{
    if (!on_gpu) return 0;
#ifdef MLA_HAVE_CUDA
    return cuda_failed(cudaDeviceSynchronize(), "cudaDeviceSynchronize", what);
#else
    return no_cuda(what);
#endif
}

int cli_timer_init(cli_timer *t, int on_gpu)
{
    memset(t, 0, sizeof *t);
    t->on_gpu = on_gpu;
    if (!on_gpu) return 0;
#ifdef MLA_HAVE_CUDA
    cudaEvent_t start, stop;
    if (cuda_failed(cudaEventCreate(&start), "cudaEventCreate", "timer")) return -1;
    if (cuda_failed(cudaEventCreate(&stop), "cudaEventCreate", "timer")) {
        cudaEventDestroy(start);
        return -1;
    }
    t->start = start;
    t->stop = stop;
    return 0;
#else
    return no_cuda("timer");
#endif
}

void cli_timer_start(cli_timer *t)
{
#ifdef MLA_HAVE_CUDA
    if (t->on_gpu) {
        cudaEventRecord((cudaEvent_t)t->start, 0);
        return;
    }
#endif
    t->t0 = cli_now_seconds();
}

double cli_timer_stop_ms(cli_timer *t)
{
#ifdef MLA_HAVE_CUDA
    if (t->on_gpu) {
        float ms = 0;
        if (cuda_failed(cudaEventRecord((cudaEvent_t)t->stop, 0), "cudaEventRecord", "timer") ||
            cuda_failed(cudaEventSynchronize((cudaEvent_t)t->stop), "cudaEventSynchronize",
                        "timer") ||
            cuda_failed(cudaEventElapsedTime(&ms, (cudaEvent_t)t->start, (cudaEvent_t)t->stop),
                        "cudaEventElapsedTime", "timer"))
            return -1.0;
        return (double)ms;
    }
#endif
    return 1e3 * (cli_now_seconds() - t->t0);
}

void cli_timer_destroy(cli_timer *t)
{
#ifdef MLA_HAVE_CUDA
    if (t->on_gpu) {
        if (t->start) cudaEventDestroy((cudaEvent_t)t->start);
        if (t->stop) cudaEventDestroy((cudaEvent_t)t->stop);
    }
#endif
    memset(t, 0, sizeof *t);
}

static int cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

void cli_device_name(int on_gpu, char *buf, size_t size)
{
#ifdef MLA_HAVE_CUDA
    if (on_gpu) {
        struct cudaDeviceProp prop;
        int dev = 0;
        if (cudaGetDevice(&dev) == cudaSuccess &&
            cudaGetDeviceProperties(&prop, dev) == cudaSuccess) {
            snprintf(buf, size, "GPU %d: %s, sm_%d%d", dev, prop.name, prop.major, prop.minor);
            return;
        }
        cudaGetLastError(); /* clear it: the caller only wanted a name */
    }
#endif
    if (on_gpu)
        snprintf(buf, size, "GPU (properties unavailable)");
    else
        snprintf(buf, size, "CPU, %d online cores", cpu_count());
}

void cli_print_devices(void)
{
    printf("host: %d online CPU cores\n", cpu_count());
#ifdef MLA_HAVE_CUDA
    int runtime = 0, driver = 0, count = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    printf("CUDA runtime %d.%d, ", runtime / 1000, runtime % 1000 / 10);
    if (driver)
        printf("driver supports CUDA %d.%d\n", driver / 1000, driver % 1000 / 10);
    else
        printf("no CUDA driver\n");
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        printf("GPUs: none usable (%s: %s)\n", cudaGetErrorName(err), cudaGetErrorString(err));
        cudaGetLastError();
        return;
    }
    printf("GPUs: %d\n", count);
    for (int d = 0; d < count; d++) {
        struct cudaDeviceProp prop;
        err = cudaGetDeviceProperties(&prop, d);
        if (err != cudaSuccess) {
            printf("  GPU %d: properties unavailable (%s)\n", d, cudaGetErrorString(err));
            continue;
        }
        int mem_clock_khz = 0, bus_width = 0;
        /* Peak DRAM bandwidth from the attributes (the cudaDeviceProp fields are deprecated);
         * 0 when the runtime does not report them. */
        cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, d);
        cudaDeviceGetAttribute(&bus_width, cudaDevAttrGlobalMemoryBusWidth, d);
        cudaGetLastError();
        double peak_gbs = 2.0 * mem_clock_khz * 1e3 * (bus_width / 8.0) / 1e9;
        printf("  GPU %d: %s\n", d, prop.name);
        printf("    sm arch:        sm_%d%d\n", prop.major, prop.minor);
        printf("    SMs:            %d\n", prop.multiProcessorCount);
        printf("    memory:         %.1f GiB",
               (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024));
        if (peak_gbs > 0) printf(" (%d-bit bus, peak %.0f GB/s)", bus_width, peak_gbs);
        printf("\n");
        printf("    L2 cache:       %.1f MiB\n", (double)prop.l2CacheSize / (1024.0 * 1024));
        printf("    shared mem/SM:  %zu KiB (per block opt-in %zu KiB)\n",
               prop.sharedMemPerMultiprocessor / 1024, prop.sharedMemPerBlockOptin / 1024);
    }
#else
    printf("GPUs: not probed (built without CUDA)\n");
#endif
}

// The SM clock as a benchmark finds it: one thread counts its multiprocessor's cycles against
// %globaltimer (nanoseconds) over a fixed number of cycles. Launched right behind a case's
// timed replays, it reads the clock the sustained load left (power capping lowers it, and the
// decode kernels' per-block cost is a latency chain that scales with it); no NVML needed.
#include <cuda_runtime.h>

__global__ void bench_clock_spin(unsigned long long cycles, unsigned long long *out)
{
    unsigned long long t0, t1;
    const long long c0 = clock64();
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    long long c = c0;
    while ((unsigned long long)(c - c0) < cycles) c = clock64();
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
    out[0] = (unsigned long long)(c - c0);
    out[1] = t1 - t0;
}

// MHz of one multiprocessor over ~100 us, measured on `stream` behind its queued work;
// 0 on any CUDA error (the column then reads 0, the bench goes on).
extern "C" double bench_sm_clock_mhz(cudaStream_t stream)
{
    static unsigned long long *dev = nullptr;
    if (!dev && cudaMalloc(&dev, 2 * sizeof *dev) != cudaSuccess) {
        dev = nullptr;
        return 0;
    }
    unsigned long long host[2] = {0, 0};
    bench_clock_spin<<<1, 1, 0, stream>>>(200000ull, dev);
    if (cudaGetLastError() != cudaSuccess ||
        cudaMemcpyAsync(host, dev, sizeof host, cudaMemcpyDeviceToHost, stream) != cudaSuccess ||
        cudaStreamSynchronize(stream) != cudaSuccess || host[1] == 0)
        return 0;
    return 1e3 * (double)host[0] / (double)host[1];
}

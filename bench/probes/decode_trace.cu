// Probe: where the fixed cost of a decode call goes. Builds the decode launcher, scheduler and
// combine with -DMLA_DECODE_TRACE (src/cuda/common/decode_trace.cuh: %globaltimer stamps at
// each phase boundary), runs a graph of 16 back-to-back calls of one fp8-cache case twice (as
// bench/decode's headline time does), and prints, per call of the second replay, the phase
// times relative to the call's scheduler entry (us). Split-kernel stamps are per CTA (thread
// 0): min / median / max over CTAs. Only the H * q_len <= 16 fp8-cache kernels are traced
// (decode_v2_swap.cuh, the default, and decode_v2_fp8reg.cuh with MLA_DECODE_V2_CONV=cvt).
// Stamps cost a few instructions per CTA; the globaltimer's resolution is printed.
// Build and run on the device:
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iinclude -Isrc/core -Isrc/cuda
//     --expt-relaxed-constexpr bench/probes/decode_trace.cu -o build/decode_trace
//   build/decode_trace [B H seq [long]]   (default 1 16 65536; long: request 0's keys, as
//   bench/decode's long=N)
#define MLA_DECODE_TRACE 1
#include "../../src/cuda/common/decode_schedule.cu"
#include "../../src/cuda/common/combine.cu"
#include "../../src/cuda/sm90/decode.cu"

#include "probe_decode.h"

__global__ void trace_resolution(unsigned long long *out)
{
    // Smallest nonzero step of %globaltimer seen by one thread.
    unsigned long long prev = mla_trace_now(), best = ~0ull;
    for (int i = 0; i < 100000 && best > 1; i++) {
        const unsigned long long t = mla_trace_now();
        if (t != prev) {
            best = t - prev < best ? t - prev : best;
            prev = t;
        }
    }
    *out = best;
}

static double us(unsigned long long t, unsigned long long t0) { return ((double)t - (double)t0) / 1000.0; }

int main(int argc, char **argv)
{
    const int B = argc > 1 ? atoi(argv[1]) : 1, H = argc > 2 ? atoi(argv[2]) : 16;
    const int seq = argc > 3 ? atoi(argv[3]) : 65536, long_seq = argc > 4 ? atoi(argv[4]) : seq;
    if (B < 1 || B > 1024 || H < 1 || H > 16 || seq < 1 || long_seq < 1) {
        fprintf(stderr, "usage: decode_trace [B (1..1024) H (1..16) seq [long]]\n");
        return 2;
    }
    probe_decode pd;
    if (probe_decode_setup(&pd, B, H, seq, long_seq, MLA_DTYPE_BF16, MLA_DTYPE_FP8_E4M3, 0)) return 1;
    const cudaDeviceProp &prop = pd.prop;
    const mla_cuda_device_info &dev = pd.dev;
    const mla_decode_problem &pr = pd.pr;
    uint32_t *flags = pd.flags;
    cudaStream_t st = (cudaStream_t)pr.stream;
    if (probe_decode_warm(&pd, 3)) return 1;
    enum { kChain = MLA_TRACE_CALLS };
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < kChain; i++) mla_cuda_decode(&dev, &pr, flags);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(e0, st));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaStreamSynchronize(st));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));

    static unsigned long long split[MLA_TRACE_CALLS][MLA_TRACE_CTAS][6];
    unsigned long long sched[MLA_TRACE_CALLS][3];
    unsigned int calls = 0;
    CK(cudaMemcpyFromSymbol(split, g_mla_trace_split, sizeof split));
    CK(cudaMemcpyFromSymbol(sched, g_mla_trace_sched, sizeof sched));
    static unsigned long long combc[MLA_TRACE_CALLS][MLA_TRACE_CTAS][kTrCombFields];
    CK(cudaMemcpyFromSymbol(combc, g_mla_trace_combc, sizeof combc));
    CK(cudaMemcpyFromSymbol(&calls, g_mla_trace_call, sizeof calls));
    unsigned long long *d_res, res = 0;
    CK(cudaMalloc(&d_res, 8));
    trace_resolution<<<1, 1>>>(d_res);
    CK(cudaMemcpy(&res, d_res, 8, cudaMemcpyDeviceToHost));

    const Plan pl = make_plan(dev.num_sms, B, 1, H, selected_variant(), true);
    const int ctas = pl.num_parts * pl.head_blocks;
    printf("decode_trace: %s, B %d H %d seq %d (request 0: %d), %d CTAs of the split kernel; %.4f ms per call "
           "in the chain; globaltimer step %llu ns; %u calls traced\n",
           prop.name, B, H, seq, long_seq, ctas, ms / kChain, res, calls);
    printf("us from the call's scheduler entry. sched: wait done / end. split (min med max over CTAs): "
           "entry, wait done, first block issued, first block ready, end; blocks per CTA (min-max). "
           "combine (min med max over its CTAs): entry, wait done, weights ready (LSE max and sum known, latest warp), "
           "splits summed (latest warp), end. next: next call's scheduler entry.\n");
    printf("| call | sched wait | sched end | split entry | split waited | issued | first ready | split end | blocks | comb entry | comb waited | weights | summed | comb end | next |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    auto triple = [](std::vector<double> &v, char *cell, size_t n) {
        std::sort(v.begin(), v.end());
        if (v.empty()) snprintf(cell, n, "-");
        else snprintf(cell, n, "%.1f %.1f %.1f", v.front(), v[v.size() / 2], v.back());
    };
    for (unsigned int c = calls - kChain; c + 1 < calls; c++) {
        const unsigned int s = c % MLA_TRACE_CALLS, n = (c + 1) % MLA_TRACE_CALLS;
        const unsigned long long t0 = sched[s][0];
        std::vector<double> col[5];
        int bmin = 1 << 30, bmax = 0;
        for (int k = 0; k < ctas && k < MLA_TRACE_CTAS; k++) {
            const unsigned long long *r = split[s][k];
            const int nb = (int)(r[5] & 0xffffffffu);
            bmin = std::min(bmin, nb);
            bmax = std::max(bmax, nb);
            for (int f = 0; f < 5; f++)
                if (r[f]) col[f].push_back(us(r[f], t0));
        }
        char cell[5][64], ccell[kTrCombFields][64];
        for (int f = 0; f < 5; f++) triple(col[f], cell[f], sizeof cell[f]);
        // Combine CTAs of this call: those whose wait ended after this call's scheduler entry
        // and before the next call's (a CTA that left early keeps an older stamp).
        std::vector<double> ccol[kTrCombFields];
        for (int k = 0; k < MLA_TRACE_CTAS; k++) {
            const unsigned long long *r = combc[s][k];
            if (r[kTrWaited] < t0 || r[kTrWaited] > t0 + 10000000ull) continue;
            // A mark this call's CTA did not reach (nothing to merge) keeps an older call's stamp.
            for (int f = 0; f < kTrCombFields; f++)
                if (f == kTrEntry || f == kTrWaited || r[f] >= r[kTrWaited]) ccol[f].push_back(us(r[f], t0));
        }
        for (int f = 0; f < kTrCombFields; f++) triple(ccol[f], ccell[f], sizeof ccell[f]);
        printf("| %u | %.1f | %.1f | %s | %s | %s | %s | %s | %d-%d | %s | %s | %s | %s | %s | %.1f |\n", c,
               us(sched[s][1], t0), us(sched[s][2], t0), cell[0], cell[1], cell[2], cell[3], cell[4], bmin, bmax,
               ccell[kTrEntry], ccell[kTrWaited], ccell[kTrWeights], ccell[kTrSummed], ccell[kTrEnd],
               us(sched[n][0], t0));
    }
    return 0;
}

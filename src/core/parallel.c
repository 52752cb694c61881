/* CPU worker threads for the reference kernels. Threads are spawned and joined per call: no
 * process-wide pool, so nothing outlives a call (clean under LeakSanitizer, safe from any
 * number of caller threads, no atexit). Work items are handed out in chunks through an atomic
 * counter, so uneven rows (causal masks) balance themselves. */
#include "mla_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define MLA_MAX_THREADS 64

int mla_cpu_num_threads(void)
{
    const char *env = getenv("MLA_NUM_THREADS");
    if (env && *env) {
        char *end = NULL;
        long v = strtol(env, &end, 10);
        if (end && *end == '\0' && v >= 1) return v > MLA_MAX_THREADS ? MLA_MAX_THREADS : (int)v;
        /* An unparsable value falls through to the default rather than failing a kernel. */
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 1) cpus = 1;
    return cpus > MLA_MAX_THREADS ? MLA_MAX_THREADS : (int)cpus;
}

typedef struct parallel_job {
    void (*fn)(void *ctx, int64_t i);
    void *ctx;
    int64_t n;
    int64_t chunk;
    atomic_llong next;
} parallel_job;

/* A worker that itself calls mla_parallel_for runs that inner loop inline. */
static _Thread_local int in_parallel_region;

static void run_chunks(parallel_job *job)
{
    for (;;) {
        int64_t begin = (int64_t)atomic_fetch_add(&job->next, (long long)job->chunk);
        if (begin >= job->n) break;
        int64_t end = begin + job->chunk < job->n ? begin + job->chunk : job->n;
        for (int64_t i = begin; i < end; i++) job->fn(job->ctx, i);
    }
}

static void *worker_main(void *arg)
{
    in_parallel_region = 1;
    run_chunks((parallel_job *)arg);
    return NULL;
}

void mla_parallel_for(int64_t n, void (*fn)(void *ctx, int64_t i), void *ctx)
{
    if (n <= 0 || !fn) return;
    int threads = in_parallel_region ? 1 : mla_cpu_num_threads();
    if ((int64_t)threads > n) threads = (int)n;
    if (threads <= 1) {
        for (int64_t i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    parallel_job job = {.fn = fn, .ctx = ctx, .n = n};
    /* ~8 chunks per thread: small enough to balance, large enough to keep the counter cold. */
    job.chunk = n / ((int64_t)threads * 8);
    if (job.chunk < 1) job.chunk = 1;
    atomic_init(&job.next, 0);

    pthread_t tids[MLA_MAX_THREADS];
    int started = 0;
    for (int t = 1; t < threads; t++) {
        /* If a thread cannot be created, the ones running (and this one) do all the work. */
        if (pthread_create(&tids[started], NULL, worker_main, &job) != 0) break;
        started++;
    }
    in_parallel_region = 1;
    run_chunks(&job);
    in_parallel_region = 0;
    for (int t = 0; t < started; t++) pthread_join(tids[t], NULL);
}

/* Progress lines on stderr ("decode: computing reference (3/8)..."), and a small task runner
 * that reports its tasks done. */
#include "cli.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define CLI_MAX_THREADS 64

static int stderr_is_tty(void)
{
    static int cached = -1;
    if (cached < 0) cached = isatty(STDERR_FILENO);
    return cached;
}

/* Terminal: the stage line is rewritten in place at once. Otherwise (logs, pipes) a watcher
 * thread prints the current stage only once it has lasted a couple of seconds, and then every
 * few seconds while it changes, so fast runs stay quiet. */
#define QUIET_SECONDS 2.0
#define REPEAT_SECONDS 5.0

static pthread_mutex_t stage_mutex = PTHREAD_MUTEX_INITIALIZER;
static char stage_text[256];
static double stage_since, stage_printed_at;
static int stage_printed, stage_open, watcher_started;

static void *stage_watcher(void *arg)
{
    (void)arg;
    for (;;) {
        struct timespec nap = {0, 200 * 1000 * 1000};
        nanosleep(&nap, NULL);
        pthread_mutex_lock(&stage_mutex);
        double now = cli_now_seconds();
        if (stage_text[0] && now - stage_since >= QUIET_SECONDS &&
            (!stage_printed || now - stage_printed_at >= REPEAT_SECONDS)) {
            fprintf(stderr, "%s\n", stage_text);
            fflush(stderr);
            stage_printed = 1;
            stage_printed_at = now;
        }
        pthread_mutex_unlock(&stage_mutex);
    }
    return NULL;
}

/* new_stage: 0 when only the counter of the same stage moved on. */
static void set_stage(int new_stage, const char *fmt, va_list ap)
{
    pthread_mutex_lock(&stage_mutex);
    vsnprintf(stage_text, sizeof stage_text, fmt, ap);
    if (stderr_is_tty()) {
        fprintf(stderr, "\r\033[K%s", stage_text);
        fflush(stderr);
        stage_open = 1;
    } else {
        if (new_stage) {
            stage_since = cli_now_seconds();
            stage_printed = 0;
        }
        if (!watcher_started) {
            pthread_t tid;
            if (pthread_create(&tid, NULL, stage_watcher, NULL) == 0) pthread_detach(tid);
            watcher_started = 1;
        }
    }
    pthread_mutex_unlock(&stage_mutex);
}

void cli_stage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_stage(1, fmt, ap);
    va_end(ap);
}

static void update_stage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void update_stage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_stage(0, fmt, ap);
    va_end(ap);
}

void cli_stage_clear(void)
{
    pthread_mutex_lock(&stage_mutex);
    if (stage_open) fputs("\r\033[K", stderr);
    fflush(stderr);
    stage_open = 0;
    stage_text[0] = '\0';
    pthread_mutex_unlock(&stage_mutex);
}

int cli_num_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    return n > CLI_MAX_THREADS ? CLI_MAX_THREADS : (int)n;
}

typedef struct task_pool {
    const char *label;
    int n, next, done, rc;
    int (*fn)(void *ctx, int i);
    void *ctx;
    pthread_mutex_t mutex;
    double t_last;
} task_pool;

static void report_progress(task_pool *pool)
{
    double now = cli_now_seconds();
    if (pool->done == pool->n || now - pool->t_last >= 0.1) {
        pool->t_last = now;
        update_stage("%s (%d/%d)...", pool->label, pool->done, pool->n);
    }
}

static void *task_worker(void *arg)
{
    task_pool *pool = arg;
    for (;;) {
        pthread_mutex_lock(&pool->mutex);
        int i = pool->rc == 0 && pool->next < pool->n ? pool->next++ : -1;
        pthread_mutex_unlock(&pool->mutex);
        if (i < 0) return NULL;
        int rc = pool->fn(pool->ctx, i);
        pthread_mutex_lock(&pool->mutex);
        pool->done++;
        if (rc && !pool->rc) pool->rc = rc;
        report_progress(pool);
        pthread_mutex_unlock(&pool->mutex);
    }
}

int cli_run_tasks(const char *label, int n, int threads, int (*fn)(void *ctx, int i), void *ctx)
{
    task_pool pool = {.label = label, .n = n, .fn = fn, .ctx = ctx};
    pthread_mutex_init(&pool.mutex, NULL);
    cli_stage("%s (0/%d)...", label, n);
    pool.t_last = cli_now_seconds();
    if (threads > n) threads = n;
    if (threads > CLI_MAX_THREADS) threads = CLI_MAX_THREADS;
    pthread_t tids[CLI_MAX_THREADS];
    int started = 0;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&tids[started], NULL, task_worker, &pool) != 0) break;
        started++;
    }
    task_worker(&pool); /* this thread works too; fewer threads if creation failed */
    for (int t = 0; t < started; t++) pthread_join(tids[t], NULL);
    pthread_mutex_destroy(&pool.mutex);
    return pool.rc;
}

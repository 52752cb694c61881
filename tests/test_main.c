#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TESTS 1024

static struct {
    const char *name;
    mla_test_fn fn;
} tests[MAX_TESTS];
static int num_tests;
static int current_failures;
static char current_skip[160]; /* non-empty: the running test skipped, and why */
static uint64_t rng_state;

void mla_test_register(const char *name, mla_test_fn fn)
{
    if (num_tests < MAX_TESTS) {
        tests[num_tests].name = name;
        tests[num_tests].fn = fn;
        num_tests++;
    }
}

void mla_test_fail(const char *file, int line, const char *fmt, ...)
{
    /* Print the first few failures of a test only: a broken kernel fails millions of checks. */
    if (++current_failures > 8) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "    %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void mla_test_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(current_skip, sizeof current_skip, fmt, ap);
    va_end(ap);
    if (!current_skip[0]) snprintf(current_skip, sizeof current_skip, "skipped");
}

uint64_t mla_test_rand_u64_from(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

float mla_test_rand_uniform_from(uint64_t *state, float lo, float hi)
{
    double u = (double)(mla_test_rand_u64_from(state) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(lo + (hi - lo) * u);
}

uint64_t mla_test_rand_u64(void) { return mla_test_rand_u64_from(&rng_state); }

float mla_test_rand_uniform(float lo, float hi) { return mla_test_rand_uniform_from(&rng_state, lo, hi); }

int mla_test_require_backend(const char *name)
{
    mla_backend_info info;
    const mla_status st = mla_backend_find(name, &info);
    if (st == MLA_OK && info.available) return 1;
    mla_test_fail(__FILE__, __LINE__, "%s backend unavailable (%s)", name,
                  st == MLA_OK ? info.reason : "not registered");
    return 0;
}

int mla_test_rand_int(int lo, int hi_inclusive)
{
    return lo + (int)(mla_test_rand_u64() % (uint64_t)(hi_inclusive - lo + 1));
}

static int cmp_tests(const void *a, const void *b)
{
    return strcmp(((const char *)((const void *const *)a)[0]),
                  ((const char *)((const void *const *)b)[0]));
}

int main(int argc, char **argv)
{
    /* Usage: mla_tests [substring...]: runs tests whose name contains any substring. */
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    const char *env_seed = getenv("MLA_TEST_SEED");
    if (env_seed) seed = strtoull(env_seed, NULL, 0) | 1;
    qsort(tests, (size_t)num_tests, sizeof(tests[0]), cmp_tests);
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < num_tests; i++) {
        int selected = argc < 2;
        for (int a = 1; a < argc; a++)
            if (strstr(tests[i].name, argv[a])) selected = 1;
        if (!selected) continue;
        current_failures = 0;
        current_skip[0] = 0;
        rng_state = seed ^ ((uint64_t)(i + 1) * 0xD1B54A32D192ED03ULL);
        if (!rng_state) rng_state = 1;
        tests[i].fn();
        if (current_failures) {
            failed++;
            printf("[FAIL] %s (%d failed checks)\n", tests[i].name, current_failures);
        } else if (current_skip[0]) {
            skipped++;
            printf("[SKIP] %s: %s\n", tests[i].name, current_skip);
        } else {
            passed++;
            printf("[PASS] %s\n", tests[i].name);
        }
        fflush(stdout);
    }
    if (skipped) printf("%d skipped (neither passed nor failed)\n", skipped);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

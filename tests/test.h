/* Minimal test framework: TEST(name) registers itself at load time, CHECK* record failures
 * (with file:line) and let the test continue. The runner prints one line per test and
 * "N passed, N failed" at the end (preceded by "N skipped" when a test skipped). */
#ifndef MLA_TEST_H
#define MLA_TEST_H

#include "mla.h"

#include <stdio.h>

typedef void (*mla_test_fn)(void);
void mla_test_register(const char *name, mla_test_fn fn);
void mla_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Marks the running test as skipped (a condition of the machine, e.g. a second GPU): the runner
 * prints [SKIP] with the reason and counts it neither as passed nor as failed. */
void mla_test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Deterministic per-test random numbers (xorshift), reseeded per test from MLA_TEST_SEED. */
uint64_t mla_test_rand_u64(void);
float mla_test_rand_uniform(float lo, float hi);
/* The same generator on a caller's state (nonzero), for streams split off the test's own. */
uint64_t mla_test_rand_u64_from(uint64_t *state);
float mla_test_rand_uniform_from(uint64_t *state, float lo, float hi);
/* 1 when backend `name` is registered and available; otherwise records a failure naming the
 * reason and returns 0 (for test binaries that exist to run on that backend's hardware). */
int mla_test_require_backend(const char *name);
int mla_test_rand_int(int lo, int hi_inclusive);

#define TEST(name)                                                                     \
    static void test_##name(void);                                                     \
    __attribute__((constructor)) static void register_##name(void)                     \
    {                                                                                  \
        mla_test_register(#name, test_##name);                                         \
    }                                                                                  \
    static void test_##name(void)

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) mla_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);            \
    } while (0)

#define CHECK_MSG(cond, ...)                                                           \
    do {                                                                               \
        if (!(cond)) mla_test_fail(__FILE__, __LINE__, __VA_ARGS__);                   \
    } while (0)

/* Checks a call's status; on mismatch prints both statuses and the library's message. */
#define CHECK_STATUS(expr, expected)                                                   \
    do {                                                                               \
        mla_status st_ = (expr);                                                       \
        if (st_ != (expected))                                                         \
            mla_test_fail(__FILE__, __LINE__, "%s returned %s (%s), expected %s", #expr, \
                          mla_status_string(st_), mla_last_error(),                    \
                          mla_status_string(expected));                                \
    } while (0)

#endif

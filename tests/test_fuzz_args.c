/* Argument fuzz of the public API on the CPU backend. Each operation starts from a valid small
 * call on random data, then thousands of deterministic random mutations of one or two
 * arguments (dtype, ndim, shape, strides, data pointer, device, index contents, scales, flags,
 * workspace) are applied. Every mutation knows its expected outcome:
 *   FAIL   the call must return an error status, with a non-empty message (naming the
 *          argument where the mutation makes that unambiguous), and change no byte of any
 *          buffer (inputs, outputs, guard bytes);
 *   OK     a valid variant: must return MLA_OK, leave inputs untouched and write only inside
 *          the outputs (guard bytes intact);
 *   EITHER the outcome depends on data the mutation cannot predict (e.g. a smaller page
 *          count): whichever status comes back must obey the rule for that status.
 * Mutations never make a correct library touch memory outside the buffers (a shape that would
 * legitimately need larger buffers is not generated), so any write outside them is a bug.
 * Every buffer sits between guard bytes; outputs are poisoned (0xFF) and a valid call must
 * overwrite their first element.
 * Three phases per operation: the random cases; every output placed over an index input (and,
 * for the forward calls, over every other tensor), one case each; one huge shape entry
 * (2^31 .. INT64_MAX) per tensor dim, one case each (UBSan checks for signed overflow). Each
 * phase runs in a forked child with an alarm, so a crash, sanitizer report or hang fails that
 * test only and names the case it was running; the rest still run. MLA_FUZZ_NOFORK=1 runs
 * in-process (for a debugger); MLA_FUZZ_VERBOSE=1 prints how many cases expected OK / FAIL /
 * EITHER and how many returned MLA_OK. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include "test.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define GUARD 64
#define PATTERN 0xA5
#define MAX_BUFS 16
#define MAX_TENSORS 14
#define CHILD_FAILED 3 /* exit code of a child that only recorded CHECK failures */

enum { H = 2, R = 16, P = 8, D = R + P, NOPE = 16, DQK = NOPE + P, VD = 16, PS = 32 };

static const mla_device cpu = {MLA_DEVICE_CPU, 0};

static int rnd(int lo, int hi) { return mla_test_rand_int(lo, hi); }

/* ---- crash isolation ---- */

typedef struct {
    char desc[1024]; /* the case being run, for a report after a crash */
} fz_shared;
static fz_shared fz_local, *fz_sh = &fz_local;
static int fz_failures;

#define FZ_FAIL(...)                                                                               \
    do {                                                                                           \
        fz_failures++;                                                                             \
        mla_test_fail(__FILE__, __LINE__, __VA_ARGS__);                                            \
    } while (0)

/* Runs fn(arg) in a forked child (alarm: timeout_s); a signal or sanitizer exit is recorded as
 * a failure naming the last case the child started. Nests: the fuzz loop runs each phase in a
 * child of the test's child, so a crash in one phase does not hide the others. */
static void run_isolated_arg(const char *name, void (*fn)(void *), void *arg, unsigned timeout_s)
{
    if (getenv("MLA_FUZZ_NOFORK")) {
        fn(arg);
        return;
    }
    fz_shared *sh = fz_sh;
    if (sh == &fz_local) {
        sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (sh == MAP_FAILED) {
            fn(arg);
            return;
        }
    }
    strcpy(sh->desc, "(setup)");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        fz_sh = sh;
        fz_failures = 0;
        alarm(timeout_s);
        fn(arg);
        fflush(stdout);
        fflush(stderr);
        _exit(fz_failures ? CHILD_FAILED : 0);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) {
        FZ_FAIL("%s: fork/waitpid failed", name);
    } else if (WIFSIGNALED(status)) {
        FZ_FAIL("%s: the fuzz child died by signal %d%s during case: %s", name, WTERMSIG(status),
                WTERMSIG(status) == SIGALRM ? " (hang: timeout)" : "", sh->desc);
    } else if (WEXITSTATUS(status) == CHILD_FAILED) {
        FZ_FAIL("%s: failed checks (printed above by the fuzz child)", name);
    } else if (WEXITSTATUS(status) != 0) {
        FZ_FAIL("%s: the fuzz child exited with status %d (sanitizer report above?) during "
                "case: %s",
                name, WEXITSTATUS(status), sh->desc);
    }
    if (sh != fz_sh) munmap(sh, sizeof *sh);
}

typedef struct {
    void (*body)(void);
} fz_body;

static void call_body(void *b) { ((fz_body *)b)->body(); }

static void run_isolated(const char *name, void (*body)(void), unsigned timeout_s)
{
    fz_body b = {body};
    run_isolated_arg(name, call_body, &b, timeout_s);
}

/* ---- guarded buffers ---- */

/* Every buffer: GUARD | body (bytes) | tail guard (GUARD, more for small bodies so an output
 * wrongly allowed to overlap a small input stays inside the allocation and is seen). */
#define MIN_ALLOC 1024
typedef struct {
    const char *name;
    uint8_t *base, *valid, *snap;
    size_t bytes, total;
} fz_buf;

typedef struct {
    fz_buf b[MAX_BUFS];
    int n;
} fz_arena;

static void *arena_add(fz_arena *A, const char *name, size_t bytes)
{
    fz_buf *b = &A->b[A->n++];
    b->name = name;
    b->bytes = bytes;
    b->total = bytes + 2 * GUARD < MIN_ALLOC ? MIN_ALLOC : bytes + 2 * GUARD;
    b->base = malloc(b->total);
    b->valid = malloc(b->total);
    b->snap = malloc(b->total);
    memset(b->base, PATTERN, b->total);
    return b->base + GUARD;
}
static void arena_commit(fz_arena *A) /* current contents become the valid baseline */
{
    for (int i = 0; i < A->n; i++) memcpy(A->b[i].valid, A->b[i].base, A->b[i].total);
}
static void arena_restore(fz_arena *A)
{
    for (int i = 0; i < A->n; i++) memcpy(A->b[i].base, A->b[i].valid, A->b[i].total);
}
static void arena_snapshot(fz_arena *A)
{
    for (int i = 0; i < A->n; i++) memcpy(A->b[i].snap, A->b[i].base, A->b[i].total);
}
static void arena_free(fz_arena *A)
{
    for (int i = 0; i < A->n; i++) {
        free(A->b[i].base);
        free(A->b[i].valid);
        free(A->b[i].snap);
    }
    A->n = 0;
}
/* First changed byte offset relative to the body (negative: in the front guard), or
 * INT64_MIN when unchanged. guards_only: compare the guard bytes only. */
static int64_t buf_changed(const fz_buf *b, int guards_only)
{
    for (size_t k = 0; k < b->total; k++) {
        if (guards_only && k >= GUARD && k < GUARD + b->bytes) continue;
        if (b->base[k] != b->snap[k]) return (int64_t)k - GUARD;
    }
    return INT64_MIN;
}

/* ---- random contents ---- */

static void fill_bf16(void *p, size_t n)
{
    uint16_t *q = p;
    for (size_t i = 0; i < n; i++) q[i] = mla_float_to_bf16(mla_test_rand_uniform(-1.0f, 1.0f));
}
static void fill_fp8(void *p, size_t n)
{
    uint8_t *q = p;
    for (size_t i = 0; i < n; i++) q[i] = mla_float_to_fp8_e4m3(mla_test_rand_uniform(-2.0f, 2.0f));
}
static void fill_f32(void *p, size_t n, float lo, float hi)
{
    float *q = p;
    for (size_t i = 0; i < n; i++) q[i] = mla_test_rand_uniform(lo, hi);
}

static mla_tensor tens(void *data, mla_dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2,
                       int64_t d3)
{
    const int64_t shape[4] = {d0, d1, d2, d3};
    return mla_tensor_contiguous(data, dt, cpu, ndim, shape);
}

static mla_backend *new_backend(mla_dtype cache_dtype)
{
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = H;
    cfg.kv_lora_rank = R;
    cfg.qk_rope_head_dim = P;
    cfg.qk_nope_head_dim = NOPE;
    cfg.v_head_dim = VD;
    cfg.page_size = PS;
    cfg.kv_cache_dtype = cache_dtype;
    cfg.max_q_len = 8;
    mla_backend *be = NULL;
    mla_status st = mla_backend_create("cpu", &cfg, &be);
    if (st != MLA_OK)
        FZ_FAIL("mla_backend_create: %s (%s)", mla_status_string(st), mla_last_error());
    return be;
}

/* ---- cases and expectations ---- */

enum { EXP_OK = 0, EXP_EITHER = 1, EXP_FAIL = 2 };

typedef struct {
    int expect;
    int nfail, nhint;
    const char *hint[4]; /* the message must contain one of these when every FAIL has one */
    uint32_t may_write;  /* arena buffers whose body an OK call may change */
    uint32_t filled;     /* of those, buffers a valid call writes from element 0 on */
    uint32_t mutated;    /* tensors already mutated (or used as an overlap target) */
    int allow_solo;      /* a mutation that must stay alone (valid aliasing, ...) may be drawn */
    int content_done;    /* one index-content mutation per case (expectations read contents) */
    uint32_t sp_done;    /* op-specific mutation kinds already applied */
    int unhinted;        /* non-OK mutations with no expected message word */
    int fix_dim;         /* 1 + the dim a fixed-size shape mutation set (0: none yet) ... */
    int64_t fix_value;   /* ... and its value: a second tensor given the same dim and value, or
                          * a second zero size, could agree with the first again (quantize's
                          * input [3, 5, 0] and output [0, 5, 7] are a valid empty call), so
                          * that is not drawn */
    size_t len;
    char desc[900];
} fz_case;

static void note(fz_case *c, int expect, const char *hint, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void note(fz_case *c, int expect, const char *hint, const char *fmt, ...)
{
    if (expect > c->expect) c->expect = expect;
    if (expect == EXP_FAIL) {
        c->nfail++;
        if (hint && c->nhint < 4) c->hint[c->nhint++] = hint;
    }
    if (expect != EXP_OK && (expect != EXP_FAIL || !hint)) c->unhinted++;
    if (c->len + 4 < sizeof c->desc) {
        va_list ap;
        va_start(ap, fmt);
        if (c->len) c->desc[c->len++] = ';', c->desc[c->len++] = ' ';
        int k = vsnprintf(c->desc + c->len, sizeof c->desc - c->len, fmt, ap);
        va_end(ap);
        if (k > 0) c->len += (size_t)k;
        if (c->len >= sizeof c->desc) c->len = sizeof c->desc - 1;
    }
}

static const char *exp_name(int e)
{
    return e == EXP_OK ? "OK" : e == EXP_FAIL ? "FAIL" : "EITHER";
}

/* Whether the first (up to) four bytes of a buffer's body still hold the 0xFF poison. */
static int first_bytes_poisoned(const fz_buf *b)
{
    const size_t n = b->bytes < 4 ? b->bytes : 4;
    for (size_t k = 0; k < n; k++)
        if (b->base[GUARD + k] != 0xFF) return 0;
    return n > 0;
}

static void verify(const char *op, int iter, const fz_case *c, mla_status st, const fz_arena *A)
{
    const char *msg = mla_last_error();
    const char *what = c->len ? c->desc : "(valid call)";
    if ((unsigned)st > (unsigned)MLA_ERR_INTERNAL) {
        FZ_FAIL("%s #%d [%s]: returned unknown status %d", op, iter, what, (int)st);
        return;
    }
    if (st == MLA_OK) {
        if (c->expect == EXP_FAIL)
            FZ_FAIL("%s #%d [%s]: accepted (MLA_OK), expected an error", op, iter, what);
        /* poisoned 0xFF: a bf16/f32/e4m3 NaN no call produces; four bytes, since the low half
         * of a real float32 (an LSE) is 0xFFFF once in 65536 */
        for (int i = 0; i < A->n; i++)
            if ((c->may_write & c->filled) >> i & 1u && first_bytes_poisoned(&A->b[i]))
                FZ_FAIL("%s #%d [%s]: MLA_OK but output '%s' was not written", op, iter, what,
                        A->b[i].name);
        for (int i = 0; i < A->n; i++) {
            int64_t off = buf_changed(&A->b[i], (c->may_write >> i) & 1u);
            if (off != INT64_MIN)
                FZ_FAIL(
                    "%s #%d [%s]: MLA_OK but buffer '%s' changed at byte %lld (body %zu bytes)%s",
                    op, iter, what, A->b[i].name, (long long)off, A->b[i].bytes,
                    (c->may_write >> i) & 1u ? " (guard)" : " (not an output of this call)");
        }
        return;
    }
    if (c->expect == EXP_OK)
        FZ_FAIL("%s #%d [%s]: valid variant rejected (expected %s): %s (%s)", op, iter, what,
                exp_name(c->expect), mla_status_string(st), msg ? msg : "(null)");
    if (!msg || !*msg)
        FZ_FAIL("%s #%d [%s]: %s with an empty mla_last_error()", op, iter, what,
                mla_status_string(st));
    else if (c->expect == EXP_FAIL && c->nhint > 0 && c->unhinted == 0) {
        int found = 0;
        for (int h = 0; h < c->nhint; h++) found |= strstr(msg, c->hint[h]) != NULL;
        if (!found)
            FZ_FAIL("%s #%d [%s]: message \"%s\" names none of the expected '%s'%s%s", op, iter,
                    what, msg, c->hint[0], c->nhint > 1 ? " / " : "",
                    c->nhint > 1 ? c->hint[1] : "");
    }
    for (int i = 0; i < A->n; i++) {
        int64_t off = buf_changed(&A->b[i], 0);
        if (off != INT64_MIN)
            FZ_FAIL("%s #%d [%s]: failed with %s (%s) but buffer '%s' changed at byte %lld", op,
                    iter, what, mla_status_string(st), msg, A->b[i].name, (long long)off);
    }
}

/* ---- generic tensor mutations ---- */

/* DIM_FREE: any size is safe alone (only indexed parts are read); DIM_SHRINK: only smaller
 * sizes are safe. The random cases only shrink both kinds; growth runs in huge_shape_cases. */
enum { DIM_FIX = 0, DIM_FREE = 1, DIM_SHRINK = 2 };

typedef struct {
    const char *name;
    mla_tensor *t;
    int buf;                /* arena buffer of its data */
    uint32_t ok_dtypes;     /* a change to these alone is valid and fits the buffers */
    uint32_t either_dtypes; /* fits, but validity depends on the data */
    uint32_t skip_dtypes;   /* valid but would need larger buffers: not generated */
    uint8_t dim[4];         /* DIM_FIX: agrees with the config or another tensor; DIM_FREE: any
                             * size is safe; DIM_SHRINK: only smaller sizes are safe */
    int optional;           /* data NULL = absent is a valid call */
    int output;
    int strides_free;  /* last dim contiguous, other strides free (kv_pack inputs) */
    int dtype_named;   /* a bad dtype is reported under this tensor's name */
    uint32_t alias_ok; /* bit j: may be exactly tensor j (same dtype) */
    int index_input;   /* index data (block table, lengths): overlap cases run last, apart */
    int contents_read; /* the op's content mutations read this tensor by its own layout (so
                        * they do not combine with a shape or stride change of it); implied
                        * by index_input */
    int partner;       /* 1 + index of a tensor given together with this one (c_kv, k_pe) */
} fz_tensor;

#define DT(d) (1u << (d))

static void set_contiguous_strides(mla_tensor *t)
{
    uint64_t s = 1; /* wraps for huge shapes without UB in the test itself */
    for (int d = t->ndim - 1; d >= 0; d--) {
        t->strides[d] = (int64_t)s;
        s *= (uint64_t)t->shape[d];
    }
}

static int64_t pick64(const int64_t *v, int n) { return v[rnd(0, n - 1)]; }

static int g_overlap_apart; /* overlap mutations run in the overlap phase only */

static void mutate_tensor(fz_case *c, fz_tensor *T, int nt, int i, const fz_arena *A)
{
    fz_tensor *x = &T[i];
    mla_tensor *t = x->t;
    c->mutated |= 1u << i;
    if (x->partner) c->mutated |= 1u << (x->partner - 1); /* both absent would be valid */
    int kind = rnd(0, x->output && !g_overlap_apart ? 7 : 5);
    if (kind == 7) kind = 6; /* outputs: overlap twice as likely */
    if ((kind == 2 || kind == 3) && (x->index_input || x->contents_read)) {
        /* A content mutation's expectation was computed on the tensor's own layout: a shape or
         * stride change reinterprets it (req_to_token [6, 64] over a [6, 128] table is valid
         * whatever one entry of the old row 4 says), so the two do not share a case. */
        if (c->content_done) kind = rnd(0, 1);
        else c->content_done = 1;
    }
    switch (kind) {
    case 0: { /* dtype, including values outside the enum */
        static const int cand[] = {0, 1, 2, 3, 4, 5, 6, 99, -1, 1000, INT_MIN};
        int d;
        do d = cand[rnd(0, 10)];
        while (d == (int)t->dtype || (d >= 0 && d < 32 && (x->skip_dtypes >> d & 1u)));
        t->dtype = (mla_dtype)d;
        int e = d >= 0 && d < 32 && (x->ok_dtypes >> d & 1u)       ? EXP_OK
                : d >= 0 && d < 32 && (x->either_dtypes >> d & 1u) ? EXP_EITHER
                                                                   : EXP_FAIL;
        note(c, e, x->dtype_named ? x->name : NULL, "%s.dtype=%d", x->name, d);
        break;
    }
    case 1: { /* ndim */
        static const int cand[] = {-1, 0, 5, 100, INT_MIN, INT_MAX};
        int nd = rnd(0, 3) == 0 ? t->ndim + (rnd(0, 1) ? 1 : -1) : cand[rnd(0, 5)];
        if (nd == t->ndim) nd = -1;
        if (nd > t->ndim && nd <= MLA_MAX_DIMS) /* a new trailing dim of size 0: never valid */
            for (int d = t->ndim; d < nd; d++) t->shape[d] = 0, t->strides[d] = 0;
        t->ndim = nd;
        note(c, EXP_FAIL, x->name, "%s.ndim=%d", x->name, nd);
        break;
    }
    case 2: { /* one shape entry; half the time with matching contiguous strides */
        int d = rnd(0, t->ndim - 1);
        const int64_t s = t->shape[d];
        int64_t v;
        if (x->dim[d] != DIM_FIX) { /* growth only in huge_shape_cases, alone: with an index
                                     * mutation it would make out-of-range data valid */
            const int64_t cand[] = {0, s - 1, s / 2, -1, INT64_MIN, -(1LL << 40)};
            do v = pick64(cand, 6);
            while (v == s);
        } else {
            /* Sizes whose element count overflows int64 run apart, last (huge_shape_cases). */
            const int64_t cand[] = {0,         -1,        s + 1,     s - 1,       2 * s + 1,
                                    1LL << 31, 1LL << 40, INT64_MIN, -(1LL << 40)};
            do v = pick64(cand, 9);
            while (v == s || (c->fix_dim && v == c->fix_value && (v == 0 || c->fix_dim == d + 1)));
            c->fix_dim = d + 1;
            c->fix_value = v;
        }
        t->shape[d] = v;
        int consistent = rnd(0, 1);
        if (consistent) set_contiguous_strides(t);
        note(c, x->dim[d] == DIM_FIX || v < 0 ? EXP_FAIL : EXP_EITHER, NULL, "%s.shape[%d]=%lld%s",
             x->name, d, (long long)v, consistent ? " (+strides)" : "");
        break;
    }
    case 3: { /* one stride */
        int d = rnd(0, t->ndim - 1);
        const int64_t s = t->strides[d];
        const int64_t cand[] = {0, -1, s + 1, s - 1, 2 * s, 1LL << 40, INT64_MIN, -s};
        int64_t v;
        do v = pick64(cand, 8);
        while (v == s);
        int e;
        if (x->strides_free && d < t->ndim - 1) {
            if (v > s) v = rnd(0, 1) ? 0 : s / 2; /* larger strides need larger buffers */
            if (v == s) v = 0;
            e = v < 0 ? EXP_FAIL : EXP_OK;
        } else {
            e = t->shape[d] == 1 ? EXP_OK : EXP_FAIL;
        }
        t->strides[d] = v;
        note(c, e, e == EXP_FAIL ? x->name : NULL, "%s.strides[%d]=%lld", x->name, d, (long long)v);
        break;
    }
    case 4: /* absent */
        t->data = NULL;
        if (x->optional) c->may_write &= ~(1u << x->buf);
        note(c, x->optional ? EXP_OK : EXP_FAIL, x->name, "%s.data=NULL", x->name);
        break;
    case 5: { /* device */
        static const mla_device cand[] = {{MLA_DEVICE_CUDA, 0},
                                          {MLA_DEVICE_CPU, 1},
                                          {(mla_device_type)7, 0},
                                          {MLA_DEVICE_CPU, -1},
                                          {MLA_DEVICE_CUDA, 1}};
        t->device = cand[rnd(0, 4)];
        note(c, EXP_FAIL, x->name, "%s.device=%d:%d", x->name, (int)t->device.type,
             t->device.index);
        break;
    }
    default: { /* output data inside another tensor's buffer */
        int cands[MAX_TENSORS], n = 0;
        const size_t need = A->b[x->buf].bytes; /* the output's own size */
        for (int j = 0; j < nt; j++)
            if (j != i && !(c->mutated >> j & 1u) && T[j].buf >= 0 && T[j].buf != x->buf &&
                !T[j].index_input && A->b[T[j].buf].total - GUARD >= need + 8)
                cands[n++] = j;
        if (n == 0) {
            t->data = NULL;
            note(c, x->optional ? EXP_OK : EXP_FAIL, x->name, "%s.data=NULL", x->name);
            if (x->optional) c->may_write &= ~(1u << x->buf);
            break;
        }
        int j = cands[rnd(0, n - 1)];
        c->mutated |= 1u << j; /* the target keeps its valid form */
        const fz_buf *b = &A->b[T[j].buf];
        /* Inside the target's allocation; partial overlaps too (any offset inside its body). */
        const size_t room = b->total - GUARD - need, span = room < b->bytes ? room : b->bytes - 1;
        size_t off = rnd(0, 1) ? 0 : ((size_t)rnd(0, (int)span) & ~(size_t)7);
        const int alias_ok = (x->alias_ok >> j & 1u) && t->dtype == T[j].t->dtype;
        if (off == 0 && alias_ok && !c->allow_solo) off = 8; /* exact aliasing only alone */
        t->data = b->base + GUARD + off;
        int alias = off == 0 && alias_ok;
        c->may_write &= ~(1u << x->buf); /* its own buffer is no longer referenced */
        if (alias) {
            c->allow_solo = 0;
            c->may_write |= 1u << T[j].buf;
        }
        note(c, alias ? EXP_OK : EXP_FAIL, alias ? NULL : "overlap", "%s.data=%s+%zu", x->name,
             T[j].name, off);
        break;
    }
    }
}

/* ---- the loop ---- */

typedef struct {
    const char *op;
    fz_arena A;
    fz_tensor T[MAX_TENSORS];
    int nt;
    uint32_t outputs; /* arena buffers written by a valid call */
    uint32_t filled;  /* outputs a valid call writes from element 0 on (checked on MLA_OK) */
    void *ctx;
    void (*reset)(void *ctx);              /* args := the valid args */
    int (*special)(void *ctx, fz_case *c); /* one op-specific mutation; 0 = none applied */
    mla_status (*call)(void *ctx);
    void (*after)(void *ctx, mla_status st, int iter, const fz_case *c); /* extra checks */
    int iters;
    int overlap_apart; /* output overlaps: only in the overlap phase (each reported once) */
} fz_op;

/* Outputs placed over index inputs (a library that misses this overlap reads indices it is
 * overwriting: out-of-bounds reads follow), and for ops with overlap_apart over every other
 * tensor: run after the random cases, one by one, so each one is reported once. */
static void overlap_index_cases(fz_op *o)
{
    for (int i = 0; i < o->nt; i++) {
        if (!o->T[i].output) continue;
        for (int j = 0; j < o->nt; j++) {
            const fz_buf *tb = &o->A.b[o->T[j].buf];
            if (j == i || o->T[j].buf == o->T[i].buf) continue;
            if (!o->T[j].index_input && !o->overlap_apart) continue;
            if (tb->total - GUARD < o->A.b[o->T[i].buf].bytes)
                continue; /* would leave the allocation */
            arena_restore(&o->A);
            o->reset(o->ctx);
            fz_case c;
            memset(&c, 0, sizeof c);
            c.may_write = o->outputs;
        c.filled = o->filled;
            o->T[i].t->data = o->T[j].t->data;
            c.may_write &= ~(1u << o->T[i].buf);
            note(&c, EXP_FAIL, "overlap", "%s.data=%s+0", o->T[i].name, o->T[j].name);
            snprintf(fz_sh->desc, sizeof fz_sh->desc, "%s overlap case: %s", o->op, c.desc);
            arena_snapshot(&o->A);
            mla_status st = o->call(o->ctx);
            verify(o->op, -2, &c, st, &o->A);
        }
    }
}

/* One shape entry of 2^31, 2^40, 2^62 or INT64_MAX (with the old or with matching strides):
 * a correct library rejects these (FIX: they disagree with another tensor or the config;
 * SHRINK: beyond the 2^31-1 index limits) or, for a FREE dim, may accept them, and never
 * overflows a signed product on the way (UBSan checks that). */
static void huge_shape_cases(fz_op *o)
{
    static const int64_t huge[] = {1LL << 31, 1LL << 40, 1LL << 62, INT64_MAX};
    o->reset(o->ctx); /* the valid ndims */
    for (int i = 0; i < o->nt; i++) {
        for (int d = 0; d < o->T[i].t->ndim && d < MLA_MAX_DIMS; d++) {
            for (int k = 0; k < 8; k++) {
                arena_restore(&o->A);
                o->reset(o->ctx);
                fz_case c;
                memset(&c, 0, sizeof c);
                c.may_write = o->outputs;
        c.filled = o->filled;
                mla_tensor *t = o->T[i].t;
                t->shape[d] = huge[k & 3];
                if (k >= 4) set_contiguous_strides(t);
                note(&c, o->T[i].dim[d] != DIM_FREE ? EXP_FAIL : EXP_EITHER, NULL,
                     "%s.shape[%d]=%lld%s", o->T[i].name, d, (long long)t->shape[d],
                     k >= 4 ? " (+strides)" : "");
                snprintf(fz_sh->desc, sizeof fz_sh->desc, "%s huge case: %s", o->op, c.desc);
                arena_snapshot(&o->A);
                mla_status st = o->call(o->ctx);
                verify(o->op, -3, &c, st, &o->A);
            }
        }
    }
}

static void random_cases(fz_op *o)
{
    const int iters = o->iters;
    g_overlap_apart = o->overlap_apart;
    int tally[3][2] = {{0}}; /* expectation x (status == OK) */
    for (int it = -1; it < iters; it++) {
        arena_restore(&o->A);
        o->reset(o->ctx);
        fz_case c;
        memset(&c, 0, sizeof c);
        c.may_write = o->outputs;
        c.filled = o->filled;
        if (it >= 0) {
            const int n = rnd(0, 2) == 0 ? 2 : 1;
            c.allow_solo = n == 1;
            for (int k = 0; k < n; k++) {
                int done = 0;
                if (o->special && rnd(0, 99) < 45) done = o->special(o->ctx, &c);
                if (!done) {
                    int free_t[MAX_TENSORS], nf = 0;
                    for (int i = 0; i < o->nt; i++)
                        if (!(c.mutated >> i & 1u)) free_t[nf++] = i;
                    if (nf) mutate_tensor(&c, o->T, o->nt, free_t[rnd(0, nf - 1)], &o->A);
                }
            }
        }
        snprintf(fz_sh->desc, sizeof fz_sh->desc, "%s #%d: %s", o->op, it,
                 c.len ? c.desc : "(valid call)");
        arena_snapshot(&o->A);
        mla_status st = o->call(o->ctx);
        verify(o->op, it, &c, st, &o->A);
        tally[c.expect][st == MLA_OK]++;
        if (o->after) o->after(o->ctx, st, it, &c);
        if (fz_failures > 40) break; /* enough to debug; keep the log short */
    }
    if (getenv("MLA_FUZZ_VERBOSE"))
        fprintf(stderr,
                "    %s: expected OK %d (got OK %d), FAIL %d (got OK %d), EITHER %d (got OK %d)\n",
                o->op, tally[0][0] + tally[0][1], tally[0][1], tally[2][0] + tally[2][1],
                tally[2][1], tally[1][0] + tally[1][1], tally[1][1]);
}

static void random_phase(void *o) { random_cases(o); }
static void overlap_phase(void *o) { overlap_index_cases(o); }
static void huge_phase(void *o) { huge_shape_cases(o); }

/* The three phases, each in its own child. */
static void fuzz_loop(fz_op *o, int iters)
{
    char name[96];
    o->iters = iters;
    arena_commit(&o->A);
    snprintf(name, sizeof name, "%s random cases", o->op);
    run_isolated_arg(name, random_phase, o, 120);
    snprintf(name, sizeof name, "%s outputs over inputs", o->op);
    run_isolated_arg(name, overlap_phase, o, 60);
    snprintf(name, sizeof name, "%s huge shapes", o->op);
    run_isolated_arg(name, huge_phase, o, 60);
}

static fz_tensor *add_tensor(fz_op *o, const char *name, mla_tensor *t, int buf, int output)
{
    fz_tensor *x = &o->T[o->nt++];
    memset(x, 0, sizeof *x);
    x->name = name;
    x->t = t;
    x->buf = buf;
    x->output = output;
    x->dtype_named = 1;
    if (output) o->outputs |= 1u << buf;
    return x;
}

/* Scale mutations shared by the ops that take an mla_scales. */
static void mutate_scales(fz_case *c, mla_scales *s, const mla_scales **ptr, int checked_mask)
{
    static const char *names[] = {"softmax_scale", "q_scale", "k_scale", "v_scale", "o_scale"};
    if (rnd(0, 9) == 0) {
        *ptr = NULL;
        note(c, EXP_OK, NULL, "scales=NULL (config's)");
        return;
    }
    float *f[] = {&s->softmax_scale, &s->q_scale, &s->k_scale, &s->v_scale, &s->o_scale};
    int k = rnd(0, 4);
    static const float bad[] = {0.0f, -0.0f, -1.0f, NAN, INFINITY, -INFINITY, -FLT_MIN};
    static const float good[] = {1e-30f, 1e30f, FLT_MIN, 1e-44f /* denormal */, 3.0f};
    int use_bad = rnd(0, 2) != 0;
    float v = use_bad ? bad[rnd(0, 6)] : good[rnd(0, 4)];
    *f[k] = v;
    int fail = use_bad && (checked_mask >> k & 1);
    note(c, fail ? EXP_FAIL : EXP_OK, names[k], "scales.%s=%g", names[k], (double)v);
}

static const int bad_i32[] = {-1, INT32_MIN, INT32_MAX, -1000};

/* Each op-specific mutation kind at most once per case (a second one would overwrite it). */
static int once(fz_case *c, int kind)
{
    if (c->sp_done >> kind & 1u) return 0;
    c->sp_done |= 1u << kind;
    return 1;
}

/* ======================================================================================
 * mla_decode
 * ==================================================================================== */

enum { DB = 3, DL = 2, DNP = 6, DMP = 3 };

typedef struct {
    mla_backend *be;
    mla_decode_args args, valid;
    mla_scales scales, valid_scales;
    int32_t *bt, *sl;
    void *ws;
    int null_be, null_args;
} dec_ctx;

static void dec_reset(void *p)
{
    dec_ctx *x = p;
    x->args = x->valid;
    x->scales = x->valid_scales;
    x->args.scales = &x->scales;
    x->null_be = x->null_args = 0;
}

static mla_status dec_call(void *p)
{
    dec_ctx *x = p;
    return mla_decode(x->null_be ? NULL : x->be, x->null_args ? NULL : &x->args);
}

static int dec_special(void *p, fz_case *c)
{
    dec_ctx *x = p;
    const int cap = DMP * PS;
    int k = rnd(0, 8);
    if (k <= 2 && c->content_done) k = 3 + rnd(0, 5);
    if (!once(c, k == 5 ? 4 : k)) return 0;
    switch (k) {
    case 0: { /* seq_lens contents */
        int b = rnd(0, DB - 1),
            v = rnd(0, 1) ? rnd(0, cap) : (rnd(0, 1) ? cap + 1 : bad_i32[rnd(0, 3)]);
        x->sl[b] = v;
        c->content_done = 1;
        note(c, v < 0 || v > cap ? EXP_FAIL : EXP_OK, "seq_lens", "seq_lens[%d]=%d", b, v);
        return 1;
    }
    case 1: { /* block_table contents */
        int b = rnd(0, DB - 1), j = rnd(0, DMP - 1);
        int v = rnd(0, 2) == 0 ? rnd(0, DNP - 1) : rnd(0, 1) ? DNP : bad_i32[rnd(0, 3)];
        x->bt[b * DMP + j] = v;
        c->content_done = 1;
        int used = j < (x->sl[b] + PS - 1) / PS;
        note(c, used && (v < 0 || v >= DNP) ? EXP_FAIL : EXP_OK, "block_table",
             "block_table[%d][%d]=%d (seq_len %d)", b, j, v, x->sl[b]);
        return 1;
    }
    case 2: { /* max_seq_len */
        int mx = 0;
        for (int b = 0; b < DB; b++) mx = x->sl[b] > mx ? x->sl[b] : mx;
        const int cand[] = {-1, INT_MIN, 0, mx, mx + 5, mx - 1, INT_MAX, 1};
        int v = cand[rnd(0, 7)];
        x->args.max_seq_len = v;
        c->content_done = 1;
        note(c, v < 0 || (v > 0 && v < mx) ? EXP_FAIL : EXP_OK, "max_seq_len",
             "max_seq_len=%d (longest %d)", v, mx);
        return 1;
    }
    case 3: {
        const int cand[] = {1, 2, -1, INT_MIN};
        int v = cand[rnd(0, 3)];
        x->args.no_causal_mask = v;
        note(c, v == 1 ? EXP_OK : EXP_FAIL, "no_causal_mask", "no_causal_mask=%d", v);
        return 1;
    }
    case 4:
    case 5: mutate_scales(c, &x->scales, &x->args.scales, 0x1f); return 1;
    case 6: { /* workspace */
        int w = rnd(0, 2);
        x->args.workspace = w == 0 ? NULL : x->ws;
        x->args.workspace_bytes = w == 0 ? 64 : w == 1 ? 256 : 0;
        note(c, w == 0 ? EXP_FAIL : EXP_OK, "workspace", "workspace=%s bytes=%zu",
             w ? "buffer" : "NULL", x->args.workspace_bytes);
        return 1;
    }
    case 7:
        if (rnd(0, 1))
            x->null_be = 1;
        else
            x->null_args = 1;
        note(c, EXP_FAIL, "NULL", "%s=NULL", x->null_be ? "backend" : "args");
        return 1;
    default:
        x->args.stream = (void *)(uintptr_t)0x1234; /* ignored on the CPU */
        note(c, EXP_OK, NULL, "stream=0x1234");
        return 1;
    }
}

static void fuzz_decode_body(void)
{
    static fz_op o;
    static dec_ctx x;
    memset(&o, 0, sizeof o);
    memset(&x, 0, sizeof x);
    x.be = new_backend(MLA_DTYPE_FP8_E4M3);
    if (!x.be) return;
    fz_arena *A = &o.A;
    void *q = arena_add(A, "q", (size_t)DB * DL * H * D * 2);
    void *cache = arena_add(A, "kv_cache", (size_t)DNP * PS * D);
    x.bt = arena_add(A, "block_table", DB * DMP * 4);
    x.sl = arena_add(A, "seq_lens", DB * 4);
    void *out = arena_add(A, "out", (size_t)DB * DL * H * R * 2);
    void *lse = arena_add(A, "lse", (size_t)DB * DL * H * 4);
    x.ws = arena_add(A, "workspace", 256);
    fill_bf16(q, (size_t)DB * DL * H * D);
    fill_fp8(cache, (size_t)DNP * PS * D);
    for (int i = 0; i < DB * DMP; i++) x.bt[i] = rnd(0, DNP - 1);
    for (int b = 0; b < DB; b++) x.sl[b] = rnd(0, DMP * PS);
    x.sl[0] = DMP * PS - 3; /* at least one long sequence: every page used */
    memset(out, 0xFF, (size_t)DB * DL * H * R * 2);
    memset(lse, 0xFF, (size_t)DB * DL * H * 4);
    x.valid = (mla_decode_args){
        .q = tens(q, MLA_DTYPE_BF16, 4, DB, DL, H, D),
        .kv_cache = tens(cache, MLA_DTYPE_FP8_E4M3, 3, DNP, PS, D, 0),
        .block_table = tens(x.bt, MLA_DTYPE_I32, 2, DB, DMP, 0, 0),
        .seq_lens = tens(x.sl, MLA_DTYPE_I32, 1, DB, 0, 0, 0),
        .out = tens(out, MLA_DTYPE_BF16, 4, DB, DL, H, R),
        .lse = tens(lse, MLA_DTYPE_F32, 3, DB, DL, H, 0),
    };
    x.valid_scales = mla_backend_config(x.be)->scales;
    fz_tensor *t;
    t = add_tensor(&o, "q", &x.args.q, 0, 0);
    t->ok_dtypes = DT(MLA_DTYPE_FP8_E4M3); /* 1 byte per element: fits */
    t = add_tensor(&o, "kv_cache", &x.args.kv_cache, 1, 0);
    t->dim[0] = DIM_FREE; /* only pages in the block table are read */
    t = add_tensor(&o, "block_table", &x.args.block_table, 2, 0);
    t->dim[1] = DIM_SHRINK;
    t->index_input = 1;
    t = add_tensor(&o, "seq_lens", &x.args.seq_lens, 3, 0);
    t->index_input = 1;
    add_tensor(&o, "out", &x.args.out, 4, 1);
    t = add_tensor(&o, "lse", &x.args.lse, 5, 1);
    t->optional = 1;
    o.outputs |= 1u << 6; /* the workspace may be used */
    o.filled = 3u << 4; /* out, lse */
    o.op = "mla_decode";
    o.ctx = &x;
    o.reset = dec_reset;
    o.special = dec_special;
    o.call = dec_call;
    fuzz_loop(&o, 5000);
    arena_free(A);
    mla_backend_destroy(x.be);
}

TEST(fuzz_args_decode) { run_isolated("fuzz_args_decode", fuzz_decode_body, 120); }

/* ======================================================================================
 * mla_decode_workspace_size
 * ==================================================================================== */

static void fuzz_workspace_size_body(void)
{
    mla_backend *be = new_backend(MLA_DTYPE_FP8_E4M3);
    if (!be) return;
    static const int cand[] = {0, 1, 2, 8, 9, -1, INT_MIN, INT_MAX, 1 << 24, 1 << 30};
    for (int it = 0; it < 2000; it++) {
        int batch = rnd(0, 1) ? rnd(0, 64) : cand[rnd(0, 9)];
        int q_len = rnd(0, 1) ? rnd(1, 8) : cand[rnd(0, 9)];
        int null_be = rnd(0, 15) == 0, null_bytes = rnd(0, 15) == 0;
        size_t bytes = 0xDEADBEEF;
        snprintf(fz_sh->desc, sizeof fz_sh->desc, "workspace_size #%d batch=%d q_len=%d%s%s", it,
                 batch, q_len, null_be ? " backend=NULL" : "", null_bytes ? " bytes=NULL" : "");
        mla_status st = mla_decode_workspace_size(null_be ? NULL : be, batch, q_len,
                                                  null_bytes ? NULL : &bytes);
        int valid = !null_be && !null_bytes && batch >= 0 && q_len >= 1 && q_len <= 8;
        if ((unsigned)st > (unsigned)MLA_ERR_INTERNAL)
            FZ_FAIL("%s: unknown status %d", fz_sh->desc, (int)st);
        if (valid && (st != MLA_OK || bytes != 0))
            FZ_FAIL("%s: %s (%s), bytes %zu; expected OK and 0 bytes on the CPU", fz_sh->desc,
                    mla_status_string(st), mla_last_error(), bytes);
        if (!valid) {
            if (st == MLA_OK)
                FZ_FAIL("%s: accepted", fz_sh->desc);
            else if (!*mla_last_error())
                FZ_FAIL("%s: empty message", fz_sh->desc);
            /* An invalid size request may zero the out value, never set it to anything else. */
            if (!null_bytes && bytes != 0xDEADBEEF && bytes != 0)
                FZ_FAIL("%s: failed but wrote bytes = %zu", fz_sh->desc, bytes);
            if (!null_be && !null_bytes &&
                strstr(mla_last_error(), batch < 0 ? "batch" : "q_len") == NULL)
                FZ_FAIL("%s: message \"%s\" does not name the bad value", fz_sh->desc,
                        mla_last_error());
        }
        if (fz_failures > 40) break;
    }
    mla_backend_destroy(be);
}

TEST(fuzz_args_decode_workspace_size)
{
    run_isolated("fuzz_args_decode_workspace_size", fuzz_workspace_size_body, 60);
}

/* ======================================================================================
 * mla_prefill
 * ==================================================================================== */

enum { PB = 3, PTQ = 7, PTK = 9 };

typedef struct {
    mla_backend *be;
    mla_prefill_args args, valid;
    mla_scales scales, valid_scales;
    int32_t *cq, *ck;
    int null_be, null_args;
} pre_ctx;

static void pre_reset(void *p)
{
    pre_ctx *x = p;
    x->args = x->valid;
    x->scales = x->valid_scales;
    x->args.scales = &x->scales;
    x->null_be = x->null_args = 0;
}

static mla_status pre_call(void *p)
{
    pre_ctx *x = p;
    return mla_prefill(x->null_be ? NULL : x->be, x->null_args ? NULL : &x->args);
}

static void random_partition(int32_t *cu, int batch, int total)
{
    cu[0] = 0;
    for (int b = 1; b < batch; b++) cu[b] = rnd(0, total);
    cu[batch] = total;
    for (int i = 1; i < batch; i++) /* sort: insertion */
        for (int j = i; j > 0 && cu[j - 1] > cu[j]; j--) {
            int32_t tmp = cu[j];
            cu[j] = cu[j - 1];
            cu[j - 1] = tmp;
        }
}

static int cu_valid(const int32_t *cu, int batch, int total, int *longest)
{
    *longest = 0;
    if (cu[0] != 0 || cu[batch] != total) return 0;
    for (int b = 0; b < batch; b++) {
        if (cu[b + 1] < cu[b]) return 0;
        if (cu[b + 1] - cu[b] > *longest) *longest = cu[b + 1] - cu[b];
    }
    return 1;
}

static int pre_special(void *p, fz_case *c)
{
    pre_ctx *x = p;
    int k = rnd(0, 7);
    if (k <= 1 && c->content_done) k = 2 + rnd(0, 5);
    if (!once(c, k == 4 ? 3 : k)) return 0;
    switch (k) {
    case 0: { /* cu_seqlens contents */
        const int is_q = rnd(0, 1), total = is_q ? PTQ : PTK;
        int32_t *cu = is_q ? x->cq : x->ck;
        const char *name = is_q ? "cu_seqlens_q" : "cu_seqlens_kv";
        int m = rnd(0, 2), longest;
        if (m == 0) {
            random_partition(cu, PB, total);
            note(c, EXP_OK, NULL, "%s = new valid partition", name);
        } else {
            int i = rnd(0, PB), v = m == 1 ? rnd(-2, total + 2) : bad_i32[rnd(0, 3)];
            cu[i] = v;
            note(c, cu_valid(cu, PB, total, &longest) ? EXP_OK : EXP_FAIL, name, "%s[%d]=%d", name,
                 i, v);
        }
        c->content_done = 1;
        return 1;
    }
    case 1: { /* max_seqlen_q / kv */
        const int is_q = rnd(0, 1);
        int longest;
        cu_valid(is_q ? x->cq : x->ck, PB, is_q ? PTQ : PTK, &longest);
        const int cand[] = {-1, INT_MIN, 0, longest, longest + 3, longest - 1, INT_MAX};
        int v = cand[rnd(0, 6)];
        *(is_q ? &x->args.max_seqlen_q : &x->args.max_seqlen_kv) = v;
        c->content_done = 1;
        note(c, v < 0 || (v > 0 && v < longest) ? EXP_FAIL : EXP_OK, "max_seqlen",
             "max_seqlen_%s=%d (longest %d)", is_q ? "q" : "kv", v, longest);
        return 1;
    }
    case 2: {
        const int cand[] = {0, 2, -1, INT_MIN, INT_MAX};
        int v = cand[rnd(0, 4)];
        x->args.causal = v;
        note(c, v == 0 ? EXP_OK : EXP_FAIL, "causal", "causal=%d", v);
        return 1;
    }
    case 3:
    case 4: mutate_scales(c, &x->scales, &x->args.scales, 0x1f); return 1;
    case 5:
        if (rnd(0, 1))
            x->null_be = 1;
        else
            x->null_args = 1;
        note(c, EXP_FAIL, "NULL", "%s=NULL", x->null_be ? "backend" : "args");
        return 1;
    default:
        x->args.stream = (void *)(uintptr_t)0x1234;
        note(c, EXP_OK, NULL, "stream=0x1234");
        return 1;
    }
}

static void fuzz_prefill_body(void)
{
    static fz_op o;
    static pre_ctx x;
    memset(&o, 0, sizeof o);
    memset(&x, 0, sizeof x);
    x.be = new_backend(MLA_DTYPE_FP8_E4M3);
    if (!x.be) return;
    fz_arena *A = &o.A;
    void *q = arena_add(A, "q", (size_t)PTQ * H * DQK * 2);
    void *k = arena_add(A, "k", (size_t)PTK * H * DQK * 2);
    void *v = arena_add(A, "v", (size_t)PTK * H * VD * 2);
    x.cq = arena_add(A, "cu_seqlens_q", (PB + 1) * 4);
    x.ck = arena_add(A, "cu_seqlens_kv", (PB + 1) * 4);
    void *out = arena_add(A, "out", (size_t)PTQ * H * VD * 2);
    void *lse = arena_add(A, "lse", (size_t)PTQ * H * 4);
    fill_bf16(q, (size_t)PTQ * H * DQK);
    fill_bf16(k, (size_t)PTK * H * DQK);
    fill_bf16(v, (size_t)PTK * H * VD);
    random_partition(x.cq, PB, PTQ);
    random_partition(x.ck, PB, PTK);
    memset(out, 0xFF, (size_t)PTQ * H * VD * 2);
    memset(lse, 0xFF, (size_t)PTQ * H * 4);
    x.valid = (mla_prefill_args){
        .q = tens(q, MLA_DTYPE_BF16, 3, PTQ, H, DQK, 0),
        .k = tens(k, MLA_DTYPE_BF16, 3, PTK, H, DQK, 0),
        .v = tens(v, MLA_DTYPE_BF16, 3, PTK, H, VD, 0),
        .cu_seqlens_q = tens(x.cq, MLA_DTYPE_I32, 1, PB + 1, 0, 0, 0),
        .cu_seqlens_kv = tens(x.ck, MLA_DTYPE_I32, 1, PB + 1, 0, 0, 0),
        .causal = 1,
        .out = tens(out, MLA_DTYPE_BF16, 3, PTQ, H, VD, 0),
        .lse = tens(lse, MLA_DTYPE_F32, 2, PTQ, H, 0, 0),
    };
    x.valid_scales = mla_backend_config(x.be)->scales;
    fz_tensor *t;
    t = add_tensor(&o, "q", &x.args.q, 0, 0);
    t->dtype_named = 0; /* q fp8 alone: k's dtype then disagrees */
    add_tensor(&o, "k", &x.args.k, 1, 0);
    add_tensor(&o, "v", &x.args.v, 2, 0);
    t = add_tensor(&o, "cu_seqlens_q", &x.args.cu_seqlens_q, 3, 0);
    t->index_input = 1;
    t = add_tensor(&o, "cu_seqlens_kv", &x.args.cu_seqlens_kv, 4, 0);
    t->index_input = 1;
    add_tensor(&o, "out", &x.args.out, 5, 1);
    t = add_tensor(&o, "lse", &x.args.lse, 6, 1);
    t->optional = 1;
    o.filled = 3u << 5; /* out, lse */
    o.op = "mla_prefill";
    o.ctx = &x;
    o.reset = pre_reset;
    o.special = pre_special;
    o.call = pre_call;
    fuzz_loop(&o, 5000);
    arena_free(A);
    mla_backend_destroy(x.be);
}

TEST(fuzz_args_prefill) { run_isolated("fuzz_args_prefill", fuzz_prefill_body, 120); }

/* ======================================================================================
 * mla_merge_state
 * ==================================================================================== */

enum { MT = 5, MD = 16 };

typedef struct {
    mla_backend *be;
    mla_merge_state_args args, valid;
    int null_be, null_args;
} mrg_ctx;

static void mrg_reset(void *p)
{
    mrg_ctx *x = p;
    x->args = x->valid;
    x->null_be = x->null_args = 0;
}

static mla_status mrg_call(void *p)
{
    mrg_ctx *x = p;
    return mla_merge_state(x->null_be ? NULL : x->be, x->null_args ? NULL : &x->args);
}

static int mrg_special(void *p, fz_case *c)
{
    mrg_ctx *x = p;
    if (rnd(0, 2) == 0) {
        x->args.stream = (void *)(uintptr_t)0x1234;
        note(c, EXP_OK, NULL, "stream=0x1234");
    } else {
        if (rnd(0, 1))
            x->null_be = 1;
        else
            x->null_args = 1;
        note(c, EXP_FAIL, "NULL", "%s=NULL", x->null_be ? "backend" : "args");
    }
    return 1;
}

static void fuzz_merge_body(void)
{
    static fz_op o;
    static mrg_ctx x;
    memset(&o, 0, sizeof o);
    memset(&x, 0, sizeof x);
    x.be = new_backend(MLA_DTYPE_FP8_E4M3);
    if (!x.be) return;
    fz_arena *A = &o.A;
    const size_t no = (size_t)MT * H * MD, nl = (size_t)MT * H;
    void *oa = arena_add(A, "o_a", no * 4), *la = arena_add(A, "lse_a", nl * 4);
    void *ob = arena_add(A, "o_b", no * 4), *lb = arena_add(A, "lse_b", nl * 4);
    void *oo = arena_add(A, "o", no * 4), *lo = arena_add(A, "lse", nl * 4);
    fill_f32(oa, no, -1, 1);
    fill_f32(ob, no, -1, 1);
    fill_f32(la, nl, -3, 3);
    fill_f32(lb, nl, -3, 3);
    ((float *)la)[1] = -INFINITY; /* a side with no keys */
    ((float *)la)[2] = ((float *)lb)[2] = -INFINITY;
    memset(oo, 0xFF, no * 4);
    memset(lo, 0xFF, nl * 4);
    x.valid = (mla_merge_state_args){
        .o_a = tens(oa, MLA_DTYPE_F32, 3, MT, H, MD, 0),
        .lse_a = tens(la, MLA_DTYPE_F32, 2, MT, H, 0, 0),
        .o_b = tens(ob, MLA_DTYPE_F32, 3, MT, H, MD, 0),
        .lse_b = tens(lb, MLA_DTYPE_F32, 2, MT, H, 0, 0),
        .o = tens(oo, MLA_DTYPE_F32, 3, MT, H, MD, 0),
        .lse = tens(lo, MLA_DTYPE_F32, 2, MT, H, 0, 0),
    };
    fz_tensor *t;
    t = add_tensor(&o, "o_a", &x.args.o_a, 0, 0);
    t->ok_dtypes = DT(MLA_DTYPE_BF16); /* smaller elements: reads fit */
    add_tensor(&o, "lse_a", &x.args.lse_a, 1, 0);
    t = add_tensor(&o, "o_b", &x.args.o_b, 2, 0);
    t->ok_dtypes = DT(MLA_DTYPE_BF16);
    add_tensor(&o, "lse_b", &x.args.lse_b, 3, 0);
    t = add_tensor(&o, "o", &x.args.o, 4, 1);
    t->ok_dtypes = DT(MLA_DTYPE_BF16);
    t->alias_ok = DT(0) | DT(2); /* in place over o_a or o_b */
    t = add_tensor(&o, "lse", &x.args.lse, 5, 1);
    t->optional = 1;
    t->alias_ok = DT(1) | DT(3);
    o.filled = 3u << 4; /* o, lse */
    o.op = "mla_merge_state";
    o.ctx = &x;
    o.reset = mrg_reset;
    o.special = mrg_special;
    o.call = mrg_call;
    fuzz_loop(&o, 5000);
    arena_free(A);
    mla_backend_destroy(x.be);
}

TEST(fuzz_args_merge_state) { run_isolated("fuzz_args_merge_state", fuzz_merge_body, 120); }

/* ======================================================================================
 * mla_kv_cache_write
 * ==================================================================================== */

enum { WN = 6, WNP = 4 };

typedef struct {
    mla_backend *be;
    mla_kv_cache_write_args args, valid;
    mla_scales scales, valid_scales;
    int64_t *slots;
    uint16_t *ckv, *kpe;
    int null_be, null_args;
} kvw_ctx;

static void kvw_reset(void *p)
{
    kvw_ctx *x = p;
    x->args = x->valid;
    x->scales = x->valid_scales;
    x->args.scales = &x->scales;
    x->null_be = x->null_args = 0;
}

static mla_status kvw_call(void *p)
{
    kvw_ctx *x = p;
    return mla_kv_cache_write(x->null_be ? NULL : x->be, x->null_args ? NULL : &x->args);
}

static int kvw_special(void *p, fz_case *c)
{
    kvw_ctx *x = p;
    const int64_t nslots = (int64_t)WNP * PS;
    int k = rnd(0, 6);
    if (k <= 1 && c->content_done) k = 2 + rnd(0, 4);
    if (!once(c, k == 3 ? 2 : k)) return 0;
    switch (k) {
    case 0: { /* slot contents */
        int i = rnd(0, WN - 1), m = rnd(0, 3);
        int64_t v;
        if (m == 0) { /* a duplicate of another written slot */
            int j = (i + rnd(1, WN - 1)) % WN;
            v = x->slots[j];
        } else if (m == 1) {
            const int64_t cand[] = {nslots, nslots + 7, 1LL << 40, INT64_MAX, INT32_MAX};
            v = pick64(cand, 5);
        } else if (m == 2) {
            const int64_t cand[] = {-1, -5, INT64_MIN, INT32_MIN};
            v = pick64(cand, 4); /* negative = skip: valid */
        } else {
            v = rnd(0, (int)nslots - 1);
        }
        x->slots[i] = v;
        int fail = v >= nslots;
        for (int j = 0; j < WN; j++) fail |= j != i && v >= 0 && x->slots[j] == v;
        c->content_done = 1;
        note(c, fail ? EXP_FAIL : EXP_OK, "slot", "slots[%d]=%lld", i, (long long)v);
        return 1;
    }
    case 1: { /* a non-finite input value */
        const int in_ckv = rnd(0, 1), i = rnd(0, WN - 1), j = rnd(0, (in_ckv ? R : P) - 1);
        const float vals[] = {NAN, INFINITY, -INFINITY};
        (in_ckv ? x->ckv : x->kpe)[i * (in_ckv ? R : P) + j] = mla_float_to_bf16(vals[rnd(0, 2)]);
        c->content_done = 1;
        note(c, x->slots[i] >= 0 ? EXP_FAIL : EXP_OK, in_ckv ? "c_kv" : "k_pe",
             "%s[%d][%d]=non-finite (slot %lld)", in_ckv ? "c_kv" : "k_pe", i, j,
             (long long)x->slots[i]);
        return 1;
    }
    case 2:
    case 3: mutate_scales(c, &x->scales, &x->args.scales, 0x1f); return 1;
    case 4:
        if (rnd(0, 1))
            x->null_be = 1;
        else
            x->null_args = 1;
        note(c, EXP_FAIL, "NULL", "%s=NULL", x->null_be ? "backend" : "args");
        return 1;
    default:
        x->args.stream = (void *)(uintptr_t)0x1234;
        note(c, EXP_OK, NULL, "stream=0x1234");
        return 1;
    }
}

static void fuzz_kv_cache_write_body(void)
{
    static fz_op o;
    static kvw_ctx x;
    memset(&o, 0, sizeof o);
    memset(&x, 0, sizeof x);
    x.be = new_backend(MLA_DTYPE_FP8_E4M3);
    if (!x.be) return;
    fz_arena *A = &o.A;
    x.ckv = arena_add(A, "c_kv", (size_t)WN * R * 2);
    x.kpe = arena_add(A, "k_pe", (size_t)WN * P * 2);
    x.slots = arena_add(A, "slots", WN * 8);
    void *cache = arena_add(A, "kv_cache", (size_t)WNP * PS * D);
    fill_bf16(x.ckv, (size_t)WN * R);
    fill_bf16(x.kpe, (size_t)WN * P);
    fill_fp8(cache, (size_t)WNP * PS * D);
    for (int i = 0; i < WN; i++) { /* distinct slots, one skipped */
        int64_t s;
        int dup;
        do {
            s = rnd(0, WNP * PS - 1);
            dup = 0;
            for (int j = 0; j < i; j++) dup |= x.slots[j] == s;
        } while (dup);
        x.slots[i] = s;
    }
    x.slots[3] = -1;
    x.valid = (mla_kv_cache_write_args){
        .c_kv = tens(x.ckv, MLA_DTYPE_BF16, 2, WN, R, 0, 0),
        .k_pe = tens(x.kpe, MLA_DTYPE_BF16, 2, WN, P, 0, 0),
        .slots = tens(x.slots, MLA_DTYPE_I64, 1, WN, 0, 0, 0),
        .kv_cache = tens(cache, MLA_DTYPE_FP8_E4M3, 3, WNP, PS, D, 0),
    };
    x.valid_scales = mla_backend_config(x.be)->scales;
    fz_tensor *t;
    t = add_tensor(&o, "c_kv", &x.args.c_kv, 0, 0);
    t->dtype_named = 0; /* c_kv f32 alone: k_pe's dtype then disagrees */
    t = add_tensor(&o, "k_pe", &x.args.k_pe, 1, 0);
    t->skip_dtypes = DT(MLA_DTYPE_F32); /* with c_kv f32 too: twice the bytes */
    t = add_tensor(&o, "slots", &x.args.slots, 2, 0);
    t->either_dtypes = DT(MLA_DTYPE_I32); /* halves of i64 slots: duplicates or not */
    t->index_input = 1;
    t = add_tensor(&o, "kv_cache", &x.args.kv_cache, 3, 1);
    t->dim[0] = DIM_FREE; /* only the slots' rows are written */
    o.op = "mla_kv_cache_write";
    o.ctx = &x;
    o.reset = kvw_reset;
    o.special = kvw_special;
    o.call = kvw_call;
    fuzz_loop(&o, 5000);
    arena_free(A);
    mla_backend_destroy(x.be);
}

TEST(fuzz_args_kv_cache_write)
{
    run_isolated("fuzz_args_kv_cache_write", fuzz_kv_cache_write_body, 120);
}

/* ======================================================================================
 * mla_quantize_fp8
 * ==================================================================================== */

enum { QA = 3, QB = 5, QC = 7, QN = QA * QB * QC };

typedef struct {
    mla_backend *be;
    mla_quantize_fp8_args args, valid;
    int null_be, null_args;
} qnt_ctx;

static void qnt_reset(void *p)
{
    qnt_ctx *x = p;
    x->args = x->valid;
    x->null_be = x->null_args = 0;
}

static mla_status qnt_call(void *p)
{
    qnt_ctx *x = p;
    return mla_quantize_fp8(x->null_be ? NULL : x->be, x->null_args ? NULL : &x->args);
}

static int qnt_special(void *p, fz_case *c)
{
    qnt_ctx *x = p;
    const int k = rnd(0, 4);
    if (!once(c, k == 1 ? 0 : k)) return 0;
    switch (k) {
    case 0:
    case 1: {
        static const float bad[] = {0.0f, -0.0f, -2.0f, NAN, INFINITY, -INFINITY};
        static const float good[] = {1e-30f, 1e30f, FLT_MAX, 1e-44f, 0.25f};
        int use_bad = rnd(0, 1);
        x->args.scale = use_bad ? bad[rnd(0, 5)] : good[rnd(0, 4)];
        note(c, use_bad ? EXP_FAIL : EXP_OK, "scale", "scale=%g", (double)x->args.scale);
        return 1;
    }
    case 2: { /* a valid reshape of the output (same element count, contiguous) */
        if (c->mutated >> 1 & 1u) return 0;
        c->mutated |= 2u;
        static const int64_t shapes[][4] = {{QN, 0, 0, 0},
                                            {QA * QB, QC, 0, 0},
                                            {QA, QB * QC, 0, 0},
                                            {1, QN, 1, 0},
                                            {QC, QB, QA, 1}};
        static const int nds[] = {1, 2, 2, 3, 4};
        int s = rnd(0, 4);
        x->args.output =
            mla_tensor_contiguous(x->args.output.data, MLA_DTYPE_FP8_E4M3, cpu, nds[s], shapes[s]);
        note(c, EXP_OK, NULL, "output reshaped (%d dims)", nds[s]);
        return 1;
    }
    case 3:
        if (rnd(0, 1))
            x->null_be = 1;
        else
            x->null_args = 1;
        note(c, EXP_FAIL, "NULL", "%s=NULL", x->null_be ? "backend" : "args");
        return 1;
    default:
        x->args.stream = (void *)(uintptr_t)0x1234;
        note(c, EXP_OK, NULL, "stream=0x1234");
        return 1;
    }
}

static void fuzz_quantize_body(void)
{
    static fz_op o;
    static qnt_ctx x;
    memset(&o, 0, sizeof o);
    memset(&x, 0, sizeof x);
    x.be = new_backend(MLA_DTYPE_FP8_E4M3);
    if (!x.be) return;
    fz_arena *A = &o.A;
    void *in = arena_add(A, "input", QN * 2);
    void *out = arena_add(A, "output", QN);
    fill_bf16(in, QN);
    memset(out, 0xFF, QN);
    x.valid = (mla_quantize_fp8_args){
        .input = tens(in, MLA_DTYPE_BF16, 3, QA, QB, QC, 0),
        .output = tens(out, MLA_DTYPE_FP8_E4M3, 3, QA, QB, QC, 0),
        .scale = 0.5f,
    };
    fz_tensor *t;
    t = add_tensor(&o, "input", &x.args.input, 0, 0);
    t->ok_dtypes = DT(MLA_DTYPE_FP16);
    t->skip_dtypes = DT(MLA_DTYPE_F32); /* would read twice the bytes */
    add_tensor(&o, "output", &x.args.output, 1, 1);
    o.filled = 1u << 1;
    o.op = "mla_quantize_fp8";
    o.ctx = &x;
    o.reset = qnt_reset;
    o.special = qnt_special;
    o.call = qnt_call;
    fuzz_loop(&o, 5000);
    arena_free(A);
    mla_backend_destroy(x.be);
}

TEST(fuzz_args_quantize_fp8) { run_isolated("fuzz_args_quantize_fp8", fuzz_quantize_body, 120); }

/* ======================================================================================
 * mla_kv_pack
 * ==================================================================================== */

enum { KN = 4 };

typedef struct {
    mla_backend *be;
    mla_kv_pack_args args, valid;
    int null_be, null_args;
} kvp_ctx;

static void kvp_reset(void *p)
{
    kvp_ctx *x = p;
    x->args = x->valid;
    x->null_be = x->null_args = 0;
}

static mla_status kvp_call(void *p)
{
    kvp_ctx *x = p;
    return mla_kv_pack(x->null_be ? NULL : x->be, x->null_args ? NULL : &x->args);
}

static int kvp_special(void *p, fz_case *c)
{
    kvp_ctx *x = p;
    const int k = rnd(0, 4);
    if (!once(c, k == 1 ? 0 : k)) return 0;
    switch (k) {
    case 0:
    case 1: {
        static const float bad[] = {0.0f, -0.0f, -2.0f, NAN, INFINITY, -INFINITY};
        static const float good[] = {1e-30f, 1e30f, FLT_MAX, 1e-44f, 0.25f};
        int use_bad = rnd(0, 1), which = rnd(0, 1);
        float v = use_bad ? bad[rnd(0, 5)] : good[rnd(0, 4)];
        *(which ? &x->args.v_scale : &x->args.k_scale) = v;
        note(c, use_bad ? EXP_FAIL : EXP_OK, which ? "v_scale" : "k_scale", "%s=%g",
             which ? "v_scale" : "k_scale", (double)v);
        return 1;
    }
    case 2: { /* k_pe as [N, 1, rope] */
        if (c->mutated >> 1 & 1u) return 0;
        c->mutated |= 2u;
        x->args.k_pe = tens(x->args.k_pe.data, MLA_DTYPE_BF16, 3, KN, 1, P, 0);
        note(c, EXP_OK, NULL, "k_pe as [N, 1, rope]");
        return 1;
    }
    case 3:
        if (rnd(0, 1))
            x->null_be = 1;
        else
            x->null_args = 1;
        note(c, EXP_FAIL, "NULL", "%s=NULL", x->null_be ? "backend" : "args");
        return 1;
    default:
        x->args.stream = (void *)(uintptr_t)0x1234;
        note(c, EXP_OK, NULL, "stream=0x1234");
        return 1;
    }
}

static void fuzz_kv_pack_body(void)
{
    static fz_op o;
    static kvp_ctx x;
    memset(&o, 0, sizeof o);
    memset(&x, 0, sizeof x);
    x.be = new_backend(MLA_DTYPE_FP8_E4M3);
    if (!x.be) return;
    fz_arena *A = &o.A;
    void *kn = arena_add(A, "k_nope", (size_t)KN * H * NOPE * 2);
    void *kp = arena_add(A, "k_pe", (size_t)KN * P * 2);
    void *v = arena_add(A, "v", (size_t)KN * H * VD * 2);
    void *ko = arena_add(A, "k_out", (size_t)KN * H * DQK);
    void *vo = arena_add(A, "v_out", (size_t)KN * H * VD);
    fill_bf16(kn, (size_t)KN * H * NOPE);
    fill_bf16(kp, (size_t)KN * P);
    fill_bf16(v, (size_t)KN * H * VD);
    memset(ko, 0xFF, (size_t)KN * H * DQK);
    memset(vo, 0xFF, (size_t)KN * H * VD);
    x.valid = (mla_kv_pack_args){
        .k_nope = tens(kn, MLA_DTYPE_BF16, 3, KN, H, NOPE, 0),
        .k_pe = tens(kp, MLA_DTYPE_BF16, 2, KN, P, 0, 0),
        .v = tens(v, MLA_DTYPE_BF16, 3, KN, H, VD, 0),
        .k_out = tens(ko, MLA_DTYPE_FP8_E4M3, 3, KN, H, DQK, 0),
        .v_out = tens(vo, MLA_DTYPE_FP8_E4M3, 3, KN, H, VD, 0),
        .k_scale = 0.5f,
        .v_scale = 2.0f,
    };
    fz_tensor *t;
    t = add_tensor(&o, "k_nope", &x.args.k_nope, 0, 0);
    t->strides_free = 1;
    t = add_tensor(&o, "k_pe", &x.args.k_pe, 1, 0);
    t->strides_free = 1;
    t = add_tensor(&o, "v", &x.args.v, 2, 0);
    t->strides_free = 1;
    t = add_tensor(&o, "k_out", &x.args.k_out, 3, 1);
    t->dtype_named = 0; /* k_out bf16 alone: v_out's dtype then disagrees */
    t = add_tensor(&o, "v_out", &x.args.v_out, 4, 1);
    t->skip_dtypes = DT(MLA_DTYPE_BF16); /* with k_out bf16 too: twice the bytes */
    o.filled = 3u << 3; /* k_out, v_out */
    o.op = "mla_kv_pack";
    o.ctx = &x;
    o.reset = kvp_reset;
    o.special = kvp_special;
    o.call = kvp_call;
    fuzz_loop(&o, 5000);
    arena_free(A);
    mla_backend_destroy(x.be);
}

TEST(fuzz_args_kv_pack) { run_isolated("fuzz_args_kv_pack", fuzz_kv_pack_body, 120); }

/* ======================================================================================
 * Serving layer: mla_metadata_create / mla_metadata_build / mla_forward_*
 * ==================================================================================== */

enum { NR = 6, RC = 128, SPP = RC / PS, SNP = NR * SPP, SMB = 4, SB = 3 };

/* req_to_token: every pool row maps all RC tokens page-aligned onto its own pages. */
static void fill_req_to_token(int32_t *rt)
{
    int perm[SNP];
    for (int i = 0; i < SNP; i++) perm[i] = i;
    for (int i = SNP - 1; i > 0; i--) {
        int j = rnd(0, i), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < RC; t++) rt[r * RC + t] = perm[r * SPP + t / PS] * PS + t % PS;
}

static void pick_rows(int32_t *rpi, int n)
{
    for (int b = 0; b < n; b++) {
        int dup;
        do {
            rpi[b] = rnd(0, NR - 1);
            dup = 0;
            for (int c = 0; c < b; c++) dup |= rpi[c] == rpi[b];
        } while (dup);
    }
}

/* Valid lengths for a mode: decode 1 new token, target_verify q_len, ragged extend_lens. */
static void pick_lengths(mla_forward_mode mode, int q_len, int32_t *sl, int32_t *el, int n)
{
    for (int b = 0; b < n; b++) {
        int e = mode == MLA_FORWARD_DECODE          ? 1
                : mode == MLA_FORWARD_TARGET_VERIFY ? q_len
                : mode == MLA_FORWARD_DRAFT_EXTEND  ? rnd(1, 8)
                                                    : rnd(0, 12);
        sl[b] = rnd(e, RC);
        if (el) el[b] = e;
    }
}

/* ---- metadata_create ---- */

static void fuzz_metadata_create_body(void)
{
    mla_backend *be = new_backend(MLA_DTYPE_FP8_E4M3);
    if (!be) return;
    static const int cand[] = {0, -1, INT_MIN, INT_MAX, (1 << 20) + 1, (1 << 30) + 1,
                               1, 2,  1 << 20, 1 << 30};
    for (int it = 0; it < 1500; it++) {
        int mb = rnd(0, 1) ? rnd(1, 64) : cand[rnd(0, 9)];
        int mc = rnd(0, 1) ? rnd(1, 5000) : cand[rnd(0, 9)];
        /* Keep valid ones small: the block table is max_batch * ceil(max_context / page). */
        if (mb >= 1 && mc >= 1 && (int64_t)mb * (((int64_t)mc + PS - 1) / PS) > (1 << 16)) {
            if (rnd(0, 1))
                mb = rnd(1, 4);
            else
                mc = rnd(1, 4096);
        }
        int null_be = rnd(0, 15) == 0, null_out = rnd(0, 15) == 0;
        int valid =
            !null_be && !null_out && mb >= 1 && mb <= (1 << 20) && mc >= 1 && mc <= (1 << 30);
        mla_batch_metadata *md = (mla_batch_metadata *)(uintptr_t)0x1,
                           **out = null_out ? NULL : &md;
        snprintf(fz_sh->desc, sizeof fz_sh->desc,
                 "metadata_create #%d max_batch=%d max_context=%d%s%s", it, mb, mc,
                 null_be ? " backend=NULL" : "", null_out ? " out=NULL" : "");
        mla_status st = mla_metadata_create(null_be ? NULL : be, mb, mc, out);
        if ((unsigned)st > (unsigned)MLA_ERR_INTERNAL)
            FZ_FAIL("%s: unknown status %d", fz_sh->desc, (int)st);
        if (valid) {
            if (st != MLA_OK || !md || md == (mla_batch_metadata *)(uintptr_t)0x1) {
                FZ_FAIL("%s: %s (%s), expected OK", fz_sh->desc, mla_status_string(st),
                        mla_last_error());
                continue;
            }
            mla_metadata_view v;
            if (mla_metadata_get(md, &v) == MLA_OK)
                FZ_FAIL("%s: a fresh metadata reports itself built", fz_sh->desc);
            mla_metadata_destroy(md);
        } else {
            if (st == MLA_OK) {
                FZ_FAIL("%s: accepted", fz_sh->desc);
                if (!null_out) mla_metadata_destroy(md);
                continue;
            }
            if (!*mla_last_error()) FZ_FAIL("%s: empty message", fz_sh->desc);
            const char *want = null_out || null_be          ? "NULL"
                               : (mb < 1 || mb > (1 << 20)) ? "max_batch"
                                                            : "max_context";
            if (!strstr(mla_last_error(), want))
                FZ_FAIL("%s: message \"%s\" does not name %s", fz_sh->desc, mla_last_error(), want);
            if (!null_out && md != NULL) FZ_FAIL("%s: failed but *out is not NULL", fz_sh->desc);
        }
        if (fz_failures > 40) break;
    }
    mla_backend_destroy(be);
}

TEST(fuzz_args_metadata_create)
{
    run_isolated("fuzz_args_metadata_create", fuzz_metadata_create_body, 60);
}

/* ---- metadata_build ---- */

typedef struct {
    mla_backend *be;
    mla_batch_metadata *md;
    mla_metadata_args args, valid;
    int32_t *rt, *rpi, *sl, *el, *hsl;
    int null_md, null_args;
} bld_ctx;

static void bld_reset(void *p)
{
    bld_ctx *x = p;
    x->args = x->valid;
    x->null_md = x->null_args = 0;
}

static mla_status bld_call(void *p)
{
    bld_ctx *x = p;
    return mla_metadata_build(x->null_md ? NULL : x->md, x->null_args ? NULL : &x->args);
}

static int new_tokens(mla_forward_mode mode, int q_len, const int32_t *el, int b)
{
    return mode == MLA_FORWARD_DECODE ? 1 : mode == MLA_FORWARD_TARGET_VERIFY ? q_len : el[b];
}

static void bld_after(void *p, mla_status st, int iter, const fz_case *c)
{
    bld_ctx *x = p;
    if (x->null_md || x->null_args) return; /* checked once, in fuzz_metadata_build_body */
    mla_metadata_view v;
    mla_status g = mla_metadata_get(x->md, &v);
    if (st != MLA_OK) {
        if (g == MLA_OK)
            FZ_FAIL("mla_metadata_build #%d [%s]: failed, but mla_metadata_get reports a built "
                    "metadata",
                    iter, c->len ? c->desc : "(valid)");
        return;
    }
    const mla_metadata_args *a = &x->args;
    int ragged = a->mode == MLA_FORWARD_DRAFT_EXTEND || a->mode == MLA_FORWARD_EXTEND;
    int64_t n = 0;
    for (int b = 0; b < (int)a->req_pool_indices.shape[0]; b++)
        n += new_tokens(a->mode, a->mode == MLA_FORWARD_DECODE ? 1 : a->q_len,
                        ragged ? (const int32_t *)a->extend_lens.data : NULL, b);
    if (g != MLA_OK || v.mode != a->mode || v.batch != (int)a->req_pool_indices.shape[0] ||
        v.num_new_tokens != n)
        FZ_FAIL("mla_metadata_build #%d [%s]: OK but the view disagrees (get %s, mode %d, batch "
                "%d, new tokens %d, expected %lld)",
                iter, c->len ? c->desc : "(valid)", mla_status_string(g), (int)v.mode, v.batch,
                v.num_new_tokens, (long long)n);
}

static int bld_special(void *p, fz_case *c)
{
    bld_ctx *x = p;
    mla_metadata_args *a = &x->args;
    const mla_forward_mode mode = a->mode;
    const int ragged = mode == MLA_FORWARD_DRAFT_EXTEND || mode == MLA_FORWARD_EXTEND;
    int k = rnd(0, 9);
    /* q_len too: its expectation reads seq_lens, and a seq_lens mutation's expectation reads
     * q_len (seq_lens[b] = 2 fails at q_len 3, not after q_len becomes 1). */
    if (k >= 1 && k <= 5 && c->content_done) k = rnd(0, 1) ? 6 + rnd(0, 3) : 0;
    if (!once(c, k)) return 0;
    switch (k) {
    case 0: {
        const int cand[] = {4, -1, 99, INT_MIN};
        int v = cand[rnd(0, 3)];
        a->mode = (mla_forward_mode)v;
        note(c, EXP_FAIL, "mode", "mode=%d", v);
        return 1;
    }
    case 1: {
        const int cand[] = {0, 1, 2, 3, 8, 9, -1, INT_MIN, INT_MAX};
        int v = cand[rnd(0, 8)], e;
        const char *hint = "q_len";
        if (ragged)
            e = EXP_OK; /* ignored */
        else if (mode == MLA_FORWARD_DECODE)
            e = v == 0 || v == 1 ? EXP_OK : EXP_FAIL;
        else if (v < 1 || v > 8)
            e = EXP_FAIL;
        else {
            e = EXP_OK;
            for (int b = 0; b < SB; b++) e = x->sl[b] < v ? EXP_FAIL : e;
            hint = "seq_lens";
        }
        a->q_len = v;
        c->content_done = 1; /* the expectation read seq_lens */
        note(c, e, hint, "q_len=%d", v);
        return 1;
    }
    case 2: { /* pool index contents */
        int b = rnd(0, SB - 1), v = rnd(0, 1)   ? rnd(0, NR - 1)
                                    : rnd(0, 1) ? NR
                                                : bad_i32[rnd(0, 3)];
        x->rpi[b] = v;
        c->content_done = 1;
        note(c, v < 0 || v >= NR ? EXP_FAIL : EXP_OK, "req_pool_indices", "req_pool_indices[%d]=%d",
             b, v);
        return 1;
    }
    case 3: { /* seq_lens contents */
        int b = rnd(0, SB - 1), e = new_tokens(mode, a->q_len == 0 ? 1 : a->q_len, x->el, b);
        const int cand[] = {-1, INT32_MIN, INT32_MAX, RC + 1, e - 1, rnd(e, RC), rnd(e, RC)};
        int v = cand[rnd(0, 6)];
        x->sl[b] = v;
        c->content_done = 1;
        note(c, v < e || v > RC ? EXP_FAIL : EXP_OK, "seq_lens", "seq_lens[%d]=%d (new %d)", b, v,
             e);
        return 1;
    }
    case 4: { /* extend_lens contents, or extend_lens where it must be absent */
        c->content_done = 1;
        if (!ragged) {
            a->extend_lens = tens(x->el, MLA_DTYPE_I32, 1, SB, 0, 0, 0);
            note(c, EXP_FAIL, "extend_lens", "extend_lens given for mode %d", (int)mode);
            return 1;
        }
        int b = rnd(0, SB - 1), v;
        if (mode == MLA_FORWARD_DRAFT_EXTEND) {
            const int cand[] = {0, 9, -1, INT32_MIN, rnd(1, 8), rnd(1, 8)};
            v = cand[rnd(0, 5)];
            x->el[b] = v;
            int fail_e = v < 1 || v > 8;
            note(c, fail_e || v > x->sl[b] ? EXP_FAIL : EXP_OK, fail_e ? "extend_lens" : "seq_lens",
                 "extend_lens[%d]=%d (seq_len %d)", b, v, x->sl[b]);
        } else {
            const int cand[] = {-1, INT32_MIN, x->sl[b] + 1, rnd(0, x->sl[b]), 0, x->sl[b]};
            v = cand[rnd(0, 5)];
            x->el[b] = v;
            note(c, v < 0 || v > x->sl[b] ? EXP_FAIL : EXP_OK, v < 0 ? "extend_lens" : "seq_lens",
                 "extend_lens[%d]=%d (seq_len %d)", b, v, x->sl[b]);
        }
        return 1;
    }
    case 5: { /* req_to_token contents */
        int b = rnd(0, SB - 1), r = rnd(0, 3) ? x->rpi[b] : rnd(0, NR - 1), t = rnd(0, RC - 1);
        int used = 0, s = 0;
        for (int bb = 0; bb < SB; bb++)
            if (x->rpi[bb] == r && x->sl[bb] > s) s = x->sl[bb];
        used = t < s;
        const int32_t old = x->rt[r * RC + t];
        const int other_page = (old / PS + rnd(1, SNP - 1)) % SNP;
        const int32_t cand[] = {-1, INT32_MIN, old + 1, other_page * PS + t % PS, INT32_MAX};
        int32_t v = cand[rnd(0, 4)];
        x->rt[r * RC + t] = v;
        int bad = v < 0 || v % PS != t % PS;
        if (!bad && v / PS != old / PS) /* a page-aligned run must stay on one page */
            bad = t % PS != 0 || (t + 1 < s && (t + 1) % PS != 0);
        c->content_done = 1;
        note(c, used && bad ? EXP_FAIL : EXP_OK, "req_to_token",
             "req_to_token[%d][%d]=%d (was %d, used tokens %d)", r, t, v, old, s);
        return 1;
    }
    case 6: /* host mirrors: the CPU backend reads the tensors, mirrors are not needed */
        for (int b = 0; b < SB; b++) x->hsl[b] = rnd(-5, 5000);
        a->host_seq_lens = x->hsl;
        a->host_extend_lens = x->hsl;
        note(c, EXP_OK, NULL, "host mirrors = unrelated values");
        return 1;
    case 7:
        if (rnd(0, 1))
            x->null_md = 1;
        else
            x->null_args = 1;
        note(c, EXP_FAIL, "NULL", "%s=NULL", x->null_md ? "metadata" : "args");
        return 1;
    default:
        a->stream = (void *)(uintptr_t)0x1234;
        note(c, EXP_OK, NULL, "stream=0x1234");
        return 1;
    }
}

static void fuzz_metadata_build_body(void)
{
    static fz_op o;
    static bld_ctx x;
    memset(&o, 0, sizeof o);
    memset(&x, 0, sizeof x);
    x.be = new_backend(MLA_DTYPE_FP8_E4M3);
    if (!x.be) return;
    if (mla_metadata_create(x.be, SMB, RC, &x.md) != MLA_OK) {
        FZ_FAIL("mla_metadata_create: %s", mla_last_error());
        mla_backend_destroy(x.be);
        return;
    }
    fz_arena *A = &o.A;
    x.rt = arena_add(A, "req_to_token", NR * RC * 4);
    x.rpi = arena_add(A, "req_pool_indices", SB * 4);
    x.sl = arena_add(A, "seq_lens", SB * 4);
    x.el = arena_add(A, "extend_lens", SB * 4);
    x.hsl = arena_add(A, "host_mirror", SB * 4);
    o.op = "mla_metadata_build";
    o.ctx = &x;
    o.reset = bld_reset;
    o.special = bld_special;
    o.call = bld_call;
    o.after = bld_after;
    for (int m = 0; m < 4; m++) {
        const mla_forward_mode mode = (mla_forward_mode)m;
        const int ragged = m >= 2, q_len = mode == MLA_FORWARD_TARGET_VERIFY ? 3 : 1;
        fill_req_to_token(x.rt);
        pick_rows(x.rpi, SB);
        pick_lengths(mode, q_len, x.sl, x.el, SB);
        x.valid = (mla_metadata_args){
            .mode = mode,
            .req_to_token = tens(x.rt, MLA_DTYPE_I32, 2, NR, RC, 0, 0),
            .req_pool_indices = tens(x.rpi, MLA_DTYPE_I32, 1, SB, 0, 0, 0),
            .seq_lens = tens(x.sl, MLA_DTYPE_I32, 1, SB, 0, 0, 0),
            .q_len = q_len,
        };
        if (ragged) x.valid.extend_lens = tens(x.el, MLA_DTYPE_I32, 1, SB, 0, 0, 0);
        o.nt = 0;
        fz_tensor *t = add_tensor(&o, "req_to_token", &x.args.req_to_token, 0, 0);
        t->dim[0] = DIM_FREE; /* only the rows named by req_pool_indices are read */
        t->dim[1] = DIM_SHRINK;
        t->contents_read = 1;
        add_tensor(&o, "req_pool_indices", &x.args.req_pool_indices, 1, 0)->contents_read = 1;
        add_tensor(&o, "seq_lens", &x.args.seq_lens, 2, 0)->contents_read = 1;
        if (ragged) add_tensor(&o, "extend_lens", &x.args.extend_lens, 3, 0)->contents_read = 1;
        o.op =
            (const char *[]){"mla_metadata_build(decode)", "mla_metadata_build(target_verify)",
                             "mla_metadata_build(draft_extend)", "mla_metadata_build(extend)"}[m];
        fuzz_loop(&o, 1500);
    }
    /* A build that fails on a NULL args pointer is a failed build too: the metadata must not
     * stay usable with the previous batch ("has not been built (or its last build failed)"). */
    arena_restore(A);
    bld_reset(&x);
    mla_metadata_view v;
    if (mla_metadata_build(x.md, &x.args) != MLA_OK)
        FZ_FAIL("mla_metadata_build (valid extend batch): %s", mla_last_error());
    else if (mla_metadata_build(x.md, NULL) == MLA_OK)
        FZ_FAIL("mla_metadata_build(md, NULL) accepted");
    else if (mla_metadata_get(x.md, &v) == MLA_OK)
        FZ_FAIL("mla_metadata_build(md, args=NULL) failed but mla_metadata_get still reports the "
                "previous build (mode %d, batch %d)",
                (int)v.mode, v.batch);
    arena_free(A);
    mla_metadata_destroy(x.md);
    mla_backend_destroy(x.be);
}

TEST(fuzz_args_metadata_build)
{
    run_isolated("fuzz_args_metadata_build", fuzz_metadata_build_body, 120);
}

/* ---- forward calls ---- */

typedef struct {
    mla_backend *be, *be2;
    mla_batch_metadata *md, *md_other_mode, *md_other_backend;
    mla_forward_mode mode;
    mla_forward_args args, valid;
    mla_scales scales, valid_scales;
    uint16_t *qbuf;
    int null_be, null_md, null_args, use_md;
    int cb_calls, cb_fail;
} fwd_ctx;

static void fwd_reset(void *p)
{
    fwd_ctx *x = p;
    x->args = x->valid;
    x->scales = x->valid_scales;
    x->args.scales = &x->scales;
    x->null_be = x->null_md = x->null_args = x->use_md = 0;
    x->cb_fail = 0;
}

static mla_status fwd_call(void *p)
{
    fwd_ctx *x = p;
    mla_backend *be = x->null_be ? NULL : x->be;
    mla_batch_metadata *md = x->null_md       ? NULL
                             : x->use_md == 1 ? x->md_other_mode
                             : x->use_md == 2 ? x->md_other_backend
                                              : x->md;
    const mla_forward_args *a = x->null_args ? NULL : &x->args;
    switch (x->mode) {
    case MLA_FORWARD_DECODE: return mla_forward_decode(be, md, a);
    case MLA_FORWARD_TARGET_VERIFY: return mla_forward_target_verify(be, md, a);
    case MLA_FORWARD_DRAFT_EXTEND: return mla_forward_draft_extend(be, md, a);
    default: return mla_forward_extend(be, md, a);
    }
}

/* Prefix K/V by callback: random values (or a failure) for each chunk. */
static mla_status prefix_cb(void *user, const mla_prefix_chunk *ch)
{
    fwd_ctx *x = user;
    x->cb_calls++;
    if (x->cb_fail) return MLA_ERR_INTERNAL;
    fill_bf16(ch->k.data, (size_t)ch->num_rows * H * DQK);
    fill_bf16(ch->v.data, (size_t)ch->num_rows * H * VD);
    return MLA_OK;
}

static int fwd_special(void *p, fz_case *c)
{
    fwd_ctx *x = p;
    mla_forward_args *a = &x->args;
    const int extend = x->mode == MLA_FORWARD_EXTEND;
    int k = rnd(0, 10);
    if (!once(c, k == 2 ? 1 : k)) return 0;
    switch (k) {
    case 0: {
        const int cand[] = {1, 2, -1, INT_MIN};
        int v = cand[rnd(0, 3)];
        a->quantize_q = v;
        /* Documented for the decode modes; extend ignores it (bf16 q/k/v only). */
        note(c, extend ? EXP_EITHER : v == 1 ? EXP_OK : EXP_FAIL, "quantize_q", "quantize_q=%d", v);
        return 1;
    }
    case 1:
    case 2: mutate_scales(c, &x->scales, &a->scales, 0x1f); return 1;
    case 3: { /* the metadata: another mode's, another backend's, NULL */
        int m = rnd(0, 2);
        if (m == 2)
            x->null_md = 1;
        else
            x->use_md = m + 1;
        note(c, EXP_FAIL,
             m == 2   ? "NULL"
             : m == 0 ? "mode"
                      : "backend",
             "metadata=%s",
             m == 2   ? "NULL"
             : m == 0 ? "built for another mode"
                      : "of another backend");
        return 1;
    }
    case 4:
        if (rnd(0, 1))
            x->null_be = 1;
        else
            x->null_args = 1;
        note(c, EXP_FAIL, "NULL", "%s=NULL", x->null_be ? "backend" : "args");
        return 1;
    case 5: /* no new-token write: valid (in extend the cache is then unused: alone only) */
        if (extend && !c->allow_solo) return 0;
        if (c->mutated & 0x18u) return 0; /* c_kv, k_pe are tensors 3, 4 */
        c->mutated |= 0x18u;
        a->c_kv.data = a->k_pe.data = NULL;
        c->may_write &= ~(1u << 5); /* the cache */
        if (extend) c->allow_solo = 0;
        note(c, EXP_OK, NULL, "c_kv=k_pe=NULL");
        return 1;
    case 6:
        a->stream = (void *)(uintptr_t)0x1234;
        note(c, EXP_OK, NULL, "stream=0x1234");
        return 1;
    default:
        if (!extend) {
            a->stream = (void *)(uintptr_t)0x5678;
            note(c, EXP_OK, NULL, "stream=0x5678");
            return 1;
        }
        switch (k) {
        case 7: {
            const int cand[] = {-1, INT_MIN, (1 << 30) + 1, 0, 1, 7, 4096, 1 << 30};
            int v = cand[rnd(0, 7)];
            a->prefix_chunk_size = v;
            note(c, v < 0 || v > (1 << 30) ? EXP_FAIL : EXP_OK, "prefix_chunk_size",
                 "prefix_chunk_size=%d", v);
            return 1;
        }
        case 8: /* callback together with buffers */
            if (c->mutated & 0x300u) return 0;
            c->mutated |= 0x300u;
            a->prefix_kv = prefix_cb;
            a->prefix_kv_user = x;
            note(c, EXP_FAIL, "prefix", "prefix_kv and prefix_k/v both given");
            return 1;
        case 9:                                /* neither */
            if (c->mutated & 0x300u) return 0; /* prefix_k, prefix_v are tensors 8, 9 */
            c->mutated |= 0x300u;
            a->prefix_k.data = a->prefix_v.data = NULL;
            note(c, EXP_FAIL, "prefix", "prefix_k=prefix_v=NULL (prefix tokens exist)");
            return 1;
        default: { /* by callback instead of buffers; failing callback: alone, no cache write */
            if (c->mutated & 0x318u || !c->allow_solo) return 0;
            c->mutated |= 0x318u;
            c->allow_solo = 0;
            a->prefix_k.data = a->prefix_v.data = NULL;
            a->prefix_kv = prefix_cb;
            a->prefix_kv_user = x;
            a->prefix_chunk_size = rnd(0, 1) ? rnd(1, 40) : 0;
            x->cb_fail = rnd(0, 2) == 0;
            if (x->cb_fail) {
                a->c_kv.data = a->k_pe.data = NULL;
                c->may_write &= ~(1u << 5);
            }
            note(c, x->cb_fail ? EXP_FAIL : EXP_OK, x->cb_fail ? "prefix_kv" : NULL,
                 "prefix by callback (chunk %d)%s", a->prefix_chunk_size,
                 x->cb_fail ? ", which fails; c_kv=k_pe=NULL" : "");
            return 1;
        }
        }
    }
}

static mla_batch_metadata *build_md(mla_backend *be, mla_forward_mode mode, int q_len, int32_t *rt,
                                    int32_t *rpi, int32_t *sl, int32_t *el)
{
    mla_batch_metadata *md = NULL;
    if (mla_metadata_create(be, SMB, RC, &md) != MLA_OK) {
        FZ_FAIL("mla_metadata_create: %s", mla_last_error());
        return NULL;
    }
    const int ragged = mode == MLA_FORWARD_DRAFT_EXTEND || mode == MLA_FORWARD_EXTEND;
    mla_metadata_args a = {
        .mode = mode,
        .req_to_token = tens(rt, MLA_DTYPE_I32, 2, NR, RC, 0, 0),
        .req_pool_indices = tens(rpi, MLA_DTYPE_I32, 1, SB, 0, 0, 0),
        .seq_lens = tens(sl, MLA_DTYPE_I32, 1, SB, 0, 0, 0),
        .q_len = q_len,
    };
    if (ragged) a.extend_lens = tens(el, MLA_DTYPE_I32, 1, SB, 0, 0, 0);
    if (mla_metadata_build(md, &a) != MLA_OK) {
        FZ_FAIL("mla_metadata_build (mode %d): %s", (int)mode, mla_last_error());
        mla_metadata_destroy(md);
        return NULL;
    }
    return md;
}

static void fuzz_forward(mla_forward_mode mode, const char *op)
{
    static fz_op o;
    static fwd_ctx x;
    memset(&o, 0, sizeof o);
    memset(&x, 0, sizeof x);
    x.mode = mode;
    x.be = new_backend(MLA_DTYPE_FP8_E4M3);
    x.be2 = new_backend(MLA_DTYPE_FP8_E4M3);
    if (!x.be || !x.be2) return;
    const int extend = mode == MLA_FORWARD_EXTEND,
              q_len = mode == MLA_FORWARD_TARGET_VERIFY ? 3 : 1;
    const int ragged = extend || mode == MLA_FORWARD_DRAFT_EXTEND;
    /* Index data of the batch (not read by the forward call itself). */
    int32_t *rt = malloc(NR * RC * 4), rpi[SB], sl[SB], el[SB];
    fill_req_to_token(rt);
    pick_rows(rpi, SB);
    pick_lengths(mode, q_len, sl, ragged ? el : NULL, SB);
    for (int b = 0; b < SB; b++) {
        if (!ragged) el[b] = 1;
        if (sl[b] < 1) sl[b] = 1; /* the other-mode metadata (decode) needs a token */
    }
    if (extend) el[1] = 0, sl[2] = el[2] + 40; /* a request without new tokens; a long prefix */
    if (extend && el[0] == 0 && el[2] == 0) /* at least one new token: an empty batch returns */
        el[0] = 1;                           /* before reading most of the arguments */
    x.md = build_md(x.be, mode, q_len, rt, rpi, sl, el);
    x.md_other_mode =
        build_md(x.be, extend ? MLA_FORWARD_DECODE : MLA_FORWARD_EXTEND, 1, rt, rpi, sl, el);
    x.md_other_backend = build_md(x.be2, mode, q_len, rt, rpi, sl, el);
    if (!x.md || !x.md_other_mode || !x.md_other_backend) return;
    int T = 0, TP = 0;
    for (int b = 0; b < SB; b++) {
        T += ragged ? el[b] : q_len;
        TP += extend ? sl[b] - el[b] : 0;
    }
    const int Dq = extend ? DQK : D, Do = extend ? VD : R;
    fz_arena *A = &o.A;
    x.qbuf = arena_add(A, "q", (size_t)T * H * Dq * 2);           /* 0 */
    void *out = arena_add(A, "out", (size_t)T * H * Do * 2);      /* 1 */
    void *lse = arena_add(A, "lse", (size_t)T * H * 4);           /* 2 */
    void *ckv = arena_add(A, "c_kv", (size_t)T * R * 2);          /* 3 */
    void *kpe = arena_add(A, "k_pe", (size_t)T * P * 2);          /* 4 */
    void *cache = arena_add(A, "kv_cache", (size_t)SNP * PS * D); /* 5 */
    fill_bf16(x.qbuf, (size_t)T * H * Dq);
    memset(out, 0xFF, (size_t)T * H * Do * 2);
    memset(lse, 0xFF, (size_t)T * H * 4);
    fill_bf16(ckv, (size_t)T * R);
    fill_bf16(kpe, (size_t)T * P);
    fill_fp8(cache, (size_t)SNP * PS * D);
    x.valid = (mla_forward_args){
        .q = tens(x.qbuf, MLA_DTYPE_BF16, 3, T, H, Dq, 0),
        .out = tens(out, MLA_DTYPE_BF16, 3, T, H, Do, 0),
        .lse = tens(lse, MLA_DTYPE_F32, 2, T, H, 0, 0),
        .c_kv = tens(ckv, MLA_DTYPE_BF16, 2, T, R, 0, 0),
        .k_pe = tens(kpe, MLA_DTYPE_BF16, 2, T, P, 0, 0),
        .kv_cache = tens(cache, MLA_DTYPE_FP8_E4M3, 3, SNP, PS, D, 0),
    };
    fz_tensor *t;
    t = add_tensor(&o, "q", &x.args.q, 0, 0);
    if (!extend) t->ok_dtypes = DT(MLA_DTYPE_FP8_E4M3);
    add_tensor(&o, "out", &x.args.out, 1, 1);
    t = add_tensor(&o, "lse", &x.args.lse, 2, 1);
    t->optional = 1;
    t = add_tensor(&o, "c_kv", &x.args.c_kv, 3, 0);
    t->dtype_named = 0; /* f32 alone: k_pe's dtype then disagrees */
    t->partner = 1 + 4;
    t = add_tensor(&o, "k_pe", &x.args.k_pe, 4, 0);
    t->skip_dtypes = DT(MLA_DTYPE_F32);
    t->partner = 1 + 3;
    t = add_tensor(&o, "kv_cache", &x.args.kv_cache, 5, 1);
    t->dim[0] = DIM_FREE;
    if (extend) {
        void *k = arena_add(A, "k", (size_t)T * H * DQK * 2);          /* 6 */
        void *v = arena_add(A, "v", (size_t)T * H * VD * 2);           /* 7 */
        void *pk = arena_add(A, "prefix_k", (size_t)TP * H * DQK * 2); /* 8 */
        void *pv = arena_add(A, "prefix_v", (size_t)TP * H * VD * 2);  /* 9 */
        fill_bf16(k, (size_t)T * H * DQK);
        fill_bf16(v, (size_t)T * H * VD);
        fill_bf16(pk, (size_t)TP * H * DQK);
        fill_bf16(pv, (size_t)TP * H * VD);
        x.valid.k = tens(k, MLA_DTYPE_BF16, 3, T, H, DQK, 0);
        x.valid.v = tens(v, MLA_DTYPE_BF16, 3, T, H, VD, 0);
        x.valid.prefix_k = tens(pk, MLA_DTYPE_BF16, 3, TP, H, DQK, 0);
        x.valid.prefix_v = tens(pv, MLA_DTYPE_BF16, 3, TP, H, VD, 0);
        add_tensor(&o, "k", &x.args.k, 6, 0);
        add_tensor(&o, "v", &x.args.v, 7, 0);
        add_tensor(&o, "prefix_k", &x.args.prefix_k, 8, 0);
        add_tensor(&o, "prefix_v", &x.args.prefix_v, 9, 0);
    }
    x.valid_scales = mla_backend_config(x.be)->scales;
    o.filled = 3u << 1; /* out, lse */
    o.op = op;
    o.ctx = &x;
    o.reset = fwd_reset;
    o.special = fwd_special;
    o.call = fwd_call;
    o.overlap_apart = 1;
    fuzz_loop(&o, extend ? 3000 : 4000);
    arena_free(A);
    free(rt);
    mla_metadata_destroy(x.md);
    mla_metadata_destroy(x.md_other_mode);
    mla_metadata_destroy(x.md_other_backend);
    mla_backend_destroy(x.be);
    mla_backend_destroy(x.be2);
}

static void fuzz_forward_decode_body(void)
{
    fuzz_forward(MLA_FORWARD_DECODE, "mla_forward_decode");
}
static void fuzz_forward_verify_body(void)
{
    fuzz_forward(MLA_FORWARD_TARGET_VERIFY, "mla_forward_target_verify");
}
static void fuzz_forward_extend_body(void)
{
    fuzz_forward(MLA_FORWARD_EXTEND, "mla_forward_extend");
}
static void fuzz_forward_draft_body(void)
{
    fuzz_forward(MLA_FORWARD_DRAFT_EXTEND, "mla_forward_draft_extend");
}

TEST(fuzz_args_forward_decode)
{
    run_isolated("fuzz_args_forward_decode", fuzz_forward_decode_body, 180);
}
TEST(fuzz_args_forward_target_verify)
{
    run_isolated("fuzz_args_forward_target_verify", fuzz_forward_verify_body, 180);
}
TEST(fuzz_args_forward_extend)
{
    run_isolated("fuzz_args_forward_extend", fuzz_forward_extend_body, 180);
}
TEST(fuzz_args_forward_draft_extend)
{
    run_isolated("fuzz_args_forward_draft_extend", fuzz_forward_draft_body, 180);
}

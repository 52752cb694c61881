/* The `mla` command-line tool: declarations shared by its files. Uses only the public API
 * (mla.h) plus, when built with MLA_HAVE_CUDA, the CUDA runtime for device memory, timing and
 * device properties. */
#ifndef MLA_CLI_H
#define MLA_CLI_H

#include "mla.h"

#include <stddef.h>
#include <stdint.h>

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1  /* a check failed or the library returned an error */
#define CLI_EXIT_USAGE 2 /* bad command line */

#define CLI_MAX_LIST 4096 /* entries of a comma list (--seq-len, --prefill-len) */

/* DeepSeek-V3 dims used by every problem the tool builds. */
#define CLI_KV_LORA_RANK 512
#define CLI_ROPE_DIM 64
#define CLI_DECODE_QK_DIM (CLI_KV_LORA_RANK + CLI_ROPE_DIM) /* 576 */
#define CLI_NOPE_DIM 128
#define CLI_PREFILL_QK_DIM (CLI_NOPE_DIM + CLI_ROPE_DIM) /* 192 */
#define CLI_V_DIM 128

enum { CLI_OP_DECODE = 1, CLI_OP_PREFILL = 2, CLI_OP_ALL = 3 };

typedef struct cli_int_list {
    int n; /* 0 = not given */
    int v[CLI_MAX_LIST];
} cli_int_list;

/* Options of check and bench. Integers are -1 (lists empty) when not given; the command fills
 * defaults once it knows whether the backend runs on the CPU or a GPU. */
typedef struct cli_options {
    const char *backend; /* name or "auto" */
    int heads, batch, q_len, page_size;
    int kv_dtype, q_dtype; /* mla_dtype, or -1 */
    cli_int_list seq_lens;
    int prefill_batch;
    cli_int_list prefill_lens, prefill_kv_lens;
    int causal;
    int skip_index_check; /* mla_config.skip_index_check */
    int fp8_math;         /* mla_config.decode_fp8_math */
    int iters, warmup;
    int seed_given;
    uint64_t seed;
    int op; /* CLI_OP_*, 0 = not given */
} cli_options;

/* ---- options.c ---- */
/* Parses argv[first..argc) into opts. Returns CLI_EXIT_OK, or CLI_EXIT_USAGE after printing a
 * message naming the option and its allowed values; sets *help when --help was given. */
int cli_parse_options(const char *command, int argc, char **argv, int first, cli_options *opts,
                      int *help);
void cli_print_options_help(void);
/* out[0..n) = the list repeated (list->n >= 1). */
void cli_expand_list(const cli_int_list *list, int n, int *out);
int cli_or_default(int value, int fallback); /* value unless it is -1 (not given) */
uint64_t cli_fresh_seed(void);

/* ---- backend selection (main.c) ---- */
/* Resolves "auto", checks the name is registered (usage error otherwise) and the backend is
 * available here (failure otherwise, with the reason). Fills info. */
int cli_resolve_backend(const char *command, const char *requested, mla_backend_info *info);
/* Prints "mla: <what>: <status string>: <library message>" to stderr. */
void cli_print_library_error(const char *what, mla_status status);

/* ---- rng + problems (problem.c) ---- */
typedef struct cli_rng {
    uint64_t state;
} cli_rng;
void cli_rng_seed(cli_rng *rng, uint64_t seed);
uint64_t cli_rng_u64(cli_rng *rng);
float cli_rng_uniform(cli_rng *rng, float lo, float hi);
int cli_rng_int(cli_rng *rng, int lo, int hi_inclusive);

/* A decode problem in host memory. The KV cache is not given as bytes: the tool writes it with
 * mla_kv_cache_write from c_kv/k_pe at `slots`; `cache_init` is the poisoned cache before that
 * write and `cache_expected` the cache the scalar conversions of mla.h predict. */
typedef struct cli_decode_problem {
    int batch, q_len, heads, page_size, num_pages, max_pages_per_seq, causal;
    mla_dtype q_dtype, kv_dtype;
    mla_scales scales;
    int32_t *seq_lens;    /* [batch] */
    int32_t *block_table; /* [batch, max_pages_per_seq], pages shuffled over the cache */
    void *q;              /* [batch, q_len, H, 576] q_dtype */
    int64_t num_tokens;   /* sum of seq_lens: rows written into the cache */
    uint16_t *c_kv;       /* bf16 [num_tokens, 512] */
    uint16_t *k_pe;       /* bf16 [num_tokens, 64] */
    int32_t *slots;       /* [num_tokens] */
    uint8_t *cache_init;     /* [num_pages, page_size, 576] kv_dtype: poison */
    uint8_t *cache_expected; /* cache_init with the rows written by scalar conversion */
    size_t q_bytes, cache_bytes, out_elems, lse_elems;
} cli_decode_problem;

typedef struct cli_prefill_problem {
    int batch, heads, causal;
    mla_dtype dtype;
    mla_scales scales;
    int32_t *cu_seqlens_q, *cu_seqlens_kv; /* [batch + 1] */
    int total_q, total_kv, max_seqlen_q, max_seqlen_kv;
    void *q, *k, *v; /* [total_q, H, 192], [total_kv, H, 192], [total_kv, H, 128] */
    size_t q_bytes, k_bytes, v_bytes, out_elems, lse_elems;
} cli_prefill_problem;

/* seq_lens: batch entries. Returns 0, or -1 after printing an out-of-memory message. */
int cli_decode_problem_make(cli_decode_problem *p, int batch, int q_len, int heads,
                            int page_size, const int *seq_lens, mla_dtype q_dtype,
                            mla_dtype kv_dtype, int causal, float softmax_scale, cli_rng *rng);
void cli_decode_problem_free(cli_decode_problem *p);
int cli_prefill_problem_make(cli_prefill_problem *p, int batch, int heads, const int *q_lens,
                             const int *kv_lens, mla_dtype dtype, int causal,
                             float softmax_scale, cli_rng *rng);
void cli_prefill_problem_free(cli_prefill_problem *p);
/* Keys query row `row` (0-based) of a request sees: [0, result). */
int64_t cli_visible_keys(int64_t len_q, int64_t len_kv, int64_t row, int causal);
/* Sum over requests and rows of visible keys. */
double cli_decode_visible_pairs(const cli_decode_problem *p);
double cli_prefill_visible_pairs(const cli_prefill_problem *p);

/* ---- device.c: memory on the backend's device (host memory for the CPU) ---- */
typedef struct cli_device_buffer {
    void *ptr;
    size_t bytes;
    int on_gpu;
} cli_device_buffer;
/* Each returns 0, or -1 after printing an error naming `what`. */
int cli_buffer_alloc(cli_device_buffer *b, int on_gpu, size_t bytes, const char *what);
int cli_buffer_upload(cli_device_buffer *b, const void *src, const char *what);
int cli_buffer_download(const cli_device_buffer *b, void *dst, const char *what);
int cli_buffer_fill(cli_device_buffer *b, uint8_t byte, const char *what);
void cli_buffer_free(cli_device_buffer *b);
int cli_device_synchronize(int on_gpu, const char *what);
/* Wall-clock timer for the CPU, CUDA events on the legacy default stream for the GPU. */
typedef struct cli_timer {
    int on_gpu;
    void *start, *stop; /* cudaEvent_t */
    double t0;
} cli_timer;
int cli_timer_init(cli_timer *t, int on_gpu);
void cli_timer_start(cli_timer *t);
double cli_timer_stop_ms(cli_timer *t); /* waits for the device; negative on error */
void cli_timer_destroy(cli_timer *t);
double cli_now_seconds(void);
/* Prints the properties of every CUDA device (or why there are none). */
void cli_print_devices(void);
/* Short device name for headers ("NVIDIA H100 80GB HBM3", "CPU (2 threads)"). */
void cli_device_name(int on_gpu, char *buf, size_t size);

/* ---- ops.c: one problem uploaded to one backend ---- */
typedef struct cli_decode_buffers {
    int on_gpu;
    cli_device_buffer q, cache, block_table, seq_lens, out, lse, c_kv, k_pe, slots;
} cli_decode_buffers;
typedef struct cli_prefill_buffers {
    int on_gpu;
    cli_device_buffer q, k, v, cu_q, cu_kv, out, lse;
} cli_prefill_buffers;
int cli_decode_upload(const cli_decode_problem *p, int on_gpu, cli_decode_buffers *d);
void cli_decode_buffers_free(cli_decode_buffers *d);
mla_status cli_decode_write_cache(mla_backend *be, const cli_decode_problem *p,
                                  cli_decode_buffers *d);
/* Poisons out/lse with 0xFF bytes (NaN) when `poison`, then runs mla_decode (the LSE tensor
 * absent unless with_lse). */
mla_status cli_decode_run(mla_backend *be, const cli_decode_problem *p, cli_decode_buffers *d,
                          int poison, int with_lse);
int cli_prefill_upload(const cli_prefill_problem *p, int on_gpu, cli_prefill_buffers *d);
void cli_prefill_buffers_free(cli_prefill_buffers *d);
mla_status cli_prefill_run(mla_backend *be, const cli_prefill_problem *p,
                           cli_prefill_buffers *d, int poison, int with_lse);
/* Backend of `name` on its default device with the given problem settings. */
mla_status cli_backend_create(const char *name, int heads, int page_size, mla_dtype kv_dtype,
                              int max_q_len, int skip_index_check, int fp8_math, mla_backend **out);

/* ---- progress.c ---- */
/* A stage line on stderr ("decode: running hopper..."); rewritten in place on a terminal. */
void cli_stage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void cli_stage_clear(void); /* erases a rewritable stage line before results are printed */
int cli_num_threads(void);  /* online CPUs, at most 64 */
/* Runs n tasks fn(ctx, i) on `threads` threads (1 = in order on this thread), printing
 * "<label> (x/n)..." progress. Stops handing out tasks after the first nonzero result and
 * returns it. */
int cli_run_tasks(const char *label, int n, int threads, int (*fn)(void *ctx, int i), void *ctx);

/* ---- reference.c ---- */
/* The CPU reference backend on host copies of the problem, split into per-request (decode) or
 * per-row-chunk (prefill) calls for progress. out is bf16, lse f32, both host. */
mla_status cli_reference_decode_cpu(mla_backend *cpu, const cli_decode_problem *p,
                                    const uint8_t *cache, uint16_t *out, float *lse);
mla_status cli_reference_prefill_cpu(mla_backend *cpu, const cli_prefill_problem *p,
                                     uint16_t *out, float *lse);
/* Independent double-precision computation (no library kernels), threaded. */
int cli_reference_decode_naive(const cli_decode_problem *p, const uint8_t *cache, double *out,
                               double *lse);
int cli_reference_prefill_naive(const cli_prefill_problem *p, double *out, double *lse);

/* ---- compare.c ---- */
typedef struct cli_error_stats {
    double max_abs_err;
    double rel_err;           /* ||out - ref|| / ||ref|| over all elements */
    double worst_row_rel_err; /* the same per row (one head of one token), worst row */
    int64_t nonfinite, count, mismatched_inf; /* inf: an LSE -inf where the other is finite */
} cli_error_stats;
enum { CLI_VALUES_BF16, CLI_VALUES_F32, CLI_VALUES_F64 };
typedef struct cli_values {
    const void *data;
    int kind; /* CLI_VALUES_* */
} cli_values;
/* Every element of out against ref; rows of row_len elements. */
cli_error_stats cli_compare(cli_values out, cli_values ref, size_t n, size_t row_len);
/* Prints one result line, returns 1 when it passes. */
int cli_report_values(const char *what, const cli_error_stats *s, double rel_tol,
                      double row_rel_tol);
int cli_report_lse(const char *what, const cli_error_stats *s, double abs_tol);
int cli_report_bytes(const char *what, const uint8_t *got, const uint8_t *want, size_t n);
double cli_bf16_to_double(uint16_t v);
double cli_fp8_e4m3_to_double(uint8_t v);

/* ---- commands ---- */
int cli_cmd_info(int argc, char **argv);
int cli_cmd_check(int argc, char **argv);
int cli_cmd_bench(int argc, char **argv);
int cli_cmd_serve_sim(int argc, char **argv); /* cmd_serve_sim.c */

#endif

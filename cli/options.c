/* Command-line options shared by `mla check` and `mla bench`. Every bad value is a message
 * naming the option and what it allows, and exit status 2. */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct int_option {
    const char *name;
    int lo, hi;
    size_t offset; /* of the int in cli_options */
} int_option;

static const int_option int_options[] = {
    {"--heads", 1, 128, offsetof(cli_options, heads)},
    {"--batch", 1, 4096, offsetof(cli_options, batch)},
    {"--q-len", 1, 8, offsetof(cli_options, q_len)},
    {"--page-size", 1, 4096, offsetof(cli_options, page_size)},
    {"--prefill-batch", 1, 4096, offsetof(cli_options, prefill_batch)},
    {"--causal", 0, 1, offsetof(cli_options, causal)},
    {"--skip-index-check", 0, 1, offsetof(cli_options, skip_index_check)},
    {"--fp8-math", 0, 1, offsetof(cli_options, fp8_math)},
    {"--iters", 1, 100000, offsetof(cli_options, iters)},
    {"--warmup", 0, 10000, offsetof(cli_options, warmup)},
};

typedef struct list_option {
    const char *name;
    int lo, hi;
    size_t offset; /* of the cli_int_list in cli_options */
} list_option;

static const list_option list_options[] = {
    {"--seq-len", 1, 1 << 20, offsetof(cli_options, seq_lens)},
    {"--prefill-len", 1, 1 << 18, offsetof(cli_options, prefill_lens)},
    {"--prefill-kv-len", 0, 1 << 18, offsetof(cli_options, prefill_kv_lens)},
};

void cli_print_options_help(void)
{
    printf("Options (defaults depend on whether the backend runs on the CPU or a GPU):\n"
           "  --backend NAME|auto     backend to run (auto: hopper if available, else cpu)\n"
           "  --op decode|prefill|all operations to run (default all)\n"
           "  --heads N               query heads, 1..128\n"
           "  --batch N               decode requests, 1..4096\n"
           "  --seq-len N[,N...]      decode KV lengths incl. new tokens; a list is cycled\n"
           "                          over the batch (default: random mixed lengths)\n"
           "  --q-len N               decode query tokens per request, 1..8\n"
           "  --page-size N           tokens per KV page (the backend adjusts it into its set)\n"
           "  --kv-dtype fp8|bf16     KV cache dtype\n"
           "  --q-dtype bf16|fp8      decode query dtype, also the prefill q/k/v dtype\n"
           "  --prefill-batch N       prefill requests, 1..4096\n"
           "  --prefill-len N[,N...]  prefill query lengths (cycled over the prefill batch)\n"
           "  --prefill-kv-len N[,...] prefill key lengths (default: the query lengths)\n"
           "  --causal 0|1            causal mask (bottom-right aligned), default 1\n"
           "  --skip-index-check 0|1  1: the backend does not copy index data (block table,\n"
           "                          seq_lens, slots) to the host to check it (default 0)\n"
           "  --fp8-math 0|1          1: decode with an fp8 query and fp8 cache may round P to\n"
           "                          e4m3 (mla_config.decode_fp8_math; faster on hopper at\n"
           "                          heads * q_len >= 64, less accurate; default 0)\n"
           "  --iters N               check: rounds with fresh data; bench: timed runs\n"
           "  --warmup N              bench: untimed runs first\n"
           "  --seed N                random seed (default: from the clock, printed)\n"
           "  --help                  this text\n");
}

static int usage_error(const char *command, const char *option, const char *value,
                       const char *allowed)
{
    fprintf(stderr, "mla %s: %s: invalid value '%s' (allowed: %s)\n", command, option, value,
            allowed);
    fprintf(stderr, "Run 'mla %s --help' for the options.\n", command);
    return CLI_EXIT_USAGE;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    if (!s || !*s) return -1;
    errno = 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (errno || *end != '\0' || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static int parse_list(const char *s, int lo, int hi, cli_int_list *list)
{
    list->n = 0;
    const char *p = s;
    for (;;) {
        char item[32];
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof item || list->n >= CLI_MAX_LIST) return -1;
        memcpy(item, p, len);
        item[len] = '\0';
        if (parse_int(item, lo, hi, &list->v[list->n]) != 0) return -1;
        list->n++;
        if (p[len] == '\0') return 0;
        p += len + 1;
    }
}

static int parse_choice(const char *s, const char *const *names, const int *values, int count,
                        int *out)
{
    for (int i = 0; i < count; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = values[i];
            return 0;
        }
    }
    return -1;
}

static int is_known_option(const char *name)
{
    static const char *const others[] = {"--backend", "--kv-dtype", "--q-dtype", "--op",
                                         "--seed"};
    for (size_t i = 0; i < sizeof int_options / sizeof int_options[0]; i++)
        if (strcmp(name, int_options[i].name) == 0) return 1;
    for (size_t i = 0; i < sizeof list_options / sizeof list_options[0]; i++)
        if (strcmp(name, list_options[i].name) == 0) return 1;
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        if (strcmp(name, others[i]) == 0) return 1;
    return 0;
}

/* One option with its value; returns CLI_EXIT_OK or CLI_EXIT_USAGE. */
static int parse_one(const char *command, const char *name, const char *value,
                     cli_options *opts)
{
    char allowed[96];
    for (size_t i = 0; i < sizeof int_options / sizeof int_options[0]; i++) {
        const int_option *o = &int_options[i];
        if (strcmp(name, o->name) != 0) continue;
        snprintf(allowed, sizeof allowed, "an integer in %d..%d", o->lo, o->hi);
        if (parse_int(value, o->lo, o->hi, (int *)((char *)opts + o->offset)) != 0)
            return usage_error(command, name, value, allowed);
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof list_options / sizeof list_options[0]; i++) {
        const list_option *o = &list_options[i];
        if (strcmp(name, o->name) != 0) continue;
        snprintf(allowed, sizeof allowed, "an integer in %d..%d or a comma list of up to %d",
                 o->lo, o->hi, CLI_MAX_LIST);
        if (parse_list(value, o->lo, o->hi, (cli_int_list *)((char *)opts + o->offset)) != 0)
            return usage_error(command, name, value, allowed);
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "--backend") == 0) {
        if (!*value) return usage_error(command, name, value, "a backend name or auto");
        opts->backend = value;
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "--kv-dtype") == 0 || strcmp(name, "--q-dtype") == 0) {
        static const char *const names[] = {"fp8", "fp8_e4m3", "bf16"};
        static const int values[] = {MLA_DTYPE_FP8_E4M3, MLA_DTYPE_FP8_E4M3, MLA_DTYPE_BF16};
        int *dst = name[2] == 'k' ? &opts->kv_dtype : &opts->q_dtype;
        if (parse_choice(value, names, values, 3, dst) != 0)
            return usage_error(command, name, value,
                               name[2] == 'k' ? "fp8, bf16" : "bf16, fp8");
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "--op") == 0) {
        static const char *const names[] = {"decode", "prefill", "all"};
        static const int values[] = {CLI_OP_DECODE, CLI_OP_PREFILL, CLI_OP_ALL};
        if (parse_choice(value, names, values, 3, &opts->op) != 0)
            return usage_error(command, name, value, "decode, prefill, all");
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "--seed") == 0) {
        errno = 0;
        char *end = NULL;
        unsigned long long v = strtoull(value, &end, 0);
        if (!*value || errno || *end != '\0' || value[0] == '-')
            return usage_error(command, name, value, "an unsigned 64-bit integer");
        opts->seed = (uint64_t)v;
        opts->seed_given = 1;
        return CLI_EXIT_OK;
    }
    return usage_error(command, name, value, "(unknown option)");
}

int cli_parse_options(const char *command, int argc, char **argv, int first, cli_options *opts,
                      int *help)
{
    memset(opts, 0, sizeof *opts);
    opts->backend = "auto";
    opts->heads = opts->batch = opts->q_len = opts->page_size = -1;
    opts->kv_dtype = opts->q_dtype = -1;
    opts->prefill_batch = opts->causal = opts->iters = opts->warmup = -1;
    opts->skip_index_check = opts->fp8_math = -1;
    *help = 0;
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            *help = 1;
            return CLI_EXIT_OK;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "mla %s: unexpected argument '%s' (options start with --)\n",
                    command, arg);
            fprintf(stderr, "Run 'mla %s --help' for the options.\n", command);
            return CLI_EXIT_USAGE;
        }
        /* --name=value or --name value */
        char name[64];
        const char *value;
        const char *eq = strchr(arg, '=');
        if (eq) {
            size_t len = (size_t)(eq - arg);
            if (len >= sizeof name) len = sizeof name - 1;
            memcpy(name, arg, len);
            name[len] = '\0';
            value = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", arg);
        }
        if (!is_known_option(name)) {
            fprintf(stderr, "mla %s: unknown option '%s'\n", command, name);
            fprintf(stderr, "Run 'mla %s --help' for the options.\n", command);
            return CLI_EXIT_USAGE;
        }
        if (!eq) {
            if (i + 1 >= argc) {
                fprintf(stderr, "mla %s: option '%s' needs a value\n", command, name);
                fprintf(stderr, "Run 'mla %s --help' for the options.\n", command);
                return CLI_EXIT_USAGE;
            }
            value = argv[++i];
        }
        int rc = parse_one(command, name, value, opts);
        if (rc != CLI_EXIT_OK) return rc;
    }
    return CLI_EXIT_OK;
}

void cli_expand_list(const cli_int_list *list, int n, int *out)
{
    for (int i = 0; i < n; i++) out[i] = list->v[i % list->n];
}

int cli_or_default(int value, int fallback)
{
    return value >= 0 ? value : fallback;
}

uint64_t cli_fresh_seed(void)
{
    /* Clock nanoseconds and the process id: different on every run, printed for a rerun. */
    double t = cli_now_seconds();
    uint64_t ns = (uint64_t)(t * 1e9);
    return (ns ^ ((uint64_t)getpid() << 32)) % 1000000007ULL;
}

/* `mla info`: version, build, registered backends with capabilities, device properties. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void print_dtypes(const char *label, uint32_t mask)
{
    printf("    %-16s", label);
    int any = 0;
    for (int d = MLA_DTYPE_BF16; d <= MLA_DTYPE_I64; d++) {
        if (!(mask & (1u << d))) continue;
        printf("%s%s", any ? ", " : "", mla_dtype_name((mla_dtype)d));
        any = 1;
    }
    printf("%s\n", any ? "" : "none");
}

static void print_dim(const char *label, int value, int max_head_dim)
{
    if (value)
        printf("    %-16s%d\n", label, value);
    else
        printf("    %-16sany in 1..%d\n", label, max_head_dim);
}

static void print_backend(const mla_backend_info *info)
{
    const mla_capabilities *c = &info->caps;
    printf("  %s: %s\n", info->name, info->description ? info->description : "");
    if (info->available)
        printf("    %-16syes\n", "available");
    else
        printf("    %-16sno (%s)\n", "available",
               info->reason[0] ? info->reason : "no reason given");
    printf("    %-16s%s", "device", c->device_type == MLA_DEVICE_CUDA ? "CUDA" : "CPU");
    /* sm_90a code runs on compute capability 9.0 only (not on sm_100). */
    if (c->min_sm_arch) printf(", sm_%d (the kernels are built for sm_%da)", c->min_sm_arch, c->min_sm_arch);
    printf("\n");
    printf("    %-16s%d..%d\n", "heads", c->min_heads, c->max_heads);
    printf("    %-16s", "page sizes");
    for (int i = 0; i < c->num_page_sizes && i < 4; i++)
        printf("%s%d", i ? ", " : "", c->page_sizes[i]);
    printf("%s\n", c->num_page_sizes ? "" : "any");
    print_dtypes("kv cache dtypes", c->kv_cache_dtypes);
    print_dtypes("query dtypes", c->query_dtypes);
    print_dtypes("prefill dtypes", c->prefill_dtypes);
    print_dim("kv_lora_rank", c->kv_lora_rank, c->max_head_dim);
    print_dim("rope dim", c->qk_rope_head_dim, c->max_head_dim);
    print_dim("nope dim", c->qk_nope_head_dim, c->max_head_dim);
    print_dim("v head dim", c->v_head_dim, c->max_head_dim);
    printf("    %-16s%d\n", "max q_len", c->max_q_len);
}

int cli_cmd_info(int argc, char **argv)
{
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: mla info\n"
                   "Prints the library version, how it was built, every registered backend\n"
                   "(availability, the reason when unavailable, capabilities) and the\n"
                   "properties of the GPUs present.\n");
            return CLI_EXIT_OK;
        }
        fprintf(stderr, "mla info: unknown option '%s' (allowed: --help)\n", argv[i]);
        return CLI_EXIT_USAGE;
    }
    printf("libmla %s\n", mla_version_string());
#ifdef MLA_HAVE_CUDA
    printf("build: CPU + CUDA (sm_90a kernels compiled)\n");
#else
    printf("build: CPU only (compiled without CUDA)\n");
#endif
    int count = mla_backend_count();
    printf("backends: %d\n", count);
    for (int i = 0; i < count; i++) {
        mla_backend_info info;
        memset(&info, 0, sizeof info);
        mla_status st = mla_backend_get_info(i, &info);
        if (st != MLA_OK) {
            cli_print_library_error("mla_backend_get_info", st);
            return CLI_EXIT_FAIL;
        }
        print_backend(&info);
    }
    cli_print_devices();
    return CLI_EXIT_OK;
}

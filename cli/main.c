/* `mla`: inspect libmla's backends, check them against the CPU reference, benchmark them. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void print_usage(FILE *f)
{
    fprintf(f,
            "usage: mla <command> [options]\n"
            "\n"
            "commands:\n"
            "  info     version, build, registered backends and their capabilities, GPUs\n"
            "  check    run decode and prefill on a backend and compare every output element\n"
            "           with the CPU reference (exit status 1 on FAIL)\n"
            "  bench    time decode and prefill (median ms, GB/s, TFLOP/s)\n"
            "  serve-sim  end-to-end serving run (continuous batching, chunked prefill, speculative\n"
            "           decode, page pool) checked against an oracle every step (PASS/FAIL)\n"
            "  help     this text\n"
            "\n"
            "Run 'mla <command> --help' for the options of a command.\n");
}

void cli_print_library_error(const char *what, mla_status status)
{
    const char *detail = mla_last_error();
    fprintf(stderr, "mla: %s failed: %s%s%s\n", what, mla_status_string(status),
            detail && *detail ? ": " : "", detail ? detail : "");
}

int cli_resolve_backend(const char *command, const char *requested, mla_backend_info *info)
{
    if (strcmp(requested, "auto") == 0) {
        mla_status st = mla_backend_find("hopper", info);
        if (st == MLA_OK && info->available) return CLI_EXIT_OK;
        requested = "cpu";
    }
    mla_status st = mla_backend_find(requested, info);
    if (st == MLA_OK) {
        if (info->available) return CLI_EXIT_OK;
        fprintf(stderr, "mla %s: backend '%s' is not available here: %s\n", command, info->name,
                info->reason);
        return CLI_EXIT_FAIL;
    }
    fprintf(stderr, "mla %s: --backend: unknown backend '%s' (allowed: auto", command, requested);
    for (int i = 0; i < mla_backend_count(); i++) {
        mla_backend_info other;
        if (mla_backend_get_info(i, &other) == MLA_OK) fprintf(stderr, ", %s", other.name);
    }
    fprintf(stderr, ")\n");
    return CLI_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    /* Results on stdout stay in order with the progress lines on stderr. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        print_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "info") == 0) return cli_cmd_info(argc, argv);
    if (strcmp(cmd, "check") == 0) return cli_cmd_check(argc, argv);
    if (strcmp(cmd, "bench") == 0) return cli_cmd_bench(argc, argv);
    if (strcmp(cmd, "serve-sim") == 0) return cli_cmd_serve_sim(argc, argv);
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        print_usage(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("mla %s\n", mla_version_string());
        return CLI_EXIT_OK;
    }
    fprintf(stderr, "mla: unknown command '%s' (allowed: info, check, bench, serve-sim, help)\n", cmd);
    print_usage(stderr);
    return CLI_EXIT_USAGE;
}

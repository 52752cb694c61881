/* The hopper decode's MLA_DECODE_* switches (src/cuda/sm90/decode.cu), host side only: no GPU
 * needed. They are read once per process, since a plan made under one setting must match the
 * calls that use it; mla_cuda_decode_reread_switches (the GPU tests' MLA_TEST_DECODE_FORMS
 * hook) makes the next call read them again. Observed through the plan size, which the
 * variant's part count sets ("wide" has fewer parts than the default at 16 heads). Builds
 * without nvcc have no hopper decode and no test here. */
#include "test.h"

#ifdef MLA_HAVE_CUDA
#include "../src/cuda/mla_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t plan_bytes(void)
{
    const mla_cuda_device_info dev = {.device = 0, .num_sms = 132, .sm_arch = 90, .max_smem_per_block_optin = 232448};
    return mla_cuda_decode_plan_size(&dev, 64, 1, 16, 1);
}

TEST(decode_switches_are_read_once_until_reread)
{
    const char *old = getenv("MLA_DECODE_VARIANT");
    char *saved = old ? strdup(old) : NULL;
    unsetenv("MLA_DECODE_VARIANT");
    mla_cuda_decode_reread_switches();
    const size_t def = plan_bytes();

    setenv("MLA_DECODE_VARIANT", "wide", 1);
    CHECK_MSG(plan_bytes() == def, "the variant was read again without a reread (%zu, default %zu)",
              plan_bytes(), def);
    mla_cuda_decode_reread_switches();
    const size_t wide = plan_bytes();
    CHECK_MSG(wide != def && wide > 0, "plan bytes for \"wide\" %zu, default %zu: expected different", wide, def);

    unsetenv("MLA_DECODE_VARIANT");
    CHECK(plan_bytes() == wide); /* still the value read at the last reread */
    mla_cuda_decode_reread_switches();
    CHECK(plan_bytes() == def);

    if (saved) setenv("MLA_DECODE_VARIANT", saved, 1);
    free(saved);
    mla_cuda_decode_reread_switches();
}
/* A decode problem of the given shape with the fields the form choice reads. */
static mla_decode_problem form_problem(int batch, int heads, int q_fp8, long long total_keys)
{
    mla_decode_problem p = {
        .batch = batch, .q_len = 1, .num_heads = heads, .kv_lora_rank = 512, .rope_dim = 64,
        .page_size = 64, .num_pages = 1, .max_pages_per_seq = 1024, .max_seq_len = 65536,
        .total_keys = total_keys, .causal = 1,
        .q_dtype = q_fp8 ? MLA_DTYPE_FP8_E4M3 : MLA_DTYPE_BF16, .kv_dtype = MLA_DTYPE_FP8_E4M3,
    };
    return p;
}

/* The form's name, with " x2" appended for two head blocks (32 rows on the swap kernel). */
static const char *form_of(int batch, int heads, int q_fp8, long long total_keys)
{
    static char buf[64];
    const mla_cuda_device_info dev = {.device = 0, .num_sms = 132, .sm_arch = 90, .max_smem_per_block_optin = 232448};
    const mla_decode_problem p = form_problem(batch, heads, q_fp8, total_keys);
    int head_blocks = -1;
    const char *name = mla_cuda_decode_form(&dev, &p, &head_blocks);
    snprintf(buf, sizeof buf, "%s%s", name, head_blocks == 2 ? " x2" : "");
    return buf;
}

#define CHECK_FORM(want, batch, heads, q8, total)                                                   \
    do {                                                                                            \
        const char *got_ = form_of(batch, heads, q8, total);                                        \
        CHECK_MSG(strcmp(got_, want) == 0, "B%d H%d %s query, %lld keys: form \"%s\", expected \"%s\"", \
                  batch, heads, q8 ? "fp8" : "bf16", (long long)(total), got_, want);               \
    } while (0)

TEST(decode_forms_for_16_and_32_rows)
{
    /* The defaults (H200 A/Bs, bench/NOTES.md twenty-second session): 16 rows on the swap
     * kernel with the lazy softmax, S^T in e4m3 for an fp8 query; 32 rows on the 32-row seesaw
     * from 320k keys in all when the total is known, else from 96 requests, and on two 16-row
     * head blocks below. */
    static const char *const vars[] = {"MLA_DECODE_VARIANT", "MLA_DECODE_V2_CONV", "MLA_DECODE_V2_BN",
                                       "MLA_DECODE_V2_LAYOUT", "MLA_DECODE_FP8_ROWS32", "MLA_DECODE_FP8_CONV"};
    enum { kVars = (int)(sizeof vars / sizeof vars[0]) };
    char *saved[kVars];
    for (int i = 0; i < kVars; i++) {
        const char *v = getenv(vars[i]);
        saved[i] = v ? strdup(v) : NULL;
        unsetenv(vars[i]);
    }
    mla_cuda_decode_reread_switches();

    CHECK_FORM("lazy", 64, 16, 0, 0);
    CHECK_FORM("lazy8", 64, 16, 1, 64LL * 16384);
    CHECK_FORM("lazy8", 1, 16, 1, 65536);
    CHECK_FORM("lazy x2", 64, 32, 0, 64LL * 4096);        /* 256k keys: head blocks */
    CHECK_FORM("seesaw32 lazy", 64, 32, 0, 64LL * 8192);  /* 512k keys */
    CHECK_FORM("seesaw32 lazy8", 64, 32, 1, 320LL * 1024); /* the edge */
    CHECK_FORM("lazy8 x2", 64, 32, 1, 320LL * 1024 - 1);
    CHECK_FORM("lazy8 x2", 200, 32, 1, 200LL * 1000);     /* many short requests */
    CHECK_FORM("seesaw32 lazy8", 96, 32, 1, 0);           /* total unknown: the batch rule */
    CHECK_FORM("lazy8 x2", 95, 32, 1, 0);
    CHECK_FORM("other", 64, 64, 1, 0);                    /* 64 rows: another kernel */

    /* Forced forms. */
    setenv("MLA_DECODE_FP8_ROWS32", "heads", 1);
    setenv("MLA_DECODE_V2_CONV", "swap", 1);
    mla_cuda_decode_reread_switches();
    CHECK_FORM("swap x2", 128, 32, 1, 128LL * 8192);
    CHECK_FORM("swap", 64, 16, 1, 0);
    setenv("MLA_DECODE_FP8_ROWS32", "seesaw", 1);
    mla_cuda_decode_reread_switches();
    CHECK_FORM("seesaw32 seesaw", 4, 32, 1, 4096);
    setenv("MLA_DECODE_FP8_ROWS32", "seesaw8", 1);
    mla_cuda_decode_reread_switches();
    CHECK_FORM("seesaw32 seesaw8", 4, 32, 1, 4096);
    CHECK_FORM("seesaw32 seesaw", 4, 32, 0, 4096); /* bf16 query: no e4m3 S */
    /* "pick": where the host does not know the total and batch x the longest possible request
     * reaches the rule, both launches run and the GPU takes the rule's side; otherwise "auto". */
    unsetenv("MLA_DECODE_V2_CONV");
    setenv("MLA_DECODE_FP8_ROWS32", "heads", 1);
    mla_cuda_decode_reread_switches();
    const size_t heads_plan = mla_cuda_decode_plan_size(&(mla_cuda_device_info){.num_sms = 132}, 64, 1, 32, 1);
    setenv("MLA_DECODE_FP8_ROWS32", "pick", 1);
    mla_cuda_decode_reread_switches();
    CHECK_FORM("pick lazy8 x2", 64, 32, 1, 0);
    CHECK_FORM("pick lazy x2", 200, 32, 0, 0);
    CHECK_FORM("lazy8 x2", 4, 32, 1, 0);                  /* 4 x 64k < 320k: head blocks */
    CHECK_FORM("pick lazy8 x2", 5, 32, 1, 0);             /* 5 x 64k = 320k: the edge */
    CHECK_FORM("seesaw32 lazy8", 64, 32, 1, 64LL * 8192); /* total known: the key rule */
    CHECK_FORM("lazy8 x2", 64, 32, 1, 64LL * 4096);
    CHECK_FORM("lazy8", 64, 16, 1, 0);                    /* 16 rows: unaffected */
    CHECK_MSG(mla_cuda_decode_plan_size(&(mla_cuda_device_info){.num_sms = 132}, 64, 1, 32, 1) == heads_plan,
              "the pick's plan differs from the head blocks' (same split layout expected)");
    setenv("MLA_DECODE_V2_CONV", "swap", 1); /* no pick instance: the batch rule, as "auto" */
    mla_cuda_decode_reread_switches();
    CHECK_FORM("swap x2", 64, 32, 1, 0);
    CHECK_FORM("seesaw32 lazy8", 96, 32, 1, 0);
    unsetenv("MLA_DECODE_V2_CONV");
    setenv("MLA_DECODE_FP8_ROWS32", "seesaw", 1);
    mla_cuda_decode_reread_switches();
    CHECK_MSG(mla_cuda_decode_plan_size(&(mla_cuda_device_info){.num_sms = 132}, 64, 1, 32, 1) == heads_plan,
              "the seesaw's plan differs from the head blocks'");
    /* Head blocks of 32-key blocks have another split layout than the seesaw's: the key rule
     * must not pick between them (a plan built without the total would not fit). */
    unsetenv("MLA_DECODE_FP8_ROWS32");
    unsetenv("MLA_DECODE_V2_CONV");
    setenv("MLA_DECODE_V2_BN", "32", 1);
    mla_cuda_decode_reread_switches();
    CHECK_FORM("seesaw32 lazy8", 96, 32, 1, 96LL * 100);
    CHECK_FORM("v2 mma.sync", 64, 16, 1, 64LL * 16384); /* 16 rows: the mma.sync form */
    CHECK_FORM("other", 64, 32, 1, 64LL * 16384); /* the batch rule: version 1's M = 32 kernel */

    for (int i = 0; i < kVars; i++) {
        if (saved[i]) setenv(vars[i], saved[i], 1);
        else unsetenv(vars[i]);
        free(saved[i]);
    }
    mla_cuda_decode_reread_switches();
}
#endif

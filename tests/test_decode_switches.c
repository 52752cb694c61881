/* The hopper decode's MLA_DECODE_* switches (src/cuda/sm90/decode.cu), host side only: no GPU
 * needed. They are read once per process, since a plan made under one setting must match the
 * calls that use it; mla_cuda_decode_reread_switches (the GPU tests' MLA_TEST_DECODE_FORMS
 * hook) makes the next call read them again. Observed through the plan size, which the
 * variant's part count sets ("wide" has fewer parts than the default at 16 heads). Builds
 * without nvcc have no hopper decode and no test here. */
#include "test.h"

#ifdef MLA_HAVE_CUDA
#include "../src/cuda/mla_cuda.h"

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
#endif

/* The "hopper" kernel set of a build without nvcc: registered so users see it and why it is
 * unavailable. */
#include "mla_internal.h"

#include <stdio.h>
#include <string.h>

static int stub_is_available(char *reason, size_t n)
{
    snprintf(reason, n, "libmla was built without CUDA (nvcc not found at build time)");
    return 0;
}

const mla_kernel_set mla_hopper_kernel_set = {
    .api_version = MLA_KERNEL_SET_API_VERSION,
    .name = "hopper",
    .description = "NVIDIA Hopper (sm_90a) CUDA kernels (not built)",
    .device_type = MLA_DEVICE_CUDA,
    .get_capabilities = mla_hopper_capabilities,
    .is_available = stub_is_available,
};

/* Argument checks shared by the operations of the base backend. */
#ifndef MLA_TENSOR_CHECK_H
#define MLA_TENSOR_CHECK_H

#include "mla_internal.h"

#include <stdio.h>

#define MLA_CHECK_OPTIONAL 1            /* data == NULL allowed (absent tensor) */
#define MLA_CHECK_LAST_DIM_CONTIGUOUS 2 /* other strides free (views) */

#define MLA_DT(d) (1u << (d))

/* Checks data, dtype (bitmask), device, ndim and shape (entries < 0 = any) and layout.
 * `op` and `name` go into the message. */
mla_status mla_check_tensor(const mla_tensor *t, const char *op, const char *name,
                            const mla_device *device, uint32_t dtypes, int ndim,
                            const int64_t *shape, int flags);
/* 1 when the memory ranges of two contiguous tensors overlap. */
int mla_ranges_overlap(const mla_tensor *a, const mla_tensor *b);
/* finite and > 0 */
mla_status mla_check_scale(const char *op, const char *name, float v);

#define MLA_TRY(expr)                                                                  \
    do {                                                                               \
        mla_status try_status_ = (expr);                                               \
        if (try_status_ != MLA_OK) return try_status_;                                 \
    } while (0)

#endif

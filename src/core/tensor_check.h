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
/* 1 when the memory spans of two tensors overlap (absent tensors never do). */
int mla_ranges_overlap(const mla_tensor *a, const mla_tensor *b);
/* Error "op: output 'out' overlaps 'in'" when they do. */
mla_status mla_check_no_overlap(const char *op, const mla_tensor *out, const char *out_name,
                                const mla_tensor *in, const char *in_name);
/* Every output disjoint from every input and from the other outputs. */
mla_status mla_check_outputs_disjoint(const char *op, const mla_tensor *const *outs,
                                      const char *const *out_names, int num_outs,
                                      const mla_tensor *const *ins, const char *const *in_names,
                                      int num_ins);
/* finite and > 0 */
mla_status mla_check_scale(const char *op, const char *name, float v);
/* every scale of s finite and > 0 (named "scales.<field>" in the message) */
mla_status mla_check_scales(const char *op, const mla_scales *s);

#define MLA_TRY(expr)                                                                  \
    do {                                                                               \
        mla_status try_status_ = (expr);                                               \
        if (try_status_ != MLA_OK) return try_status_;                                 \
    } while (0)

#endif

/* Tensor descriptors and the argument checks every operation shares. */
#include "tensor_check.h"

#include <math.h>
#include <string.h>

mla_tensor mla_tensor_contiguous(void *data, mla_dtype dtype, mla_device device, int ndim,
                                 const int64_t *shape)
{
    mla_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    if (ndim < 0 || ndim > MLA_MAX_DIMS || (ndim > 0 && !shape)) {
        t.ndim = -1; /* rejected by every check */
        return t;
    }
    t.ndim = ndim;
    int64_t stride = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        t.shape[d] = shape[d];
        t.strides[d] = stride;
        /* A shape whose size overflows int64 gives a descriptor every check rejects. */
        if (shape[d] < 0 || __builtin_mul_overflow(stride, shape[d], &stride)) {
            t.ndim = -1;
            return t;
        }
    }
    return t;
}

int64_t mla_tensor_numel(const mla_tensor *t)
{
    if (!t || t->ndim < 0 || t->ndim > MLA_MAX_DIMS) return 0;
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || __builtin_mul_overflow(n, t->shape[d], &n)) return -1;
    return n;
}

int mla_tensor_is_contiguous(const mla_tensor *t)
{
    if (!t || t->ndim < 0 || t->ndim > MLA_MAX_DIMS) return 0;
    int64_t stride = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->strides[d] != stride) return 0;
        if (t->shape[d] < 0 || __builtin_mul_overflow(stride, t->shape[d], &stride)) return 0;
    }
    return 1;
}

/* Bytes spanned by a tensor (contiguous or strided with non-negative strides), or -1 when
 * that overflows int64. */
static int64_t tensor_span_bytes(const mla_tensor *t)
{
    int64_t last = 0, term;
    if (t->ndim < 0 || t->ndim > MLA_MAX_DIMS) return -1;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] == 0) return 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0 || (t->strides[d] < 0 && t->shape[d] > 1)) return -1;
        if (__builtin_mul_overflow(t->shape[d] - 1, t->strides[d], &term) ||
            __builtin_add_overflow(last, term, &last))
            return -1;
    }
    int64_t bytes;
    if (__builtin_add_overflow(last, 1, &last) ||
        __builtin_mul_overflow(last, (int64_t)mla_dtype_size(t->dtype), &bytes))
        return -1;
    return bytes;
}

static void format_shape(const mla_tensor *t, char *buf, size_t n)
{
    size_t used = 0;
    used += (size_t)snprintf(buf + used, n - used, "[");
    for (int d = 0; d < t->ndim && used < n; d++)
        used += (size_t)snprintf(buf + used, n - used, d ? ", %lld" : "%lld",
                                 (long long)t->shape[d]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

static int dtype_in(mla_dtype dt, uint32_t mask) { return (unsigned)dt < 32 && (mask >> dt) & 1u; }

static void format_dtypes(uint32_t mask, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int d = 0; d <= MLA_DTYPE_I64 && used < n; d++)
        if (mask >> d & 1u)
            used += (size_t)snprintf(buf + used, n - used, "%s%s", used ? ", " : "",
                                     mla_dtype_name((mla_dtype)d));
}

mla_status mla_check_tensor(const mla_tensor *t, const char *op, const char *name,
                            const mla_device *device, uint32_t dtypes, int ndim,
                            const int64_t *shape, int flags)
{
    if (!t->data) {
        if (flags & MLA_CHECK_OPTIONAL) return MLA_OK;
        return mla_set_error(MLA_ERR_NULL_POINTER, "%s: tensor '%s' has a NULL data pointer",
                             op, name);
    }
    if (!dtype_in(t->dtype, dtypes)) {
        char allowed[128];
        format_dtypes(dtypes, allowed, sizeof allowed);
        return mla_set_error(MLA_ERR_SHAPE_MISMATCH, "%s: tensor '%s' has dtype %d (%s); allowed: %s",
                             op, name, (int)t->dtype,
                             mla_dtype_size(t->dtype) ? mla_dtype_name(t->dtype) : "unknown",
                             allowed);
    }
    if (t->device.type != device->type || t->device.index != device->index)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: tensor '%s' is on device %s:%d but the backend runs on %s:%d", op,
                             name, t->device.type == MLA_DEVICE_CUDA ? "cuda" : "cpu",
                             t->device.index, device->type == MLA_DEVICE_CUDA ? "cuda" : "cpu",
                             device->index);
    if (t->ndim != ndim)
        return mla_set_error(MLA_ERR_SHAPE_MISMATCH, "%s: tensor '%s' has %d dims, expected %d",
                             op, name, t->ndim, ndim);
    for (int d = 0; d < ndim; d++) {
        if (t->shape[d] < 0)
            return mla_set_error(MLA_ERR_SHAPE_MISMATCH, "%s: tensor '%s' dim %d is negative (%lld)",
                                 op, name, d, (long long)t->shape[d]);
        if (shape && shape[d] >= 0 && t->shape[d] != shape[d]) {
            char got[96], want[96];
            mla_tensor w = *t;
            for (int e = 0; e < ndim; e++) w.shape[e] = shape[e];
            format_shape(t, got, sizeof got);
            format_shape(&w, want, sizeof want);
            return mla_set_error(MLA_ERR_SHAPE_MISMATCH,
                                 "%s: tensor '%s' has shape %s, expected %s (dim %d: %lld != %lld; -1 = any)",
                                 op, name, got, want, d, (long long)t->shape[d], (long long)shape[d]);
        }
    }
    /* Sizes beyond 2^62 bytes are refused before any arithmetic can overflow. */
    for (int d = 0; d < ndim; d++)
        if (t->strides[d] < 0 && t->shape[d] > 1)
            return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: tensor '%s' has a negative stride",
                                 op, name);
    int64_t span = tensor_span_bytes(t);
    if (span < 0 || span > ((int64_t)1 << 62))
        return mla_set_error(MLA_ERR_SHAPE_MISMATCH,
                             "%s: tensor '%s' is too large (its size overflows 64-bit arithmetic)",
                             op, name);
    if (flags & MLA_CHECK_LAST_DIM_CONTIGUOUS) {
        if (ndim > 0 && t->shape[ndim - 1] > 1 && t->strides[ndim - 1] != 1)
            return mla_set_error(MLA_ERR_UNSUPPORTED,
                                 "%s: tensor '%s' must have a contiguous last dim (stride %lld)", op,
                                 name, (long long)t->strides[ndim - 1]);
        for (int d = 0; d < ndim - 1; d++)
            if (t->strides[d] < 0)
                return mla_set_error(MLA_ERR_UNSUPPORTED, "%s: tensor '%s' has a negative stride",
                                     op, name);
    } else if (!mla_tensor_is_contiguous(t)) {
        return mla_set_error(MLA_ERR_UNSUPPORTED,
                             "%s: tensor '%s' must be contiguous (row-major); pass a contiguous copy",
                             op, name);
    }
    return MLA_OK;
}

int mla_ranges_overlap(const mla_tensor *a, const mla_tensor *b)
{
    if (!a->data || !b->data) return 0;
    int64_t na = tensor_span_bytes(a), nb = tensor_span_bytes(b);
    if (na < 0 || nb < 0) return 1; /* unknowable: treat as overlapping */
    uintptr_t a0 = (uintptr_t)a->data, b0 = (uintptr_t)b->data;
    return a0 < b0 + (uintptr_t)nb && b0 < a0 + (uintptr_t)na;
}

mla_status mla_check_no_overlap(const char *op, const mla_tensor *out, const char *out_name,
                                const mla_tensor *in, const char *in_name)
{
    if (mla_ranges_overlap(out, in))
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT, "%s: output '%s' overlaps '%s'", op,
                             out_name, in_name);
    return MLA_OK;
}

mla_status mla_check_outputs_disjoint(const char *op, const mla_tensor *const *outs,
                                      const char *const *out_names, int num_outs,
                                      const mla_tensor *const *ins, const char *const *in_names,
                                      int num_ins)
{
    for (int o = 0; o < num_outs; o++) {
        for (int i = 0; i < num_ins; i++)
            MLA_TRY(mla_check_no_overlap(op, outs[o], out_names[o], ins[i], in_names[i]));
        for (int p = o + 1; p < num_outs; p++)
            MLA_TRY(mla_check_no_overlap(op, outs[o], out_names[o], outs[p], out_names[p]));
    }
    return MLA_OK;
}

mla_status mla_check_scale(const char *op, const char *name, float v)
{
    if (!isfinite(v) || v <= 0.0f)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: %s must be finite and > 0 (got %g)", op, name, (double)v);
    return MLA_OK;
}

mla_status mla_check_scales(const char *op, const mla_scales *s)
{
    MLA_TRY(mla_check_scale(op, "scales.softmax_scale", s->softmax_scale));
    MLA_TRY(mla_check_scale(op, "scales.q_scale", s->q_scale));
    MLA_TRY(mla_check_scale(op, "scales.k_scale", s->k_scale));
    MLA_TRY(mla_check_scale(op, "scales.v_scale", s->v_scale));
    MLA_TRY(mla_check_scale(op, "scales.o_scale", s->o_scale));
    return MLA_OK;
}

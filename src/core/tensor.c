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
        stride *= shape[d];
    }
    return t;
}

int64_t mla_tensor_numel(const mla_tensor *t)
{
    if (!t || t->ndim < 0 || t->ndim > MLA_MAX_DIMS) return 0;
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

int mla_tensor_is_contiguous(const mla_tensor *t)
{
    if (!t || t->ndim < 0 || t->ndim > MLA_MAX_DIMS) return 0;
    int64_t stride = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->strides[d] != stride) return 0;
        stride *= t->shape[d];
    }
    return 1;
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
    const char *a0 = (const char *)a->data, *b0 = (const char *)b->data;
    const char *a1 = a0 + mla_tensor_numel(a) * (int64_t)mla_dtype_size(a->dtype);
    const char *b1 = b0 + mla_tensor_numel(b) * (int64_t)mla_dtype_size(b->dtype);
    return a0 < b1 && b0 < a1;
}

mla_status mla_check_scale(const char *op, const char *name, float v)
{
    if (!isfinite(v) || v <= 0.0f)
        return mla_set_error(MLA_ERR_INVALID_ARGUMENT,
                             "%s: %s must be finite and > 0 (got %g)", op, name, (double)v);
    return MLA_OK;
}

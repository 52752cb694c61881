"""Operations, named and ordered like tokenspeed_mla so an engine can swap one import.

All functions accept torch tensors (CPU or CUDA) or numpy arrays (CPU backend). Shapes,
dtypes, devices and contiguity are checked before anything reaches the library; index
contents (pages, seq_lens, cu_seqlens, slots) are checked by the library.
"""

import ctypes
import math
import os
import sys

import numpy as np

from . import _backends, _ffi
from ._arrays import (absent_tensor, expect_shape, new_array, parse_dtype, raw_buffer,
                      read_int32_host, same_device, stream_of, wrap)
from ._ffi import (DEVICE_CPU, DEVICE_CUDA, DTYPE_BF16, DTYPE_F32, DTYPE_FP8_E4M3, DTYPE_FP16,
                   DTYPE_I32, DTYPE_I64, MLAValueError)

_Q_DTYPES = {DTYPE_BF16, DTYPE_FP8_E4M3}
_INT_TYPES = (int, np.integer)


def _int_arg(value, name, minimum=0, optional=False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, _INT_TYPES):
        # A 0-d tensor (e.g. max_seq_len computed on device) would need a sync to read.
        raise MLAValueError(f"{name} must be a Python int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise MLAValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _flag_arg(value, name):
    """A switch: True / False or 0 / 1 (anything else is refused rather than read as truthy)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, _INT_TYPES) and int(value) in (0, 1):
        return bool(value)
    raise MLAValueError(f"{name} must be True or False (or 0 / 1), got {value!r}")


def _float_arg(value, name, positive=False):
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise MLAValueError(f"{name} must be a float, got {type(value).__name__}") from None
    if not math.isfinite(f) or (positive and f <= 0):
        raise MLAValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {f}")
    return f


def _scales(softmax_scale=1.0, q_scale=1.0, k_scale=1.0, v_scale=1.0, o_scale=1.0):
    s = _ffi.MlaScales()
    s.softmax_scale, s.q_scale, s.k_scale = softmax_scale, q_scale, k_scale
    s.v_scale, s.o_scale = v_scale, o_scale
    return s


def _squeeze_axis1(arr, expected_ndim):
    """[N, 1, ...] -> [N, ...] (a view), for the 4-D cache layout and [n, 1, dim] inputs."""
    if arr.ndim == expected_ndim + 1:
        if arr.shape[1] != 1:
            raise MLAValueError(f"{arr.name} has shape {list(arr.shape)}: a {arr.ndim}-D "
                                "form must have size 1 in dimension 1")
        return arr.view(arr.shape[:1] + arr.shape[2:], arr.strides[:1] + arr.strides[2:])
    return arr


def _f32_result(arr_in, result):
    """numpy float32 input -> float32 output (exact widening of the bf16 result)."""
    if arr_in.kind == "numpy" and arr_in.from_f32:
        from .convert import bf16_to_float32
        return bf16_to_float32(result)
    return result


# ---- decode -------------------------------------------------------------------------------
def mla_decode(query, kv_cache, workspace_buffer, kv_lora_rank, qk_rope_head_dim, block_tables,
               seq_lens, max_seq_len, softmax_scale, output_scale=1.0, out=None,
               causal_mask=True, return_lse=False, *, lse_out=None, is_var_seq=True,
               enable_pdl=False, backend=None, dtype=None, kv_dtype=None, stream=None,
               plan=None, fp8_math=False):
    """Paged MLA decode: out[b, i, h] = softmax(q . K^T * softmax_scale) V * output_scale.

    query        [batch, q_len, heads, kv_lora_rank + qk_rope_head_dim] bf16 or fp8_e4m3
    kv_cache     [num_pages, page_size, D] or [num_pages, 1, page_size, D]; bf16 or fp8_e4m3
    workspace_buffer  any-dtype contiguous buffer on the device, or None (backend's own)
    block_tables int32 [batch, max_pages_per_seq]; seq_lens int32 [batch] (incl. new tokens)
    softmax_scale     the full bmm1 scale (q_scale * k_scale * softmax_scale), as SGLang
                      passes it; output_scale the bmm2 scale.
    Returns out bf16 [batch, q_len, heads, kv_lora_rank] (and lse f32 [batch, q_len, heads],
    natural log, when return_lse). numpy float32 query/kv_cache are converted to bf16 (or to
    the dtype= / kv_dtype= named); with a float32 query the returned out is float32.
    is_var_seq and enable_pdl are accepted for tokenspeed compatibility and ignored.
    plan: a DecodePlan built from these seq_lens (shared by the layers of one step), or None.
    fp8_math: with an fp8 query and an fp8 cache, allow fp8 tensor-core math with P rounded to
    e4m3 (mla_config.decode_fp8_math: faster on hopper at heads * q_len >= 64, less accurate;
    the cpu backend stays exact). A plan must be made with the same fp8_math.
    """
    del is_var_seq, enable_pdl
    rank = _int_arg(kv_lora_rank, "kv_lora_rank", 1)
    rope = _int_arg(qk_rope_head_dim, "qk_rope_head_dim", 0)
    d_qk = rank + rope
    q = wrap(query, "query", dtypes=_Q_DTYPES, declared=parse_dtype(dtype, "dtype"),
             convert_f32_to=DTYPE_BF16, ndims=(4,))
    kv = wrap(kv_cache, "kv_cache", dtypes=_Q_DTYPES, declared=parse_dtype(kv_dtype, "kv_dtype"),
              convert_f32_to=DTYPE_BF16, ndims=(3, 4))
    kv = _squeeze_axis1(kv, 3)
    bt = wrap(block_tables, "block_tables", dtypes={DTYPE_I32}, ndims=(2,))
    sl = wrap(seq_lens, "seq_lens", dtypes={DTYPE_I32}, ndims=(1,))
    batch, q_len, heads, width = q.shape
    if width != d_qk:
        raise MLAValueError(f"query has last dimension {width} but kv_lora_rank + "
                            f"qk_rope_head_dim = {rank} + {rope} = {d_qk}")
    expect_shape(kv, [("num_pages", None), ("page_size", None),
                      ("kv_lora_rank+qk_rope_head_dim", d_qk)])
    expect_shape(bt, [("batch", batch), ("max_pages_per_seq", None)])
    expect_shape(sl, [("batch", batch)])
    max_seq_len = _int_arg(0 if max_seq_len is None else max_seq_len, "max_seq_len", 0)
    if max_seq_len > 2**31 - 1:
        raise MLAValueError(f"max_seq_len {max_seq_len} does not fit in int32")
    softmax_scale = _float_arg(softmax_scale, "softmax_scale")
    output_scale = _float_arg(output_scale, "output_scale")

    if out is not None:
        o = wrap(out, "out", dtypes={DTYPE_BF16}, declared=DTYPE_BF16, ndims=(4,), output=True)
        expect_shape(o, [("batch", batch), ("q_len", q_len), ("heads", heads),
                         ("kv_lora_rank", rank)])
    else:
        o = wrap(new_array(q, (batch, q_len, heads, rank), DTYPE_BF16), "out",
                 dtypes={DTYPE_BF16}, declared=DTYPE_BF16)
    lse = None
    if return_lse or lse_out is not None:
        if lse_out is not None:
            lse = wrap(lse_out, "lse_out", dtypes={DTYPE_F32}, ndims=(3,), output=True)
            expect_shape(lse, [("batch", batch), ("q_len", q_len), ("heads", heads)])
        else:
            lse = wrap(new_array(q, (batch, q_len, heads), DTYPE_F32), "lse",
                       dtypes={DTYPE_F32})
    dev_type, dev_index = same_device([q, kv, bt, sl, o, lse])
    ws_ptr, ws_bytes = None, 0
    if workspace_buffer is not None:
        ws_ptr, ws_bytes, ws_type, ws_index = raw_buffer(workspace_buffer, "workspace_buffer")
        if (ws_type, ws_index) != (dev_type, dev_index):
            raise MLAValueError("workspace_buffer is not on the device of query")

    name = _backends.choose_backend_name(backend, dev_type)
    handle = _backends.get_backend(name, dev_type, dev_index, num_heads=heads,
                                   kv_lora_rank=rank, qk_rope_head_dim=rope,
                                   page_size=kv.shape[1], kv_dtype=kv.dtype,
                                   max_q_len=max(q_len, 1),
                                   fp8_math=_flag_arg(fp8_math, "fp8_math"))
    scales = _scales(softmax_scale=softmax_scale, o_scale=output_scale)
    args = _ffi.MlaDecodeArgs()
    args.q, args.kv_cache = q.tensor(), kv.tensor()
    args.block_table, args.seq_lens = bt.tensor(), sl.tensor()
    args.out = o.tensor()
    args.lse = lse.tensor() if lse is not None else absent_tensor()
    args.workspace, args.workspace_bytes = ws_ptr, ws_bytes
    args.max_seq_len = max_seq_len
    args.no_causal_mask = 0 if causal_mask else 1
    args.scales = ctypes.pointer(scales)
    args.stream = stream_of(dev_type, dev_index, stream)
    if plan is not None:
        args.plan = plan._pointer_for(handle)
    _ffi.check(_ffi.lib().mla_decode(handle, ctypes.byref(args)), "mla_decode")
    result = o.obj if out is not None else _f32_result(q, o.obj)
    if return_lse:
        return result, lse.obj
    return result


def tokenspeed_mla_decode(query, kv_cache, workspace_buffer, kv_lora_rank, qk_rope_head_dim,
                          block_tables, seq_lens, max_seq_len, softmax_scale, output_scale=1.0,
                          out=None, is_var_seq=True, causal_mask=True, enable_pdl=False,
                          return_lse=False, lse_out=None, **kwargs):
    """tokenspeed_mla.tokenspeed_mla_decode's positional order (is_var_seq before
    causal_mask); see mla_decode."""
    return mla_decode(query, kv_cache, workspace_buffer, kv_lora_rank, qk_rope_head_dim,
                      block_tables, seq_lens, max_seq_len, softmax_scale, output_scale, out,
                      causal_mask, return_lse, lse_out=lse_out, is_var_seq=is_var_seq,
                      enable_pdl=enable_pdl, **kwargs)


def decode_workspace_size(batch_size, q_len, num_heads, kv_lora_rank=512, qk_rope_head_dim=64,
                          *, page_size=64, kv_dtype="fp8_e4m3", device=None, backend=None):
    """Bytes a caller-supplied decode workspace needs for up to `batch_size` requests of
    `q_len` tokens with `num_heads` heads (mla_decode_workspace_size of the backend that
    mla_decode would use for that configuration). 0 on the CPU."""
    batch_size = _int_arg(batch_size, "batch_size", 0)
    q_len = _int_arg(q_len, "q_len", 1)
    num_heads = _int_arg(num_heads, "num_heads", 1)
    dev_type, dev_index = _parse_device(device)
    name = _backends.choose_backend_name(backend, dev_type)
    handle = _backends.get_backend(
        name, dev_type, dev_index, num_heads=num_heads,
        kv_lora_rank=_int_arg(kv_lora_rank, "kv_lora_rank", 1),
        qk_rope_head_dim=_int_arg(qk_rope_head_dim, "qk_rope_head_dim", 0),
        page_size=_int_arg(page_size, "page_size", 1),
        kv_dtype=parse_dtype(kv_dtype, "kv_dtype"), max_q_len=q_len)
    nbytes = ctypes.c_size_t()
    _ffi.check(_ffi.lib().mla_decode_workspace_size(handle, batch_size, q_len,
                                                      ctypes.byref(nbytes)),
               "mla_decode_workspace_size")
    return int(nbytes.value)


class DecodePlan:
    """The split-KV schedule of one decode batch (mla_decode_plan in mla.h), built once per
    forward step and passed as mla_decode(..., plan=) by every layer, so that the GPU's
    scheduling step runs once per step instead of once per layer.

    Made for the configuration mla_decode would use (heads, dims, page_size, kv_dtype, q_len,
    device, backend, fp8_math) and for batch_size requests with block tables max_pages_per_seq wide;
    mla_decode refuses it for any other. build(seq_lens) must be called (again) whenever the
    lengths change: with index checks on, a call whose seq_lens differ from the plan's is
    refused. close() (or clear_backends()) releases it."""

    def __init__(self, batch_size, q_len, num_heads, max_pages_per_seq, kv_lora_rank=512,
                 qk_rope_head_dim=64, *, page_size=64, kv_dtype="fp8_e4m3", device=None,
                 backend=None, fp8_math=False):
        self._ptr = None
        self.batch_size = _int_arg(batch_size, "batch_size", 1)
        self.q_len = _int_arg(q_len, "q_len", 1)
        self.max_pages_per_seq = _int_arg(max_pages_per_seq, "max_pages_per_seq", 1)
        self._dev = _parse_device(device)
        name = _backends.choose_backend_name(backend, self._dev[0])
        self._handle = _backends.get_backend(
            name, self._dev[0], self._dev[1], num_heads=_int_arg(num_heads, "num_heads", 1),
            kv_lora_rank=_int_arg(kv_lora_rank, "kv_lora_rank", 1),
            qk_rope_head_dim=_int_arg(qk_rope_head_dim, "qk_rope_head_dim", 0),
            page_size=_int_arg(page_size, "page_size", 1),
            kv_dtype=parse_dtype(kv_dtype, "kv_dtype"), max_q_len=self.q_len,
            fp8_math=_flag_arg(fp8_math, "fp8_math"))
        ptr = ctypes.c_void_p()
        _ffi.check(_ffi.lib().mla_decode_plan_create(self._handle, self.batch_size, self.q_len,
                                                       self.max_pages_per_seq, ctypes.byref(ptr)),
                   "mla_decode_plan_create")
        self._ptr = ptr.value
        _backends.register_plan(self)

    def build(self, seq_lens, stream=None):
        """Plans the batch from seq_lens (int32 [batch_size] on the plan's device), on `stream`
        (torch's current stream by default); graph-capturable on CUDA."""
        self._check_open()
        sl = wrap(seq_lens, "seq_lens", dtypes={DTYPE_I32}, ndims=(1,))
        expect_shape(sl, [("batch_size", self.batch_size)])
        if (sl.dev_type, sl.dev_index) != self._dev:
            raise MLAValueError(f"seq_lens is on {sl.device_str}, not on the plan's device")
        tensor = sl.tensor()
        _ffi.check(_ffi.lib().mla_decode_plan_build(self._ptr, ctypes.byref(tensor),
                                                      stream_of(*self._dev, stream)),
                   "mla_decode_plan_build")
        return self

    def close(self):
        if self._ptr:
            _ffi.lib().mla_decode_plan_destroy(self._ptr)
            self._ptr = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone
            pass

    def _check_open(self):
        if not self._ptr:
            raise MLAValueError("the decode plan is closed (close() or clear_backends())")

    def _pointer_for(self, handle):
        self._check_open()
        if handle != self._handle:
            raise MLAValueError("the decode plan was made for another configuration (backend, "
                                "device, heads, dims, page_size, kv_dtype, q_len or fp8_math) "
                                "than this call's")
        return self._ptr


# ---- prefill ------------------------------------------------------------------------------
def mla_prefill(query, key, value, seq_lens, cum_seq_lens, max_seq_len, batch_size,
                softmax_scale, is_causal=True, return_lse=False, cum_seq_lens_q=None,
                max_seq_len_q=None, enable_pdl=False, out=None, *, lse_out=None,
                qk_rope_head_dim=64, output_scale=1.0, backend=None, dtype=None, stream=None):
    """Ragged MLA prefill. Returns (out, lse); lse is None unless return_lse.

    query [total_q, heads, qk_dim], key [total_kv, heads, qk_dim], value [total_kv, heads, v_dim]
    (bf16 or fp8_e4m3, one dtype), seq_lens int32 [batch] (kv lengths), cum_seq_lens int32
    [batch+1] (kv offsets), cum_seq_lens_q (q offsets; default cum_seq_lens). Causal masking
    is bottom-right aligned. softmax_scale is the full bmm1 scale. out bf16
    [total_q, heads, v_dim]; lse f32 [total_q, heads]. qk_dim is split as
    (qk_dim - qk_rope_head_dim) + qk_rope_head_dim for the backend config.
    """
    del enable_pdl
    declared = parse_dtype(dtype, "dtype")
    q = wrap(query, "query", dtypes=_Q_DTYPES, declared=declared, convert_f32_to=DTYPE_BF16,
             ndims=(3,))
    k = wrap(key, "key", dtypes=_Q_DTYPES, declared=declared, convert_f32_to=DTYPE_BF16,
             ndims=(3,))
    v = wrap(value, "value", dtypes=_Q_DTYPES, declared=declared, convert_f32_to=DTYPE_BF16,
             ndims=(3,))
    for other in (k, v):
        if other.dtype != q.dtype:
            raise MLAValueError(f"{other.name} has dtype {_ffi.DTYPE_NAMES[other.dtype]} but "
                                f"query has {_ffi.DTYPE_NAMES[q.dtype]}; they must match")
    total_q, heads, qk_dim = q.shape
    expect_shape(k, [("total_kv", None), ("heads", heads), ("qk_dim", qk_dim)])
    total_kv = k.shape[0]
    expect_shape(v, [("total_kv", total_kv), ("heads", heads), ("v_head_dim", None)])
    v_dim = v.shape[2]
    batch = _int_arg(batch_size, "batch_size", 0)
    rope = _int_arg(qk_rope_head_dim, "qk_rope_head_dim", 0)
    nope = qk_dim - rope
    if nope < 1:
        raise MLAValueError(f"query last dimension {qk_dim} leaves no room for "
                            f"qk_rope_head_dim={rope}; pass qk_rope_head_dim=")
    cu_kv = wrap(cum_seq_lens, "cum_seq_lens", dtypes={DTYPE_I32}, ndims=(1,))
    expect_shape(cu_kv, [("batch_size+1", batch + 1)])
    if cum_seq_lens_q is None:
        cu_q = cu_kv.view(cu_kv.shape)
        cu_q.name = "cum_seq_lens_q"
    else:
        cu_q = wrap(cum_seq_lens_q, "cum_seq_lens_q", dtypes={DTYPE_I32}, ndims=(1,))
        expect_shape(cu_q, [("batch_size+1", batch + 1)])
    sl = wrap(seq_lens, "seq_lens", dtypes={DTYPE_I32}, ndims=(1,), optional=True)
    if sl is not None:
        expect_shape(sl, [("batch_size", batch)])
    max_kv = _int_arg(0 if max_seq_len is None else max_seq_len, "max_seq_len", 0)
    if max_seq_len_q is None:
        max_q = max_kv if cum_seq_lens_q is None else 0
    else:
        max_q = _int_arg(max_seq_len_q, "max_seq_len_q", 0)
    softmax_scale = _float_arg(softmax_scale, "softmax_scale")
    output_scale = _float_arg(output_scale, "output_scale")

    if out is not None:
        o = wrap(out, "out", dtypes={DTYPE_BF16}, declared=DTYPE_BF16, ndims=(3,), output=True)
        expect_shape(o, [("total_q", total_q), ("heads", heads), ("v_head_dim", v_dim)])
    else:
        o = wrap(new_array(q, (total_q, heads, v_dim), DTYPE_BF16), "out",
                 dtypes={DTYPE_BF16}, declared=DTYPE_BF16)
    lse = None
    if return_lse or lse_out is not None:
        if lse_out is not None:
            lse = wrap(lse_out, "lse_out", dtypes={DTYPE_F32}, ndims=(2,), output=True)
            expect_shape(lse, [("total_q", total_q), ("heads", heads)])
        else:
            lse = wrap(new_array(q, (total_q, heads), DTYPE_F32), "lse", dtypes={DTYPE_F32})
    dev_type, dev_index = same_device([q, k, v, cu_kv, cu_q, sl, o, lse])
    if sl is not None and dev_type == DEVICE_CPU:
        # seq_lens is not part of the C call; on the CPU check it agrees with cum_seq_lens.
        cu_vals = read_int32_host(cu_kv)
        if not np.array_equal(np.diff(cu_vals.astype(np.int64)), read_int32_host(sl)):
            raise MLAValueError(f"seq_lens {read_int32_host(sl).tolist()} disagrees with the "
                                f"differences of cum_seq_lens {cu_vals.tolist()}")

    name = _backends.choose_backend_name(backend, dev_type)
    handle = _backends.get_backend(name, dev_type, dev_index, num_heads=heads,
                                   qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                                   v_head_dim=v_dim)
    scales = _scales(softmax_scale=softmax_scale, o_scale=output_scale)
    args = _ffi.MlaPrefillArgs()
    args.q, args.k, args.v = q.tensor(), k.tensor(), v.tensor()
    args.cu_seqlens_q, args.cu_seqlens_kv = cu_q.tensor(), cu_kv.tensor()
    args.max_seqlen_q, args.max_seqlen_kv = max_q, max_kv
    args.causal = 1 if is_causal else 0
    args.out = o.tensor()
    args.lse = lse.tensor() if lse is not None else absent_tensor()
    args.scales = ctypes.pointer(scales)
    args.stream = stream_of(dev_type, dev_index, stream)
    _ffi.check(_ffi.lib().mla_prefill(handle, ctypes.byref(args)), "mla_prefill")
    result = o.obj if out is not None else _f32_result(q, o.obj)
    return result, (lse.obj if (lse is not None and return_lse) else None)


def tokenspeed_mla_prefill(query, key, value, seq_lens, cum_seq_lens, max_seq_len, batch_size,
                           softmax_scale, is_causal=True, return_lse=False, cum_seq_lens_q=None,
                           max_seq_len_q=None, enable_pdl=False, out=None, **kwargs):
    """tokenspeed_mla.tokenspeed_mla_prefill's return convention: out alone, or (out, lse)
    when return_lse. See mla_prefill."""
    o, lse = mla_prefill(query, key, value, seq_lens, cum_seq_lens, max_seq_len, batch_size,
                         softmax_scale, is_causal, return_lse, cum_seq_lens_q, max_seq_len_q,
                         enable_pdl, out, **kwargs)
    return (o, lse) if return_lse else o


def _bits_only(x, declared):
    return declared if isinstance(x, np.ndarray) and x.dtype.kind == "u" else None


# ---- merge_state --------------------------------------------------------------------------
def merge_state(v_a, s_a, v_b, s_b, *, out=None, lse_out=None, dtype=None, backend=None,
                stream=None):
    """(v_a, s_a) (+) (v_b, s_b) -> (v, s): attention over the union of two disjoint key sets.

    v_* [tokens, heads, dim] bf16 or f32, s_* f32 [tokens, heads] natural-log LSE (-inf =
    empty side). Output dtype follows v_a unless `out` is given. Returns (v, s).
    """
    declared = parse_dtype(dtype, "dtype")
    # dtype= says how to read numpy uint16 bits; float32 sides may be mixed with bf16 ones.
    oa = wrap(v_a, "v_a", dtypes={DTYPE_BF16, DTYPE_F32}, declared=_bits_only(v_a, declared),
              ndims=(3,))
    ob = wrap(v_b, "v_b", dtypes={DTYPE_BF16, DTYPE_F32}, declared=_bits_only(v_b, declared),
              ndims=(3,))
    la = wrap(s_a, "s_a", dtypes={DTYPE_F32}, ndims=(2,))
    lb = wrap(s_b, "s_b", dtypes={DTYPE_F32}, ndims=(2,))
    tokens, heads, dim = oa.shape
    expect_shape(ob, [("tokens", tokens), ("heads", heads), ("dim", dim)])
    expect_shape(la, [("tokens", tokens), ("heads", heads)])
    expect_shape(lb, [("tokens", tokens), ("heads", heads)])
    if out is not None:
        o = wrap(out, "out", dtypes={DTYPE_BF16, DTYPE_F32}, declared=declared or oa.dtype,
                 ndims=(3,), output=True)
        expect_shape(o, [("tokens", tokens), ("heads", heads), ("dim", dim)])
    else:
        o = wrap(new_array(oa, (tokens, heads, dim), oa.dtype), "out",
                 dtypes={DTYPE_BF16, DTYPE_F32}, declared=oa.dtype)
    if lse_out is not None:
        lse = wrap(lse_out, "lse_out", dtypes={DTYPE_F32}, ndims=(2,), output=True)
        expect_shape(lse, [("tokens", tokens), ("heads", heads)])
    else:
        lse = wrap(new_array(la, (tokens, heads), DTYPE_F32), "lse", dtypes={DTYPE_F32})
    dev_type, dev_index = same_device([oa, la, ob, lb, o, lse])
    name = _backends.choose_backend_name(backend, dev_type)
    handle = _backends.get_backend(name, dev_type, dev_index)
    args = _ffi.MlaMergeStateArgs()
    args.o_a, args.lse_a, args.o_b, args.lse_b = oa.tensor(), la.tensor(), ob.tensor(), lb.tensor()
    args.o, args.lse = o.tensor(), lse.tensor()
    args.stream = stream_of(dev_type, dev_index, stream)
    _ffi.check(_ffi.lib().mla_merge_state(handle, ctypes.byref(args)), "mla_merge_state")
    return o.obj, lse.obj


# ---- kv_cache_write -----------------------------------------------------------------------
def kv_cache_write(c_kv, k_pe, slots, kv_cache, k_scale=1.0, *, kv_dtype=None, dtype=None,
                   backend=None, stream=None):
    """Writes rows c_kv || k_pe into kv_cache at `slots` (slot = page * page_size + offset;
    < 0 skips the row). c_kv [n, kv_lora_rank] (or [n, 1, kv_lora_rank]), k_pe [n, rope] (or
    [n, 1, rope]), bf16 or f32; slots int32/int64 [n]; kv_cache [num_pages, page_size, D]
    (or [num_pages, 1, page_size, D]) bf16 or fp8_e4m3 (stored = round_e4m3(x / k_scale)).
    Returns kv_cache."""
    declared = parse_dtype(dtype, "dtype")
    ckv = _squeeze_axis1(wrap(c_kv, "c_kv", dtypes={DTYPE_BF16, DTYPE_F32}, declared=declared,
                              ndims=(2, 3)), 2)
    kpe = _squeeze_axis1(wrap(k_pe, "k_pe", dtypes={DTYPE_BF16, DTYPE_F32}, declared=declared,
                              ndims=(2, 3)), 2)
    sl = wrap(slots, "slots", dtypes={DTYPE_I32, DTYPE_I64}, ndims=(1,))
    kv = _squeeze_axis1(wrap(kv_cache, "kv_cache", dtypes=_Q_DTYPES,
                             declared=parse_dtype(kv_dtype, "kv_dtype"), ndims=(3, 4),
                             output=True), 3)
    n, rank = ckv.shape
    expect_shape(kpe, [("n", n), ("qk_rope_head_dim", None)])
    rope = kpe.shape[1]
    expect_shape(sl, [("n", n)])
    expect_shape(kv, [("num_pages", None), ("page_size", None),
                      ("kv_lora_rank+qk_rope_head_dim", rank + rope)])
    k_scale = _float_arg(k_scale, "k_scale", positive=True)
    dev_type, dev_index = same_device([ckv, kpe, sl, kv])
    name = _backends.choose_backend_name(backend, dev_type)
    handle = _backends.get_backend(name, dev_type, dev_index, kv_lora_rank=rank,
                                   qk_rope_head_dim=rope, page_size=kv.shape[1],
                                   kv_dtype=kv.dtype)
    scales = _scales(k_scale=k_scale)
    args = _ffi.MlaKvCacheWriteArgs()
    args.c_kv, args.k_pe, args.slots, args.kv_cache = (ckv.tensor(), kpe.tensor(), sl.tensor(),
                                                       kv.tensor())
    args.scales = ctypes.pointer(scales)
    args.stream = stream_of(dev_type, dev_index, stream)
    _ffi.check(_ffi.lib().mla_kv_cache_write(handle, ctypes.byref(args)), "mla_kv_cache_write")
    return kv_cache


# ---- quantize_fp8 -------------------------------------------------------------------------
def quantize_fp8(input, scale=1.0, out=None, *, dtype=None, backend=None, stream=None):
    """out = round_e4m3(input / scale) (saturating, NaN kept). input bf16/fp16/f32, any shape,
    contiguous; out fp8_e4m3 (torch.float8_e4m3fn, numpy uint8) with as many elements."""
    x = wrap(input, "input", dtypes={DTYPE_BF16, DTYPE_FP16, DTYPE_F32},
             declared=parse_dtype(dtype, "dtype"), any_ndim=True)
    scale = _float_arg(scale, "scale", positive=True)
    if out is not None:
        o = wrap(out, "out", dtypes={DTYPE_FP8_E4M3}, declared=DTYPE_FP8_E4M3, output=True,
                 any_ndim=True)
        if o.numel != x.numel:
            raise MLAValueError(f"out has {o.numel} elements (shape {list(o.shape)}) but input "
                                f"has {x.numel} (shape {list(x.shape)})")
    else:
        o = wrap(new_array(x, x.shape, DTYPE_FP8_E4M3), "out", dtypes={DTYPE_FP8_E4M3},
                 declared=DTYPE_FP8_E4M3, any_ndim=True)
    dev_type, dev_index = same_device([x, o])
    name = _backends.choose_backend_name(backend, dev_type)
    handle = _backends.get_backend(name, dev_type, dev_index)
    args = _ffi.MlaQuantizeFp8Args()
    # Both are contiguous: describe them as flat vectors so any rank works.
    args.input = x.view((x.numel,)).tensor()
    args.output = o.view((o.numel,)).tensor()
    args.scale = scale
    args.stream = stream_of(dev_type, dev_index, stream)
    _ffi.check(_ffi.lib().mla_quantize_fp8(handle, ctypes.byref(args)), "mla_quantize_fp8")
    return o.obj


# ---- kv_pack ------------------------------------------------------------------------------
def kv_pack(k_nope, k_pe, v, k_scale=1.0, v_scale=1.0, *, out_dtype="fp8_e4m3", k_out=None,
            v_out=None, dtype=None, backend=None, stream=None):
    """k_out = concat(k_nope, broadcast k_pe over heads), v_out = v, cast to out_dtype (fp8:
    round_e4m3(x / scale)) in one pass. k_nope [N, H, nope], v [N, H, v_dim] bf16 with the last
    dim contiguous (other strides free); k_pe [N, 1, rope] or [N, rope] bf16. Returns
    (k_out, v_out)."""
    declared = parse_dtype(dtype, "dtype")
    out_code = parse_dtype(out_dtype, "out_dtype")
    if out_code not in _Q_DTYPES:
        raise MLAValueError(f"out_dtype must be 'bf16' or 'fp8_e4m3', got {out_dtype!r}")
    kn = wrap(k_nope, "k_nope", dtypes={DTYPE_BF16}, declared=declared, ndims=(3,),
              contiguous=False)
    kp = wrap(k_pe, "k_pe", dtypes={DTYPE_BF16}, declared=declared, ndims=(2, 3),
              contiguous=False)
    vv = wrap(v, "v", dtypes={DTYPE_BF16}, declared=declared, ndims=(3,), contiguous=False)
    n, heads, nope = kn.shape
    if kp.ndim == 3:
        expect_shape(kp, [("N", n), ("1", 1), ("qk_rope_head_dim", None)])
    else:
        expect_shape(kp, [("N", n), ("qk_rope_head_dim", None)])
    rope = kp.shape[-1]
    expect_shape(vv, [("N", n), ("heads", heads), ("v_head_dim", None)])
    v_dim = vv.shape[2]
    k_scale = _float_arg(k_scale, "k_scale", positive=True)
    v_scale = _float_arg(v_scale, "v_scale", positive=True)
    if k_out is not None:
        ko = wrap(k_out, "k_out", dtypes={out_code}, declared=out_code, ndims=(3,), output=True)
        expect_shape(ko, [("N", n), ("heads", heads), ("qk_nope+rope", nope + rope)])
    else:
        ko = wrap(new_array(kn, (n, heads, nope + rope), out_code), "k_out", dtypes={out_code},
                  declared=out_code)
    if v_out is not None:
        vo = wrap(v_out, "v_out", dtypes={out_code}, declared=out_code, ndims=(3,), output=True)
        expect_shape(vo, [("N", n), ("heads", heads), ("v_head_dim", v_dim)])
    else:
        vo = wrap(new_array(kn, (n, heads, v_dim), out_code), "v_out", dtypes={out_code},
                  declared=out_code)
    dev_type, dev_index = same_device([kn, kp, vv, ko, vo])
    name = _backends.choose_backend_name(backend, dev_type)
    handle = _backends.get_backend(name, dev_type, dev_index, num_heads=heads,
                                   qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                                   v_head_dim=v_dim)
    args = _ffi.MlaKvPackArgs()
    args.k_nope, args.k_pe, args.v = kn.tensor(), kp.tensor(), vv.tensor()
    args.k_out, args.v_out = ko.tensor(), vo.tensor()
    args.k_scale, args.v_scale = k_scale, v_scale
    args.stream = stream_of(dev_type, dev_index, stream)
    _ffi.check(_ffi.lib().mla_kv_pack(handle, ctypes.byref(args)), "mla_kv_pack")
    return ko.obj, vo.obj


# ---- devices and backends -----------------------------------------------------------------
def _parse_device(device):
    """None / "cpu" / "cuda" / "cuda:1" / int (CUDA ordinal) / torch.device -> (type, index)."""
    torch = sys.modules.get("torch")
    if device is None:
        if torch is not None and torch.cuda.is_available():
            return DEVICE_CUDA, torch.cuda.current_device()
        return DEVICE_CPU, 0
    if isinstance(device, _INT_TYPES) and not isinstance(device, bool):
        return DEVICE_CUDA, int(device)
    text = str(device)
    if text == "cpu":
        return DEVICE_CPU, 0
    if text.startswith("cuda"):
        _, _, idx = text.partition(":")
        if idx:
            return DEVICE_CUDA, int(idx)
        if torch is not None and torch.cuda.is_available():
            return DEVICE_CUDA, torch.cuda.current_device()
        return DEVICE_CUDA, 0
    raise MLAValueError(f"device {device!r} is not 'cpu', 'cuda', 'cuda:N' or an int")


def get_num_sm(device=None):
    """Streaming multiprocessors of a CUDA device (torch if imported, else the CUDA runtime
    libmla links); for the CPU, the number of CPU cores."""
    dev_type, dev_index = _parse_device(device)
    if dev_type == DEVICE_CPU:
        return os.cpu_count() or 1
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.cuda.get_device_properties(dev_index).multi_processor_count)
    return _num_sm_from_cudart(dev_index)


def _num_sm_from_cudart(dev_index):
    _ffi.lib()  # loads libcudart too when libmla was built with CUDA
    path = None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "libcudart" in line:
                    path = line.split()[-1]
                    break
    except OSError:
        pass
    if path is None:
        raise _ffi.MLARuntimeError("get_num_sm: no CUDA runtime is loaded (libmla built without "
                                   "CUDA, and torch not imported)")
    cudart = ctypes.CDLL(path)
    value = ctypes.c_int()
    err = cudart.cudaDeviceGetAttribute(ctypes.byref(value), 16, int(dev_index))  # SM count
    if err != 0:
        raise _ffi.MLARuntimeError(f"cudaDeviceGetAttribute failed with error {err}")
    return value.value


def backends():
    """Registered backends: list of (name, available, reason)."""
    lib = _ffi.lib()
    out = []
    for i in range(lib.mla_backend_count()):
        info = _ffi.MlaBackendInfo()
        _ffi.check(lib.mla_backend_get_info(i, ctypes.byref(info)), "mla_backend_get_info")
        out.append((info.name.decode() if info.name else "", bool(info.available),
                    info.reason.decode("utf-8", "replace")))
    return out


def backend_info(name):
    """Everything mla_backend_find reports about backend `name`, as a dict."""
    info = _ffi.MlaBackendInfo()
    _ffi.check(_ffi.lib().mla_backend_find(str(name).encode(), ctypes.byref(info)),
               f"mla_backend_find('{name}')")
    caps = info.caps

    def mask(bits):
        return [_ffi.DTYPE_NAMES[d] for d in sorted(_ffi.DTYPE_NAMES) if bits & (1 << d)]

    return {
        "name": info.name.decode() if info.name else "",
        "description": info.description.decode() if info.description else "",
        "available": bool(info.available),
        "reason": info.reason.decode("utf-8", "replace"),
        "min_heads": caps.min_heads, "max_heads": caps.max_heads,
        "page_sizes": [caps.page_sizes[i] for i in range(min(caps.num_page_sizes, 4))],
        "kv_cache_dtypes": mask(caps.kv_cache_dtypes),
        "query_dtypes": mask(caps.query_dtypes),
        "prefill_dtypes": mask(caps.prefill_dtypes),
        "kv_lora_rank": caps.kv_lora_rank, "qk_rope_head_dim": caps.qk_rope_head_dim,
        "qk_nope_head_dim": caps.qk_nope_head_dim, "v_head_dim": caps.v_head_dim,
        "max_head_dim": caps.max_head_dim, "max_q_len": caps.max_q_len,
        "min_sm_arch": caps.min_sm_arch,
        "device_type": "cuda" if caps.device_type == DEVICE_CUDA else "cpu",
    }


def device_errors():
    """Reads and clears the sticky device error flags of every cached backend (synchronizes).
    Returns {backend name: flags} for backends with flags set (bit 0 page index, bit 1
    seq_len, bit 2 slot)."""
    lib = _ffi.lib()
    found = {}
    for key, handle in _backends.cached_handles():
        flags = ctypes.c_uint32()
        _ffi.check(lib.mla_backend_device_errors(handle, ctypes.byref(flags)),
                   "mla_backend_device_errors")
        if flags.value:
            found[key[0]] = found.get(key[0], 0) | flags.value
    return found


def clear_backends():
    """Destroys every cached backend; the next call creates them again."""
    _backends.clear()


def version():
    return _ffi.lib().mla_version_string().decode()

"""Adapters from numpy arrays and torch tensors to mla_tensor descriptors.

Every argument is checked here (type, dtype, ndim, device, contiguity) before a pointer is
handed to the library; the library then checks shapes against each other and the config.
torch is never imported by this module: a torch tensor is recognised by its type, and the
torch module is taken from sys.modules.
"""

import ctypes
import sys

import numpy as np

from . import _ffi
from ._ffi import (DEVICE_CPU, DEVICE_CUDA, DTYPE_BF16, DTYPE_F32, DTYPE_FP8_E4M3, DTYPE_FP16,
                   DTYPE_I32, DTYPE_I64, DTYPE_NAMES, DTYPE_SIZES, MLAValueError, MlaDevice,
                   MlaTensor)

_Dims = ctypes.c_int64 * _ffi.MAX_DIMS
# numpy dtype -> name, for the common native dtypes (dtype.name is slow on the hot path).
_NP_NAMES = {np.dtype(t): np.dtype(t).name for t in (np.float32, np.float16, np.int32, np.int64,
                                                      np.uint16, np.uint8, np.float64)}

_DTYPE_ALIASES = {
    "bf16": DTYPE_BF16, "bfloat16": DTYPE_BF16, "torch.bfloat16": DTYPE_BF16,
    "fp16": DTYPE_FP16, "float16": DTYPE_FP16, "half": DTYPE_FP16, "torch.float16": DTYPE_FP16,
    "fp8": DTYPE_FP8_E4M3, "fp8_e4m3": DTYPE_FP8_E4M3, "e4m3": DTYPE_FP8_E4M3,
    "float8_e4m3fn": DTYPE_FP8_E4M3, "torch.float8_e4m3fn": DTYPE_FP8_E4M3,
    "f32": DTYPE_F32, "float32": DTYPE_F32, "float": DTYPE_F32, "torch.float32": DTYPE_F32,
    "i32": DTYPE_I32, "int32": DTYPE_I32, "torch.int32": DTYPE_I32,
    "i64": DTYPE_I64, "int64": DTYPE_I64, "torch.int64": DTYPE_I64,
}

_TORCH_DTYPE_NAMES = {
    "torch.bfloat16": DTYPE_BF16, "torch.float16": DTYPE_FP16,
    "torch.float8_e4m3fn": DTYPE_FP8_E4M3, "torch.float32": DTYPE_F32,
    "torch.int32": DTYPE_I32, "torch.int64": DTYPE_I64,
}


def parse_dtype(value, what):
    """'bf16' / 'fp8_e4m3' / torch.bfloat16 / numpy dtype ... -> mla dtype code (or None)."""
    if value is None:
        return None
    if isinstance(value, int) and value in DTYPE_NAMES:
        return value
    key = str(value).lower()
    if key in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[key]
    try:
        key = np.dtype(value).name
    except TypeError:
        pass
    if key in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[key]
    raise MLAValueError(f"{what}={value!r} is not a known dtype; use one of "
                        "'bf16', 'fp16', 'fp8_e4m3', 'f32', 'i32', 'i64'")


def is_torch(x):
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "data_ptr")


def torch_module():
    return sys.modules["torch"]


class Arr:
    """One checked argument: where its data is, what it holds, and the original object (kept
    referenced until the call returns)."""

    __slots__ = ("obj", "name", "kind", "dtype", "shape", "strides", "dev_type", "dev_index",
                 "ptr", "np_repr", "from_f32")

    def __init__(self, obj, name, kind, dtype, shape, strides, dev_type, dev_index, ptr,
                 np_repr=None, from_f32=False):
        self.obj, self.name, self.kind, self.dtype = obj, name, kind, dtype
        self.shape, self.strides = tuple(shape), tuple(strides)
        self.dev_type, self.dev_index, self.ptr = dev_type, dev_index, ptr
        self.np_repr, self.from_f32 = np_repr, from_f32

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self):
        return self.numel * DTYPE_SIZES[self.dtype]

    @property
    def device_str(self):
        return "cpu" if self.dev_type == DEVICE_CPU else f"cuda:{self.dev_index}"

    def is_contiguous(self):
        if self.numel == 0:
            return True
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.strides)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def view(self, shape, strides=None):
        """Same memory, another (compatible) shape: used to drop a size-1 axis."""
        if strides is None:
            strides = contiguous_strides(shape)
        return Arr(self.obj, self.name, self.kind, self.dtype, shape, strides, self.dev_type,
                   self.dev_index, self.ptr, self.np_repr, self.from_f32)

    def tensor(self):
        return MlaTensor(self.ptr, self.dtype, len(self.shape), _Dims(*self.shape),
                         _Dims(*self.strides), MlaDevice(self.dev_type, self.dev_index))


def contiguous_strides(shape):
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(int(s), 1)
    return tuple(reversed(strides))


def absent_tensor():
    """An mla_tensor with data NULL: an optional argument left out."""
    return MlaTensor()


def _fmt_dtypes(codes):
    return ", ".join(DTYPE_NAMES[c] for c in sorted(codes))


def wrap(x, name, *, dtypes, declared=None, convert_f32_to=None, ndims=None, output=False,
         contiguous=True, optional=False, any_ndim=False):
    """Check `x` and describe it.

    dtypes: allowed mla dtype codes. declared: the dtype the caller named (a mismatch is an
    error); numpy uint16 / uint8 are taken as bf16 / fp8_e4m3 bits only when declared so. For
    outputs, declared only says how to read numpy uint16 / uint8. convert_f32_to: a
    numpy float32 array is converted to this dtype (a copy) when f32 itself is not allowed.
    ndims: allowed numbers of dimensions. output: must be writable. contiguous: require
    row-major contiguity (else only the last dim must be contiguous).
    """
    if x is None:
        if optional:
            return None
        raise MLAValueError(f"{name} is required but is None")
    if is_torch(x):
        arr = _wrap_torch(x, name, None if output else declared)
    elif isinstance(x, np.ndarray):
        arr = _wrap_numpy(x, name, dtypes, declared, convert_f32_to, output)
    else:
        raise MLAValueError(f"{name} must be a torch.Tensor or numpy.ndarray, "
                            f"got {type(x).__name__}")
    if arr.dtype not in dtypes:
        raise MLAValueError(f"{name} has dtype {_describe_dtype(x)} ({DTYPE_NAMES[arr.dtype]}); "
                            f"allowed: {_fmt_dtypes(dtypes)}")
    if ndims is not None and arr.ndim not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise MLAValueError(f"{name} must have {want} dimensions, got shape {list(arr.shape)}")
    if not any_ndim and not 1 <= arr.ndim <= _ffi.MAX_DIMS:
        raise MLAValueError(f"{name} must have 1..{_ffi.MAX_DIMS} dimensions, "
                            f"got shape {list(arr.shape)}")
    if contiguous:
        if not arr.is_contiguous():
            raise MLAValueError(f"{name} must be contiguous (row-major); got shape "
                                f"{list(arr.shape)} with strides {list(arr.strides)} elements "
                                "(call .contiguous() / np.ascontiguousarray)")
    elif arr.shape[-1] != 1 and arr.strides[-1] != 1:
        raise MLAValueError(f"{name}: the last dimension must be contiguous (stride 1), "
                            f"got strides {list(arr.strides)}")
    if output and isinstance(x, np.ndarray) and not x.flags.writeable:
        raise MLAValueError(f"{name} is an output and must be writable")
    return arr


def _describe_dtype(x):
    return str(x.dtype)


def _wrap_torch(x, name, declared):
    code = _TORCH_DTYPE_NAMES.get(str(x.dtype))
    if code is None:
        raise MLAValueError(f"{name} has unsupported dtype {x.dtype}; allowed torch dtypes: "
                            "bfloat16, float16, float8_e4m3fn, float32, int32, int64")
    if declared is not None and declared != code:
        raise MLAValueError(f"{name} has dtype {x.dtype} but {DTYPE_NAMES[declared]} was "
                            "declared for it")
    dev = x.device
    if dev.type == "cpu":
        dev_type, dev_index = DEVICE_CPU, 0
    elif dev.type == "cuda":
        dev_type = DEVICE_CUDA
        dev_index = dev.index if dev.index is not None else torch_module().cuda.current_device()
    else:
        raise MLAValueError(f"{name} is on device {dev}; only cpu and cuda tensors are supported")
    return Arr(x, name, "torch", code, tuple(x.shape), tuple(x.stride()), dev_type, dev_index,
               x.data_ptr())


def _wrap_numpy(x, name, dtypes, declared, convert_f32_to, output):
    kind = _NP_NAMES.get(x.dtype)
    if kind is None:
        if not x.dtype.isnative:
            raise MLAValueError(f"{name} has non-native byte order ({x.dtype.str}); convert "
                                "with .astype(dtype.newbyteorder('='))")
        kind = x.dtype.name
    np_repr = None
    from_f32 = False
    if kind == "float32":
        code = DTYPE_F32
        if DTYPE_F32 not in dtypes and convert_f32_to is not None and not output:
            target = declared if declared is not None else convert_f32_to
            if target not in dtypes:
                raise MLAValueError(f"{name}: cannot convert float32 to "
                                    f"{DTYPE_NAMES[target]}; allowed: {_fmt_dtypes(dtypes)}")
            from . import convert  # late import: conversion to fp8 uses the library
            if target == DTYPE_BF16:
                x = convert.float32_to_bf16(x)
            elif target == DTYPE_FP8_E4M3:
                x = convert.float32_to_fp8(x)
            else:
                raise MLAValueError(f"{name}: no float32 conversion to {DTYPE_NAMES[target]}")
            code, from_f32 = target, True
        elif declared is not None and declared != DTYPE_F32 and not output:
            raise MLAValueError(f"{name} is float32 but {DTYPE_NAMES[declared]} was declared")
    elif kind == "float16":
        code = DTYPE_FP16
    elif kind == "int32":
        code = DTYPE_I32
    elif kind == "int64":
        code = DTYPE_I64
    elif kind == "bfloat16":  # ml_dtypes
        code, np_repr = DTYPE_BF16, "ml"
    elif kind == "float8_e4m3fn":  # ml_dtypes
        code, np_repr = DTYPE_FP8_E4M3, "ml"
    elif kind == "uint16":
        if declared != DTYPE_BF16:
            raise MLAValueError(
                f"{name} is a numpy uint16 array: pass dtype='bf16' (kv_dtype='bf16' for the "
                "cache) to say it holds bfloat16 bits, or pass float32 to have it converted")
        code = DTYPE_BF16
    elif kind == "uint8":
        if declared != DTYPE_FP8_E4M3:
            raise MLAValueError(
                f"{name} is a numpy uint8 array: pass dtype='fp8_e4m3' (kv_dtype='fp8_e4m3' for "
                "the cache) to say it holds float8 e4m3 bits")
        code = DTYPE_FP8_E4M3
    else:
        hints = []
        if DTYPE_BF16 in dtypes:
            hints.append("bf16 as uint16 + dtype='bf16'")
        if DTYPE_FP8_E4M3 in dtypes:
            hints.append("fp8 as uint8 + dtype='fp8_e4m3'")
        if convert_f32_to is not None:
            hints.append("float32 to be converted")
        raise MLAValueError(f"{name} has unsupported numpy dtype {x.dtype}; allowed: "
                            f"{_fmt_dtypes(dtypes)}" + (f" ({', '.join(hints)})" if hints else ""))
    if declared is not None and declared != code and not from_f32 and not output:
        raise MLAValueError(f"{name} holds {DTYPE_NAMES[code]} but {DTYPE_NAMES[declared]} was "
                            "declared for it")
    if not x.flags.aligned:
        raise MLAValueError(f"{name} is not aligned to its element size")
    itemsize = x.dtype.itemsize
    strides = []
    for s in x.strides:
        if s % itemsize:
            raise MLAValueError(f"{name} has byte strides {x.strides} that are not a multiple "
                                f"of its element size {itemsize}")
        strides.append(s // itemsize)
    if x.size == 0:  # numpy may report any strides for an empty array
        strides = contiguous_strides(x.shape)
    return Arr(x, name, "numpy", code, x.shape, strides, DEVICE_CPU, 0, x.ctypes.data,
               np_repr, from_f32)


def expect_shape(arr, spec):
    """spec: list of (label, size or None). Raises ValueError naming every dimension."""
    ok = len(arr.shape) == len(spec) and all(
        want is None or have == want for have, (_, want) in zip(arr.shape, spec))
    if not ok:
        pretty = ", ".join(f"{label}={want}" if want is not None else label
                           for label, want in spec)
        raise MLAValueError(f"{arr.name} has shape {list(arr.shape)}, expected [{pretty}]")


def same_device(arrs):
    arrs = [a for a in arrs if a is not None]
    first = arrs[0]
    for a in arrs[1:]:
        if (a.dev_type, a.dev_index) != (first.dev_type, first.dev_index):
            raise MLAValueError(f"{a.name} is on {a.device_str} but {first.name} is on "
                                f"{first.device_str}; all tensors must be on one device")
    return first.dev_type, first.dev_index


def new_array(like, shape, dtype):
    """An uninitialised output on the device and in the flavour (torch / numpy) of `like`."""
    if like.kind == "torch":
        torch = torch_module()
        tdtype = {DTYPE_BF16: torch.bfloat16, DTYPE_FP16: torch.float16,
                  DTYPE_FP8_E4M3: torch.float8_e4m3fn, DTYPE_F32: torch.float32,
                  DTYPE_I32: torch.int32, DTYPE_I64: torch.int64}[dtype]
        return torch.empty(tuple(shape), dtype=tdtype, device=like.obj.device)
    if dtype in (DTYPE_BF16, DTYPE_FP8_E4M3) and like.np_repr == "ml":
        np_dtype = np.dtype("bfloat16" if dtype == DTYPE_BF16 else "float8_e4m3fn")
    else:
        np_dtype = {DTYPE_BF16: np.uint16, DTYPE_FP16: np.float16, DTYPE_FP8_E4M3: np.uint8,
                    DTYPE_F32: np.float32, DTYPE_I32: np.int32, DTYPE_I64: np.int64}[dtype]
    return np.empty(tuple(shape), dtype=np_dtype)


def stream_of(dev_type, dev_index, stream):
    """The cudaStream_t to pass: an explicit `stream` (int handle or torch.cuda.Stream), else
    torch's current stream of the device; NULL on the CPU."""
    if stream is not None:
        handle = getattr(stream, "cuda_stream", stream)
        return int(handle) if handle is not None else None
    if dev_type != DEVICE_CUDA:
        return None
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return torch.cuda.current_stream(dev_index).cuda_stream or None


def is_capturing(dev_type):
    if dev_type != DEVICE_CUDA:
        return False
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_current_stream_capturing())


def raw_buffer(x, name):
    """A byte buffer of any dtype (the decode workspace): (ptr, nbytes, dev_type, dev_index)."""
    if is_torch(x):
        if not x.is_contiguous():
            raise MLAValueError(f"{name} must be contiguous")
        dev = x.device
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch_module().cuda.current_device()
            return x.data_ptr(), x.numel() * x.element_size(), DEVICE_CUDA, index
        if dev.type != "cpu":
            raise MLAValueError(f"{name} is on device {dev}; only cpu and cuda are supported")
        return x.data_ptr(), x.numel() * x.element_size(), DEVICE_CPU, 0
    if isinstance(x, np.ndarray):
        if not x.flags.c_contiguous or not x.flags.writeable:
            raise MLAValueError(f"{name} must be a contiguous, writable array")
        return x.ctypes.data, x.nbytes, DEVICE_CPU, 0
    raise MLAValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def read_int32_host(arr):
    """Values of a CPU int32 array (numpy or torch) without copying through torch."""
    import ctypes
    n = arr.numel
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    buf = (ctypes.c_int32 * n).from_address(arr.ptr)
    return np.ctypeslib.as_array(buf).copy()

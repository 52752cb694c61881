"""ctypes mirror of include/mla.h: structs, function prototypes, library loading, errors.

Every struct here mirrors its C counterpart field by field, in order, with the same C types,
so ctypes computes the same offsets and padding as the C compiler. tests/test_layout.py
compiles a C program against mla.h and compares sizeof/offsetof of every field.
"""

import ctypes
import logging
import os
import pathlib
import threading
from ctypes import (POINTER, Structure, c_char, c_char_p, c_float, c_int, c_int64, c_size_t,
                    c_uint8, c_uint16, c_uint32, c_void_p)

# ---- enums (C enums are int-sized here: all values fit in int) ----------------------------
MLA_OK = 0
STATUS_NAMES = {
    0: "MLA_OK",
    1: "MLA_ERR_INVALID_ARGUMENT",
    2: "MLA_ERR_NULL_POINTER",
    3: "MLA_ERR_SHAPE_MISMATCH",
    4: "MLA_ERR_UNSUPPORTED",
    5: "MLA_ERR_OUT_OF_RANGE",
    6: "MLA_ERR_WORKSPACE_TOO_SMALL",
    7: "MLA_ERR_NONFINITE",
    8: "MLA_ERR_BACKEND_UNAVAILABLE",
    9: "MLA_ERR_NOT_FOUND",
    10: "MLA_ERR_OUT_OF_MEMORY",
    11: "MLA_ERR_DEVICE",
    12: "MLA_ERR_INTERNAL",
}
# Statuses that mean "the caller passed something wrong" (-> ValueError); the rest are
# failures of the library, the device or the machine (-> RuntimeError).
BAD_ARGUMENT_STATUSES = frozenset({1, 2, 3, 5, 6, 7, 9})

DTYPE_BF16, DTYPE_FP16, DTYPE_FP8_E4M3, DTYPE_F32, DTYPE_I32, DTYPE_I64 = range(6)
DTYPE_NAMES = {DTYPE_BF16: "bf16", DTYPE_FP16: "fp16", DTYPE_FP8_E4M3: "fp8_e4m3",
               DTYPE_F32: "f32", DTYPE_I32: "i32", DTYPE_I64: "i64"}
DTYPE_SIZES = {DTYPE_BF16: 2, DTYPE_FP16: 2, DTYPE_FP8_E4M3: 1, DTYPE_F32: 4, DTYPE_I32: 4,
               DTYPE_I64: 8}

DEVICE_CPU, DEVICE_CUDA = 0, 1
MAX_DIMS = 4


# ---- structs ------------------------------------------------------------------------------
class MlaDevice(Structure):
    _fields_ = [("type", c_int), ("index", c_int)]


class MlaTensor(Structure):
    _fields_ = [
        ("data", c_void_p),
        ("dtype", c_int),
        ("ndim", c_int),
        ("shape", c_int64 * MAX_DIMS),
        ("strides", c_int64 * MAX_DIMS),
        ("device", MlaDevice),
    ]


class MlaScales(Structure):
    _fields_ = [
        ("softmax_scale", c_float),
        ("q_scale", c_float),
        ("k_scale", c_float),
        ("v_scale", c_float),
        ("o_scale", c_float),
    ]


class MlaConfig(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("num_heads", c_int),
        ("kv_lora_rank", c_int),
        ("qk_rope_head_dim", c_int),
        ("qk_nope_head_dim", c_int),
        ("v_head_dim", c_int),
        ("page_size", c_int),
        ("kv_cache_dtype", c_int),
        ("scales", MlaScales),
        ("has_k_scale", c_int),
        ("max_q_len", c_int),
        ("max_batch", c_int),
        ("device", MlaDevice),
        ("skip_index_check", c_int),
        ("decode_fp8_math", c_int),
    ]


class MlaCapabilities(Structure):
    _fields_ = [
        ("min_heads", c_int),
        ("max_heads", c_int),
        ("page_sizes", c_int * 4),
        ("num_page_sizes", c_int),
        ("kv_cache_dtypes", c_uint32),
        ("query_dtypes", c_uint32),
        ("prefill_dtypes", c_uint32),
        ("kv_lora_rank", c_int),
        ("qk_rope_head_dim", c_int),
        ("qk_nope_head_dim", c_int),
        ("v_head_dim", c_int),
        ("max_head_dim", c_int),
        ("max_q_len", c_int),
        ("min_sm_arch", c_int),
        ("device_type", c_int),
    ]


class MlaBackendInfo(Structure):
    _fields_ = [
        ("name", c_char_p),
        ("description", c_char_p),
        ("available", c_int),
        ("reason", c_char * 256),
        ("caps", MlaCapabilities),
    ]


class MlaDecodeArgs(Structure):
    _fields_ = [
        ("q", MlaTensor),
        ("kv_cache", MlaTensor),
        ("block_table", MlaTensor),
        ("seq_lens", MlaTensor),
        ("out", MlaTensor),
        ("lse", MlaTensor),
        ("workspace", c_void_p),
        ("workspace_bytes", c_size_t),
        ("max_seq_len", c_int),
        ("no_causal_mask", c_int),
        ("scales", POINTER(MlaScales)),
        ("stream", c_void_p),
        ("plan", c_void_p),  # mla_decode_plan * (ops.DecodePlan); None plans in the call
    ]


class MlaPrefillArgs(Structure):
    _fields_ = [
        ("q", MlaTensor),
        ("k", MlaTensor),
        ("v", MlaTensor),
        ("cu_seqlens_q", MlaTensor),
        ("cu_seqlens_kv", MlaTensor),
        ("max_seqlen_q", c_int),
        ("max_seqlen_kv", c_int),
        ("causal", c_int),
        ("out", MlaTensor),
        ("lse", MlaTensor),
        ("scales", POINTER(MlaScales)),
        ("stream", c_void_p),
    ]


class MlaMergeStateArgs(Structure):
    _fields_ = [
        ("o_a", MlaTensor),
        ("lse_a", MlaTensor),
        ("o_b", MlaTensor),
        ("lse_b", MlaTensor),
        ("o", MlaTensor),
        ("lse", MlaTensor),
        ("stream", c_void_p),
    ]


class MlaKvCacheWriteArgs(Structure):
    _fields_ = [
        ("c_kv", MlaTensor),
        ("k_pe", MlaTensor),
        ("slots", MlaTensor),
        ("kv_cache", MlaTensor),
        ("scales", POINTER(MlaScales)),
        ("stream", c_void_p),
    ]


class MlaQuantizeFp8Args(Structure):
    _fields_ = [
        ("input", MlaTensor),
        ("output", MlaTensor),
        ("scale", c_float),
        ("stream", c_void_p),
    ]


class MlaKvPackArgs(Structure):
    _fields_ = [
        ("k_nope", MlaTensor),
        ("k_pe", MlaTensor),
        ("v", MlaTensor),
        ("k_out", MlaTensor),
        ("v_out", MlaTensor),
        ("k_scale", c_float),
        ("v_scale", c_float),
        ("stream", c_void_p),
    ]


# C typedef name of each mirrored struct (used by the layout self-check).
C_STRUCT_NAMES = {
    MlaDevice: "mla_device",
    MlaTensor: "mla_tensor",
    MlaScales: "mla_scales",
    MlaConfig: "mla_config",
    MlaCapabilities: "mla_capabilities",
    MlaBackendInfo: "mla_backend_info",
    MlaDecodeArgs: "mla_decode_args",
    MlaPrefillArgs: "mla_prefill_args",
    MlaMergeStateArgs: "mla_merge_state_args",
    MlaKvCacheWriteArgs: "mla_kv_cache_write_args",
    MlaQuantizeFp8Args: "mla_quantize_fp8_args",
    MlaKvPackArgs: "mla_kv_pack_args",
}

LOG_FN = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)

# name: (restype, argtypes)
_PROTOTYPES = {
    "mla_version_string": (c_char_p, []),
    "mla_status_string": (c_char_p, [c_int]),
    "mla_last_error": (c_char_p, []),
    "mla_set_log_callback": (None, [LOG_FN, c_void_p]),
    "mla_dtype_size": (c_size_t, [c_int]),
    "mla_dtype_name": (c_char_p, [c_int]),
    "mla_tensor_numel": (c_int64, [POINTER(MlaTensor)]),
    "mla_tensor_is_contiguous": (c_int, [POINTER(MlaTensor)]),
    "mla_float_to_fp8_e4m3": (c_uint8, [c_float]),
    "mla_fp8_e4m3_to_float": (c_float, [c_uint8]),
    "mla_float_to_bf16": (c_uint16, [c_float]),
    "mla_bf16_to_float": (c_float, [c_uint16]),
    "mla_float_to_fp16": (c_uint16, [c_float]),
    "mla_fp16_to_float": (c_float, [c_uint16]),
    "mla_config_init": (None, [POINTER(MlaConfig)]),
    "mla_backend_count": (c_int, []),
    "mla_backend_get_info": (c_int, [c_int, POINTER(MlaBackendInfo)]),
    "mla_backend_find": (c_int, [c_char_p, POINTER(MlaBackendInfo)]),
    "mla_config_check": (c_int, [c_char_p, POINTER(MlaConfig)]),
    "mla_backend_create": (c_int, [c_char_p, POINTER(MlaConfig), POINTER(c_void_p)]),
    "mla_backend_destroy": (None, [c_void_p]),
    "mla_backend_name": (c_char_p, [c_void_p]),
    "mla_backend_config": (POINTER(MlaConfig), [c_void_p]),
    "mla_backend_device_errors": (c_int, [c_void_p, POINTER(c_uint32)]),
    "mla_decode": (c_int, [c_void_p, POINTER(MlaDecodeArgs)]),
    "mla_decode_workspace_size": (c_int, [c_void_p, c_int, c_int, POINTER(c_size_t)]),
    "mla_decode_plan_create": (c_int, [c_void_p, c_int, c_int, c_int, POINTER(c_void_p)]),
    "mla_decode_plan_build": (c_int, [c_void_p, POINTER(MlaTensor), c_void_p]),
    "mla_decode_plan_destroy": (None, [c_void_p]),
    "mla_prefill": (c_int, [c_void_p, POINTER(MlaPrefillArgs)]),
    "mla_merge_state": (c_int, [c_void_p, POINTER(MlaMergeStateArgs)]),
    "mla_kv_cache_write": (c_int, [c_void_p, POINTER(MlaKvCacheWriteArgs)]),
    "mla_quantize_fp8": (c_int, [c_void_p, POINTER(MlaQuantizeFp8Args)]),
    "mla_kv_pack": (c_int, [c_void_p, POINTER(MlaKvPackArgs)]),
}


# ---- errors -------------------------------------------------------------------------------
class MLAError(Exception):
    """A libmla call failed. `status` is the mla_status code, `status_name` its enum name,
    `detail` the library's mla_last_error() message."""

    def __init__(self, message, status=None, detail=""):
        super().__init__(message)
        self.status = status
        self.status_name = STATUS_NAMES.get(status, "") if status is not None else ""
        self.detail = detail


class MLAValueError(MLAError, ValueError):
    """A bad argument (rejected by the binding or by the library)."""


class MLARuntimeError(MLAError, RuntimeError):
    """A failure of the library, the device or the machine, or an unavailable backend."""


# ---- library loading ----------------------------------------------------------------------
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
_lib = None
_lib_path = None
_load_lock = threading.Lock()
_log_callback = None  # keeps the ctypes callback alive for the life of the process
_logger = logging.getLogger("libmla")


def library_candidates():
    """Where the shared library is looked for, in order: $LIBMLA_PATH, next to the package
    (installed wheel), ../build relative to the package source (repo checkout)."""
    out = []
    env = os.environ.get("LIBMLA_PATH")
    if env:
        out.append(pathlib.Path(env))
    out.append(_PACKAGE_DIR / "libmla.so")
    out.append(_PACKAGE_DIR.parent.parent / "build" / "libmla.so")
    return out


def _forward_log(level, message, _user):
    text = message.decode("utf-8", "replace") if message else ""
    _logger.log(logging.WARNING if level >= 1 else logging.INFO, "%s", text)


def lib():
    """The loaded library (loaded on first use)."""
    global _lib, _lib_path, _log_callback
    if _lib is not None:
        return _lib
    with _load_lock:
        if _lib is not None:
            return _lib
        candidates = library_candidates()
        if os.environ.get("LIBMLA_PATH") and not candidates[0].is_file():
            raise MLARuntimeError(
                f"LIBMLA_PATH={os.environ['LIBMLA_PATH']!r} does not name an existing file")
        path = next((p.resolve() for p in candidates if p.is_file()), None)
        if path is None:
            raise MLARuntimeError(
                "libmla.so not found; looked at: " + ", ".join(str(p) for p in candidates)
                + ". Run `make lib` in the repository root or set LIBMLA_PATH.")
        try:
            handle = ctypes.CDLL(str(path))
        except OSError as exc:
            raise MLARuntimeError(f"cannot load {path}: {exc}") from exc
        for name, (restype, argtypes) in _PROTOTYPES.items():
            try:
                fn = getattr(handle, name)
            except AttributeError as exc:
                raise MLARuntimeError(f"{path} lacks symbol {name}: built from an older "
                                      "mla.h? Rebuild with `make lib`.") from exc
            fn.restype = restype
            fn.argtypes = argtypes
        # Notices (page-size adjustment, ignored k_scale) go to Python logging ("libmla").
        _log_callback = LOG_FN(_forward_log)
        handle.mla_set_log_callback(_log_callback, None)
        _lib, _lib_path = handle, path
        return _lib


def library_path():
    """Path of the loaded shared library (loads it if needed)."""
    lib()
    return str(_lib_path)


def last_error():
    msg = lib().mla_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def check(status, what):
    """Raise MLAValueError / MLARuntimeError for a failing status, with the library's message."""
    if status == MLA_OK:
        return
    detail = last_error()
    name_ptr = lib().mla_status_string(status)
    status_text = name_ptr.decode() if name_ptr else STATUS_NAMES.get(status, str(status))
    message = f"{what} failed: {status_text} ({STATUS_NAMES.get(status, status)})"
    if detail:
        message += f": {detail}"
    cls = MLAValueError if status in BAD_ARGUMENT_STATUSES else MLARuntimeError
    raise cls(message, status=status, detail=detail)

"""libmla: paged Multi-head Latent Attention (MLA) through the libmla C library.

Calls mirror tokenspeed_mla (names, argument order), so an engine swaps one import:

    import libmla as tokenspeed_mla          # or: from libmla import mla_decode, ...

Tensors: torch (CPU or CUDA; CUDA runs on torch's current stream) or numpy (CPU backend).
Backend: "hopper" for CUDA tensors, "cpu" otherwise; override with backend="..." or the
LIBMLA_BACKEND environment variable. The shared library is found via $LIBMLA_PATH, next to
this package, or ../build/libmla.so relative to the package source.
"""

__version__ = "0.1.0"

from ._ffi import MLAError, MLARuntimeError, MLAValueError, library_path
from .convert import bf16_to_float32, float32_to_bf16, float32_to_fp8, fp8_to_float32
from .ops import (DecodePlan, backend_info, backends, clear_backends, decode_workspace_size,
                  device_errors, get_num_sm, kv_cache_write, kv_pack, merge_state, mla_decode,
                  mla_prefill, quantize_fp8, tokenspeed_mla_decode, tokenspeed_mla_prefill,
                  version)

__all__ = [
    "MLAError", "MLARuntimeError", "MLAValueError", "library_path",
    "bf16_to_float32", "float32_to_bf16", "float32_to_fp8", "fp8_to_float32",
    "DecodePlan", "backend_info", "backends", "clear_backends", "decode_workspace_size",
    "device_errors", "get_num_sm", "kv_cache_write", "kv_pack", "merge_state", "mla_decode",
    "mla_prefill", "quantize_fp8", "tokenspeed_mla_decode", "tokenspeed_mla_prefill", "version",
]

"""Backends created lazily, one per (backend name, device, heads, dims, page_size, kv dtype,
max_q_len, fp8_math), and kept for the life of the process (creation allocates state and warms
kernels, so it must not happen per call, and never inside a CUDA graph capture)."""

import ctypes
import os
import threading
import weakref

from . import _ffi
from ._arrays import is_capturing
from ._ffi import DEVICE_CPU, DEVICE_CUDA, DTYPE_NAMES, MLARuntimeError, MLAValueError

_cache = {}
_lock = threading.Lock()
_plans = weakref.WeakSet()  # live DecodePlans: released before their backend is destroyed


def choose_backend_name(explicit, dev_type):
    """backend= argument, else $LIBMLA_BACKEND, else "hopper" for CUDA data and "cpu" for CPU."""
    if explicit:
        return str(explicit)
    env = os.environ.get("LIBMLA_BACKEND")
    if env:
        return env
    return "hopper" if dev_type == DEVICE_CUDA else "cpu"


def _skip_index_check():
    return os.environ.get("LIBMLA_SKIP_INDEX_CHECK", "0") not in ("", "0")


def get_backend(name, dev_type, dev_index, *, num_heads=None, kv_lora_rank=None,
                qk_rope_head_dim=None, qk_nope_head_dim=None, v_head_dim=None, page_size=None,
                kv_dtype=None, max_q_len=None, fp8_math=False):
    """Handle (int) of the cached backend for this configuration, creating it on first use.
    Fields left None keep mla_config_init's defaults (DeepSeek-V3); fp8_math sets
    mla_config.decode_fp8_math."""
    skip = _skip_index_check()
    fp8_math = bool(fp8_math)
    key = (name, dev_type, dev_index, num_heads, kv_lora_rank, qk_rope_head_dim,
           qk_nope_head_dim, v_head_dim, page_size, kv_dtype, max_q_len, skip, fp8_math)
    handle = _cache.get(key)
    if handle is not None:
        return handle
    if is_capturing(dev_type):
        raise MLARuntimeError(
            f"backend '{name}' for this configuration does not exist yet and cannot be created "
            "while a CUDA graph is being captured (creation allocates and warms up kernels): "
            "run the same call once before capture")
    with _lock:
        handle = _cache.get(key)
        if handle is not None:
            return handle
        lib = _ffi.lib()
        cfg = _ffi.MlaConfig()
        lib.mla_config_init(ctypes.byref(cfg))
        cfg.struct_size = ctypes.sizeof(_ffi.MlaConfig)
        for field, value in (("num_heads", num_heads), ("kv_lora_rank", kv_lora_rank),
                             ("qk_rope_head_dim", qk_rope_head_dim),
                             ("qk_nope_head_dim", qk_nope_head_dim), ("v_head_dim", v_head_dim),
                             ("page_size", page_size), ("kv_cache_dtype", kv_dtype),
                             ("max_q_len", max_q_len)):
            if value is not None:
                setattr(cfg, field, int(value))
        cfg.device.type = dev_type
        cfg.device.index = dev_index if dev_type == DEVICE_CUDA else 0
        cfg.skip_index_check = 1 if skip else 0
        cfg.decode_fp8_math = 1 if fp8_math else 0
        out = ctypes.c_void_p()
        what = (f"creating backend '{name}' (heads={cfg.num_heads}, "
                f"kv_lora_rank={cfg.kv_lora_rank}, qk_rope_head_dim={cfg.qk_rope_head_dim}, "
                f"qk_nope_head_dim={cfg.qk_nope_head_dim}, v_head_dim={cfg.v_head_dim}, "
                f"page_size={cfg.page_size}, kv_dtype={DTYPE_NAMES.get(cfg.kv_cache_dtype)}, "
                f"max_q_len={cfg.max_q_len}, fp8_math={cfg.decode_fp8_math}, device="
                f"{'cpu' if dev_type == DEVICE_CPU else f'cuda:{dev_index}'})")
        _ffi.check(lib.mla_backend_create(name.encode(), ctypes.byref(cfg), ctypes.byref(out)),
                   what)
        if not out.value:
            raise MLARuntimeError(f"{what}: library returned MLA_OK but no backend")
        adjusted = lib.mla_backend_config(out.value).contents
        if page_size is not None and adjusted.page_size != page_size:
            lib.mla_backend_destroy(out.value)
            allowed = backend_page_sizes(name)
            raise MLAValueError(
                f"page_size {page_size} (from the kv_cache shape) is not supported by backend "
                f"'{name}' (allowed: {allowed}); allocate the cache with one of those page sizes")
        _cache[key] = out.value
        return out.value


def backend_page_sizes(name):
    info = _ffi.MlaBackendInfo()
    if _ffi.lib().mla_backend_find(name.encode(), ctypes.byref(info)) != _ffi.MLA_OK:
        return []
    return [info.caps.page_sizes[i] for i in range(min(info.caps.num_page_sizes, 4))]


def register_plan(plan):
    _plans.add(plan)


def clear():
    """Destroy every cached backend (tensors from earlier calls stay valid: they are yours).
    Decode plans made on them are released first and refuse further use."""
    with _lock:
        lib = _ffi.lib()
        for plan in list(_plans):
            plan.close()
        for handle in _cache.values():
            lib.mla_backend_destroy(handle)
        _cache.clear()


def cached_handles():
    return list(_cache.items())

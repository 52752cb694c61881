"""The ctypes structs must match the C ABI of include/mla.h exactly: a C program compiled
against the header prints sizeof / alignment of every struct and offsetof / sizeof of every
field, and each must equal what ctypes computes. The program is generated from the ctypes
field lists, so a field the header lacks fails to compile, and a field ctypes lacks shifts
the following offsets or the total size."""

import ctypes
import subprocess

from libmla import _ffi

from conftest import compile_c


def _layout_program():
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "mla.h"', "int main(void) {"]
    for cls, cname in _ffi.C_STRUCT_NAMES.items():
        lines.append(f'    printf("{cname} size %zu align %zu\\n", sizeof({cname}), '
                     f"_Alignof({cname}));")
        for field, _ in cls._fields_:
            lines.append(f'    printf("{cname}.{field} %zu %zu\\n", offsetof({cname}, {field}), '
                         f"sizeof((({cname} *)0)->{field}));")
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


def test_struct_layouts_match_c(tmp_path):
    src = tmp_path / "layout.c"
    src.write_text(_layout_program())
    exe = compile_c(src, tmp_path / "layout", link_lib=False)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    c_values = {}
    for line in out.splitlines():
        key, *nums = line.split()
        c_values[key] = nums
    mismatches = []
    for cls, cname in _ffi.C_STRUCT_NAMES.items():
        want = ["size", str(ctypes.sizeof(cls)), "align", str(ctypes.alignment(cls))]
        if c_values[cname] != want:
            mismatches.append(f"{cname}: C {c_values[cname]} vs ctypes {want}")
        for field, ftype in cls._fields_:
            desc = getattr(cls, field)
            want = [str(desc.offset), str(ctypes.sizeof(ftype))]
            got = c_values[f"{cname}.{field}"]
            if got != want:
                mismatches.append(f"{cname}.{field}: C offset/size {got} vs ctypes {want}")
    assert not mismatches, "\n".join(mismatches)


def test_config_struct_size_set():
    # mla_config_init writes struct_size; the binding's value must be what C wrote.
    cfg = _ffi.MlaConfig()
    _ffi.lib().mla_config_init(ctypes.byref(cfg))
    assert cfg.struct_size == ctypes.sizeof(_ffi.MlaConfig)
    assert cfg.num_heads == 128 and cfg.kv_lora_rank == 512 and cfg.qk_rope_head_dim == 64

"""merge_state, kv_cache_write, quantize_fp8, kv_pack, the numpy dtype helpers and the backend
registry, through the binding on the CPU backend."""

import numpy as np
import pytest

import libmla
import mla_oracle as ref
from conftest import run_driver
from libmla import _ffi


# ---- merge_state --------------------------------------------------------------------------
@pytest.mark.parametrize("dtypes", [("f32", "f32", "f32"), ("bf16", "bf16", "bf16"),
                                    ("bf16", "f32", "f32")])
def test_merge_state_matches_c_and_oracle(rng, c_driver, tmp_path, dtypes):
    tokens, heads, dim = 37, 16, 512
    vals, bits = {}, {}
    for side, dt in zip("ab", dtypes[:2]):
        x = rng.standard_normal((tokens, heads, dim))
        if dt == "bf16":
            bits[side] = ref.to_bf16_bits(x)
            vals[side] = ref.bf16_bits_to_f64(bits[side])
        else:
            bits[side] = x.astype(np.float32)
            vals[side] = bits[side].astype(np.float64)
    lse_a = rng.uniform(-3, 6, (tokens, heads)).astype(np.float32)
    lse_b = rng.uniform(-3, 6, (tokens, heads)).astype(np.float32)
    lse_a[0, :4] = -np.inf                    # side a empty
    lse_b[1, :4] = -np.inf                    # side b empty
    lse_a[2, :4] = lse_b[2, :4] = -np.inf     # both empty -> 0 and -inf
    out_dt = dtypes[2]
    out = (np.full((tokens, heads, dim), 0xFFFF, np.uint16) if out_dt == "bf16"
           else np.full((tokens, heads, dim), np.nan, np.float32))
    lse = np.full((tokens, heads), np.nan, np.float32)
    o, s = libmla.merge_state(bits["a"], lse_a, bits["b"], lse_b, out=out, lse_out=lse,
                              dtype="bf16" if "bf16" in dtypes else None)
    assert o is out and s is lse
    want, want_lse = ref.merge_ref(vals["a"], lse_a.astype(np.float64), vals["b"],
                                   lse_b.astype(np.float64))
    got = ref.bf16_bits_to_f64(out) if out_dt == "bf16" else out
    # bf16 output: 2^-8 relative rounding; f32: float32 arithmetic.
    rtol = 2.0**-8 if out_dt == "bf16" else 1e-5
    ref.assert_close(got, want, 1e-5, rtol, "merged out")
    ref.assert_close(lse, want_lse, 1e-5, 1e-6, "merged lse")
    assert np.all(got[2, :4] == 0)

    code = {"f32": 3, "bf16": 0}
    d = run_driver(c_driver, "merge", tmp_path / "c",
                   [tokens, heads, dim, code[dtypes[0]], code[dtypes[1]], code[out_dt]],
                   {"oa.bin": bits["a"], "ob.bin": bits["b"], "la.bin": lse_a, "lb.bin": lse_b})
    if d is None:  # no C compiler or header: the oracle check above stands alone
        return
    c_out = np.fromfile(d / "o.bin", dtype=out.dtype).reshape(out.shape)
    assert np.array_equal(out.view(np.uint8), c_out.view(np.uint8))
    assert np.array_equal(lse.view(np.uint32), np.fromfile(d / "lse.bin", np.uint32)
                          .reshape(lse.shape))


def test_merge_state_allocates_output_of_v_a_dtype(rng):
    a = rng.standard_normal((5, 3, 8)).astype(np.float32)
    b = rng.standard_normal((5, 3, 8)).astype(np.float32)
    la, lb = (rng.standard_normal((5, 3)).astype(np.float32) for _ in range(2))
    o, s = libmla.merge_state(a, la, b, lb)
    assert o.dtype == np.float32 and o.shape == a.shape and s.shape == la.shape
    want, want_lse = ref.merge_ref(a.astype(float), la.astype(float), b.astype(float),
                                   lb.astype(float))
    ref.assert_close(o, want, 1e-5, 1e-5, "out")
    ref.assert_close(s, want_lse, 1e-5, 1e-6, "lse")


# ---- quantize_fp8 and conversions ----------------------------------------------------------
def special_values(rng, n=4000):
    x = rng.standard_normal(n).astype(np.float32) * np.float32(50)
    specials = np.array([0.0, -0.0, 448.0, -448.0, 464.0, 500.0, 1e6, -1e6, np.inf, -np.inf,
                         np.nan, 2.0**-9, 2.0**-10, 3 * 2.0**-10, 1.0625, 1.1875, 240.0,
                         2.0**-7 * 1.0625], dtype=np.float32)
    return np.concatenate([x, specials, -specials])


@pytest.mark.parametrize("scale", [1.0, 0.5, 4.0])
def test_quantize_fp8_matches_oracle(rng, scale):
    x = special_values(rng)
    out = np.full(x.shape, 0x55, dtype=np.uint8)
    got = libmla.quantize_fp8(x, scale, out=out)
    assert got is out
    want = ref.fp8_encode(x.astype(np.float64) / scale)  # power-of-two scales: exact division
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.all((got[nan] & 0x7F) == 0x7F)
    # 2-D input keeps its shape; the scalar C conversion agrees element by element.
    m = libmla.quantize_fp8(x[:4000].reshape(40, 100))
    assert m.shape == (40, 100)
    lib = _ffi.lib()
    scalar = np.array([lib.mla_float_to_fp8_e4m3(float(v)) for v in x[:4000]], np.uint8)
    assert np.array_equal(m.reshape(-1), scalar)


def test_quantize_fp8_from_bf16_and_fp16(rng):
    x = rng.standard_normal(1000) * 30
    bits = ref.to_bf16_bits(x)
    got = libmla.quantize_fp8(bits, 2.0, dtype="bf16")
    assert np.array_equal(got, ref.fp8_encode(ref.bf16_bits_to_f64(bits) / 2.0))
    h = x.astype(np.float16)
    assert np.array_equal(libmla.quantize_fp8(h), ref.fp8_encode(h.astype(np.float64)))


def test_bf16_and_fp8_helpers(rng):
    x = special_values(rng)
    ties = (np.arange(1, 200, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    x = np.concatenate([x, ties, -ties])
    bits = libmla.float32_to_bf16(x)
    lib = _ffi.lib()
    scalar = np.array([lib.mla_float_to_bf16(float(v)) for v in x], dtype=np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(bits[~nan], scalar[~nan])
    assert np.all(np.isnan(libmla.bf16_to_float32(bits[nan])))
    assert np.array_equal(bits[~nan], ref.to_bf16_bits(x[~nan]))
    back = libmla.bf16_to_float32(bits)
    assert np.array_equal(back[~nan], ref.bf16_bits_to_f64(bits[~nan]).astype(np.float32))
    codes = np.arange(256, dtype=np.uint8)
    table = libmla.fp8_to_float32(codes)
    want = ref.fp8_decode(codes)
    assert np.array_equal(np.isnan(table), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(table[ok], want[ok].astype(np.float32))
    assert np.array_equal(libmla.float32_to_fp8(x[:4000]), ref.fp8_encode(x[:4000]))


# ---- kv_cache_write and a decode step -----------------------------------------------------
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8_e4m3"])
@pytest.mark.parametrize("in_dtype", ["f32", "bf16"])
@pytest.mark.parametrize("slot_dtype", [np.int32, np.int64])
def test_kv_cache_write(rng, kv_dtype, in_dtype, slot_dtype):
    rank, rope, page, pages, n = 512, 64, 32, 6, 40
    c_kv = rng.standard_normal((n, rank))
    k_pe = rng.standard_normal((n, rope))
    if in_dtype == "bf16":
        c_in, p_in = ref.to_bf16_bits(c_kv), ref.to_bf16_bits(k_pe)
        c_val, p_val = ref.bf16_bits_to_f64(c_in), ref.bf16_bits_to_f64(p_in)
    else:
        c_in, p_in = c_kv.astype(np.float32), k_pe.astype(np.float32)
        c_val, p_val = c_in.astype(np.float64), p_in.astype(np.float64)
    slots = rng.permutation(pages * page)[:n].astype(slot_dtype)
    slots[::7] = -1  # skipped rows
    poison = 0x7F if kv_dtype == "fp8_e4m3" else 0xFFFF
    cache = np.full((pages, page, rank + rope), poison,
                    dtype=np.uint8 if kv_dtype == "fp8_e4m3" else np.uint16)
    k_scale = 2.0 if kv_dtype == "fp8_e4m3" else 1.0
    got = libmla.kv_cache_write(c_in, p_in, slots, cache, k_scale, kv_dtype=kv_dtype,
                                dtype="bf16" if in_dtype == "bf16" else None)
    assert got is cache
    rows = np.concatenate([c_val, p_val], axis=1)
    want = (ref.fp8_encode(rows / k_scale) if kv_dtype == "fp8_e4m3" else ref.to_bf16_bits(rows))
    flat = cache.reshape(pages * page, -1)
    written = slots >= 0
    assert np.array_equal(flat[slots[written]], want[written])
    untouched = np.setdiff1d(np.arange(pages * page), slots[written])
    assert np.all(flat[untouched] == poison)


def test_decode_step_write_then_decode(rng):
    """The call sequence of one decode step: write the new token's c_kv/k_pe, then decode."""
    rank, rope, page, heads, batch = 512, 64, 64, 16, 2
    prior = np.array([70, 5], dtype=np.int32)                 # tokens already cached
    block_table = np.array([[3, 0], [1, 2]], dtype=np.int32)
    cache = ref.fp8_encode(rng.standard_normal((4, page, rank + rope)))
    new_ckv = rng.standard_normal((batch, rank)).astype(np.float32)
    new_kpe = rng.standard_normal((batch, rope)).astype(np.float32)
    pos = prior                                              # position of the new token
    slots = block_table[np.arange(batch), pos // page] * page + pos % page
    libmla.kv_cache_write(new_ckv, new_kpe, slots.astype(np.int32), cache,
                          kv_dtype="fp8_e4m3")
    seq_lens = prior + 1
    q = ref.to_bf16_bits(rng.standard_normal((batch, 1, heads, rank + rope)))
    out, lse = libmla.mla_decode(q, cache, None, rank, rope, block_table, seq_lens,
                                 int(seq_lens.max()), 0.1, return_lse=True, dtype="bf16",
                                 kv_dtype="fp8_e4m3")
    want, want_lse = ref.decode_ref(ref.bf16_bits_to_f64(q), ref.fp8_decode(cache), block_table,
                                    seq_lens, rank, 0.1)
    # the new row in the cache is the quantized new token
    new_rows = cache.reshape(-1, rank + rope)[slots]
    assert np.array_equal(new_rows, ref.fp8_encode(np.concatenate([new_ckv, new_kpe], 1)))
    ref.assert_close(ref.bf16_bits_to_f64(out), want, 2e-3, 2.0**-7, "out")
    ref.assert_close(lse, want_lse, 2e-3, 0.0, "lse")


# ---- kv_pack ------------------------------------------------------------------------------
@pytest.mark.parametrize("out_dtype", ["bf16", "fp8_e4m3"])
@pytest.mark.parametrize("pe_3d", [True, False])
def test_kv_pack(rng, out_dtype, pe_3d):
    n, heads, nope, rope, v_dim = 9, 4, 128, 64, 128
    # k_nope and v are strided views of one kv_b_proj-style buffer (last dim contiguous).
    kv_b = ref.to_bf16_bits(rng.standard_normal((n, heads, nope + v_dim)))
    k_nope, v = kv_b[:, :, :nope], kv_b[:, :, nope:]
    k_pe = ref.to_bf16_bits(rng.standard_normal((n, 1, rope) if pe_3d else (n, rope)))
    k_scale, v_scale = 0.5, 2.0
    k_out, v_out = libmla.kv_pack(k_nope, k_pe, v, k_scale, v_scale, out_dtype=out_dtype,
                                  dtype="bf16")
    pe = np.broadcast_to(k_pe.reshape(n, 1, rope), (n, heads, rope))
    k_full = np.concatenate([k_nope, pe], axis=2)
    if out_dtype == "bf16":
        assert k_out.dtype == np.uint16
        assert np.array_equal(k_out, k_full) and np.array_equal(v_out, v)
    else:
        assert k_out.dtype == np.uint8
        assert np.array_equal(k_out, ref.fp8_encode(ref.bf16_bits_to_f64(k_full) / k_scale))
        assert np.array_equal(v_out, ref.fp8_encode(ref.bf16_bits_to_f64(v) / v_scale))


# ---- registry -----------------------------------------------------------------------------
def test_backends_listing():
    listed = libmla.backends()
    names = [name for name, _, _ in listed]
    assert "cpu" in names and "hopper" in names
    for name, available, reason in listed:
        assert isinstance(available, bool)
        if not available:
            assert reason, f"{name} unavailable without a reason"
    assert dict((n, a) for n, a, _ in listed)["cpu"] is True
    info = libmla.backend_info("cpu")
    assert info["device_type"] == "cpu" and 32 in info["page_sizes"]
    assert libmla.get_num_sm("cpu") >= 1


def test_log_callback_is_python_logging(caplog):
    # A bf16 cache with has_k_scale triggers the once-per-process k_scale notice; the binding
    # does not set has_k_scale, so instead check the callback is installed and callable.
    assert _ffi._log_callback is not None
    _ffi._forward_log(1, b"test notice", None)
    assert "test notice" in caplog.text


def test_version_matches_header():
    assert libmla.version() == libmla.__version__

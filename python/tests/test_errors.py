"""Every bad argument raises ValueError (bad argument) or RuntimeError (library / backend
failure) with a message naming the argument, before any pointer reaches the library or with
the library's own mla_last_error() text; nothing crashes. Outputs stay untouched on error."""

import numpy as np
import pytest

import libmla
import mla_oracle as ref
from libmla import MLAError, MLARuntimeError, MLAValueError

RANK, ROPE, D, PAGE = 512, 64, 576, 32


@pytest.fixture
def dec(rng):
    """A valid small decode problem (numpy bf16 cache); tests break one thing at a time."""
    batch, q_len, heads = 2, 2, 4
    num_pages = 6
    return dict(
        query=ref.to_bf16_bits(rng.standard_normal((batch, q_len, heads, D))),
        kv_cache=ref.to_bf16_bits(rng.standard_normal((num_pages, PAGE, D))),
        workspace_buffer=None, kv_lora_rank=RANK, qk_rope_head_dim=ROPE,
        block_tables=np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int32),
        seq_lens=np.array([70, 33], dtype=np.int32), max_seq_len=96, softmax_scale=0.1,
        dtype="bf16", kv_dtype="bf16")


def call(case, **changes):
    args = dict(case)
    args.update(changes)
    return libmla.mla_decode(**args)


def test_valid_case_runs(dec):
    out = call(dec)
    assert out.shape == (2, 2, 4, RANK)


@pytest.mark.parametrize("field,value,pattern", [
    ("query", None, "query is required"),
    ("kv_cache", None, "kv_cache is required"),
    ("block_tables", None, "block_tables is required"),
    ("seq_lens", None, "seq_lens is required"),
    ("query", [[1.0]], "query must be a torch.Tensor or numpy.ndarray"),
])
def test_decode_missing_arguments(dec, field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(dec, **{field: value})


def test_decode_wrong_dtypes(dec):
    with pytest.raises(ValueError, match=r"query has unsupported numpy dtype float64"):
        call(dec, query=dec["query"].astype(np.float64))
    with pytest.raises(ValueError, match=r"query is a numpy uint16 array: pass dtype='bf16'"):
        call(dec, dtype=None)
    with pytest.raises(ValueError, match=r"kv_cache is a numpy uint16 array"):
        call(dec, kv_dtype=None)
    with pytest.raises(ValueError, match=r"kv_cache is a numpy uint16 array"):
        call(dec, kv_dtype="fp8_e4m3")  # uint16 bits cannot be fp8
    with pytest.raises(ValueError, match=r"block_tables has dtype int64 \(i64\); allowed: i32"):
        call(dec, block_tables=dec["block_tables"].astype(np.int64))
    with pytest.raises(ValueError, match=r"seq_lens has dtype float32 \(f32\); allowed: i32"):
        call(dec, seq_lens=dec["seq_lens"].astype(np.float32))
    with pytest.raises(ValueError, match=r"out has dtype float32"):
        call(dec, out=np.zeros((2, 2, 4, RANK), np.float32))
    with pytest.raises(ValueError,
                       match=r"lse_out has unsupported numpy dtype float64; allowed: f32$"):
        call(dec, lse_out=np.zeros((2, 2, 4), np.float64))
    with pytest.raises(ValueError, match=r"kv_dtype='fp9' is not a known dtype"):
        call(dec, kv_dtype="fp9")


def test_decode_wrong_shapes(dec):
    with pytest.raises(ValueError, match=r"query must have 4 dimensions"):
        call(dec, query=dec["query"][0])
    with pytest.raises(ValueError, match=r"query has last dimension 576 but kv_lora_rank \+ "
                                         r"qk_rope_head_dim = 256 \+ 64 = 320"):
        call(dec, kv_lora_rank=256)
    with pytest.raises(ValueError, match=r"kv_cache has shape \[6, 32, 512\]"):
        call(dec, kv_cache=dec["kv_cache"][:, :, :512].copy())
    with pytest.raises(ValueError, match=r"size 1 in dimension 1"):
        call(dec, kv_cache=dec["kv_cache"].reshape(3, 2, PAGE, D))
    with pytest.raises(ValueError, match=r"out has shape \[2, 2, 4, 256\], expected "
                                         r"\[batch=2, q_len=2, heads=4, kv_lora_rank=512\]"):
        call(dec, out=np.zeros((2, 2, 4, 256), np.uint16))
    with pytest.raises(ValueError, match=r"lse_out must have 3 dimensions, got shape \[2, 4\]"):
        call(dec, lse_out=np.zeros((2, 4), np.float32))


def test_decode_mismatched_batch(dec):
    with pytest.raises(ValueError, match=r"block_tables has shape \[1, 3\], expected "
                                         r"\[batch=2, max_pages_per_seq\]"):
        call(dec, block_tables=dec["block_tables"][:1].copy())
    with pytest.raises(ValueError, match=r"seq_lens has shape \[3\], expected \[batch=2\]"):
        call(dec, seq_lens=np.array([1, 2, 3], np.int32))


def test_decode_not_contiguous_or_readonly(dec):
    q = np.concatenate([dec["query"], dec["query"]], axis=3)[..., ::2]
    with pytest.raises(ValueError, match=r"query must be contiguous"):
        call(dec, query=q)
    out = np.zeros((2, 2, 4, RANK), np.uint16)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"out is an output and must be writable"):
        call(dec, out=out)


def test_decode_scalar_arguments(dec):
    with pytest.raises(ValueError, match=r"softmax_scale must be finite"):
        call(dec, softmax_scale=float("nan"))
    with pytest.raises(ValueError, match=r"max_seq_len must be >= 0"):
        call(dec, max_seq_len=-1)
    with pytest.raises(ValueError, match=r"max_seq_len must be a Python int"):
        call(dec, max_seq_len=3.5)
    with pytest.raises(ValueError, match=r"kv_lora_rank must be >= 1"):
        call(dec, kv_lora_rank=0)


def _poisoned_out():
    return np.full((2, 2, 4, RANK), 0x7FC1, np.uint16)


def test_decode_page_index_out_of_range_is_library_error(dec):
    bt = dec["block_tables"].copy()
    bt[1, 1] = 6  # num_pages is 6
    out = _poisoned_out()
    with pytest.raises(MLAValueError) as info:
        call(dec, block_tables=bt, out=out)
    err = info.value
    assert err.status_name == "MLA_ERR_OUT_OF_RANGE"
    assert err.detail and err.detail in str(err)  # the library's mla_last_error() text
    assert "6" in err.detail
    assert np.all(out == 0x7FC1), "output written despite the error"
    bt[1, 1] = -3
    with pytest.raises(MLAValueError, match="MLA_ERR_OUT_OF_RANGE"):
        call(dec, block_tables=bt)


def test_decode_seq_len_beyond_block_table_is_library_error(dec):
    with pytest.raises(MLAValueError) as info:
        call(dec, seq_lens=np.array([70, 3 * PAGE + 1], np.int32), max_seq_len=0)
    assert info.value.status_name == "MLA_ERR_OUT_OF_RANGE" and info.value.detail
    with pytest.raises(MLAValueError) as info:
        call(dec, seq_lens=np.array([-1, 3], np.int32))
    assert info.value.detail


def test_decode_max_seq_len_below_actual_is_library_error(dec):
    with pytest.raises(MLAValueError) as info:
        call(dec, max_seq_len=10)  # seq_lens[0] is 70
    assert info.value.detail


def test_decode_unsupported_config_errors(dec, rng):
    # page size 16 is not in the CPU backend's {32, 64}
    kv16 = ref.to_bf16_bits(rng.standard_normal((12, 16, D)))
    with pytest.raises(ValueError, match=r"page_size 16 .* not supported by backend 'cpu' "
                                         r"\(allowed: \[32, 64\]\)"):
        call(dec, kv_cache=kv16, block_tables=np.arange(12, dtype=np.int32).reshape(2, 6))
    # q_len 9 > max 8
    q9 = ref.to_bf16_bits(rng.standard_normal((2, 9, 4, D)))
    with pytest.raises(MLAError) as info:
        call(dec, query=q9)
    assert info.value.detail
    with pytest.raises(ValueError, match="MLA_ERR_NOT_FOUND"):
        call(dec, backend="nope")
    hopper = dict((n, (a, r)) for n, a, r in libmla.backends())["hopper"]
    if not hopper[0]:
        with pytest.raises(MLARuntimeError) as info:
            call(dec, backend="hopper")
        assert info.value.status_name == "MLA_ERR_BACKEND_UNAVAILABLE"


def test_prefill_bad_arguments(rng):
    heads = 2
    q = ref.to_bf16_bits(rng.standard_normal((10, heads, 192)))
    k = ref.to_bf16_bits(rng.standard_normal((12, heads, 192)))
    v = ref.to_bf16_bits(rng.standard_normal((12, heads, 128)))
    cu_kv = np.array([0, 5, 12], np.int32)
    cu_q = np.array([0, 4, 10], np.int32)
    sl = np.array([5, 7], np.int32)

    def pre(**kw):
        args = dict(query=q, key=k, value=v, seq_lens=sl, cum_seq_lens=cu_kv, max_seq_len=7,
                    batch_size=2, softmax_scale=0.1, cum_seq_lens_q=cu_q, max_seq_len_q=6,
                    dtype="bf16")
        args.update(kw)
        return libmla.mla_prefill(**args)

    pre()
    with pytest.raises(ValueError, match=r"key has shape \[12, 3, 192\]"):
        pre(key=ref.to_bf16_bits(rng.standard_normal((12, 3, 192))))
    with pytest.raises(ValueError, match=r"value has shape \[11, 2, 128\], expected "
                                         r"\[total_kv=12"):
        pre(value=v[:11].copy())
    with pytest.raises(ValueError, match=r"cum_seq_lens has shape \[3\], expected "
                                         r"\[batch_size\+1=4\]"):
        pre(batch_size=3)
    with pytest.raises(ValueError, match=r"seq_lens .* disagrees"):
        pre(seq_lens=np.array([5, 6], np.int32))
    with pytest.raises(ValueError, match=r"cum_seq_lens is required"):
        pre(cum_seq_lens=None)
    with pytest.raises(ValueError, match=r"leaves no room for qk_rope_head_dim=192"):
        pre(qk_rope_head_dim=192)
    # Index contents are the library's to check: cu_seqlens beyond the tensors.
    with pytest.raises(MLAValueError) as info:
        pre(cum_seq_lens_q=np.array([0, 4, 11], np.int32))
    assert info.value.detail
    with pytest.raises(MLAValueError) as info:
        pre(cum_seq_lens_q=np.array([0, 6, 4], np.int32))  # decreasing
    assert info.value.detail


def test_prefill_key_dtype_mismatch(rng):
    q = ref.to_bf16_bits(rng.standard_normal((4, 1, 192)))
    k8 = ref.fp8_encode(rng.standard_normal((4, 1, 192)))
    v = ref.to_bf16_bits(rng.standard_normal((4, 1, 128)))
    cu = np.array([0, 4], np.int32)
    # one dtype= applies to q/k/v: uint8 key under dtype='bf16' is rejected by name
    with pytest.raises(ValueError, match=r"key is a numpy uint8 array"):
        libmla.mla_prefill(q, k8, v, None, cu, 4, 1, 0.1, dtype="bf16")


def test_merge_and_write_and_pack_bad_arguments(rng):
    a = rng.standard_normal((4, 2, 8)).astype(np.float32)
    la = rng.standard_normal((4, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=r"v_b has shape \[4, 2, 7\]"):
        libmla.merge_state(a, la, a[:, :, :7].copy(), la)
    with pytest.raises(ValueError, match=r"s_b has shape \[4, 3\]"):
        libmla.merge_state(a, la, a, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"s_a has unsupported numpy dtype float64; allowed: f32$"):
        libmla.merge_state(a, la.astype(np.float64), a, la)

    cache = np.zeros((2, 32, 576), np.uint8)
    ckv = rng.standard_normal((3, 512)).astype(np.float32)
    kpe = rng.standard_normal((3, 64)).astype(np.float32)
    with pytest.raises(MLAValueError) as info:
        libmla.kv_cache_write(ckv, kpe, np.array([0, 64, 1], np.int32), cache,
                              kv_dtype="fp8_e4m3")  # slot 64 = page 2 of 2 pages
    assert info.value.status_name == "MLA_ERR_OUT_OF_RANGE" and info.value.detail
    bad = ckv.copy()
    bad[1, 3] = np.nan
    with pytest.raises(MLAValueError) as info:
        libmla.kv_cache_write(bad, kpe, np.array([0, 1, 2], np.int32), cache,
                              kv_dtype="fp8_e4m3")
    assert info.value.status_name == "MLA_ERR_NONFINITE"
    assert not cache.any(), "cache written despite the error"
    with pytest.raises(ValueError, match=r"kv_cache has dtype float32"):
        libmla.kv_cache_write(ckv, kpe, np.array([0, 1, 2], np.int32),
                              np.zeros((2, 32, 576), np.float32))
    with pytest.raises(ValueError, match=r"kv_cache has shape \[2, 32, 576\], expected "
                                         r"\[num_pages, page_size, kv_lora_rank\+qk_rope_head"):
        libmla.kv_cache_write(ckv, kpe[:, :32].copy(), np.array([0, 1, 2], np.int32), cache,
                              kv_dtype="fp8_e4m3")
    with pytest.raises(ValueError, match=r"k_scale must be finite and > 0"):
        libmla.kv_cache_write(ckv, kpe, np.array([0, 1, 2], np.int32), cache, 0.0,
                              kv_dtype="fp8_e4m3")

    with pytest.raises(ValueError, match=r"scale must be finite and > 0"):
        libmla.quantize_fp8(ckv, -1.0)
    with pytest.raises(ValueError, match=r"out has 10 elements"):
        libmla.quantize_fp8(ckv, out=np.zeros(10, np.uint8))

    kn = ref.to_bf16_bits(rng.standard_normal((3, 2, 128)))
    with pytest.raises(ValueError, match=r"v has shape \[3, 5, 128\]"):
        libmla.kv_pack(kn, ref.to_bf16_bits(rng.standard_normal((3, 64))),
                       ref.to_bf16_bits(rng.standard_normal((3, 5, 128))), dtype="bf16")
    with pytest.raises(ValueError, match=r"the last dimension must be contiguous"):
        libmla.kv_pack(kn[:, :, ::2], ref.to_bf16_bits(rng.standard_normal((3, 64))),
                       kn, dtype="bf16")
    with pytest.raises(ValueError, match=r"out_dtype must be 'bf16' or 'fp8_e4m3'"):
        libmla.kv_pack(kn, kn[:, 0, :64].copy(), kn, out_dtype="f32", dtype="bf16")


def test_library_errors_are_mla_errors(dec):
    bt = dec["block_tables"].copy()
    bt[0, 0] = 99
    with pytest.raises(MLAError) as info:
        call(dec, block_tables=bt)
    assert isinstance(info.value, ValueError)
    assert info.value.status == 5


def test_non_native_byte_order_is_refused():
    a = np.zeros((2, 3, 4), dtype=">f4")
    lse = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"v_a has non-native byte order"):
        libmla.merge_state(a, lse, a, lse)

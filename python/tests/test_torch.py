"""torch CPU tensors give exactly the numpy results (same CPU backend, same bits). Skipped
when torch is not importable."""

import numpy as np
import pytest

import libmla
import mla_oracle as ref

torch = pytest.importorskip("torch")

RANK, ROPE, D = 512, 64, 576


def t_bf16(bits):
    return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16)).view(torch.bfloat16)


def t_fp8(bits):
    return torch.from_numpy(np.ascontiguousarray(bits)).view(torch.float8_e4m3fn)


def np_bits(t):
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)
    if t.dtype == torch.float8_e4m3fn:
        return t.contiguous().view(torch.uint8).numpy()
    return t.numpy()


def decode_inputs(rng, batch=3, q_len=2, heads=16, page=64, pages=12):
    q = ref.to_bf16_bits(rng.standard_normal((batch, q_len, heads, D)))
    kv = ref.fp8_encode(rng.standard_normal((pages, page, D)))
    bt = rng.permutation(pages)[:batch * 4].reshape(batch, 4).astype(np.int32)
    sl = rng.integers(q_len, 4 * page, size=batch).astype(np.int32)
    return q, kv, bt, sl


def test_torch_cpu_decode_equals_numpy(rng):
    q, kv, bt, sl = decode_inputs(rng)
    want, want_lse = libmla.mla_decode(q, kv, None, RANK, ROPE, bt, sl, 0, 0.1, 0.9,
                                       return_lse=True, dtype="bf16", kv_dtype="fp8_e4m3")
    out, lse = libmla.mla_decode(t_bf16(q), t_fp8(kv), None, RANK, ROPE, torch.from_numpy(bt),
                                 torch.from_numpy(sl), int(sl.max()), 0.1, 0.9, return_lse=True)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert np.array_equal(np_bits(out), want)
    assert np.array_equal(lse.numpy().view(np.uint32), want_lse.view(np.uint32))
    # a 4-D [pages, 1, page, D] cache view and a preallocated out give the same bits
    out2 = torch.full_like(out, float("nan"))
    libmla.mla_decode(t_bf16(q), t_fp8(kv).unsqueeze(1), None, RANK, ROPE, torch.from_numpy(bt),
                      torch.from_numpy(sl), 0, 0.1, 0.9, out=out2)
    assert torch.equal(out2.view(torch.int16), out.view(torch.int16))


def test_torch_cpu_prefill_merge_quantize_equal_numpy(rng):
    heads = 4
    q = ref.to_bf16_bits(rng.standard_normal((9, heads, 192)))
    k = ref.to_bf16_bits(rng.standard_normal((13, heads, 192)))
    v = ref.to_bf16_bits(rng.standard_normal((13, heads, 128)))
    cu_q = np.array([0, 4, 9], np.int32)
    cu_kv = np.array([0, 6, 13], np.int32)
    sl = np.diff(cu_kv).astype(np.int32)
    want, want_lse = libmla.mla_prefill(q, k, v, sl, cu_kv, 7, 2, 0.1, True, True, cu_q, 5,
                                        dtype="bf16")
    out, lse = libmla.mla_prefill(t_bf16(q), t_bf16(k), t_bf16(v), torch.from_numpy(sl),
                                  torch.from_numpy(cu_kv), 7, 2, 0.1, True, True,
                                  torch.from_numpy(cu_q), 5)
    assert np.array_equal(np_bits(out), want) and np.array_equal(lse.numpy(), want_lse)

    a = rng.standard_normal((5, 3, 16)).astype(np.float32)
    b = rng.standard_normal((5, 3, 16)).astype(np.float32)
    la = rng.standard_normal((5, 3)).astype(np.float32)
    lb = rng.standard_normal((5, 3)).astype(np.float32)
    wo, wl = libmla.merge_state(a, la, b, lb)
    to, tl = libmla.merge_state(*(torch.from_numpy(x) for x in (a, la, b, lb)))
    assert np.array_equal(to.numpy(), wo) and np.array_equal(tl.numpy(), wl)

    x = rng.standard_normal((7, 33)).astype(np.float32) * 100
    assert np.array_equal(np_bits(libmla.quantize_fp8(torch.from_numpy(x), 2.0)),
                          libmla.quantize_fp8(x, 2.0))


def test_torch_cpu_cache_write_and_pack(rng):
    cache = torch.zeros((4, 32, D), dtype=torch.float8_e4m3fn)
    ckv = torch.randn(6, 1, RANK)          # SGLang passes [n, 1, dim]
    kpe = torch.randn(6, 1, ROPE)
    slots = torch.tensor([0, 5, -1, 40, 127, 64], dtype=torch.int64)
    libmla.kv_cache_write(ckv, kpe, slots, cache)
    flat = np_bits(cache).reshape(-1, D)
    rows = np.concatenate([ckv.numpy()[:, 0], kpe.numpy()[:, 0]], axis=1)
    keep = slots.numpy() >= 0
    assert np.array_equal(flat[slots.numpy()[keep]], ref.fp8_encode(rows[keep]))

    kv_b = torch.randn(5, 2, 256).to(torch.bfloat16)
    k_nope, v = kv_b[:, :, :128], kv_b[:, :, 128:]          # strided views
    k_pe = torch.randn(5, 1, 64).to(torch.bfloat16)
    k_out, v_out = libmla.kv_pack(k_nope, k_pe, v, out_dtype="bf16")
    assert torch.equal(k_out, torch.cat([k_nope, k_pe.expand(5, 2, 64)], dim=2))
    assert torch.equal(v_out, v)


def test_torch_bad_arguments(rng):
    q, kv, bt, sl = decode_inputs(rng)
    tq, tkv, tbt, tsl = t_bf16(q), t_fp8(kv), torch.from_numpy(bt), torch.from_numpy(sl)
    with pytest.raises(ValueError, match=r"query has unsupported dtype torch.float64"):
        libmla.mla_decode(tq.double(), tkv, None, RANK, ROPE, tbt, tsl, 0, 0.1)
    with pytest.raises(ValueError, match=r"seq_lens has dtype torch.int64"):
        libmla.mla_decode(tq, tkv, None, RANK, ROPE, tbt, tsl.long(), 0, 0.1)
    with pytest.raises(ValueError, match=r"query must be contiguous"):
        libmla.mla_decode(tq.transpose(1, 2), tkv, None, RANK, ROPE, tbt, tsl, 0, 0.1)
    with pytest.raises(ValueError, match=r"kv_cache has dtype torch.float8_e4m3fn but bf16 "
                                         r"was declared"):
        libmla.mla_decode(tq, tkv, None, RANK, ROPE, tbt, tsl, 0, 0.1, kv_dtype="bf16")
    with pytest.raises(ValueError, match=r"max_seq_len must be a Python int"):
        libmla.mla_decode(tq, tkv, None, RANK, ROPE, tbt, tsl, torch.tensor(5), 0.1)

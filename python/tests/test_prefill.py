"""mla_prefill through the binding (numpy, CPU backend) against the C API (bit for bit) and the
float64 oracle. Tolerances as in test_decode: out 2e-3 + 2^-7 |ref|, LSE 2e-3 absolute."""

import numpy as np
import pytest

import libmla
import mla_oracle as ref
from conftest import run_driver

NOPE, ROPE, V_DIM = 128, 64, 128
QK = NOPE + ROPE
OUT_ATOL, OUT_RTOL, LSE_ATOL = 2e-3, 2.0**-7, 2e-3
DTYPE_CODE = {"bf16": 0, "fp8_e4m3": 2}


def encode(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if dtype == "bf16":
        bits = ref.to_bf16_bits(x)
        return bits, ref.bf16_bits_to_f64(bits)
    bits = ref.fp8_encode(x)
    return bits, ref.fp8_decode(bits)


def make_case(rng, q_lens, kv_lens, heads, dtype):
    cu_q = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    cu_kv = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
    q_bits, q_val = encode(rng, (int(cu_q[-1]), heads, QK), dtype)
    k_bits, k_val = encode(rng, (int(cu_kv[-1]), heads, QK), dtype)
    v_bits, v_val = encode(rng, (int(cu_kv[-1]), heads, V_DIM), dtype)
    return dict(q=q_bits, k=k_bits, v=v_bits, qv=q_val, kv=k_val, vv=v_val, cu_q=cu_q,
                cu_kv=cu_kv, kv_lens=np.asarray(kv_lens, dtype=np.int32))


@pytest.mark.parametrize("dtype", ["bf16", "fp8_e4m3"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("q_shorter", [False, True])
@pytest.mark.parametrize("heads", [1, 8])
def test_prefill_matches_c_and_oracle(rng, c_driver, tmp_path, dtype, causal, q_shorter, heads):
    batch = 3
    kv_lens = rng.integers(1, 70, size=batch)
    q_lens = (np.minimum(kv_lens, rng.integers(1, 20, size=batch)) if q_shorter
              else kv_lens.copy())
    case = make_case(rng, q_lens, kv_lens, heads, dtype)
    scale = float(rng.uniform(0.05, 0.15))
    total_q = int(case["cu_q"][-1])
    out = np.full((total_q, heads, V_DIM), 0xFFFF, dtype=np.uint16)
    lse = np.full((total_q, heads), np.nan, dtype=np.float32)
    got, got_lse = libmla.mla_prefill(
        case["q"], case["k"], case["v"], case["kv_lens"], case["cu_kv"], int(kv_lens.max()),
        batch, scale, is_causal=causal, return_lse=True,
        cum_seq_lens_q=case["cu_q"] if q_shorter else None,
        max_seq_len_q=int(q_lens.max()) if q_shorter else None,
        out=out, lse_out=lse, dtype=dtype)
    assert got is out and got_lse is lse
    want, want_lse = ref.prefill_ref(case["qv"], case["kv"], case["vv"], case["cu_q"],
                                     case["cu_kv"], scale, causal)
    ref.assert_close(ref.bf16_bits_to_f64(out), want, OUT_ATOL, OUT_RTOL, "out vs oracle")
    ref.assert_close(lse, want_lse, LSE_ATOL, 0.0, "lse vs oracle")

    d = run_driver(c_driver, "prefill", tmp_path / "c",
                   ["cpu", heads, NOPE, ROPE, V_DIM, DTYPE_CODE[dtype], batch, total_q,
                    int(case["cu_kv"][-1]), int(causal), repr(np.float32(scale).item()), 1],
                   {"q.bin": case["q"], "k.bin": case["k"], "v.bin": case["v"],
                    "cuq.bin": case["cu_q"], "cukv.bin": case["cu_kv"]})
    if d is None:  # no C compiler or header: the oracle check above stands alone
        return
    assert np.array_equal(out, np.fromfile(d / "out.bin", np.uint16).reshape(out.shape))
    assert np.array_equal(lse.view(np.uint32),
                          np.fromfile(d / "lse.bin", np.uint32).reshape(lse.shape))


def test_prefill_edge_lengths(rng):
    """An empty request, a request with more queries than keys (causal rows with no key),
    and the tokenspeed return convention (out alone without return_lse)."""
    q_lens, kv_lens = [0, 5, 3, 4], [6, 2, 0, 9]
    heads = 4
    case = make_case(rng, q_lens, kv_lens, heads, "bf16")
    out, lse = libmla.mla_prefill(case["q"], case["k"], case["v"], case["kv_lens"],
                                  case["cu_kv"], 9, 4, 0.1, True, True, case["cu_q"], 5,
                                  dtype="bf16")
    want, want_lse = ref.prefill_ref(case["qv"], case["kv"], case["vv"], case["cu_q"],
                                     case["cu_kv"], 0.1, True)
    ref.assert_close(ref.bf16_bits_to_f64(out), want, OUT_ATOL, OUT_RTOL, "out")
    ref.assert_close(lse, want_lse, LSE_ATOL, 0.0, "lse")
    assert np.isneginf(lse[:3]).all() and (out[:3] == 0).all()  # request 1 rows 0..2

    out2, none = libmla.mla_prefill(case["q"], case["k"], case["v"], case["kv_lens"],
                                    case["cu_kv"], 9, 4, 0.1, True, False, case["cu_q"], 5,
                                    dtype="bf16")
    assert none is None and np.array_equal(out, out2)
    only = libmla.tokenspeed_mla_prefill(case["q"], case["k"], case["v"], case["kv_lens"],
                                         case["cu_kv"], 9, 4, 0.1, True, False, case["cu_q"],
                                         5, dtype="bf16")
    assert isinstance(only, np.ndarray) and np.array_equal(out, only)


def test_prefill_small_dims_and_rope_split(rng):
    """qk_rope_head_dim= splits a non-default qk width (CPU backend accepts any dims)."""
    heads, total = 2, 7
    q = ref.to_bf16_bits(rng.standard_normal((total, heads, 48)))
    k = ref.to_bf16_bits(rng.standard_normal((total, heads, 48)))
    v = ref.to_bf16_bits(rng.standard_normal((total, heads, 32)))
    cu = np.array([0, 3, 7], dtype=np.int32)
    out, lse = libmla.mla_prefill(q, k, v, np.array([3, 4], np.int32), cu, 4, 2, 0.2,
                                  return_lse=True, qk_rope_head_dim=16, dtype="bf16")
    want, want_lse = ref.prefill_ref(ref.bf16_bits_to_f64(q), ref.bf16_bits_to_f64(k),
                                     ref.bf16_bits_to_f64(v), cu, cu, 0.2, True)
    ref.assert_close(ref.bf16_bits_to_f64(out), want, OUT_ATOL, OUT_RTOL, "out")
    ref.assert_close(lse, want_lse, LSE_ATOL, 0.0, "lse")

"""mla_decode through the binding (numpy, CPU backend) against (a) the same call made from C
through mla.h, bit for bit, and (b) the float64 oracle in mla_oracle.py.

Tolerance vs the oracle: |got - ref| <= 2e-3 + 2^-7 * |ref| for the bf16 output (bf16 keeps
8 significant bits, so rounding alone is up to 2^-9 relative; the rest covers float32
accumulation), and 2e-3 absolute for the LSE; -inf must match exactly, NaN never passes."""

import numpy as np
import pytest

import libmla
import mla_oracle as ref
from conftest import run_driver

RANK, ROPE = 512, 64
D = RANK + ROPE
OUT_ATOL, OUT_RTOL, LSE_ATOL = 2e-3, 2.0**-7, 2e-3
DTYPE_CODE = {"bf16": 0, "fp8_e4m3": 2}


def make_case(rng, batch, q_len, heads, page, kv_dtype, q_dtype="bf16", short=False):
    """Random paged decode problem: shuffled pages, ragged seq_lens >= q_len (one shorter than
    q_len when `short`, so some causal rows see no key)."""
    seq_lens = rng.integers(q_len, 4 * page + 7, size=batch).astype(np.int32)
    if short and q_len > 1:
        seq_lens[0] = q_len - 1
    max_pages = int(-(-seq_lens.max() // page)) + 1
    num_pages = batch * max_pages + 3
    block_table = rng.permutation(num_pages)[:batch * max_pages].reshape(batch, max_pages)
    block_table = block_table.astype(np.int32)
    q_f = rng.standard_normal((batch, q_len, heads, D))
    kv_f = rng.standard_normal((num_pages, page, D))
    if q_dtype == "bf16":
        q_bits = ref.to_bf16_bits(q_f)
        q_val = ref.bf16_bits_to_f64(q_bits)
    else:
        q_bits = ref.fp8_encode(q_f)
        q_val = ref.fp8_decode(q_bits)
    if kv_dtype == "bf16":
        kv_bits = ref.to_bf16_bits(kv_f)
        kv_val = ref.bf16_bits_to_f64(kv_bits)
    else:
        kv_bits = ref.fp8_encode(kv_f)
        kv_val = ref.fp8_decode(kv_bits)
    return dict(q_bits=q_bits, q_val=q_val, kv_bits=kv_bits, kv_val=kv_val,
                block_table=block_table, seq_lens=seq_lens, page=page)


def poisoned_outputs(batch, q_len, heads):
    out = np.full((batch, q_len, heads, RANK), 0xFFFF, dtype=np.uint16)  # bf16 NaN
    lse = np.full((batch, q_len, heads), np.nan, dtype=np.float32)
    return out, lse


@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8_e4m3"])
@pytest.mark.parametrize("page", [32, 64])
@pytest.mark.parametrize("heads", [1, 16])
@pytest.mark.parametrize("q_len", [1, 2, 4])
def test_decode_matches_c_and_oracle(rng, c_driver, tmp_path, q_len, heads, page, kv_dtype):
    batch = 3
    case = make_case(rng, batch, q_len, heads, page, kv_dtype, short=True)
    scale = float(rng.uniform(0.04, 0.14))
    o_scale = float(rng.uniform(0.75, 1.25))
    out, lse = poisoned_outputs(batch, q_len, heads)
    got, got_lse = libmla.mla_decode(
        case["q_bits"], case["kv_bits"], None, RANK, ROPE, case["block_table"],
        case["seq_lens"], int(case["seq_lens"].max()), scale, o_scale, out=out,
        return_lse=True, lse_out=lse, dtype="bf16", kv_dtype=kv_dtype)
    assert got is out and got_lse is lse

    want, want_lse = ref.decode_ref(case["q_val"], case["kv_val"], case["block_table"],
                                    case["seq_lens"], RANK, scale, o_scale, causal=True)
    ref.assert_close(ref.bf16_bits_to_f64(out), want, OUT_ATOL, OUT_RTOL, "out vs oracle")
    ref.assert_close(lse, want_lse, LSE_ATOL, 0.0, "lse vs oracle")

    d = run_driver(c_driver, "decode", tmp_path / "c",
                   ["cpu", heads, RANK, ROPE, page, DTYPE_CODE[kv_dtype], 0, batch, q_len,
                    case["kv_bits"].shape[0], case["block_table"].shape[1], 1,
                    repr(np.float32(scale).item()), repr(np.float32(o_scale).item()), 1],
                   {"q.bin": case["q_bits"], "kv.bin": case["kv_bits"],
                    "bt.bin": case["block_table"], "sl.bin": case["seq_lens"]})
    if d is None:  # no C compiler or header: the oracle check above stands alone
        return
    c_out = np.fromfile(d / "out.bin", dtype=np.uint16).reshape(out.shape)
    c_lse = np.fromfile(d / "lse.bin", dtype=np.float32).reshape(lse.shape)
    assert np.array_equal(out, c_out), "binding and C API disagree on out bits"
    assert np.array_equal(lse.view(np.uint32), c_lse.view(np.uint32)), "LSE bits differ from C"


@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8_e4m3"])
def test_decode_non_causal(rng, kv_dtype):
    batch, q_len, heads = 2, 4, 8
    case = make_case(rng, batch, q_len, heads, 64, kv_dtype)
    out, lse = poisoned_outputs(batch, q_len, heads)
    libmla.mla_decode(case["q_bits"], case["kv_bits"], None, RANK, ROPE, case["block_table"],
                      case["seq_lens"], 0, 0.1, out=out, causal_mask=False, lse_out=lse,
                      dtype="bf16", kv_dtype=kv_dtype)
    want, want_lse = ref.decode_ref(case["q_val"], case["kv_val"], case["block_table"],
                                    case["seq_lens"], RANK, 0.1, causal=False)
    ref.assert_close(ref.bf16_bits_to_f64(out), want, OUT_ATOL, OUT_RTOL, "out")
    ref.assert_close(lse, want_lse, LSE_ATOL, 0.0, "lse")


def test_decode_fp8_query(rng):
    batch, q_len, heads = 2, 2, 16
    case = make_case(rng, batch, q_len, heads, 64, "fp8_e4m3", q_dtype="fp8_e4m3")
    out, lse = libmla.mla_decode(case["q_bits"], case["kv_bits"], None, RANK, ROPE,
                                 case["block_table"], case["seq_lens"], None, 0.08,
                                 return_lse=True, dtype="fp8_e4m3", kv_dtype="fp8_e4m3")
    want, want_lse = ref.decode_ref(case["q_val"], case["kv_val"], case["block_table"],
                                    case["seq_lens"], RANK, 0.08)
    ref.assert_close(ref.bf16_bits_to_f64(out), want, OUT_ATOL, OUT_RTOL, "out")
    ref.assert_close(lse, want_lse, LSE_ATOL, 0.0, "lse")


def test_decode_fp8_math_switch(rng):
    """fp8_math=True (mla_config.decode_fp8_math) is accepted, keeps the CPU backend's exact
    math (bit-identical to the default), needs a plan made with it, and takes booleans only."""
    batch, q_len, heads = 3, 4, 16
    case = make_case(rng, batch, q_len, heads, 64, "fp8_e4m3", q_dtype="fp8_e4m3")
    args = (case["q_bits"], case["kv_bits"], None, RANK, ROPE, case["block_table"],
            case["seq_lens"], None, 0.08)
    kw = dict(return_lse=True, dtype="fp8_e4m3", kv_dtype="fp8_e4m3")
    out, lse = libmla.mla_decode(*args, fp8_math=True, **kw)
    out0, lse0 = libmla.mla_decode(*args, **kw)
    assert np.array_equal(out, out0) and np.array_equal(lse, lse0)
    want, want_lse = ref.decode_ref(case["q_val"], case["kv_val"], case["block_table"],
                                    case["seq_lens"], RANK, 0.08)
    ref.assert_close(ref.bf16_bits_to_f64(out), want, OUT_ATOL, OUT_RTOL, "out")
    ref.assert_close(lse, want_lse, LSE_ATOL, 0.0, "lse")

    width = case["block_table"].shape[1]
    plan = libmla.DecodePlan(batch, q_len, heads, width, RANK, ROPE, kv_dtype="fp8_e4m3",
                             device="cpu", fp8_math=True).build(case["seq_lens"])
    got, _ = libmla.mla_decode(*args, fp8_math=True, plan=plan, **kw)
    assert np.array_equal(got, out)
    with pytest.raises(libmla.MLAValueError, match="fp8_math"):
        libmla.mla_decode(*args, plan=plan, **kw)  # plan of the fp8_math backend
    plan.close()
    for bad in ("yes", 2, None, 1.0):
        with pytest.raises(libmla.MLAValueError, match="fp8_math must be True or False"):
            libmla.mla_decode(*args, fp8_math=bad, **kw)


def test_decode_allocates_and_accepts_4d_cache(rng):
    batch, q_len, heads, page = 2, 1, 16, 32
    case = make_case(rng, batch, q_len, heads, page, "bf16")
    got = libmla.mla_decode(case["q_bits"], case["kv_bits"], None, RANK, ROPE,
                            case["block_table"], case["seq_lens"], None, 0.1, dtype="bf16",
                            kv_dtype="bf16")
    assert isinstance(got, np.ndarray) and got.dtype == np.uint16
    assert got.shape == (batch, q_len, heads, RANK)
    kv4 = case["kv_bits"].reshape(-1, 1, page, D)  # trtllm / SGLang layout
    got4 = libmla.mla_decode(case["q_bits"], kv4, None, RANK, ROPE, case["block_table"],
                             case["seq_lens"], None, 0.1, dtype="bf16", kv_dtype="bf16")
    assert np.array_equal(got, got4)
    # tokenspeed's positional order (is_var_seq before causal_mask) gives the same result.
    got_ts = libmla.tokenspeed_mla_decode(case["q_bits"], case["kv_bits"], None, RANK, ROPE,
                                          case["block_table"], case["seq_lens"], 0, 0.1, 1.0,
                                          None, True, True, dtype="bf16", kv_dtype="bf16")
    assert np.array_equal(got, got_ts)


def test_decode_float32_inputs_are_converted(rng):
    """float32 query / cache are rounded to bf16 (nearest even) by the binding; the result
    for a float32 query is float32 and equals the bf16-input call exactly."""
    batch, q_len, heads = 2, 2, 4
    case = make_case(rng, batch, q_len, heads, 64, "bf16")
    q32 = rng.standard_normal(case["q_bits"].shape).astype(np.float32)
    kv32 = rng.standard_normal(case["kv_bits"].shape).astype(np.float32)
    got = libmla.mla_decode(q32, kv32, None, RANK, ROPE, case["block_table"], case["seq_lens"],
                            None, 0.1)
    assert got.dtype == np.float32
    want = libmla.mla_decode(ref.to_bf16_bits(q32), ref.to_bf16_bits(kv32), None, RANK, ROPE,
                             case["block_table"], case["seq_lens"], None, 0.1, dtype="bf16",
                             kv_dtype="bf16")
    assert np.array_equal(got, ref.bf16_bits_to_f64(want).astype(np.float32))
    # float32 cache declared fp8: quantized with scale 1 (the library's rounding).
    got8 = libmla.mla_decode(q32, kv32, None, RANK, ROPE, case["block_table"],
                             case["seq_lens"], None, 0.1, kv_dtype="fp8_e4m3")
    want8 = libmla.mla_decode(ref.to_bf16_bits(q32), ref.fp8_encode(kv32), None, RANK, ROPE,
                              case["block_table"], case["seq_lens"], None, 0.1, dtype="bf16",
                              kv_dtype="fp8_e4m3")
    assert np.array_equal(got8, ref.bf16_bits_to_f64(want8).astype(np.float32))


def test_decode_empty_rows_and_zero_length(rng):
    """seq_len 0 and causal windows with no key give zero output and -inf LSE."""
    batch, q_len, heads = 3, 4, 2
    case = make_case(rng, batch, q_len, heads, 32, "fp8_e4m3")
    case["seq_lens"][0] = 0
    case["seq_lens"][1] = 2  # rows 0 and 1 of request 1 see no key
    out, lse = poisoned_outputs(batch, q_len, heads)
    libmla.mla_decode(case["q_bits"], case["kv_bits"], None, RANK, ROPE, case["block_table"],
                      case["seq_lens"], None, 0.1, out=out, lse_out=lse, dtype="bf16",
                      kv_dtype="fp8_e4m3")
    want, want_lse = ref.decode_ref(case["q_val"], case["kv_val"], case["block_table"],
                                    case["seq_lens"], RANK, 0.1)
    assert np.all(out[0] == 0) and np.all(out[1, :2] == 0)
    assert np.all(np.isneginf(lse[0])) and np.all(np.isneginf(lse[1, :2]))
    ref.assert_close(ref.bf16_bits_to_f64(out), want, OUT_ATOL, OUT_RTOL, "out")
    ref.assert_close(lse, want_lse, LSE_ATOL, 0.0, "lse")


def test_backend_override_by_env(rng, monkeypatch):
    case = make_case(rng, 1, 1, 1, 64, "bf16")
    monkeypatch.setenv("LIBMLA_BACKEND", "no-such-backend")
    with pytest.raises(ValueError, match="no-such-backend"):
        libmla.mla_decode(case["q_bits"], case["kv_bits"], None, RANK, ROPE,
                          case["block_table"], case["seq_lens"], None, 0.1, dtype="bf16",
                          kv_dtype="bf16")
    # the keyword wins over the environment
    libmla.mla_decode(case["q_bits"], case["kv_bits"], None, RANK, ROPE, case["block_table"],
                      case["seq_lens"], None, 0.1, dtype="bf16", kv_dtype="bf16", backend="cpu")


def test_workspace_size_cpu_is_zero():
    assert libmla.decode_workspace_size(8, 2, 16, device="cpu") == 0
    # A caller buffer is accepted on the CPU too.
    ws = np.zeros(16, dtype=np.uint8)
    rng = np.random.default_rng(1)
    case = make_case(rng, 1, 1, 1, 64, "bf16")
    libmla.mla_decode(case["q_bits"], case["kv_bits"], ws, RANK, ROPE, case["block_table"],
                      case["seq_lens"], None, 0.1, dtype="bf16", kv_dtype="bf16")


def test_decode_ml_dtypes_arrays(rng):
    """ml_dtypes bfloat16 / float8_e4m3fn arrays need no dtype keyword; out keeps the type."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    case = make_case(rng, 2, 2, 4, 64, "fp8_e4m3")
    want = libmla.mla_decode(case["q_bits"], case["kv_bits"], None, RANK, ROPE,
                             case["block_table"], case["seq_lens"], None, 0.1, dtype="bf16",
                             kv_dtype="fp8_e4m3")
    got = libmla.mla_decode(case["q_bits"].view(ml_dtypes.bfloat16),
                            case["kv_bits"].view(ml_dtypes.float8_e4m3fn), None, RANK, ROPE,
                            case["block_table"], case["seq_lens"], None, 0.1)
    assert got.dtype == ml_dtypes.bfloat16
    assert np.array_equal(got.view(np.uint16), want)


def test_decode_empty_batch(rng):
    case = make_case(rng, 1, 1, 4, 64, "bf16")
    out = libmla.mla_decode(case["q_bits"][:0], case["kv_bits"], None, RANK, ROPE,
                            case["block_table"][:0], case["seq_lens"][:0], None, 0.1,
                            dtype="bf16", kv_dtype="bf16")
    assert out.shape == (0, 1, 4, RANK)


def test_concurrent_calls_from_threads(rng):
    """Calls from several threads (creating backends concurrently) give the serial results."""
    from concurrent.futures import ThreadPoolExecutor
    cases = [make_case(rng, 2, q_len, heads, 32, "fp8_e4m3")
             for q_len, heads in [(1, 3), (2, 5), (3, 7), (1, 9)] * 2]

    def run(case):
        return libmla.mla_decode(case["q_bits"], case["kv_bits"], None, RANK, ROPE,
                                 case["block_table"], case["seq_lens"], None, 0.1,
                                 dtype="bf16", kv_dtype="fp8_e4m3")

    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(run, cases))
    for case, got in zip(cases, parallel):
        assert np.array_equal(got, run(case))


def test_decode_plan_shared_by_layers(rng):
    """A DecodePlan built once serves several decodes of the batch ("layers") with the same
    results as planning in each call; it is refused for another batch shape or other
    seq_lens, and after it is closed."""
    batch, q_len, heads, page = 3, 2, 16, 64
    case = make_case(rng, batch, q_len, heads, page, "fp8_e4m3")
    width = case["block_table"].shape[1]
    plan = libmla.DecodePlan(batch, q_len, heads, width, RANK, ROPE, page_size=page,
                             kv_dtype="fp8_e4m3", device="cpu")
    assert plan.build(case["seq_lens"]) is plan
    for layer in range(2):
        q = ref.fp8_encode(rng.standard_normal(case["q_bits"].shape)) if layer else case["q_bits"]
        args = (q, case["kv_bits"], None, RANK, ROPE, case["block_table"], case["seq_lens"],
                None, 0.09)
        kw = dict(return_lse=True, dtype="fp8_e4m3" if layer else "bf16", kv_dtype="fp8_e4m3")
        if layer:  # an fp8 query: the same backend, so the same plan
            q_dec = ref.fp8_decode(q)
        got, got_lse = libmla.mla_decode(*args, plan=plan, **kw)
        want, want_lse = libmla.mla_decode(*args, **kw)
        assert np.array_equal(got, want) and np.array_equal(got_lse, want_lse)
        if layer:
            oracle, _ = ref.decode_ref(q_dec, case["kv_val"], case["block_table"],
                                       case["seq_lens"], RANK, 0.09, causal=True)
            ref.assert_close(ref.bf16_bits_to_f64(got), oracle, OUT_ATOL, OUT_RTOL, "out")

    changed = case["seq_lens"].copy()
    changed[1] -= 1
    with pytest.raises(libmla.MLAError, match="differs from"):
        libmla.mla_decode(case["q_bits"], case["kv_bits"], None, RANK, ROPE,
                          case["block_table"], changed, None, 0.09, dtype="bf16",
                          kv_dtype="fp8_e4m3", plan=plan)
    with pytest.raises(libmla.MLAError, match="the plan is for batch 3"):
        libmla.mla_decode(case["q_bits"][:2], case["kv_bits"], None, RANK, ROPE,
                          case["block_table"][:2], case["seq_lens"][:2], None, 0.09,
                          dtype="bf16", kv_dtype="fp8_e4m3", plan=plan)
    with pytest.raises(libmla.MLAValueError, match="another configuration"):
        libmla.mla_decode(case["q_bits"], case["kv_bits"].astype(np.float32), None, RANK, ROPE,
                          case["block_table"], case["seq_lens"], None, 0.09, dtype="bf16",
                          kv_dtype="bf16", plan=plan)
    with pytest.raises(libmla.MLAValueError, match="batch_size"):
        plan.build(case["seq_lens"][:2])
    plan.close()
    plan.close()
    with pytest.raises(libmla.MLAValueError, match="closed"):
        plan.build(case["seq_lens"])

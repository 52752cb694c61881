"""torch CUDA tensors on the "hopper" backend: results against the float64 oracle and the CPU
backend, CUDA-graph capture/replay of mla_decode equal to eager calls, device-side errors.
Skipped unless torch is importable, torch.cuda.is_available() and the hopper backend is
available in the loaded library.

GPU tolerances vs the oracle: out |err| <= 1e-2 + 2^-6 |ref| (the tensor-core kernels round
the softmax probabilities to bf16/fp8 before the PV product), LSE 5e-3 absolute. Conversions
(cache write, quantize, pack) must equal the CPU backend bit for bit."""

import numpy as np
import pytest

import libmla
import mla_oracle as ref

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("torch.cuda is not available", allow_module_level=True)
_hopper = dict((n, (a, r)) for n, a, r in libmla.backends()).get("hopper", (False, "absent"))
if not _hopper[0]:
    pytest.skip(f"hopper backend unavailable: {_hopper[1]}", allow_module_level=True)

RANK, ROPE, D = 512, 64, 576
GPU_ATOL, GPU_RTOL, GPU_LSE_ATOL = 1e-2, 2.0**-6, 5e-3
DEV = torch.device("cuda", torch.cuda.current_device())


def t_bf16(bits, device=DEV):
    return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16)).view(
        torch.bfloat16).to(device)


def t_fp8(bits, device=DEV):
    return torch.from_numpy(np.ascontiguousarray(bits)).view(torch.float8_e4m3fn).to(device)


def to_np_bits(t):
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype == torch.float8_e4m3fn:
        return t.view(torch.uint8).numpy()
    return t.numpy()


def decode_case(rng, batch, q_len, heads, page, kv_dtype):
    seq_lens = rng.integers(q_len, 6 * page + 11, size=batch).astype(np.int32)
    max_pages = int(-(-seq_lens.max() // page)) + 1
    pages = batch * max_pages + 5
    bt = rng.permutation(pages)[:batch * max_pages].reshape(batch, max_pages).astype(np.int32)
    q = ref.to_bf16_bits(rng.standard_normal((batch, q_len, heads, D)))
    kv_f = rng.standard_normal((pages, page, D))
    kv = ref.fp8_encode(kv_f) if kv_dtype == "fp8_e4m3" else ref.to_bf16_bits(kv_f)
    kv_val = ref.fp8_decode(kv) if kv_dtype == "fp8_e4m3" else ref.bf16_bits_to_f64(kv)
    return q, kv, kv_val, bt, seq_lens


def to_dev(kv, kv_dtype):
    return t_fp8(kv) if kv_dtype == "fp8_e4m3" else t_bf16(kv)


@pytest.mark.parametrize("kv_dtype", ["fp8_e4m3", "bf16"])
@pytest.mark.parametrize("q_len", [1, 2, 4])
@pytest.mark.parametrize("heads", [16, 128])
def test_cuda_decode_vs_oracle(rng, kv_dtype, q_len, heads):
    batch, page = 4, 64
    q, kv, kv_val, bt, sl = decode_case(rng, batch, q_len, heads, page, kv_dtype)
    ws = torch.empty(libmla.decode_workspace_size(batch, q_len, heads, page_size=page,
                                                  kv_dtype=kv_dtype, device=DEV),
                     dtype=torch.uint8, device=DEV)
    out = torch.full((batch, q_len, heads, RANK), float("nan"), dtype=torch.bfloat16,
                     device=DEV)
    lse = torch.full((batch, q_len, heads), float("nan"), device=DEV)
    libmla.mla_decode(t_bf16(q), to_dev(kv, kv_dtype), ws, RANK, ROPE,
                      torch.from_numpy(bt).to(DEV), torch.from_numpy(sl).to(DEV),
                      int(sl.max()), 0.1352, 1.0, out=out, lse_out=lse)
    torch.cuda.synchronize()
    want, want_lse = ref.decode_ref(ref.bf16_bits_to_f64(q), kv_val, bt, sl, RANK, 0.1352)
    ref.assert_close(ref.bf16_bits_to_f64(to_np_bits(out)), want, GPU_ATOL, GPU_RTOL, "out")
    ref.assert_close(to_np_bits(lse), want_lse, GPU_LSE_ATOL, 0.0, "lse")
    assert libmla.device_errors() == {}


def test_cuda_graph_capture_replay_equals_eager(rng):
    batch, q_len, heads, page = 8, 2, 16, 64
    q, kv, _, bt, sl = decode_case(rng, batch, q_len, heads, page, "fp8_e4m3")
    s_q, s_kv = t_bf16(q), t_fp8(kv)
    s_bt, s_sl = torch.from_numpy(bt).to(DEV), torch.from_numpy(sl).to(DEV)
    ws = torch.empty(libmla.decode_workspace_size(batch, q_len, heads, device=DEV),
                     dtype=torch.uint8, device=DEV)
    s_out = torch.empty((batch, q_len, heads, RANK), dtype=torch.bfloat16, device=DEV)
    s_lse = torch.empty((batch, q_len, heads), device=DEV)
    max_seq = page * bt.shape[1]

    def step():
        libmla.mla_decode(s_q, s_kv, ws, RANK, ROPE, s_bt, s_sl, max_seq, 0.1, 1.0,
                          out=s_out, lse_out=s_lse)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()                       # warm-up outside capture creates the backend
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    for trial in range(3):
        new_q = ref.to_bf16_bits(rng.standard_normal(q.shape))
        new_sl = rng.integers(q_len, page * (bt.shape[1] - 1), size=batch).astype(np.int32)
        s_q.copy_(t_bf16(new_q))
        s_sl.copy_(torch.from_numpy(new_sl).to(DEV))
        s_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        replay_out, replay_lse = s_out.clone(), s_lse.clone()
        eager_out, eager_lse = libmla.mla_decode(s_q, s_kv, ws, RANK, ROPE, s_bt, s_sl, max_seq,
                                                 0.1, 1.0, return_lse=True)
        torch.cuda.synchronize()
        assert torch.equal(replay_out.view(torch.int16), eager_out.view(torch.int16)), trial
        assert torch.equal(replay_lse, eager_lse), trial


@pytest.mark.filterwarnings("ignore:The CUDA Graph is empty")
def test_cuda_creation_inside_capture_is_refused(rng):
    q, kv, _, bt, sl = decode_case(rng, 2, 3, 16, 64, "fp8_e4m3")  # q_len 3: fresh config
    args = (t_bf16(q), t_fp8(kv), None, RANK, ROPE, torch.from_numpy(bt).to(DEV),
            torch.from_numpy(sl).to(DEV), 0, 0.1)
    libmla.clear_backends()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="before capture"):
        with torch.cuda.graph(graph):
            libmla.mla_decode(*args)


def test_cuda_prefill_vs_oracle(rng):
    heads = 16
    q_lens, kv_lens = np.array([17, 1, 64]), np.array([40, 9, 64])
    cu_q = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    cu_kv = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
    q = ref.to_bf16_bits(rng.standard_normal((cu_q[-1], heads, 192)))
    k = ref.to_bf16_bits(rng.standard_normal((cu_kv[-1], heads, 192)))
    v = ref.to_bf16_bits(rng.standard_normal((cu_kv[-1], heads, 128)))
    for causal in (True, False):
        out, lse = libmla.mla_prefill(t_bf16(q), t_bf16(k), t_bf16(v),
                                      torch.from_numpy(kv_lens.astype(np.int32)).to(DEV),
                                      torch.from_numpy(cu_kv).to(DEV), 64, 3, 0.0722, causal,
                                      True, torch.from_numpy(cu_q).to(DEV), 64)
        want, want_lse = ref.prefill_ref(ref.bf16_bits_to_f64(q), ref.bf16_bits_to_f64(k),
                                         ref.bf16_bits_to_f64(v), cu_q, cu_kv, 0.0722, causal)
        ref.assert_close(ref.bf16_bits_to_f64(to_np_bits(out)), want, GPU_ATOL, GPU_RTOL,
                         f"prefill out causal={causal}")
        ref.assert_close(to_np_bits(lse), want_lse, GPU_LSE_ATOL, 0.0, "prefill lse")


def test_cuda_conversions_equal_cpu(rng):
    x = torch.from_numpy((rng.standard_normal(5000) * 100).astype(np.float32))
    assert np.array_equal(to_np_bits(libmla.quantize_fp8(x.to(DEV), 0.5)),
                          to_np_bits(libmla.quantize_fp8(x, 0.5)))
    cache_gpu = torch.zeros((4, 64, D), dtype=torch.float8_e4m3fn, device=DEV)
    cache_cpu = torch.zeros((4, 64, D), dtype=torch.float8_e4m3fn)
    ckv, kpe = torch.randn(10, 512), torch.randn(10, 64)
    slots = torch.tensor([3, 70, -1, 255, 0, 128, 129, 64, 65, 200], dtype=torch.int32)
    libmla.kv_cache_write(ckv.to(DEV), kpe.to(DEV), slots.to(DEV), cache_gpu, 1.5)
    libmla.kv_cache_write(ckv, kpe, slots, cache_cpu, 1.5)
    assert np.array_equal(to_np_bits(cache_gpu), to_np_bits(cache_cpu))
    kv_b = torch.randn(6, 16, 256).to(torch.bfloat16)
    k_pe = torch.randn(6, 1, 64).to(torch.bfloat16)
    g = libmla.kv_pack(kv_b.to(DEV)[:, :, :128], k_pe.to(DEV), kv_b.to(DEV)[:, :, 128:], 2.0, 0.5)
    c = libmla.kv_pack(kv_b[:, :, :128], k_pe, kv_b[:, :, 128:], 2.0, 0.5)
    assert np.array_equal(to_np_bits(g[0]), to_np_bits(c[0]))
    assert np.array_equal(to_np_bits(g[1]), to_np_bits(c[1]))
    a, b = torch.randn(7, 16, 512), torch.randn(7, 16, 512)
    la, lb = torch.randn(7, 16), torch.randn(7, 16)
    go, gl = libmla.merge_state(a.to(DEV), la.to(DEV), b.to(DEV), lb.to(DEV))
    co, cl = libmla.merge_state(a, la, b, lb)
    ref.assert_close(go.cpu().numpy(), co.numpy(), 1e-5, 1e-5, "merge out")
    ref.assert_close(gl.cpu().numpy(), cl.numpy(), 1e-5, 1e-6, "merge lse")


def test_cuda_bad_arguments(rng):
    q, kv, _, bt, sl = decode_case(rng, 2, 1, 16, 64, "fp8_e4m3")
    tq, tkv = t_bf16(q), t_fp8(kv)
    tbt, tsl = torch.from_numpy(bt).to(DEV), torch.from_numpy(sl).to(DEV)
    with pytest.raises(ValueError, match=r"block_tables is on cpu but query is on cuda"):
        libmla.mla_decode(tq, tkv, None, RANK, ROPE, torch.from_numpy(bt), tsl, 0, 0.1)
    bad = tbt.clone()
    bad[0, 0] = kv.shape[0] + 7
    with pytest.raises(ValueError, match="MLA_ERR_OUT_OF_RANGE"):
        libmla.mla_decode(tq, tkv, None, RANK, ROPE, bad, tsl, 0, 0.1)
    need = libmla.decode_workspace_size(2, 1, 16, device=DEV)
    if need > 0:
        small = torch.empty(max(need // 2, 1), dtype=torch.uint8, device=DEV)
        with pytest.raises(ValueError, match="MLA_ERR_WORKSPACE_TOO_SMALL"):
            libmla.mla_decode(tq, tkv, small, RANK, ROPE, tbt, tsl, 0, 0.1)
    with pytest.raises(ValueError, match="workspace_buffer is not on the device"):
        libmla.mla_decode(tq, tkv, torch.empty(16, dtype=torch.uint8), RANK, ROPE, tbt, tsl, 0,
                          0.1)
    assert libmla.get_num_sm(DEV) == torch.cuda.get_device_properties(DEV).multi_processor_count


def test_cuda_bad_page_with_index_checks_off_is_flagged(rng, monkeypatch):
    """With host checks off (as during capture) a bad page index is skipped by the kernel and
    flagged, never read; other requests stay correct."""
    monkeypatch.setenv("LIBMLA_SKIP_INDEX_CHECK", "1")
    batch, heads, page = 3, 16, 64
    q, kv, kv_val, bt, sl = decode_case(rng, batch, 1, heads, page, "fp8_e4m3")
    bad = bt.copy()
    bad[0, 0] = kv.shape[0] + 100000
    bad[2, 0] = -7
    libmla.device_errors()  # clear flags left by earlier tests
    out, lse = libmla.mla_decode(t_bf16(q), t_fp8(kv), None, RANK, ROPE,
                                 torch.from_numpy(bad).to(DEV), torch.from_numpy(sl).to(DEV),
                                 0, 0.1, return_lse=True)
    torch.cuda.synchronize()
    flags = libmla.device_errors()
    assert flags.get("hopper", 0) & 1, f"page-index flag not raised: {flags}"
    assert libmla.device_errors() == {}, "flags not cleared by the read"
    want, want_lse = ref.decode_ref(ref.bf16_bits_to_f64(q), kv_val, bt, sl, RANK, 0.1)
    got = ref.bf16_bits_to_f64(to_np_bits(out))
    ref.assert_close(got[1], want[1], GPU_ATOL, GPU_RTOL, "good request")
    ref.assert_close(to_np_bits(lse)[1], want_lse[1], GPU_LSE_ATOL, 0.0, "good request lse")

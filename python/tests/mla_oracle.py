"""Independent float64 reference for the binding tests: its own bf16 / fp8 e4m3 codecs and
plain-numpy attention. Nothing here calls libmla."""

import numpy as np


# ---- bf16 ---------------------------------------------------------------------------------
def to_bf16_bits(x):
    """Round float values to bf16 (nearest even) and return the uint16 bit patterns.
    Written with frexp/rint, unlike the binding's bit-twiddling conversion."""
    x = np.asarray(x, dtype=np.float64)
    _, exp = np.frexp(x)                          # x = mant * 2**exp, |mant| in [0.5, 1)
    # 8 significant bits; below 2^-126 the spacing stays 2^-133 (bf16 subnormals).
    quantum = np.ldexp(1.0, np.maximum(exp - 8, -133))
    rounded = np.rint(x / quantum) * quantum      # rint: ties to even
    return (rounded.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def bf16_bits_to_f64(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32) \
        .astype(np.float64)


# ---- fp8 e4m3 (1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no inf, NaN = S.1111.111)
def fp8_decode(bits):
    b = np.asarray(bits, dtype=np.uint8).astype(np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e = (b >> 3) & 0xF
    m = b & 0x7
    normal = np.ldexp(1.0 + m / 8.0, e - 7)
    subnormal = np.ldexp(m / 8.0, -6)
    val = sign * np.where(e == 0, subnormal, normal)
    return np.where((b & 0x7F) == 0x7F, np.nan, val)


_FP8_POS = fp8_decode(np.arange(0x7F, dtype=np.uint8))  # codes 0..126, ascending


def fp8_encode(x):
    """Nearest e4m3 code (ties to even code), saturating to +-448, NaN -> 0x7F."""
    x = np.asarray(x, dtype=np.float64)
    mag = np.minimum(np.abs(x), 448.0)
    hi = np.clip(np.searchsorted(_FP8_POS, mag), 1, 126)
    lo = hi - 1
    d_lo, d_hi = mag - _FP8_POS[lo], _FP8_POS[hi] - mag
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo)
    code = np.where(mag >= 448.0, 126, code)
    code = code | np.where(np.signbit(x), 0x80, 0)
    code = np.where(np.isnan(x), 0x7F, code)
    return code.astype(np.uint8)


# ---- attention ----------------------------------------------------------------------------
def decode_ref(q, kv, block_table, seq_lens, kv_lora_rank, softmax_scale, o_scale=1.0,
               causal=True):
    """q [B, Lq, H, D], kv [P, page, D] (float64). Returns out [B, Lq, H, rank], lse [B, Lq, H]."""
    batch, q_len, heads, _ = q.shape
    page = kv.shape[1]
    out = np.zeros((batch, q_len, heads, kv_lora_rank))
    lse = np.full((batch, q_len, heads), -np.inf)
    for b in range(batch):
        n = int(seq_lens[b])
        if n <= 0:
            continue
        t = np.arange(n)
        keys = kv[block_table[b, t // page], t % page]           # [n, D]
        scores = np.einsum("ihd,td->iht", q[b], keys) * softmax_scale
        for i in range(q_len):
            visible = min(n - q_len + i + 1, n) if causal else n
            if visible <= 0:
                continue
            s = scores[i, :, :visible]
            top = s.max(axis=-1, keepdims=True)
            p = np.exp(s - top)
            den = p.sum(axis=-1)
            out[b, i] = (p @ keys[:visible, :kv_lora_rank]) / den[:, None] * o_scale
            lse[b, i] = top[:, 0] + np.log(den)
    return out, lse


def prefill_ref(q, k, v, cu_q, cu_kv, softmax_scale, causal=True):
    """Ragged q [Tq, H, Dqk], k [Tkv, H, Dqk], v [Tkv, H, Dv]. Returns out, lse."""
    total_q, heads, _ = q.shape
    out = np.zeros((total_q, heads, v.shape[2]))
    lse = np.full((total_q, heads), -np.inf)
    for b in range(len(cu_q) - 1):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_kv[b]), int(cu_kv[b + 1])
        lq, lk = q1 - q0, k1 - k0
        if lq == 0 or lk == 0:
            continue
        s = np.einsum("ihd,jhd->hij", q[q0:q1], k[k0:k1]) * softmax_scale   # [H, lq, lk]
        if causal:
            allowed = np.arange(lk)[None, :] <= (lk - lq + np.arange(lq))[:, None]
            s = np.where(allowed[None], s, -np.inf)
        top = s.max(axis=-1, keepdims=True)
        seen = np.isfinite(top)
        p = np.where(seen, np.exp(s - np.where(seen, top, 0.0)), 0.0)
        den = p.sum(axis=-1)                                               # [H, lq]
        o = np.einsum("hij,jhd->ihd", p, v[k0:k1])
        with np.errstate(invalid="ignore", divide="ignore"):
            o = np.where(den.T[:, :, None] > 0, o / den.T[:, :, None], 0.0)
            rows_lse = np.where(den > 0, top[..., 0] + np.log(den), -np.inf)
        out[q0:q1] = o
        lse[q0:q1] = rows_lse.T
    return out, lse


def merge_ref(o_a, lse_a, o_b, lse_b):
    lse = np.logaddexp(lse_a, lse_b)
    finite = np.isfinite(lse)
    safe = np.where(finite, lse, 0.0)
    wa = np.where(finite, np.exp(np.where(np.isfinite(lse_a), lse_a, -np.inf) - safe), 0.0)
    wb = np.where(finite, np.exp(np.where(np.isfinite(lse_b), lse_b, -np.inf) - safe), 0.0)
    o = o_a * wa[..., None] + o_b * wb[..., None]
    return o, lse


def assert_close(got, want, atol, rtol, what):
    """Every element within atol + rtol*|want|; NaN never passes; -inf must match exactly."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert not np.isnan(got).any(), f"{what}: NaN in result at {np.argwhere(np.isnan(got))[:5]}"
    inf_want = np.isinf(want)
    assert np.array_equal(np.isinf(got), inf_want) and np.array_equal(got[inf_want],
                                                                      want[inf_want]), \
        f"{what}: infinities differ"
    g, w = got[~inf_want], want[~inf_want]
    err = np.abs(g - w)
    bound = atol + rtol * np.abs(w)
    bad = err > bound
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements out of tolerance "
                           f"(atol {atol}, rtol {rtol}); worst error {err.max():.3g}")

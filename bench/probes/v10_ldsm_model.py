#!/usr/bin/env python3
"""CPU model of decode_v10_fp8mma.cuh's transpose_v_ldsm (the default transposition since
2026-12-04; -DMLA_V10_LDSM selected it before): the
ldmatrix / stmatrix m8n8 .b16 fragment layouts of the PTX ISA, the 64-byte swizzle and prmt,
replayed lane by lane for all 4 warps x 2 halves x 8 steps. Checks that V^T[n][k] = K[k][n] for
all 512 x 64 bytes and that every 8-row matrix access touches 8 distinct 16-byte bank groups.
Run: python3 bench/probes/v10_ldsm_model.py (expects "wrong bytes 0 ... conflicting 0").
It checks the index arithmetic against the documented layouts, not the hardware: the device
run (gpu_decode under MLA_DECODE_VARIANT=v10 with that build) is what decides."""
import random
def sw64(r, c): return r*64 + ((((c>>4) ^ (r>>1)) & 3) << 4) + (c & 15)
def prmt(a, b, sel):
    bs = [(a >> (8*i)) & 255 for i in range(4)] + [(b >> (8*i)) & 255 for i in range(4)]
    return sum(bs[(sel >> (4*i)) & 7] << (8*i) for i in range(4))
KS = 0; VT = 65536
mem = bytearray(1 << 17)
K = [[random.randrange(256) for d in range(576)] for k in range(64)]
for k in range(64):
    for d in range(576):
        cb, c = d // 64, d % 64
        mem[KS + cb*4096 + sw64(k, c)] = K[k][d]

valid = (1 << 64) - 1
def rd32(a): return int.from_bytes(mem[a:a+4], 'little')
conflicts = 0
for h in range(2):
  for w in range(4):
    cb = w + 4*h
    lanes = range(32)
    P = {}
    for L in lanes:
        i, rr = L >> 3, L & 7; bl, mm = i >> 1, i & 1
        er = 1 if rr >= 4 else 0
        koff = 2*rr + ((1 - er) if mm else er)
        lbase = KS + cb*4096 + (bl*16 + koff)*64 + (((koff >> 1) & 3) << 4)
        qq = rr >> 1; sidx = mm
        doff = 4*qq + (0 if ((qq < 2) == (sidx == 0)) else 2) + (rr & 1)
        sdrow = VT + (cb*64 + doff)*64
        sx = bl ^ ((doff >> 1) & 3)
        P[L] = (lbase, sdrow + (sx << 4), sdrow + ((sx ^ 2) << 4))
    for j in range(8):
        dg, kp = j & 3, j >> 2
        # ldmatrix x4: lane L gives the row address of matrix L>>3, row L&7
        rowaddr = {L: (P[L][0] ^ (dg << 4)) + kp*2048 for L in lanes}
        for mat in range(4):
            banks = set(((rowaddr[mat*8 + r] // 4) % 32) // 4 for r in range(8))
            if len(banks) != 8: conflicts += 1
        regs = {}
        for L in lanes:
            m, q = L >> 2, L & 3
            regs[L] = [rd32(rowaddr[mat*8 + m] + 4*q) for mat in range(4)]
        out = {}
        for L in lanes:
            m, q = L >> 2, L & 3
            e = m >= 4
            lo, hi = (0x1504, 0x3726) if e else (0x5140, 0x7362)
            s0, s1 = (lo, hi) if q < 2 else (hi, lo)
            r0, r1, r2, r3 = regs[L]
            out[L] = [prmt(r0, r1, s0), prmt(r0, r1, s1), prmt(r2, r3, s0), prmt(r2, r3, s1)]
        # stmatrix x4 .trans: thread L's reg for matrix mat holds (row 2q, col m) low and (row 2q+1, col m) high
        saddr = {L: (P[L][2] if kp else P[L][1]) + dg*16*64 for L in lanes}
        for mat in range(4):
            banks = set(((saddr[mat*8 + r] // 4) % 32) // 4 for r in range(8))
            if len(banks) != 8: conflicts += 1
            for L in lanes:
                m, q = L >> 2, L & 3
                v = out[L][mat]
                for half in range(2):
                    row = 2*q + half
                    a = saddr[mat*8 + row] + 2*m
                    mem[a] = (v >> (16*half)) & 255
                    mem[a+1] = (v >> (16*half + 8)) & 255
bad = 0
for n in range(512):
    for k in range(64):
        if mem[VT + sw64(n, k)] != K[k][n]: bad += 1
print('wrong bytes', bad, 'of', 512*64, '; conflicting matrix accesses', conflicts)

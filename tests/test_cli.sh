#!/bin/sh
# Runs the `mla` command-line tool with good and bad invocations and checks exit codes and key
# output lines. Usage: tests/test_cli.sh [BUILD_DIR]   (default: build)
# Prints one line per case and "N passed, N failed" at the end; exit status 1 on any failure.
BUILD_DIR=${1:-build}
MLA="$BUILD_DIR/mla"
passed=0
failed=0
OUT=$(mktemp)
ERR=$(mktemp)
trap 'rm -f "$OUT" "$ERR"' EXIT

if [ ! -x "$MLA" ]; then
    echo "FAIL  $MLA not found or not executable"
    echo "0 passed, 1 failed"
    exit 1
fi

# run_case NAME EXPECTED_EXIT ARGS... : runs mla, records stdout/stderr, checks the exit code.
run_case() {
    name=$1
    expected=$2
    shift 2
    "$MLA" "$@" >"$OUT" 2>"$ERR"
    rc=$?
    if [ "$rc" -ne "$expected" ]; then
        fail "$name: exit $rc, expected $expected (mla $*)"
        sed 's/^/      /' "$ERR" | tail -5
        return 1
    fi
    return 0
}

pass() { passed=$((passed + 1)); echo "ok    $1"; }
fail() { failed=$((failed + 1)); echo "FAIL  $1"; }

# expect NAME FILE PATTERN : the file has a line matching the extended regex.
expect() {
    if grep -Eq -e "$3" "$2"; then return 0; fi
    fail "$1: no line matching '$3'"
    sed 's/^/      /' "$2" | tail -8
    return 1
}

# ---- good invocations ----
if run_case "info" 0 info && expect info "$OUT" '^libmla [0-9]+\.[0-9]+\.[0-9]+' &&
    expect info "$OUT" '^build: ' && expect info "$OUT" '^  cpu: ' &&
    expect info "$OUT" 'available +yes' && expect info "$OUT" 'page sizes' &&
    expect info "$OUT" 'max q_len'; then pass "info"; fi

if run_case "help" 0 help && expect help "$OUT" 'usage: mla'; then pass "help"; fi
if run_case "check --help" 0 check --help && expect "check --help" "$OUT" '--kv-dtype'; then
    pass "check --help"
fi
if run_case "bench --help" 0 bench --help && expect "bench --help" "$OUT" '--iters'; then
    pass "bench --help"
fi

if run_case "check cpu default" 0 check --backend cpu --seed 11 &&
    expect "check cpu default" "$OUT" '^  cache_write .*PASS$' &&
    expect "check cpu default" "$OUT" '^  decode out .*PASS$' &&
    expect "check cpu default" "$OUT" '^  decode lse .*PASS$' &&
    expect "check cpu default" "$OUT" '^  prefill out .*PASS$' &&
    expect "check cpu default" "$OUT" '^  prefill lse .*PASS$' &&
    expect "check cpu default" "$OUT" '^check: PASS'; then pass "check cpu default"; fi

if run_case "check spec decode fp8 q" 0 check --backend cpu --op decode --q-len 3 \
    --q-dtype fp8 --kv-dtype bf16 --page-size 32 --batch 3 --seq-len 2,700,129 --seed 12 &&
    expect "check spec decode fp8 q" "$OUT" 'q_len=3' &&
    expect "check spec decode fp8 q" "$OUT" '^check: PASS' &&
    ! grep -q '^  prefill' "$OUT"; then pass "check spec decode fp8 q"; fi

# --fp8-math 1 reaches the config (echoed); the CPU backend stays exact, so the usual bound holds.
if run_case "check fp8 math cpu" 0 check --backend cpu --op decode --q-dtype fp8 --fp8-math 1 \
    --heads 16 --q-len 4 --batch 2 --seq-len 900 --seed 15 &&
    expect "check fp8 math cpu" "$OUT" 'decode_fp8_math 1' &&
    expect "check fp8 math cpu" "$OUT" '^  decode out .*\(tol 1e-02\).*PASS$' &&
    expect "check fp8 math cpu" "$OUT" '^check: PASS'; then pass "check fp8 math cpu"; fi

if run_case "check prefill ragged" 0 check --backend cpu --op prefill --prefill-batch 3 \
    --prefill-len 40,7 --prefill-kv-len 90,3 --causal 1 --heads 4 --seed 13 &&
    expect "check prefill ragged" "$OUT" 'q_lens=40,7,40 kv_lens=90,3,90' &&
    expect "check prefill ragged" "$OUT" '^check: PASS' &&
    ! grep -q '^  decode' "$OUT"; then pass "check prefill ragged"; fi

if run_case "check auto" 0 check --backend auto --op decode --batch 2 --seq-len 300 --seed 14 &&
    expect "check auto" "$OUT" '^check: PASS'; then pass "check auto"; fi

if run_case "check page size adjusted" 0 check --backend cpu --op decode --page-size 16 \
    --batch 1 --seq-len 100 --seed 15 && expect "page adjusted" "$OUT" 'page=(32|64)' &&
    expect "page adjusted" "$ERR" 'page_size'; then pass "check page size adjusted"; fi

if run_case "bench cpu" 0 bench --backend cpu --iters 2 --warmup 0 --seed 16 &&
    expect "bench cpu" "$OUT" '^  decode +median +[0-9.]+ ms.*GB/s.*TFLOP/s' &&
    expect "bench cpu" "$OUT" '^  prefill +median +[0-9.]+ ms.*GB/s.*TFLOP/s'; then
    pass "bench cpu"
fi

if run_case "bench --op=decode" 0 bench --backend=cpu --op=decode --iters=1 --seq-len=64 &&
    ! grep -q '^  prefill' "$OUT"; then pass "bench --op=decode"; fi

# A registered backend that is unavailable here: a clear message and exit 1, not a crash.
"$MLA" info >"$OUT" 2>&1
if grep -A1 '^  hopper:' "$OUT" | grep -q 'available +no\|available  *no'; then
    if run_case "check unavailable hopper" 1 check --backend hopper &&
        expect "check unavailable hopper" "$ERR" "backend 'hopper' is not available here: .+"; then
        pass "check unavailable hopper"
    fi
fi

# ---- bad invocations: exit 2 and a message naming the option and the allowed values ----
bad_case() {
    name=$1
    pattern=$2
    shift 2
    if run_case "$name" 2 "$@" && expect "$name" "$ERR" "$pattern"; then pass "$name"; fi
}
bad_case "no command" 'usage: mla'
bad_case "unknown command" "unknown command 'frobnicate'" frobnicate
bad_case "unknown option" "unknown option '--frob'" check --frob 1
bad_case "missing value" "'--heads' needs a value" check --heads
bad_case "heads 0" '--heads: invalid value .0. \(allowed: an integer in 1\.\.128\)' check --heads 0
bad_case "heads text" '--heads: invalid value .x.' bench --heads x
bad_case "fp8 math 2" '--fp8-math: invalid value .2. \(allowed: an integer in 0\.\.1\)' check --fp8-math 2
bad_case "kv dtype" '--kv-dtype: invalid value .fp16. \(allowed: fp8, bf16\)' check --kv-dtype fp16
bad_case "q dtype" '--q-dtype: invalid value .int8. \(allowed: bf16, fp8\)' check --q-dtype int8
bad_case "op" '--op: invalid value .both. \(allowed: decode, prefill, all\)' bench --op both
bad_case "q-len 9" '--q-len: invalid value .9.' check --q-len 9
bad_case "causal 2" '--causal: invalid value .2.' check --causal 2
bad_case "seq-len list" '--seq-len: invalid value .1,,2.' check --seq-len 1,,2
bad_case "seq-len 0" '--seq-len: invalid value .0.' check --seq-len 0
bad_case "seed" '--seed: invalid value .-3.' check --seed -3
bad_case "backend" "unknown backend 'nope' \(allowed: auto, cpu" check --backend nope
bad_case "stray argument" "unexpected argument 'extra'" bench extra
bad_case "info option" "unknown option '--x'" info --x

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

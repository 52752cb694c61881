# libmla build. `make run` builds and runs the CLI check (GPU when present, CPU otherwise);
# `make test` builds and runs every test. CUDA sources build when nvcc is found.
CC       ?= cc
PREFIX   ?= /usr/local
BUILD    := build
OPT      ?= -O2
CFLAGS_BASE := -std=c11 $(OPT) -g -Wall -Wextra -Werror -fPIC -pthread \
               -D_POSIX_C_SOURCE=200809L -Iinclude -Isrc/core
SAN      ?=
CFLAGS   := $(CFLAGS_BASE) $(SAN) $(EXTRA_CFLAGS)
LDLIBS   := -lm -pthread

NVCC ?= $(shell command -v nvcc 2>/dev/null)
ifneq ($(NVCC),)
  CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
  NVCCFLAGS  ?= -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Xcompiler -fPIC \
                -Iinclude -Isrc/core -Isrc/cuda --expt-relaxed-constexpr -lineinfo \
                -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings
  # For kernel experiments: make BUILD=build-x EXTRA_NVCCFLAGS=-DNAME=VALUE
  NVCCFLAGS  += $(EXTRA_NVCCFLAGS)
  CUDA_C_SRC := src/cuda/hopper_backend.c
  CU_SRC     := $(sort $(wildcard src/cuda/*.cu src/cuda/*/*.cu))
  CFLAGS     += -DMLA_HAVE_CUDA -I$(CUDA_HOME)/include
  # nvcc-generated host code needs the C++ runtime (static-init guards).
  LDLIBS     += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lstdc++
  # Benchmarks measure the tensor-core ceiling with a cuBLASLt GEMM in the same run.
  BENCH_LDLIBS := -lcublasLt
  # ... and read the SM clock the load left behind (bench/clock_probe.cu).
  BENCH_CU_OBJ := $(BUILD)/bench/clock_probe.o
  BUILD_KIND := CPU + CUDA (sm_90a)
  # Kernel forms behind compile-time switches, compiled (not linked) so that they cannot rot:
  # v10's byte-permute V transposition, its V^T handed over per half and its timeline hooks
  # for bench/probes/v10_timeline.cu (src/cuda/sm90/decode_v10_fp8mma.cuh), float16 partials
  # for the wgmma decode kernels (decode_v3_wgmma.cuh).
  CU_SWITCH_OBJ := $(BUILD)/switches/decode_v10_units.cu.o $(BUILD)/switches/decode_wide_half.cu.o \
                   $(BUILD)/switches/decode_v10_vfull_halves.cu.o $(BUILD)/switches/decode_seesaw_timeline.cu.o
  # The device probes (bench/probes/*.cu: traces, timelines, pipe rates), compiled by `make test`
  # (not linked, not run) so that they cannot rot: decode_trace.cu had stopped compiling when
  # the decode plan took the batch size, unnoticed for a session.
  CU_PROBE_OBJ := $(patsubst bench/probes/%.cu,$(BUILD)/probes/%.o,$(sort $(wildcard bench/probes/*.cu)))
else
  CUDA_C_SRC := src/cuda/hopper_stub.c
  CU_SRC     :=
  BUILD_KIND := CPU only (nvcc not found: the hopper backend reports itself unavailable)
  CU_SWITCH_OBJ :=
  CU_PROBE_OBJ :=
  BENCH_CU_OBJ :=
endif

LIB_C_SRC := $(sort $(wildcard src/core/*.c src/cpu/*.c)) src/cuda/hopper_caps.c $(CUDA_C_SRC)
LIB_OBJ   := $(LIB_C_SRC:%.c=$(BUILD)/%.o) $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
CLI_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(sort $(wildcard cli/*.c)))
TEST_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(sort $(wildcard tests/*.c)))
BENCH_SRC := $(sort $(wildcard bench/*.c))
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all lib run test test-c sanitize msan install clean bench gpu-tests
all: lib $(BUILD)/mla $(BUILD)/mla_tests $(CU_SWITCH_OBJ)
	@echo "libmla built: $(BUILD_KIND)"

lib: $(BUILD)/libmla.a $(BUILD)/libmla.so

$(BUILD)/%.o: %.c $(wildcard include/*.h src/core/*.h src/cpu/*.h src/cuda/*.h tests/*.h cli/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu $(wildcard include/*.h src/core/*.h src/cuda/*.h src/cuda/*/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/switches/decode_v10_units.cu.o: src/cuda/sm90/decode.cu $(wildcard include/*.h src/core/*.h src/cuda/*.h src/cuda/*/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DMLA_V10_UNITS_TRANSPOSE -c $< -o $@

$(BUILD)/switches/decode_v10_vfull_halves.cu.o: src/cuda/sm90/decode.cu $(wildcard include/*.h src/core/*.h src/cuda/*.h src/cuda/*/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DMLA_V10_VFULL_HALVES -c $< -o $@

$(BUILD)/switches/decode_seesaw_timeline.cu.o: src/cuda/sm90/decode.cu $(wildcard include/*.h src/core/*.h src/cuda/*.h src/cuda/*/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DMLA_SEESAW_TIMELINE -c $< -o $@

$(BUILD)/probes/%.o: bench/probes/%.cu $(wildcard bench/probes/*.h include/*.h src/core/*.h src/cuda/*.h src/cuda/*/*.cuh src/cuda/*/*.cu)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/switches/decode_wide_half.cu.o: src/cuda/sm90/decode.cu $(wildcard include/*.h src/core/*.h src/cuda/*.h src/cuda/*/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DMLA_WIDE_HALF_PARTIALS -c $< -o $@

$(BUILD)/libmla.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/libmla.so: $(LIB_OBJ)
	$(CC) $(CFLAGS) -shared -o $@ $^ $(LDLIBS)

$(BUILD)/mla: $(CLI_OBJ) $(BUILD)/libmla.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libmla.a $(LDLIBS)

$(BUILD)/mla_tests: $(TEST_OBJ) $(BUILD)/libmla.a
	$(CC) $(CFLAGS) -o $@ $(TEST_OBJ) $(BUILD)/libmla.a $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(wildcard bench/*.h) $(BUILD)/libmla.a $(BENCH_CU_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BENCH_CU_OBJ) $(BUILD)/libmla.a $(LDLIBS) $(BENCH_LDLIBS)

$(BUILD)/bench/clock_probe.o: bench/clock_probe.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

bench: $(BENCH_BIN)

# GPU tests (device machine only): every GPU operation against the CPU reference backend.
GPU_TEST_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(sort $(wildcard tests/gpu/*.c))) \
                $(BUILD)/tests/test_main.o $(patsubst %.c,$(BUILD)/%.o,$(wildcard tests/oracle.c))
$(BUILD)/mla_gpu_tests: $(GPU_TEST_OBJ) $(BUILD)/libmla.a
	$(CC) $(CFLAGS) -o $@ $(GPU_TEST_OBJ) $(BUILD)/libmla.a $(LDLIBS)
# Every float32 through Hopper's cvt instructions vs the CPU conversions (bit-exact).
$(BUILD)/gpu_convert_check: tests/gpu/convert_exhaustive.cu $(BUILD)/libmla.a
	$(NVCC) $(NVCCFLAGS) -Xcompiler -fopenmp -o $@ $< $(BUILD)/libmla.a -lgomp
gpu-tests: $(BUILD)/mla_gpu_tests $(BUILD)/gpu_convert_check

# The main job: device check of a DeepSeek-V3-like problem (GPU if present, else CPU).
run: all
	./$(BUILD)/mla info
	./$(BUILD)/mla check --backend auto

# Every test: C tests (+ Python tests when python3 with numpy and pytest is present),
# then one summary line "N passed, N failed".
test: all lib $(CU_PROBE_OBJ)
	@scripts/run-tests $(BUILD)

test-c: $(BUILD)/mla_tests
	./$(BUILD)/mla_tests

# ASan + UBSan build of the library, the C tests and the CLI in a separate folder
# (scripts/run-tests also runs tests/test_cli.sh and the Python tests on it).
sanitize:
	$(MAKE) BUILD=build-san OPT=-O1 NVCC= SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" build-san/mla_tests build-san/mla build-san/libmla.so
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./build-san/mla_tests

# MemorySanitizer build (clang) of the same: reads of uninitialized memory, which ASan does not
# see (it found a test that captured a graph over input buffers it had not filled yet).
msan:
	$(MAKE) BUILD=build-msan CC=clang OPT=-O1 NVCC= SAN="-fsanitize=memory -fsanitize-memory-track-origins -fno-omit-frame-pointer" build-msan/mla_tests build-msan/mla
	./build-msan/mla_tests

install: lib
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/mla.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/libmla.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libmla.so $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/mla $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBS@|$(LDLIBS)|g' mla.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/mla.pc

clean:
	rm -rf build build-san build-msan

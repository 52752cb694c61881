cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
timeout 200 build/mla_gpu_tests gpu_decode > $OUT/tests_all.txt 2>&1; echo all rc=$?; tail -1 $OUT/tests_all.txt
timeout 150 $cs --tool memcheck build/mla_gpu_tests gpu_decode_no_causal gpu_decode_bad_page gpu_decode_adjacent > $OUT/memcheck.txt 2>&1; echo memcheck rc=$?; grep "ERROR SUMMARY\|passed" $OUT/memcheck.txt | tail -2
timeout 150 $cs --tool racecheck build/mla_gpu_tests gpu_decode_no_causal gpu_decode_bad_page > $OUT/racecheck.txt 2>&1; echo racecheck rc=$?; grep "RACECHECK SUMMARY\|passed" $OUT/racecheck.txt | tail -2
sub="gpu_decode_bf16 gpu_decode_long gpu_decode_no_causal gpu_decode_adjacent gpu_decode_uneven gpu_decode_mid gpu_decode_bad_page"
MLA_DECODE_BF16_ROWS32=n32 timeout 100 build/mla_gpu_tests $sub > $OUT/n32.txt 2>&1; echo n32 rc=$?; tail -1 $OUT/n32.txt
timeout 100 build/mla check --backend auto > $OUT/check.txt 2>&1; echo check rc=$?; tail -2 $OUT/check.txt
timeout 250 build/bench/decode --reps 20 > $OUT/full_bench.txt 2>&1; echo bench rc=$?; grep "copy D2D" $OUT/full_bench.txt; grep "^| bf16" $OUT/full_bench.txt | cut -c1-110

#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer's coverage instrumentation on the stable toolchain
# (sancov through -Cpasses/-Cllvm-args, as cargo-fuzz does without a sanitizer) and fuzzes
# each one for a fixed time from the seeds, so `cargo xtask test` runs them all.
#
#   bash fuzz/run.sh            # 10 s per target (what the test command runs)
#   FUZZ_SECONDS=600 bash fuzz/run.sh   # a longer run
#
# A crash stops the run with libFuzzer's report and the input that crashed it (in
# target/fuzz/artifacts/<target>/). Nightly with AddressSanitizer is in fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-10}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
out="target/fuzz"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Copt-level=1"
# `--target`: the flags then reach the targets' code only, not build scripts and proc-macros.
cargo build --manifest-path fuzz/Cargo.toml --features server --target-dir "$out" --target "$triple"
bin="$out/$triple/debug"
for target in decode_frames parse_cursor write_bodies parse_stream_head; do
  corpus="$out/corpus/$target"
  mkdir -p "$corpus" "$out/artifacts/$target"
  cp fuzz/seeds/* "$corpus/"
  log="$out/$target.log"
  echo "fuzzing $target for ${seconds}s"
  if ! "$bin/$target" -max_total_time="$seconds" -max_len=16384 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$target/" "$corpus" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target failed; the input is in $out/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$log" || true
done
echo "fuzz: 4 targets, ${seconds}s each, no crash"

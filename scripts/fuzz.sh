#!/usr/bin/env bash
# fuzz.sh - builds the cargo-fuzz targets of fuzz/ and runs each for a bounded time.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET ...]   (default: 30 s each, every target)
# Each run starts from the seed corpus in fuzz/corpus/TARGET (read only) and keeps what it
# finds in a scratch corpus ($FUZZ_WORK, default /tmp/xgate-fuzz/TARGET), so the repository's
# seeds stay small. A crash stops the script with libFuzzer's report and the input under
# fuzz/artifacts/TARGET/. Prints the executions each target ran (FUZZING.md records them).
# FUZZ_ARGS adds libFuzzer options (e.g. FUZZ_ARGS=-max_len=256).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). The toolchain here is stable:
# cargo-fuzz's sanitizer flags are unstable options, allowed with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_EACH="${1:-30}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(oauth1 path_rules endpoint_match config metering stream_lines)
fi
WORK="${FUZZ_WORK:-/tmp/xgate-fuzz}"
export RUSTC_BOOTSTRAP=1

cargo fuzz build -O >/dev/null
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t"
  log="$WORK/$t.log"
  if ! cargo fuzz run -O "$t" "$WORK/$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz.sh: $t failed (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "$t: ${runs:-?} executions in ${SECONDS_EACH} s, no crash"
done

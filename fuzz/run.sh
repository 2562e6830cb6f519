#!/usr/bin/env bash
# Runs every fuzz target (or those named in FUZZ_TARGETS) for SECONDS each
# (default 30), starting from the committed seeds in seeds/<target>; new
# inputs grow corpus/<target> (not committed). Prints executions per target;
# exits non-zero if any target found a crash (kept in artifacts/<target>/:
# add it to seeds/ and a regression test once fixed).
#   fuzz/run.sh [SECONDS]
# Needs cargo-fuzz (vendor-setup.sh installs it). Stable Rust: no sanitizer,
# Rust's own checks (bounds, overflow with debug assertions) find the bugs.
set -euo pipefail
secs=${1:-30}
cd "$(dirname "$0")"
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
cargo fuzz build --sanitizer none --debug-assertions 2>&1 | tail -1
bin=target/x86_64-unknown-linux-gnu/release
failed=()
printf '%-22s %14s %8s\n' target executions result
for t in $targets; do
  if [ "$t" = xdp_parity ] && [ "$(id -u)" -ne 0 ]; then
    printf '%-22s %14s %8s\n' "$t" - "skipped (loads BPF: needs root)"
    continue
  fi
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
  log="artifacts/$t/last.log"
  if "$bin/$t" -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 \
      -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t" > "$log" 2>&1; then
    result=ok
  else
    result=CRASH
    failed+=("$t")
  fi
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  printf '%-22s %14s %8s\n' "$t" "$execs" "$result"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (inputs and logs under fuzz/artifacts/)" >&2
  for t in "${failed[@]}"; do tail -30 "artifacts/$t/last.log" >&2; done
  exit 1
fi

#!/usr/bin/env bash
# Builds the AssemblyScript proxy-wasm test filters (assembly/*.ts) into
# build/*.wasm for stack/plugins/tests/assemblyscript.rs. Idempotent; needs
# node and npm. Pinned: assemblyscript 0.17.14, the newest that compiles
# @solo-io/proxy-runtime 0.1.8 unmodified (0.18+ dropped the runtime the
# SDK imports: rt/index-full, __retain/__release, bindings/wasi_unstable).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
mkdir -p build
for src in assembly/*.ts; do
  name=$(basename "$src" .ts)
  # Up to date: newer than its source and the SDK lock.
  if [ "build/$name.wasm" -nt "$src" ] && [ "build/$name.wasm" -nt package-lock.json ]; then
    continue
  fi
  # abort_proc_exit: the SDK's abort logs, then calls wasi proc_exit
  # (a trap in the host).
  npx --no-install asc "$src" -b "build/$name.wasm" -t "build/$name.wat" \
    --use abort=abort_proc_exit --optimize
done
echo "build.sh: $(ls build/*.wasm | wc -l) filters up to date in $(pwd)/build"

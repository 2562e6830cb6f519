#!/usr/bin/env bash
# Builds target/debian/ferrogate_<version>_<arch>.deb with cargo-deb:
# the release binary plus what is generated from it (man pages, gzipped; shell
# completions), then the package (control/Cargo.toml [package.metadata.deb]).
#   packaging/build-deb.sh [cargo-deb options]   (vendor-setup.sh installs cargo-deb)
#
# FG_DEB_BIN=<binary> CARGO_TARGET_DIR=<scratch dir> packaging/build-deb.sh -o <dir>
# packages an already-built binary instead (tests/tests/package_deb.rs, with
# the debug build): no cargo build; it is staged as <scratch dir>/release/,
# the path cargo-deb's `target/release/` assets resolve to.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
stage="$target/release"
if [ -n "${FG_DEB_BIN:-}" ]; then
  # Never replace a real release build with another binary.
  if [ -z "${CARGO_TARGET_DIR:-}" ] || { [ -e "$stage/ferrogate" ] && [ ! -L "$stage/ferrogate" ]; }; then
    echo "build-deb.sh: FG_DEB_BIN needs CARGO_TARGET_DIR set to a scratch directory" >&2
    exit 2
  fi
  mkdir -p "$stage"
  ln -sfn "$(realpath "$FG_DEB_BIN")" "$stage/ferrogate"
else
  cargo build --release -p ferrogate-control --bin ferrogate
fi
bin="$stage/ferrogate"
rm -rf "$stage/man" "$stage/completions"
"$bin" man --out-dir "$stage/man"
# Debian installs man pages gzipped (policy 12.1; man reads them as they are).
gzip -9n "$stage/man/"*.1
mkdir -p "$stage/completions"
"$bin" completions bash > "$stage/completions/ferrogate.bash"
"$bin" completions zsh > "$stage/completions/_ferrogate"
"$bin" completions fish > "$stage/completions/ferrogate.fish"
cargo deb -p ferrogate-control --no-build "$@"

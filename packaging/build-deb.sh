#!/usr/bin/env bash
# Builds target/debian/ferrogate_<version>_<arch>.deb with cargo-deb:
# the release binary plus what is generated from it (man pages, shell
# completions), then the package (control/Cargo.toml [package.metadata.deb]).
#   cargo install cargo-deb --locked   (once)
#   packaging/build-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p ferrogate-control --bin ferrogate
bin="$target/release/ferrogate"
rm -rf "$target/release/man" "$target/release/completions"
"$bin" man --out-dir "$target/release/man"
mkdir -p "$target/release/completions"
"$bin" completions bash > "$target/release/completions/ferrogate.bash"
"$bin" completions zsh > "$target/release/completions/_ferrogate"
"$bin" completions fish > "$target/release/completions/ferrogate.fish"
cargo deb -p ferrogate-control --no-build "$@"

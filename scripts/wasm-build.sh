#!/usr/bin/env bash
# Build a crate for wasm32-unknown-unknown in release mode.
#
# Usage: scripts/wasm-build.sh -p CRATE [more cargo build args...]
#
# Route 1: rustup's cargo, when `rustup target list --installed` has wasm32.
# Route 2: Debian's rustc-web/cargo-web (1.96) building std from source with
#          -Zbuild-std (RUSTC_BOOTSTRAP=1), in its own target dir
#          (target/wasm-debian, override with WASM_TARGET_DIR) so it does not
#          disturb the fingerprints of the native target dir.
# Prints the produced .wasm file(s) (for cdylib/bin crates), else just success.
set -euo pipefail
cd "$(dirname "$0")/.."
target=wasm32-unknown-unknown

[ $# -gt 0 ] || { echo "usage: $0 -p CRATE [cargo build args...]" >&2; exit 2; }

if command -v rustup >/dev/null &&
   rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  route="rustup"
  cmd=(cargo build --release --target "$target")
elif [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] &&
     [ -d /usr/lib/rustlib/src/rust/library ] && [ -x /usr/lib/llvm-22/bin/wasm-ld ]; then
  route="debian"
  # Name Debian's compiler explicitly: rustup's ~/.cargo/bin comes first on PATH.
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
  export CARGO_TARGET_DIR="${WASM_TARGET_DIR:-$PWD/target/wasm-debian}"
  unset RUSTC_WRAPPER RUSTUP_TOOLCHAIN
  # lld-22's wasm linker by name: Debian's `rust-lld` (the target's default) comes with
  # rust-web-llvm, which apt does not install without recommends.
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=/usr/lib/llvm-22/bin/wasm-ld
  cmd=(/usr/bin/cargo build --release --target "$target" "-Zbuild-std=std,panic_abort")
else
  cat >&2 <<EOF
wasm-build: no way to build for $target on this machine. Either:
  rustup target add $target   (needs rustup and internet), or
  scripts/toolchain.sh wasm                  (Debian: rustc-web cargo-web rust-web-src lld-22)
EOF
  exit 1
fi

echo "wasm-build: $route route: ${cmd[*]} $*"
# JSON messages go to stdout (diagnostics stay human-readable on stderr);
# keep the artifact lines that name .wasm files.
out=$("${cmd[@]}" --message-format=json-render-diagnostics "$@")
wasm=$(printf '%s\n' "$out" | grep -o '"[^"]*\.wasm"' | tr -d '"' | sort -u || true)
if [ -n "$wasm" ]; then
  while read -r f; do echo "wasm-build: $f ($(wc -c <"$f") bytes)"; done <<<"$wasm"
else
  echo "wasm-build: ok (library crate: no .wasm artifact)"
fi

#!/usr/bin/env bash
# Check, and install only what is missing, the tools trustfold's build needs.
# Idempotent and fast when everything is present; prints one line per component.
#
# Usage: scripts/toolchain.sh [SUBSET...]     (default: all)
#   base     make, a C compiler/linker, rustup components rustfmt + clippy
#   wasm     base + the wasm32 compiler route (rustup target if installed,
#            else Debian's rustc-web cargo-web rust-web-src lld-22)
#   bindgen  wasm-bindgen-cli, same version as wasm-bindgen in Cargo.lock
#   browser  binaryen (wasm-opt), chromium, chromium-driver
#   node     Node.js >= 20 and npm (the npm package's build and tests)
#   all      all of the above
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

ok() { printf '  ok       %-18s %s\n' "$1" "${2:-}"; }
inst() { printf '  install  %-18s %s\n' "$1" "${2:-}"; }

# Run as root, or through sudo when available.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo -E "$@"
  else echo "toolchain: need root (or sudo) to run: $*" >&2; exit 1; fi
}

# apt_pkgs PKG...: install the Debian packages not yet installed
# (apt-get update runs at most once per invocation, and only if needed).
apt_updated=
apt_pkgs() {
  local missing=() p
  for p in "$@"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
      ok "$p" "$(dpkg-query -W -f='${Version}' "$p")"
    else
      inst "$p"; missing+=("$p")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { echo "toolchain: no apt-get; install by hand: ${missing[*]}" >&2; exit 1; }
  if [ -z "$apt_updated" ]; then as_root apt-get update -q; apt_updated=1; fi
  as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
}

have_rustup_wasm() {
  command -v rustup >/dev/null &&
    rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown
}

base() {
  local pkgs=()
  if command -v make >/dev/null; then ok make; else pkgs+=(make); fi
  if command -v cc >/dev/null; then ok cc; else pkgs+=(gcc libc6-dev); fi
  [ ${#pkgs[@]} -eq 0 ] || apt_pkgs "${pkgs[@]}"
  command -v cargo >/dev/null || { echo "toolchain: cargo not on PATH; install rustup (https://rustup.rs)" >&2; exit 1; }
  local c
  for c in rustfmt clippy; do
    if cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
      ok "$c"
    else
      # rustup downloads here, which may hang on a machine without internet: bound it.
      inst "$c" "(rustup component add, 60 s limit)"
      timeout 60 rustup component add "$c"
    fi
  done
}

wasm() {
  if have_rustup_wasm; then
    ok wasm32-target "rustup (Debian route not needed)"
  else
    apt_pkgs rustc-web cargo-web rust-web-src lld-22
  fi
}

bindgen() {
  # The CLI must match the wasm-bindgen crate exactly: read it from Cargo.lock
  # (falling back to the =X pin in Cargo.toml when the lock has no such package).
  local v
  v=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
  [ -n "$v" ] || v=$(sed -n 's/^wasm-bindgen *= *"=\([0-9.]*\)".*/\1/p' Cargo.toml)
  [ -n "$v" ] || { echo "toolchain: cannot find the wasm-bindgen version in Cargo.lock/Cargo.toml" >&2; exit 1; }
  if [ "$(wasm-bindgen --version 2>/dev/null)" = "wasm-bindgen $v" ]; then
    ok wasm-bindgen-cli "$v"
  else
    inst wasm-bindgen-cli "$v (cargo install, about 2 min)"
    # --locked first (reproducible); its lock file can name a version the registry
    # no longer offers (seen: webpki-roots 1.0.11), so then resolve afresh.
    cargo install wasm-bindgen-cli --version "$v" --locked --force ||
      { echo "toolchain: --locked install failed; retrying without --locked" >&2
        cargo install wasm-bindgen-cli --version "$v" --force; }
  fi
}

browser() { apt_pkgs binaryen chromium chromium-driver; }

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
nodejs_npm() {
  if [ "$(node_major)" -ge 20 ] && command -v npm >/dev/null; then
    ok node "$(node --version) (npm $(npm --version))"
  else
    apt_pkgs nodejs npm
    [ "$(node_major)" -ge 20 ] ||
      { echo "toolchain: Node.js >= 20 is needed; this machine's is $(node --version 2>/dev/null || echo missing)" >&2; exit 1; }
  fi
}

[ $# -gt 0 ] || set -- all
for subset in "$@"; do
  echo "toolchain: $subset"
  case "$subset" in
    base) base ;;
    wasm) base; wasm ;;
    bindgen) bindgen ;;
    browser) browser ;;
    node) nodejs_npm ;;
    all) base; wasm; bindgen; browser; nodejs_npm ;;
    *) echo "toolchain: unknown subset '$subset' (base|wasm|bindgen|browser|node|all)" >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# Keep trustfold-core pure: its normal (non-dev) dependency tree, for the host
# and for wasm32, must not contain an async runtime, HTTP/network, database or
# OS-randomness crate. Dev-dependencies (proptest, criterion) are not checked.
set -euo pipefail
cd "$(dirname "$0")/.."
crate=trustfold-core

# Crate names (extended regex, whole name) that must not appear.
banned='tokio|tokio-.*|async-std|async-io|async-executor|async-global-executor|smol|futures-executor|mio|polling|socket2|hyper|hyper-.*|reqwest|http|http-body|h2|ureq|isahc|curl|surf|actix|actix-.*|axum|warp|tungstenite|.*-tungstenite|native-tls|rustls|sqlx|sqlx-.*|rusqlite|libsqlite3-sys|postgres|tokio-postgres|postgres-.*|diesel|sea-orm|mysql|redis|getrandom|rand|rand_chacha|rand_os|os_rng'
# Features that make a crate pull randomness from the OS.
banned_features='rand_core feature "(getrandom|os_rng|std)"|uuid feature "(v4|v7|rng|fast-rng)"'

status=0
for t in host wasm32-unknown-unknown; do
  args=(-p "$crate" --prefix none)
  [ "$t" = host ] || args+=(--target "$t")
  names=$(cargo tree "${args[@]}" -e normal | awk '{print $1}' | sort -u | { grep -vx "$crate" || true; })
  bad=$(grep -Ex "$banned" <<<"$names" || true)
  badf=$(cargo tree "${args[@]}" -e normal,features | grep -Eo "$banned_features" | sort -u || true)
  if [ -n "$bad$badf" ]; then
    echo "check-core-deps: $crate ($t) must stay pure, but its normal dependencies include:" >&2
    printf '%s\n' "$bad" "$badf" | grep -v '^$' | sed 's/^/  /' >&2
    echo "  see who pulls them in: cargo tree -p $crate -e normal,features ${args[*]:4} -i NAME" >&2
    status=1
  else
    echo "check-core-deps: $crate ($t): ok, $(wc -l <<<"$names") normal dependencies, none banned"
  fi
done
exit $status

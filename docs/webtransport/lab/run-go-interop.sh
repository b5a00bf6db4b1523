#!/bin/bash
# run-go-interop.sh: go-libp2p v0.48 (gowt) against wt-libp2p, both directions, and go's QUIC
# and WebTransport dials to the one port that wt-libp2p serves both on.
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
echo "== go dials rust (QUIC and WebTransport, same UDP port)"
"$here/wt-lab/target/debug/wt-libp2p" listen 25 > "$out/addr" 2> "$out/log" &
l=$!
for _ in $(seq 50); do [ -s "$out/addr" ] && break; sleep 0.1; done; sleep 0.3
cat "$out/addr"
for a in $(cat "$out/addr"); do timeout 20 "$here/gowt/gowt" dial "$a"; done
sleep 1; kill "$l"; wait "$l" 2>/dev/null
echo "-- rust listener log"; cat "$out/log"; echo
echo "== rust dials go"
"$here/gowt/gowt" listen 25 > "$out/goaddr" 2> "$out/golog" &
g=$!
for _ in $(seq 100); do [ -s "$out/goaddr" ] && break; sleep 0.1; done; sleep 0.3
a=$(grep webtransport "$out/goaddr" | head -1); echo "$a"
RUST_BACKTRACE=0 timeout 20 "$here/wt-lab/target/debug/wt-libp2p" dial "$a"
sleep 1; kill "$g"; wait "$g" 2>/dev/null
echo "-- go listener log"; cat "$out/golog"
rm -rf "$out"

#!/bin/bash
# run-js-libp2p.sh <open|default>: js-libp2p in headless Chromium dials wt-libp2p's
# WebTransport address (HTTP/3 + Noise with certhashes); prints the page's result and the log.
set -u
gater=${1:-open}
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
"$here/wt-lab/target/debug/wt-libp2p" listen 90 > "$out/addr" 2> "$out/log" &
listener=$!
python3 -m http.server 0 --bind 127.0.0.1 --directory "$here/js/browser" > "$out/http.log" 2>&1 &
http=$!
for _ in $(seq 50); do [ -s "$out/addr" ] && grep -q "port" "$out/http.log" && break; sleep 0.1; done
http_port=$(grep -o 'port [0-9]*' "$out/http.log" | head -1 | cut -d' ' -f2)
addr=$(grep webtransport "$out/addr")
echo "listener: $addr"
(cd "$here/js/browser" && timeout 100 node run.mjs "http://127.0.0.1:$http_port/libp2p.html?gater=$gater&addr=$addr" 2>&1 | grep -v favicon)
sleep 1
kill "$listener" "$http" 2>/dev/null
wait "$listener" "$http" 2>/dev/null
echo "--- wt-libp2p listener log"
cat "$out/log"
rm -rf "$out"

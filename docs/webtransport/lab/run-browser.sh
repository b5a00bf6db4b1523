#!/bin/bash
# run-browser.sh <switch|single>: wt-server in that mode, a static page server, headless
# Chromium (Debian's) via puppeteer-core; prints the page's results, then the server's log.
set -u
mode=${1:-switch}
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
"$here/wt-lab/target/debug/wt-server" "$mode" 120 > "$out/server.json" 2> "$out/server.log" &
server=$!
python3 -m http.server 0 --bind 127.0.0.1 --directory "$here/js/browser" > "$out/http.log" 2>&1 &
http=$!
for _ in $(seq 50); do [ -s "$out/server.json" ] && grep -q "port" "$out/http.log" && break; sleep 0.1; done
http_port=$(grep -o 'port [0-9]*' "$out/http.log" | head -1 | cut -d' ' -f2)
port=$(python3 -c "import json;print(json.load(open('$out/server.json'))['port'])")
hashes=$(python3 -c "import json;print('&'.join('hash='+h for h in json.load(open('$out/server.json'))['hashes']))")
(cd "$here/js/browser" && timeout 150 node run.mjs "http://127.0.0.1:$http_port/index.html?port=$port&$hashes" 2>&1 | grep -v favicon)
kill "$server" "$http" 2>/dev/null
wait "$server" "$http" 2>/dev/null
echo "--- wt-server ($mode) log"
cat "$out/server.log"
rm -rf "$out"

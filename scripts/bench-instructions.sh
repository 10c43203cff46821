#!/usr/bin/env bash
# bench-instructions.sh - xgate's own instructions per request (user space, every thread),
# counted by valgrind's callgrind: a figure that does not move with the machine's load, for
# changes too small for the rig's noise (a few percent of the CPU per request). Kernel time
# (the sockets) is not in it; scripts/bench-guard.sh measures the whole.
#
# xgate runs the rig's configuration (shared/bench/xgate-bench.toml, one worker so that the
# count is one thread's) under callgrind in front of the fake X API; curl sends a warm-up
# batch, the counters are zeroed, then N requests on one kept-alive connection over the
# OAuth 1.0a path (`X-Xgate-Identity: alice`), access log on; the counters are dumped.
#
# Usage: scripts/bench-instructions.sh [--bin target/release/xgate] [--requests 5000]
#          [--identity alice|main] [--top 25] [--out DIR]
#   --top N   also print the N functions with the most instructions, inclusive
#             (callgrind_annotate), for the profile-driven pass
# Needs: valgrind (apt-get install -y valgrind), nginx, curl. Traffic stays on 127.0.0.1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH="${BENCH:-$REPO/../shared/bench}"
BIN="$REPO/target/release/xgate" REQUESTS=5000 IDENTITY=alice TOP=0 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --requests) REQUESTS="$2"; shift 2 ;;
    --identity) IDENTITY="$2"; shift 2 ;;
    --top) TOP="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-instructions.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] || { echo "bench-instructions.sh: $BIN missing: cargo build --release" >&2; exit 2; }
for tool in valgrind callgrind_control nginx curl; do
  command -v "$tool" >/dev/null || { echo "bench-instructions.sh: $tool not found" >&2; exit 2; }
done
for port in 18081 18083; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "bench-instructions.sh: port $port is in use (a rig still running?)" >&2; exit 2
  fi
done
OUT="${OUT:-$(mktemp -d /tmp/xgate-instructions.XXXXXX)}"
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT/up/logs" "$OUT/up/tmp"
nginx -p "$OUT/up" -e "$OUT/up/logs/error.log" -c "$BENCH/nginx/upstream.conf" \
  -g 'daemon off;' >"$OUT/upstream.log" 2>&1 &
PIDS+=($!)
sed -e "s|^path = .*|path = \"$OUT/xgate.db\"|" \
    -e 's|^listen = "127.0.0.1:18083"|&\nworkers = 1|' \
    "$BENCH/xgate-bench.toml" >"$OUT/xgate.toml"
rm -f "$OUT"/callgrind.out*
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
  "$BIN" serve --config "$OUT/xgate.toml" >"$OUT/xgate.log" 2>&1 &
VG=$!
PIDS+=($VG)

BASE="http://127.0.0.1:18083/2/tweets"
HDR="X-Xgate-Identity: $IDENTITY"
ready=""
for _ in $(seq 1 600); do
  if curl -fsS -o /dev/null -H "$HDR" "$BASE/1" 2>/dev/null; then ready=1; break; fi
  kill -0 "$VG" 2>/dev/null || break
  sleep 0.2
done
[ -n "$ready" ] || { echo "bench-instructions.sh: xgate did not answer; $OUT/xgate.log:" >&2; tail -5 "$OUT/xgate.log" >&2; exit 2; }

# curl's URL ranges: one connection, kept alive, a different Post id per request.
batch() { curl -fsS -o /dev/null -H "$HDR" "$BASE/[$1-$2]"; }
batch 1000000 1000999
callgrind_control --zero "$VG" >/dev/null 2>&1
batch 2000000 $(( 2000000 + REQUESTS - 1 ))
callgrind_control --dump "$VG" >/dev/null 2>&1
dump="$(ls -t "$OUT"/callgrind.out.* | head -1)"
total="$(awk '/^summary:/ { print $2 }' "$dump")"

commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "# $(date -u +%FT%TZ) commit $commit, $BIN, identity $IDENTITY, $REQUESTS requests, dump: $dump"
awk -v t="$total" -v n="$REQUESTS" 'BEGIN { printf "instructions per request: %.0f\n", t / n }'
if [ "$TOP" -gt 0 ]; then
  callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -$(( TOP + 2 ))
fi

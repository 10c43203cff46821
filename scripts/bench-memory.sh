#!/usr/bin/env bash
# bench-memory.sh - xgate's resident memory (VmRSS of the process, from /proc): idle, with
# 1,000 and 10,000 idle keep-alive client connections, and after 200,000 and 400,000
# requests (flat between the two means nothing grows with traffic).
#
# xgate runs the rig's configuration (shared/bench/xgate-bench.toml: the fake X API on
# 127.0.0.1:18081, default workers, access log on) with a keep-alive timeout long enough
# that no held connection is closed while it is measured. The requests go over the OAuth 1.0a
# path (`X-Xgate-Identity: alice`). Each idle connection has had one request and its answer
# (scripts/hold_conns.py), as a real client's would.
#
# Usage: scripts/bench-memory.sh [--bin target/release/xgate] [--holds "1000 10000"]
#          [--requests 200000] [--conns 32] [--out DIR]
#   Extra environment for xgate (XGATE_LOG=warn, say) passes through.
# Needs: nginx and wrk (apt-get install -y nginx wrk), python3, curl, a release build of
# xgate, and a file-descriptor limit it may raise (ulimit -n above the largest hold + 100).
# Traffic stays on 127.0.0.1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH="${BENCH:-$REPO/../shared/bench}"
BIN="$REPO/target/release/xgate" HOLDS="1000 10000" REQUESTS=200000 CONNS=32 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --holds) HOLDS="$2"; shift 2 ;;
    --requests) REQUESTS="$2"; shift 2 ;;
    --conns) CONNS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-memory.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] || { echo "bench-memory.sh: $BIN missing: cargo build --release" >&2; exit 2; }
for tool in nginx wrk python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench-memory.sh: $tool not found" >&2; exit 2; }
done
most=0
for n in $HOLDS; do [ "$n" -gt "$most" ] && most=$n; done
ulimit -n $(( most + 1024 )) 2>/dev/null || {
  echo "bench-memory.sh: cannot raise the file-descriptor limit to $(( most + 1024 ))" >&2; exit 2; }
for port in 18081 18083 19093; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "bench-memory.sh: port $port is in use (a rig still running?)" >&2; exit 2
  fi
done

OUT="${OUT:-$(mktemp -d /tmp/xgate-memory.XXXXXX)}"
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
    -e 's|^listen = "127.0.0.1:18083"|&\nkeepalive_timeout = "3600s"|' \
    -e "s|^max_connections = .*||" \
    "$BENCH/xgate-bench.toml" >"$OUT/xgate.toml"
"$BIN" serve --config "$OUT/xgate.toml" >"$OUT/xgate.log" 2>&1 &
XGATE=$!
PIDS+=($XGATE)

URL="http://127.0.0.1:18083/2/tweets/1460323737035677698"
HDR="X-Xgate-Identity: alice"
ready=""
for _ in $(seq 1 600); do
  # Readiness from the admin port, so that the first reading is before any proxied request.
  if curl -fsS -o /dev/null http://127.0.0.1:19093/readyz 2>/dev/null; then ready=1; break; fi
  kill -0 "$XGATE" 2>/dev/null || break
  sleep 0.1
done
[ -n "$ready" ] || { echo "bench-memory.sh: xgate did not answer; $OUT/xgate.log:" >&2; tail -5 "$OUT/xgate.log" >&2; exit 2; }

# VmRSS, its anonymous part (heap, stacks) and its file-backed part (the binary's pages,
# shared with the page cache), and the peak: /proc/PID/status, in KiB.
status_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$XGATE/status"; }
ROWS="$OUT/memory.tsv"
printf 'phase\trss_kib\tanon_kib\tfile_kib\thwm_kib\n' >"$ROWS"
record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$(status_kib VmRSS)" "$(status_kib RssAnon)" \
    "$(status_kib RssFile)" "$(status_kib VmHWM)" >>"$ROWS"
}

record "idle, before any request"
curl -fsS -o /dev/null -H "$HDR" "$URL"
record "idle, after one request"

for n in $HOLDS; do
  coproc HOLD { exec python3 "$HERE/hold_conns.py" --port 18083 --count "$n" -H "$HDR"; }
  hold_pid=$HOLD_PID
  IFS= read -r line <&"${HOLD[0]}" || line="(no answer)"
  case "$line" in
    "held $n") record "$n idle keep-alive connections" ;;
    *) echo "bench-memory.sh: holding $n connections: $line" >&2; exit 1 ;;
  esac
  echo >&"${HOLD[1]}"
  wait "$hold_pid" 2>/dev/null || true
  # The server notices the closes on its next poll; wait until it has (bounded).
  for _ in $(seq 1 100); do
    [ "$(ss -Htn state established '( sport = :18083 )' | wc -l)" -eq 0 ] && break
    sleep 0.1
  done
  record "after closing them"
done

# Load in 2 s wrk runs until the total reaches the mark (at most 60 runs per mark).
total=0
load_until() {
  local mark="$1" runs=0 res reqs errs
  while [ "$total" -lt "$mark" ] && [ "$runs" -lt 60 ]; do
    res=$(wrk -t1 -c"$CONNS" -d2s --timeout 5s -H "$HDR" -s "$BENCH/wrk-report.lua" "$URL" | grep '^RESULT')
    reqs=$(sed 's/.* reqs=\([0-9]*\).*/\1/' <<<"$res")
    errs=$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^(non2xx|sockerr)=/) { split($i, kv, "="); e += kv[2] } } END { print e + 0 }' <<<"$res")
    [ "$errs" -eq 0 ] || { echo "bench-memory.sh: failed requests under load: $res" >&2; exit 1; }
    total=$(( total + reqs )); runs=$(( runs + 1 ))
  done
  [ "$total" -ge "$mark" ] || { echo "bench-memory.sh: only $total requests in $runs runs" >&2; exit 1; }
}
load_until "$REQUESTS"
record "after $total requests (c$CONNS)"
load_until $(( 2 * REQUESTS ))
record "after $total requests (c$CONNS)"

commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "# $(date -u +%FT%TZ) commit $commit, $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), rows: $ROWS"
awk -F'\t' -v holds="$HOLDS" '
  NR == 1 { next }
  { phase[NR] = $1; rss[NR] = $2; anon[NR] = $3; file[NR] = $4; hwm[NR] = $5; n = NR }
  END {
    printf "| %-40s | %8s | %9s | %9s | %9s |\n", "phase", "RSS MiB", "anon MiB", "file MiB", "peak MiB"
    printf "|%s|%s|%s|%s|%s|\n", "------------------------------------------", "---------:", "----------:", "----------:", "----------:"
    for (i = 2; i <= n; i++)
      printf "| %-40s | %8.1f | %9.1f | %9.1f | %9.1f |\n", phase[i], rss[i] / 1024, anon[i] / 1024, file[i] / 1024, hwm[i] / 1024
    split(holds, H, " "); i = 4
    for (h = 1; h in H; h++) { printf "per idle connection (%s): %.1f KiB\n", H[h], (rss[i] - rss[3]) / H[h]; i += 2 }
  }' "$ROWS"

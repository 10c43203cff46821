#!/usr/bin/env bash
# bench-shared.sh - what `[shared]` (buckets in Redis) costs per request, measured side by
# side in one run: xgate with its in-memory buckets ("memory") and the same xgate with its
# buckets in a Redis on loopback ("redis"), both forwarding to the rig's fake X API
# (shared/bench/nginx/upstream.conf). Interleaved, the order rotated each round.
#
# Per connection count, path and mode it prints: req/s, p50/p99 latency (wrk, closed loop),
# xgate's CPU µs per request, redis-server's CPU µs per request, and Redis calls per request
# by operation (from xgate's own xgate_shared_duration_seconds_count).
#
# Usage: scripts/bench-shared.sh [--xgate BIN] [--conns "1 32"] [--rounds 3] [--duration 10]
#   --paths "NAME=PATH ..." (default: override=/2/tweets/1460323737035677698, a bucket set by
#   [[limits.override]], so X's headers have no window to change; catalogue=/2/tweets?ids=1, a
#   catalogue bucket that learns from X's headers)
# Needs: nginx, wrk, curl, redis-server and redis-cli (a Redis on 127.0.0.1:6379, started here
# on a free port if none answers there). Sends traffic to 127.0.0.1 only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH="${BENCH:-$REPO/../shared/bench}"
XGATE="$REPO/target/release/xgate" CONNS="1 32" ROUNDS=3 DURATION=10
PATHS="override=/2/tweets/1460323737035677698 catalogue=/2/tweets?ids=1"
while [ $# -gt 0 ]; do
  case "$1" in
    --xgate) XGATE="$2"; shift 2 ;;
    --conns) CONNS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --paths) PATHS="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

TMP="$(mktemp -d /tmp/xgate-bench-shared.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The fake X API.
mkdir -p "$TMP/up/logs" "$TMP/up/tmp"
nginx -p "$TMP/up" -e "$TMP/up/logs/error.log" -c "$BENCH/nginx/upstream.conf" -g 'daemon off;' &
PIDS+=($!)

# Redis: the machine's, else one of our own.
REDIS_PORT=6379
if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
  REDIS_PORT=16379
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  PIDS+=($!)
fi
for _ in $(seq 50); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_PID="$(redis-cli -p $REDIS_PORT info server | awk -F: '/^process_id/{print $2}' | tr -d '\r')"

# Two xgates from the rig's config: in memory on :18083, on Redis on :18086.
PREFIX="xbench:$(date +%s):"
sed -e 's#/tmp/xbench-xgate.db#'"$TMP"'/mem.db#' "$BENCH/xgate-bench.toml" > "$TMP/memory.toml"
sed -e 's#127.0.0.1:18083#127.0.0.1:18086#; s#127.0.0.1:19093#127.0.0.1:19096#' \
    -e 's#/tmp/xbench-xgate.db#'"$TMP"'/redis.db#' "$BENCH/xgate-bench.toml" > "$TMP/redis.toml"
printf '\n[shared]\nredis_url = "redis://127.0.0.1:%s"\nkey_prefix = "%s"\n' "$REDIS_PORT" "$PREFIX" >> "$TMP/redis.toml"
XGATE_LOG=warn "$XGATE" serve --config "$TMP/memory.toml" 2>"$TMP/memory.log" & PIDS+=($!); MEM_PID=$!
XGATE_LOG=warn "$XGATE" serve --config "$TMP/redis.toml" 2>"$TMP/redis.log" & PIDS+=($!); RED_PID=$!
for port in 18081 18083 18086; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/2/tweets/1" && break; sleep 0.1; done
done

declare -A URL=([memory]=http://127.0.0.1:18083 [redis]=http://127.0.0.1:18086)
declare -A PID=([memory]=$MEM_PID [redis]=$RED_PID)
HZ=$(getconf CLK_TCK)
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# Redis calls so far by the redis-mode xgate, as "op=count ...".
calls() {
  curl -s http://127.0.0.1:19096/metrics |
    sed -n 's/^xgate_shared_duration_seconds_count{backend="redis",op="\([a-z]*\)"} \([0-9]*\)$/\1=\2/p' | tr '\n' ' '
}
count_of() { tr ' ' '\n' <<<"$1" | awk -F= -v op="$2" '$1 == op {print $2} END {print 0}' | head -1; }

printf 'path\tconns\tmode\trps\tp50_us\tp99_us\txgate_cpu_us\tredis_cpu_us\treserve_per_req\tsettle_per_req\n' | tee "$TMP/raw.tsv"
for c in $CONNS; do
  for entry in $PATHS; do
    name="${entry%%=*}" path="${entry#*=}"
    for r in $(seq "$ROUNDS"); do
      order="memory redis"; [ $((r % 2)) -eq 0 ] && order="redis memory"
      for mode in $order; do
        x0=$(ticks "${PID[$mode]}") r0=$(ticks "$REDIS_PID") k0=$(calls)
        out=$(wrk -t1 -c"$c" -d"${DURATION}s" -s "$BENCH/wrk-report.lua" "${URL[$mode]}$path" | grep '^RESULT')
        x1=$(ticks "${PID[$mode]}") r1=$(ticks "$REDIS_PID") k1=$(calls)
        reqs=$(sed 's/.*reqs=\([0-9]*\).*/\1/' <<<"$out")
        rps=$(sed 's/.*rps=\([0-9.]*\).*/\1/' <<<"$out")
        p50=$(sed 's/.*p50_us=\([0-9]*\).*/\1/' <<<"$out")
        p99=$(sed 's/.*p99_us=\([0-9]*\).*/\1/' <<<"$out")
        non2xx=$(sed 's/.*non2xx=\([0-9]*\).*/\1/' <<<"$out")
        [ "$non2xx" = 0 ] || echo "warning: $non2xx non-2xx answers ($mode $path)" >&2
        xcpu=$(awk -v a="$x0" -v b="$x1" -v n="$reqs" -v hz="$HZ" 'BEGIN{printf "%.1f", (b-a)/hz*1e6/n}')
        rcpu=$(awk -v a="$r0" -v b="$r1" -v n="$reqs" -v hz="$HZ" 'BEGIN{printf "%.1f", (b-a)/hz*1e6/n}')
        res=$(awk -v a="$(count_of "$k0" reserve)" -v b="$(count_of "$k1" reserve)" -v n="$reqs" -v m="$mode" 'BEGIN{printf "%.3f", m=="redis" ? (b-a)/n : 0}')
        set_=$(awk -v a="$(count_of "$k0" settle)" -v b="$(count_of "$k1" settle)" -v n="$reqs" -v m="$mode" 'BEGIN{printf "%.3f", m=="redis" ? (b-a)/n : 0}')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$c" "$mode" "$rps" "$p50" "$p99" "$xcpu" "$rcpu" "$res" "$set_" | tee -a "$TMP/raw.tsv"
      done
    done
  done
done

echo
echo "medians (raw rows: $TMP/raw.tsv):"
awk -F'\t' 'NR > 1 {k = $1 "\t" $2 "\t" $3; for (i = 4; i <= 10; i++) v[k, i, ++n[k, i]] = $i; keys[k] = 1}
  END {
    print "path\tconns\tmode\trps\tp50_us\tp99_us\txgate_cpu_us\tredis_cpu_us\treserve/req\tsettle/req"
    for (k in keys) {
      line = k
      for (i = 4; i <= 10; i++) {
        m = n[k, i]; delete a; for (j = 1; j <= m; j++) a[j] = v[k, i, j]
        for (x = 1; x <= m; x++) for (y = x + 1; y <= m; y++) if (a[y] + 0 < a[x] + 0) { t = a[x]; a[x] = a[y]; a[y] = t }
        line = line "\t" a[int((m + 1) / 2)]
      }
      print line
    }
  }' "$TMP/raw.tsv" | sort

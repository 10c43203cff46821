#!/usr/bin/env bash
# bench-alloc.sh - what the memory allocator costs and keeps, measured side by side in one
# run: several xgate builds (or one build under different allocator settings), each
# forwarding to the rig's fake X API (shared/bench/nginx/upstream.conf), interleaved with the
# order rotated each round.
#
# Per round and variant: RSS when idle; xgate's CPU µs per request and req/s under
# `wrk -c32` (the OAuth 1.0a path, so the signer's allocations count); then SPIKES times a
# spike of SPIKE_CONNS connections (`wrk -t2 -cSPIKE_CONNS -d5s`), and the RSS SETTLE seconds
# after each spike, when every connection is closed (`upstream.pool_idle_timeout` is 2 s here,
# so the pool's idle connections are gone too; fds are counted to tell open connections from
# memory the allocator keeps).
#
# Usage: scripts/bench-alloc.sh [--rounds 3] [--duration 10] [--spike-conns 5000]
#          [--spikes 2] [--settle 10] [--append NAME=FILE]... NAME=COMMAND ...
#   --append adds FILE's TOML to variant NAME's config (a `[[budgets]]`, say); --spikes 0
#   measures CPU per request only.
#   COMMAND runs `COMMAND serve --config FILE` (bash word splitting, so an environment
#   prefix works), e.g.
#     glibc=target/alloc-glibc/xgate  mimalloc=target/release/xgate
#     'arena2=env MALLOC_ARENA_MAX=2 target/alloc-glibc/xgate'
# Needs: nginx, wrk, curl. Sends traffic to 127.0.0.1 only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH="${BENCH:-$REPO/../shared/bench}"
ROUNDS=3 DURATION=10 SPIKE_CONNS=5000 SPIKES=2 SETTLE=10
VARIANTS=()
declare -A APPEND
while [ $# -gt 0 ]; do
  case "$1" in
    --append) APPEND["${2%%=*}"]="${2#*=}"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --spike-conns) SPIKE_CONNS="$2"; shift 2 ;;
    --spikes) SPIKES="$2"; shift 2 ;;
    --settle) SETTLE="$2"; shift 2 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *=*) VARIANTS+=("$1"); shift ;;
    *) echo "a variant is NAME=COMMAND, not $1" >&2; exit 2 ;;
  esac
done
[ ${#VARIANTS[@]} -gt 0 ] || { echo "give at least one NAME=COMMAND" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"   # a spike needs SPIKE_CONNS fds in wrk, twice that in xgate

TMP="$(mktemp -d /tmp/xgate-bench-alloc.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# The fake X API, with room for a spike's upstream connections.
mkdir -p "$TMP/up/logs" "$TMP/up/tmp"
sed 's/worker_connections [0-9]*/worker_connections 32768/' "$BENCH/nginx/upstream.conf" > "$TMP/up/upstream.conf"
nginx -p "$TMP/up" -e "$TMP/up/logs/error.log" -c "$TMP/up/upstream.conf" -g 'daemon off; worker_rlimit_nofile 20000;' &
PIDS+=($!)

declare -A URL PID
i=0
for v in "${VARIANTS[@]}"; do
  name="${v%%=*}" cmd="${v#*=}"
  port=$((18200 + i)) admin=$((19200 + i)); i=$((i + 1))
  sed -e "s#127.0.0.1:18083#127.0.0.1:$port#; s#127.0.0.1:19093#127.0.0.1:$admin#" \
      -e "s#/tmp/xbench-xgate.db#$TMP/$name.db#" \
      -e 's#^allowed_prefixes = .*#&\npool_idle_timeout = "2s"#' "$BENCH/xgate-bench.toml" > "$TMP/$name.toml"
  if [ -n "${APPEND[$name]:-}" ]; then cat "${APPEND[$name]}" >> "$TMP/$name.toml"; fi
  # exec: the PID measured is xgate's own.
  XGATE_LOG=warn bash -c "exec $cmd serve --config $TMP/$name.toml" 2>"$TMP/$name.log" &
  PIDS+=($!); PID[$name]=$!; URL[$name]="http://127.0.0.1:$port"
done
for port in 18081 $(for n in "${!URL[@]}"; do echo "${URL[$n]##*:}"; done); do
  ok=0
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/2/tweets/1" && { ok=1; break; }; sleep 0.1; done
  [ $ok = 1 ] || { echo "nothing answers on :$port" >&2; exit 1; }
done

HZ=$(getconf CLK_TCK)
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
PATH_Q=/2/tweets/1460323737035677698

header='round\tvariant\tidle_rss_kib\trps\tcpu_us_per_req'
for s in $(seq "$SPIKES"); do header="$header\tspike${s}_rss_kib\tspike${s}_fds"; done
printf "$header\n" | tee "$TMP/raw.tsv"
for r in $(seq "$ROUNDS"); do
  # Rotate the order each round.
  order=("${VARIANTS[@]:$(( (r - 1) % ${#VARIANTS[@]} ))}" "${VARIANTS[@]:0:$(( (r - 1) % ${#VARIANTS[@]} ))}")
  for v in "${order[@]}"; do
    name="${v%%=*}" pid="${PID[${v%%=*}]}" url="${URL[${v%%=*}]}"
    idle=$(rss_kib "$pid")
    t0=$(ticks "$pid")
    out=$(wrk -t1 -c32 -d"${DURATION}s" -H 'X-Xgate-Identity: alice' -s "$BENCH/wrk-report.lua" "$url$PATH_Q" | grep '^RESULT')
    t1=$(ticks "$pid")
    reqs=$(sed 's/.*reqs=\([0-9]*\).*/\1/' <<<"$out")
    rps=$(sed 's/.*rps=\([0-9.]*\).*/\1/' <<<"$out")
    non2xx=$(sed 's/.*non2xx=\([0-9]*\).*/\1/' <<<"$out")
    [ "$non2xx" = 0 ] || echo "warning: $non2xx non-2xx answers ($name)" >&2
    cpu=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v hz="$HZ" 'BEGIN{printf "%.1f", (b-a)/hz*1e6/n}')
    row="$r\t$name\t$idle\t$rps\t$cpu"
    for _ in $(seq "$SPIKES"); do
      wrk -t2 -c"$SPIKE_CONNS" -d5s -H 'X-Xgate-Identity: alice' "$url$PATH_Q" >/dev/null 2>&1 || true
      sleep "$SETTLE"
      row="$row\t$(rss_kib "$pid")\t$(fds "$pid")"
    done
    printf "$row\n" | tee -a "$TMP/raw.tsv"
  done
done

echo
echo "medians (raw rows: $TMP/raw.tsv):"
awk -F'\t' 'NR == 1 {h = $0; sub(/^round\t/, "", h); print h; next}
  {k = $2; keys[k] = 1; cols = NF; for (i = 3; i <= NF; i++) v[k, i, ++n[k, i]] = $i}
  END {
    for (k in keys) {
      line = k
      for (i = 3; i <= cols; i++) {
        m = n[k, i]; delete a; for (j = 1; j <= m; j++) a[j] = v[k, i, j]
        for (x = 1; x <= m; x++) for (y = x + 1; y <= m; y++) if (a[y] + 0 < a[x] + 0) { t = a[x]; a[x] = a[y]; a[y] = t }
        line = line "\t" a[int((m + 1) / 2)]
      }
      print line
    }
  }' "$TMP/raw.tsv"

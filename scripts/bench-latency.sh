#!/usr/bin/env bash
# bench-latency.sh - the latency xgate adds at low load, open loop: p50 and p99 of each target
# minus those of the fake X API reached directly, beside nginx (1 worker) and the minimal hyper
# proxy (`hyper1`) in the same run.
#
# shared/bench/compare.sh runs the targets interleaved, with examples/openloop.rs in wrk's
# place: each connection sends a request every 1/RATE s whatever the answers do, and a
# request held back by a late answer counts from when it was due (no coordinated omission).
# OAuth 1.0a path (`X-Xgate-Identity: alice`), access log on, the rig's configuration.
#
# Usage: scripts/bench-latency.sh [--bin target/release/xgate] [--conns "1 8"]
#          [--rate 500] [--rounds 3] [--duration 10] [--out DIR]
#   --rate R   requests per second per connection (default 500: 500/s at 1 connection,
#              4,000/s at 8)
#   Extra environment for xgate (XGATE_LOG=warn, say) passes through.
# Needs: nginx (apt-get install -y nginx), the hyper anchor (built on first use by
# shared/bench/build-hyper-min.sh), a release build of xgate and of the load generator
# (cargo build --release --example openloop). Traffic stays on 127.0.0.1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH="${BENCH:-$REPO/../shared/bench}"
BIN="$REPO/target/release/xgate" CONNS="1 8" RATE=500 ROUNDS=3 DURATION=10 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --conns) CONNS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-latency.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] || { echo "bench-latency.sh: $BIN missing: cargo build --release" >&2; exit 2; }
LOAD="$REPO/target/release/examples/openloop"
[ -x "$LOAD" ] || { echo "bench-latency.sh: $LOAD missing: cargo build --release --example openloop" >&2; exit 2; }
HYPER_MIN_BIN="${HYPER_MIN_BIN:-/tmp/xbench-hyper-min/target/release/hyper-min-proxy}"
if [ ! -x "$HYPER_MIN_BIN" ]; then
  HYPER_MIN_BIN="$("$BENCH/build-hyper-min.sh" | tail -1)"
fi
export HYPER_MIN_BIN
OUT="${OUT:-$(mktemp -d /tmp/xgate-latency.XXXXXX)}"
mkdir -p "$OUT"

sed "s|^path = .*|path = \"$OUT/xgate.db\"|" "$BENCH/xgate-bench.toml" >"$OUT/xgate.toml"
OPENLOOP_RATE="$RATE" WRK="$LOAD" "$BENCH/compare.sh" --targets "direct nginx1 hyper1" \
  --rounds "$ROUNDS" --duration "$DURATION" --warmup 1 --conns "$CONNS" --out "$OUT/rig" \
  -H "X-Xgate-Identity: alice" --sut-name xgate --sut-url http://127.0.0.1:18083 \
  --sut-cmd "exec $BIN serve --config $OUT/xgate.toml" >"$OUT/compare.log" 2>&1 || {
  echo "bench-latency.sh: the rig failed; its log: $OUT/compare.log" >&2
  tail -5 "$OUT/compare.log" >&2
  exit 2
}

commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "# $(date -u +%FT%TZ) commit $commit, open loop at $RATE/s per connection, $ROUNDS × ${DURATION}s, raw: $OUT/rig/raw.tsv"
# raw.tsv: round conns target rps p50 p90 p99 non2xx sockerr cpu0 cpu1 steal cpu_us_per_req
awk -F'\t' '
  function median(s,   a, n, i, j, x) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j+1] = a[j]; a[j+1] = x }
    return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
  }
  NR > 1 { k = $2 SUBSEP $3; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $7; rps[k] = rps[k] " " $4
           err[$2 SUBSEP $3] += $8 + $9
           if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
  END {
    printf "%-6s %-7s %9s %8s %8s %12s %12s %7s\n", "conns", "target", "req/s", "p50 µs", "p99 µs", "p50 added", "p99 added", "errors"
    bad = 0
    for (i = 1; i <= n; i++) {
      c = order[i]; d50 = median(p50[c SUBSEP "direct"]); d99 = median(p99[c SUBSEP "direct"])
      split("direct nginx1 hyper1 xgate", T, " ")
      for (t = 1; t <= 4; t++) {
        k = c SUBSEP T[t]; if (!(k in p50)) continue
        m50 = median(p50[k]); m99 = median(p99[k])
        printf "c%-5s %-7s %9.0f %8d %8d %12s %12s %7d\n", c, T[t], median(rps[k]), m50, m99,
          T[t] == "direct" ? "-" : sprintf("%+d", m50 - d50), T[t] == "direct" ? "-" : sprintf("%+d", m99 - d99), err[k]
        if (err[k] > 0) bad = 1
      }
    }
    exit bad
  }' "$OUT/rig/raw.tsv"

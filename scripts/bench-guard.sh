#!/usr/bin/env bash
# bench-guard.sh - the two-minute regression guard: xgate's server CPU per request and its
# requests per second, as ratios to the rig's anchors (a minimal hyper proxy, `hyper1`, and
# nginx with one worker, `nginx1`) measured in the same run by shared/bench/compare.sh.
#
# One short round (by default 1 × 5 s at c32 and c128, a 1 s warm-up each) on the OAuth 1.0a
# path (`X-Xgate-Identity: alice`: a fresh signature per request), access log on, the default
# configuration otherwise (shared/bench/xgate-bench.toml). Ratios, not absolute figures: the
# machine is shared, and only figures of one run compare.
#
# Usage: scripts/bench-guard.sh [--bin target/release/xgate] [--identity alice|main]
#          [--rounds 1] [--duration 5] [--conns "32 128"] [--workers N] [--max-ratio R]
#          [--out DIR]
#   --workers N     `server.workers = N` (default: the configuration's default, the CPUs)
#   --max-ratio R   exit 1 when xgate's CPU per request is above R × hyper1's at any
#                   connection count (for a script or a hook; the default only reports);
#                   a run with failed requests always exits 1
#   Extra environment for xgate (XGATE_LOG=warn, say) passes through.
# Needs: nginx and wrk (apt-get install -y nginx wrk), the hyper anchor (built on first use by
# shared/bench/build-hyper-min.sh, ~30 s), a release build of xgate. Traffic stays on 127.0.0.1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH="${BENCH:-$REPO/../shared/bench}"
BIN="$REPO/target/release/xgate" IDENTITY=alice ROUNDS=1 DURATION=5 CONNS="32 128" MAX="" OUT="" WORKERS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --identity) IDENTITY="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --conns) CONNS="$2"; shift 2 ;;
    --max-ratio) MAX="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-guard.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] || { echo "bench-guard.sh: $BIN missing: cargo build --release" >&2; exit 2; }
HYPER_MIN_BIN="${HYPER_MIN_BIN:-/tmp/xbench-hyper-min/target/release/hyper-min-proxy}"
if [ ! -x "$HYPER_MIN_BIN" ]; then
  HYPER_MIN_BIN="$("$BENCH/build-hyper-min.sh" | tail -1)"
fi
export HYPER_MIN_BIN
OUT="${OUT:-$(mktemp -d /tmp/xgate-guard.XXXXXX)}"
mkdir -p "$OUT"

# The store path of the bench config is per run, so two guards never share a database.
sed "s|^path = .*|path = \"$OUT/xgate.db\"|" "$BENCH/xgate-bench.toml" >"$OUT/xgate.toml"
if [ -n "$WORKERS" ]; then
  sed -i "s|^listen = \"127.0.0.1:18083\"|&\nworkers = $WORKERS|" "$OUT/xgate.toml"
fi
"$BENCH/compare.sh" --targets "nginx1 hyper1" --rounds "$ROUNDS" --duration "$DURATION" \
  --warmup 1 --conns "$CONNS" --out "$OUT/rig" -H "X-Xgate-Identity: $IDENTITY" \
  --sut-name xgate --sut-url http://127.0.0.1:18083 \
  --sut-cmd "exec $BIN serve --config $OUT/xgate.toml" >"$OUT/compare.log" 2>&1 || {
  echo "bench-guard.sh: the rig failed; its log: $OUT/compare.log" >&2
  tail -5 "$OUT/compare.log" >&2
  exit 2
}

commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "# $(date -u +%FT%TZ) commit $commit, identity $IDENTITY, workers ${WORKERS:-default}, $ROUNDS × ${DURATION}s, raw: $OUT/rig/raw.tsv"
# raw.tsv: round conns target rps p50 p90 p99 non2xx sockerr cpu0 cpu1 steal cpu_us_per_req
awk -F'\t' -v max="$MAX" '
  function median(s,   a, n, i, j, x) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j+1] = a[j]; a[j+1] = x }
    return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
  }
  NR > 1 { k = $2 SUBSEP $3; cpu[k] = cpu[k] " " $13; rps[k] = rps[k] " " $4; err[$2] += $8 + $9
           if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
  END {
    printf "%-6s %13s %13s %13s %9s %9s %9s %7s\n", "conns", "nginx1 µs/req", "hyper1 µs/req", "xgate µs/req", "÷hyper1", "÷nginx1", "rps÷hyp1", "errors"
    bad = 0
    for (i = 1; i <= n; i++) {
      c = order[i]; ng = median(cpu[c SUBSEP "nginx1"]); hy = median(cpu[c SUBSEP "hyper1"]); xg = median(cpu[c SUBSEP "xgate"])
      rh = hy > 0 ? xg / hy : 0; rn = ng > 0 ? xg / ng : 0
      rr = median(rps[c SUBSEP "hyper1"]); rr = rr > 0 ? median(rps[c SUBSEP "xgate"]) / rr : 0
      printf "c%-5s %13.1f %13.1f %13.1f %9.2f %9.2f %9.2f %7d\n", c, ng, hy, xg, rh, rn, rr, err[c]
      if (max != "" && rh > max + 0) bad = 1
      if (err[c] > 0) bad = 1
    }
    exit bad
  }' "$OUT/rig/raw.tsv"

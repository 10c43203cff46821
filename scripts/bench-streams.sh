#!/usr/bin/env bash
# bench-streams.sh - fan-out of one shared stream (issue "streams", item 9): the release
# `xgate` in front of FakeX's live filtered stream, 1, 10 and 100 consumers of ten clients
# over real sockets, X sending RATE Posts a second (each matching a rule of every client).
# Prints delivered messages per second, xgate's CPU as a share of one core and CPU per
# delivered message (examples/stream_fanout.rs).
#
# Usage: scripts/bench-streams.sh [--consumers 1,10,100] [--rate 250] [--seconds 10]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin xgate --example stream_fanout
exec target/release/examples/stream_fanout --xgate target/release/xgate "$@"

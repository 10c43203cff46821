#!/usr/bin/env bash
# run.sh - the SDK compatibility suite: X's Python SDK (xdk), tweepy, X's TypeScript SDK
# (@xdevplatform/xdk) and twitter-api-v2, each through xgate against FakeX, every scenario;
# prints an SDK x scenario table and fails on any miss (examples/sdk_suite.rs).
#
# Usage: tests/sdk/run.sh [--sdk NAME]... [--scenario NAME]...
# Installs the pinned SDKs (tests/sdk/python/requirements.txt, tests/sdk/node/package-lock.json)
# into target/sdk-venv and tests/sdk/node/node_modules: the registries are the only network it
# needs, and only when those are missing or out of date. Needs python3 (with venv), node, npm.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=target/sdk-venv
REQ=tests/sdk/python/requirements.txt
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/requirements.txt"; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$REQ"
  cp "$REQ" "$VENV/requirements.txt"
fi
NODE_DIR=tests/sdk/node
if ! cmp -s "$NODE_DIR/package-lock.json" "$NODE_DIR/node_modules/.xgate-installed-lock" 2>/dev/null; then
  (cd "$NODE_DIR" && npm ci --silent --no-audit --no-fund)
  cp "$NODE_DIR/package-lock.json" "$NODE_DIR/node_modules/.xgate-installed-lock"
fi

cargo build --locked --quiet --example sdk_suite
exec target/debug/examples/sdk_suite --python "$VENV/bin/python" --node node "$@"

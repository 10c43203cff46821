#!/usr/bin/env python3
"""soak.py - mixed traffic through a real xgate for a long time, sampling what must stay flat.

Starts a fake X API (this file, stdlib only: app-only, OAuth 1.0a and OAuth 2.0 requests,
rotating single-use refresh tokens whose access tokens expire every few minutes, a filtered
stream, 429s) and `xgate serve` against it, then runs a mix of clients for --minutes:
Bearer, OAuth 1.0a and OAuth 2.0 requests over keep-alive connections, requests that hit 429,
streams opened and abandoned, clients that abort mid-request. Every --every seconds it samples
xgate's RSS, its open file descriptors, its upstream connections, and the totals so far, and
writes one CSV row. Only 127.0.0.1 is used.

    scripts/soak.py --minutes 60 --out soak.csv      # SOAK.md records a run
"""

import argparse
import http.client
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCOPES = ["tweet.read", "users.read", "offline.access"]


class FakeX:
    """X's side: counts what it saw; refresh tokens are single-use."""

    def __init__(self, expires_in):
        self.lock = threading.Lock()
        self.expires_in = expires_in
        self.issued = 0
        self.live_refresh = {"rt-0"}
        self.used_refresh = set()
        self.refreshes = 0
        self.reuse = 0
        self.requests = 0
        self.recent = 0

    def refresh(self, token):
        with self.lock:
            self.refreshes += 1
            if token not in self.live_refresh:
                if token in self.used_refresh:
                    self.reuse += 1
                return None
            self.live_refresh.discard(token)
            self.used_refresh.add(token)
            self.issued += 1
            new = f"rt-{self.issued}"
            self.live_refresh.add(new)
            return {"token_type": "bearer", "access_token": f"at-{self.issued}",
                    "refresh_token": new, "expires_in": self.expires_in,
                    "scope": " ".join(SCOPES)}


def handler_for(fake):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, body, headers=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-rate-limit-limit", "1000000")
            self.send_header("x-rate-limit-remaining", "999999")
            self.send_header("x-rate-limit-reset", str(int(time.time()) + 900))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_POST(self):
            raw = self.body()
            if self.path == "/2/oauth2/token":
                form = dict(p.split("=", 1) for p in raw.decode().split("&") if "=" in p)
                answer = fake.refresh(form.get("refresh_token", ""))
                if answer is None:
                    self.reply(400, {"error": "invalid_grant"})
                else:
                    self.reply(200, answer)
                return
            with fake.lock:
                fake.requests += 1
            self.reply(201, {"data": {"id": "1", "text": "ok"}})

        def do_GET(self):
            with fake.lock:
                fake.requests += 1
                fake.recent += self.path.startswith("/2/tweets/search/recent")
                throttled = self.path.startswith("/2/tweets/search/recent") and fake.recent % 7 == 0
            if self.path.startswith("/2/tweets/search/stream"):
                self.stream()
                return
            if throttled:
                self.reply(429, {"title": "Too Many Requests", "type": "about:blank"})
                return
            self.reply(200, {"data": {"id": "20", "text": "hello"}})

        def stream(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for i in range(300):
                    line = (json.dumps({"data": {"id": str(i)}}) + "\r\n").encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                    time.sleep(1)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass

    return Handler


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_store(path, expires_in):
    """bob's first pair, in xgate's SQLite store (schema version 1, no encryption)."""
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);"
        "CREATE TABLE tokens (identity TEXT NOT NULL, kind TEXT NOT NULL, data BLOB NOT NULL,"
        " updated_at INTEGER NOT NULL, PRIMARY KEY (identity, kind));"
        "PRAGMA user_version = 1;")
    pair = {"kind": "oauth2", "access_token": "at-0", "refresh_token": "rt-0",
            "expires_at": int(time.time()) + expires_in, "scopes": SCOPES}
    db.execute("INSERT INTO tokens VALUES ('bob', 'oauth2', ?, ?)",
               (json.dumps(pair).encode(), int(time.time())))
    db.commit()
    db.close()


CONFIG = """
[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[upstream]
base_url = "http://127.0.0.1:{fake}"
[store]
path = "xgate.db"
[apps.main]
bearer_token = "soak-bearer"
consumer_key = "soak-ck"
consumer_secret = "soak-cs"
oauth2_client_id = "soak-client"
[users.alice]
app = "main"
auth = "oauth1"
token = "soak-token"
token_secret = "soak-token-secret"
[users.bob]
app = "main"
auth = "oauth2"
scopes = ["tweet.read", "users.read", "offline.access"]
[[clients]]
name = "soak"
anonymous = true
identities = ["main", "alice", "bob"]
default_identity = "main"
[[limits.override]]
endpoint = "GET /2/tweets/:id"
app = "1000000000/15m"
[[limits.override]]
endpoint = "GET /2/users/me"
user = "1000000000/15m"
[[limits.override]]
endpoint = "GET /2/tweets/search/recent"
app = "1000000000/15m"
[[limits.override]]
endpoint = "GET /2/tweets/search/stream"
app = "1000000000/15m"
"""


class Totals:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def snapshot(self):
        with self.lock:
            return dict(self.counts)


def client(port, stop, totals, pace):
    conn = None
    rng = random.Random()
    while not stop.is_set():
        roll = rng.random()
        try:
            if roll < 0.05:
                # A client that gives up: sends half a request, or a whole one, and leaves.
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    if rng.random() < 0.5:
                        s.sendall(b"GET /2/tweets/20 HTTP/1.1\r\nHost: x\r\n")
                    else:
                        s.sendall(b"GET /2/tweets/21 HTTP/1.1\r\nHost: x\r\n\r\n")
                totals.add("aborted")
            elif roll < 0.08:
                # A stream opened and abandoned after a few lines.
                s = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                s.request("GET", "/2/tweets/search/stream")
                r = s.getresponse()
                if r.status == 200:
                    for _ in range(rng.randint(1, 4)):
                        r.fp.readline()
                    totals.add("stream")
                else:
                    r.read()
                    totals.add(str(r.status))
                s.close()
            else:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                if roll < 0.50:
                    path, who = f"/2/tweets/{rng.randint(1, 10**12)}", "main"
                elif roll < 0.68:
                    path, who = "/2/users/me", "alice"
                elif roll < 0.86:
                    path, who = "/2/users/me", "bob"
                else:
                    path, who = "/2/tweets/search/recent?query=soak", "main"
                conn.request("GET", path, headers={"X-Xgate-Identity": who})
                r = conn.getresponse()
                r.read()
                totals.add(str(r.status))
        except (OSError, http.client.HTTPException) as e:
            totals.add("client-error")
            totals.add("error:" + type(e).__name__)
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(pace)


def sample(pid, fake_port):
    rss = fds = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    upstream = 0
    hex_port = f"{fake_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            rem, state = parts[2], parts[3]
            if rem.endswith(":" + hex_port) and state == "01":
                upstream += 1
    return rss, fds, upstream


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xgate", default="target/release/xgate")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--every", type=float, default=60)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--pace", type=float, default=0.02, help="seconds each client waits")
    ap.add_argument("--expires-in", type=int, default=240, help="OAuth 2.0 token lifetime")
    ap.add_argument("--out", default="soak.csv")
    a = ap.parse_args()

    fake = FakeX(a.expires_in)
    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # clients that leave mid-answer are part of the mix

    server = Server(("127.0.0.1", 0), handler_for(fake))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake_port = server.server_address[1]

    work = tempfile.mkdtemp(prefix="xgate-soak-")
    port, admin = free_port(), free_port()
    with open(os.path.join(work, "proxy.toml"), "w") as f:
        f.write(CONFIG.format(port=port, admin=admin, fake=fake_port))
    seed_store(os.path.join(work, "xgate.db"), a.expires_in)
    log = open(os.path.join(work, "xgate.log"), "w")
    proc = subprocess.Popen([os.path.abspath(a.xgate), "serve", "--config", "proxy.toml"],
                            cwd=work, stderr=log, env={**os.environ, "XGATE_LOG": "warn"})
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)

    stop = threading.Event()
    totals = Totals()
    threads = [threading.Thread(target=client, args=(port, stop, totals, a.pace), daemon=True)
               for _ in range(a.clients)]
    for t in threads:
        t.start()
    start = time.time()
    with open(a.out, "w") as out:
        out.write("minute,rss_kib,fds,upstream_conns,requests_2xx,requests_429,"
                  "streams,aborted,client_errors,refreshes,refresh_reuse\n")
        while True:
            elapsed = time.time() - start
            rss, fds, upstream = sample(proc.pid, fake_port)
            c = totals.snapshot()
            ok = sum(v for k, v in c.items() if k.startswith("2"))
            row = (f"{elapsed / 60:.1f},{rss},{fds},{upstream},{ok},{c.get('429', 0)},"
                   f"{c.get('stream', 0)},{c.get('aborted', 0)},{c.get('client-error', 0)},"
                   f"{fake.refreshes},{fake.reuse}")
            out.write(row + "\n")
            out.flush()
            print(row, flush=True)
            if elapsed >= a.minutes * 60 or proc.poll() is not None:
                break
            time.sleep(min(a.every, max(0.0, a.minutes * 60 - elapsed)))
    stop.set()
    for t in threads:
        t.join(timeout=15)
    proc.terminate()
    code = proc.wait(timeout=30)
    others = {k: v for k, v in totals.snapshot().items()
              if not (k.startswith("2") or k in ("429", "stream", "aborted", "client-error"))}
    print(f"xgate exit {code}; other statuses {others}; work dir {work}")
    return 0 if code == 0 and fake.reuse == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

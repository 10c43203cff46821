#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections to a server, makes one request on each and
reads its answer to the end, then holds them all open and idle.

Prints one line `held N` on stdout once every connection has had its answer (or `failed K
of N: <first error>` and exits 1), then waits until stdin closes (or a line arrives) and
closes them all. Used by scripts/bench-memory.sh to read a server's RSS with N idle
keep-alive connections. Needs `ulimit -n` above N.

Usage: hold_conns.py --port 18083 --count 1000 [--path /2/tweets/1] [-H 'Name: value']
"""

import argparse
import asyncio
import sys


async def one(port, request, gate):
    async with gate:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        status = head.split(b" ", 2)[1]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length:
            await asyncio.wait_for(reader.readexactly(length), 30)
        if status != b"200":
            raise RuntimeError(f"status {status.decode()}")
        return writer


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--path", default="/2/tweets/1460323737035677698")
    parser.add_argument("-H", dest="headers", action="append", default=[])
    args = parser.parse_args()

    extra = "".join(f"{h}\r\n" for h in args.headers)
    request = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()
    # A few hundred connects in flight at once: the listen backlog is never the limit.
    gate = asyncio.Semaphore(256)
    results = await asyncio.gather(
        *(one(args.port, request, gate) for _ in range(args.count)), return_exceptions=True
    )
    writers = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"failed {len(errors)} of {args.count}: {errors[0]!r}", flush=True)
        for w in writers:
            w.close()
        sys.exit(1)
    print(f"held {len(writers)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for w in writers:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())

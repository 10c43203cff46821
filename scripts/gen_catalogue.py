#!/usr/bin/env python3
"""Generates src/endpoints/table.rs, xgate's built-in endpoint catalogue.

Inputs (the two files of shared/reference/):
  x-openapi.json  X's OpenAPI document: every v2 operation, its auth types
                  (security: BearerToken, OAuth2UserToken with its scopes, UserToken) and
                  whether it streams (x-twitter-streaming);
  x-api-v2.md     the fact sheet: section 4.5 holds X's published limits per operation
                  (per App and per user, 15-minute, 24-hour and per-second windows) and
                  section 4.4 the three documented endpoints the spec lacks.

Usage (from the repository root; standard library only):
  python3 scripts/gen_catalogue.py [--reference ../shared/reference]
Then `cargo fmt` is not needed (the output is already formatted), and
`cargo test the_table_agrees` checks that the table agrees with the spec.
"""

import argparse
import hashlib
import json
import pathlib
import re
import sys

METHODS = ("get", "post", "put", "delete", "patch")
WINDOWS = {"15min": 900, "24h": 86400, "sec": 1}

# Section 4.4: documented in X's rate-limit page but without an operation in the spec.
# Auth and scopes are not published for them: every auth kind is accepted and no scope is
# required, so the pre-check never refuses them.
EXTRA = [
    ("GET", "/2/users/by/username/{username}/tweets", "1,500/15min", "900/15min"),
    ("GET", "/2/users/by/username/{username}/mentions", "450/15min", "180/15min"),
    ("GET", "/2/users/{id}/following/spaces", "300/15min", "300/15min"),
]


def fail(msg):
    sys.exit(f"gen_catalogue.py: {msg}")


def parse_limits(cell, where):
    """'1/sec + 300/15min' -> [(1, 1), (300, 900)]; 'n.d.' and '—' -> []."""
    cell = cell.strip()
    if cell in ("n.d.", "—", "-"):
        return []
    out = []
    for part in cell.split("+"):
        m = re.fullmatch(r"\s*([\d,]+)/(15min|24h|sec)\s*", part)
        if not m:
            fail(f"{where}: cannot read the limit {cell!r}")
        out.append((int(m.group(1).replace(",", "")), WINDOWS[m.group(2)]))
    return out


def fact_sheet_rows(md):
    """(METHOD, spec path) -> (app limits, user limits) from section 4.5's tables."""
    section = md.split("### 4.5", 1)
    if len(section) != 2:
        fail("x-api-v2.md has no section 4.5")
    body = section[1].split("\n## ", 1)[0]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] not in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            continue
        method, path = cells[0], cells[1].strip("`")
        where = f"x-api-v2.md {method} {path}"
        rows[(method, path)] = (parse_limits(cells[4], where), parse_limits(cells[5], where))
    return rows


def docs_path(path):
    """'/2/tweets/{id}' -> '/2/tweets/:id' (X's docs style)."""
    return re.sub(r"\{([^}]+)\}", r":\1", path)


def rust_str(s):
    return json.dumps(s)


def rates(limits):
    return "&[" + ", ".join(f"r({n}, {w})" for n, w in limits) + "]"


def main():
    here = pathlib.Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=str(here.parent / "shared" / "reference"))
    ap.add_argument("--out", default=str(here / "src" / "endpoints" / "table.rs"))
    args = ap.parse_args()
    ref = pathlib.Path(args.reference)
    spec_bytes = (ref / "x-openapi.json").read_bytes()
    spec = json.loads(spec_bytes)
    facts = fact_sheet_rows((ref / "x-api-v2.md").read_text(encoding="utf-8"))

    rows = []
    for path, ops in spec["paths"].items():
        for method in METHODS:
            op = ops.get(method)
            if op is None:
                continue
            auth, scopes = set(), []
            for req in op.get("security") or []:
                for scheme, req_scopes in req.items():
                    if scheme == "BearerToken":
                        auth.add("APP")
                    elif scheme == "OAuth2UserToken":
                        auth.add("O2U")
                        scopes = sorted(req_scopes)
                    elif scheme == "UserToken":
                        auth.add("O1U")
                    else:
                        fail(f"{method.upper()} {path}: unknown security scheme {scheme}")
            key = (method.upper(), path)
            if key not in facts:
                fail(f"{key[0]} {key[1]} is in the spec but not in the fact sheet's table")
            app, user = facts.pop(key)
            stream = bool(op.get("x-twitter-streaming", False))
            rows.append((key[0], path, auth, scopes, stream, app, user, True))
    if facts:
        fail(f"the fact sheet lists operations the spec lacks: {sorted(facts)}")
    for method, path, app, user in EXTRA:
        where = f"extra {method} {path}"
        rows.append((method, path, {"APP", "O2U", "O1U"}, [], False,
                     parse_limits(app, where), parse_limits(user, where), False))
    rows.sort(key=lambda r: (docs_path(r[1]), r[0]))

    out = []
    out.append("// @generated by scripts/gen_catalogue.py from shared/reference/x-openapi.json and")
    out.append("// shared/reference/x-api-v2.md (section 4.5). Do not edit by hand: regenerate (README,")
    out.append("// \"The endpoint catalogue\").")
    out.append("")
    out.append("use super::{APP, O1U, O2U, Row, r};")
    out.append("")
    out.append("/// SHA-256 of the x-openapi.json this table was generated from.")
    # Wrapped as rustfmt wraps it (the line is over 100 columns), so the output is the
    # committed file byte for byte.
    out.append("pub(super) const SPEC_SHA256: &str =")
    out.append(f"    {rust_str(hashlib.sha256(spec_bytes).hexdigest())};")
    out.append("")
    out.append("/// The spec's `info.version`.")
    out.append(f"pub(super) const SPEC_VERSION: &str = {rust_str(spec['info']['version'])};")
    out.append("")
    out.append("/// Every operation of the spec, then the documented endpoints it lacks (`in_spec: false`).")
    out.append("#[rustfmt::skip]")
    out.append("pub(super) static ROWS: &[Row] = &[")
    for method, path, auth, scopes, stream, app, user, in_spec in rows:
        auth_expr = " | ".join(a for a in ("APP", "O2U", "O1U") if a in auth) or "0"
        scopes_expr = "&[" + ", ".join(rust_str(s) for s in scopes) + "]"
        out.append(
            f"    Row {{ method: {rust_str(method)}, path: {rust_str(docs_path(path))}, "
            f"auth: {auth_expr}, scopes: {scopes_expr}, stream: {str(stream).lower()}, "
            f"app: {rates(app)}, user: {rates(user)}, in_spec: {str(in_spec).lower()} }},"
        )
    out.append("];")
    pathlib.Path(args.out).write_text("\n".join(out) + "\n", encoding="utf-8")
    n_spec = sum(1 for r in rows if r[7])
    print(f"wrote {args.out}: {n_spec} operations of spec {spec['info']['version']} + {len(EXTRA)} extra")


if __name__ == "__main__":
    main()

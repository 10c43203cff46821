#!/usr/bin/env python3
"""Generates src/endpoints/table.rs, xgate's built-in endpoint catalogue.

Inputs (the two files of shared/reference/):
  x-openapi.json  X's OpenAPI document: every v2 operation, its auth types
                  (security: BearerToken, OAuth2UserToken with its scopes, UserToken) and
                  whether it streams (x-twitter-streaming);
  x-api-v2.md     the fact sheet: section 4.5 holds X's published limits per operation
                  (per App and per user, 15-minute, 24-hour and per-second windows),
                  section 4.4 the three documented endpoints the spec lacks, and section 9
                  X's pay-per-use price table.

Each row also gets its price (see PRICING below for the rules, and the `basis` each row
records), and the largest page a read can return (its `max_results` maximum, or the most items
its list parameter takes, or 1 when `data` is one object): the worst case a budget reserves.

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
# Their `data` is taken from the operations they mirror (`/2/users/:id/tweets`, `.../mentions`,
# `/2/spaces/by/creator_ids`), with X's usual largest page of 100.
EXTRA = [
    ("GET", "/2/users/by/username/{username}/tweets", "1,500/15min", "900/15min", "Post"),
    ("GET", "/2/users/by/username/{username}/mentions", "450/15min", "180/15min", "Post"),
    ("GET", "/2/users/{id}/following/spaces", "300/15min", "300/15min", "Space"),
]


# === PRICING ===
#
# X publishes prices per category ("Posts: Read", "User Interaction: Create"), not per
# operation (x-api-v2.md section 9). Each operation is mapped to a category by these rules, in
# this order; the first that applies wins, and the row records which one (its `basis`).
#
# Reads (GET), priced per resource of the 200 answer's top-level `data`:
#  R1. Per-request read categories, by path: `GET /2/tweets/counts/recent` is "Counts: Recent",
#      `GET /2/tweets/counts/all` "Counts: All", and the trends endpoints (`/2/trends/...`,
#      `/2/users/personalized_trends`) "Trends". X lists these with the per-request prices.
#  R2. Likes, mutes and blocks read through a user or a Post: `GET /2/users/:id/liked_tweets`
#      and `GET /2/tweets/:id/liking_users` are "Like: Read"; `.../muting` "Mute: Read";
#      `.../blocking` "Block: Read". (Uncertain: X does not say whether a liked Post is billed
#      as a Like or as a Post; the Like price is the lower one, so a budget may under-reserve;
#      override it if your console says otherwise.)
#  R3. `GET /2/users/:id/followers` and `.../following` are "Following/Followers: Read".
#  R4. Otherwise by the schema of `data` (its items when it is an array): Post -> "Posts: Read",
#      User -> "User: Read", DmEvent -> "DM Event: Read", List -> "List: Read",
#      Space -> "Space: Read", Community -> "Community: Read", Note -> "Note: Read",
#      LikeWithPostAuthor (the likes streams) -> "Like: Read". (Uncertain: XChat's
#      ChatMessageEvent is not mapped to "DM Event: Read"; it stays unpriced.)
#  R5. Anything else (media, news, analytics, usage, compliance, rules, webhooks, ...) has no
#      published price: unpriced, listed by `xgate check`. "Profile Update: Read" has no
#      operation of the spec that returns profile updates, so no row uses it.
#
# Writes and actions (POST, PUT, DELETE, PATCH), priced per request answered 2xx:
#  W1. `POST /2/tweets` is "Post: Create", and "Post: Create (with URL)" when its `text`
#      holds a URL. ("Post: Create (summoned reply)" cannot be told from the request; such a
#      reply is metered at the full Post price, the higher one.)
#  W2. Sending a direct message (`POST /2/dm_conversations`, `.../messages` under
#      `/2/dm_conversations`) is "DM Interaction: Create".
#  W3. A like, repost, follow or mute (`POST /2/users/:id/likes|retweets|following|muting`) is
#      "User Interaction: Create"; undoing a like, repost or follow is "Interaction: Delete";
#      undoing a mute is "Mute: Delete".
#  W4. Deleting a Post, hiding a reply or deleting a DM event is "Content: Manage".
#  W5. `POST /2/lists` is "List: Create"; changing or deleting a list, its members, following
#      or pinning one is "List: Manage".
#  W6. Adding or removing a bookmark (`/2/users/:id/bookmarks`, not its folders) is "Bookmark".
#  W7. `POST /2/media/metadata` and the subtitles endpoints are "Media Metadata".
#  W8. Blocking or unblocking DMs (`/2/users/:id/dm/block|unblock`) is "Privacy: Update".
#  W9. Anything else (uploads, webhooks, compliance jobs, rules, chat, ...) is unpriced.
#
# Owned Reads (section 9): the Owned Reads price replaces a read's on
# `GET /2/users/:id/<one of OWNED>` when the identity is in `costs.owned_reads` and `:id` is
# its own user id; the row records that it can.

OWNED = ("tweets", "mentions", "liked_tweets", "bookmarks", "followers", "following",
         "blocking", "muting", "owned_lists", "followed_lists", "list_memberships",
         "pinned_lists")

READ_BY_SCHEMA = {
    "Post": "Posts: Read", "User": "User: Read", "DmEvent": "DM Event: Read",
    "List": "List: Read", "Space": "Space: Read", "Community": "Community: Read",
    "Note": "Note: Read", "LikeWithPostAuthor": "Like: Read",
}

# (rule, method, path regex over the spec path, category); checked before the schema rules.
PATH_RULES = [
    ("R1", "GET", r"/2/tweets/counts/recent", "Counts: Recent"),
    ("R1", "GET", r"/2/tweets/counts/all", "Counts: All"),
    ("R1", "GET", r"/2/trends/.*|/2/users/personalized_trends", "Trends"),
    ("R2", "GET", r"/2/users/\{id\}/liked_tweets|/2/tweets/\{id\}/liking_users", "Like: Read"),
    ("R2", "GET", r"/2/users/\{id\}/muting", "Mute: Read"),
    ("R2", "GET", r"/2/users/\{id\}/blocking", "Block: Read"),
    ("R3", "GET", r"/2/users/\{id\}/(followers|following)", "Following/Followers: Read"),
    ("W1", "POST", r"/2/tweets", "Post: Create"),
    ("W2", "POST", r"/2/dm_conversations(/with/\{[^}]+\}/messages|/\{[^}]+\}/messages)?",
     "DM Interaction: Create"),
    ("W3", "POST", r"/2/users/\{id\}/(likes|retweets|following|muting)", "User Interaction: Create"),
    ("W3", "DELETE", r"/2/users/\{[^}]+\}/(likes|retweets|following)/\{[^}]+\}",
     "Interaction: Delete"),
    ("W3", "DELETE", r"/2/users/\{[^}]+\}/muting/\{[^}]+\}", "Mute: Delete"),
    ("W4", "DELETE", r"/2/tweets/\{id\}|/2/dm_events/\{[^}]+\}", "Content: Manage"),
    ("W4", "PUT", r"/2/tweets/\{tweet_id\}/hidden", "Content: Manage"),
    ("W5", "POST", r"/2/lists", "List: Create"),
    ("W5", "PUT|DELETE", r"/2/lists/\{id\}", "List: Manage"),
    ("W5", "POST", r"/2/lists/\{id\}/members|/2/users/\{id\}/(followed_lists|pinned_lists)",
     "List: Manage"),
    ("W5", "DELETE",
     r"/2/lists/\{id\}/members/\{[^}]+\}|/2/users/\{id\}/(followed_lists|pinned_lists)/\{[^}]+\}",
     "List: Manage"),
    ("W6", "POST", r"/2/users/\{id\}/bookmarks", "Bookmark"),
    ("W6", "DELETE", r"/2/users/\{id\}/bookmarks/\{[^}]+\}", "Bookmark"),
    ("W7", "POST", r"/2/media/metadata|/2/media/subtitles", "Media Metadata"),
    ("W7", "DELETE", r"/2/media/subtitles", "Media Metadata"),
    ("W8", "POST", r"/2/users/\{id\}/dm/(block|unblock)", "Privacy: Update"),
]

# The list parameters whose item count bounds a read's page.
LIST_PARAMS = ("ids", "usernames", "user_ids", "media_keys")
# The page assumed for an array read the spec bounds neither way (none at present).
DEFAULT_PAGE = 100


def usd_micros(text, where):
    """'0.005' -> 5000 (micro-USD), exactly."""
    m = re.fullmatch(r"(\d+)\.(\d{1,6})", text.strip())
    if not m:
        fail(f"{where}: cannot read the price {text!r}")
    return int(m.group(1)) * 1_000_000 + int(m.group(2).ljust(6, "0"))


def price_table(md):
    """Section 9's two tables: {category: micro-USD}, reads and writes."""
    body = section_body(md, "## 9.", "section 9")
    prices = {}
    for line in body.splitlines():
        cells = table_cells(line)
        if len(cells) == 2 and re.fullmatch(r"\d+\.\d+", cells[1]):
            prices[cells[0]] = usd_micros(cells[1], f"x-api-v2.md section 9, {cells[0]}")
    for needed in set(READ_BY_SCHEMA.values()) | {r[3] for r in PATH_RULES} | {"Post: Create (with URL)"}:
        if needed not in prices:
            fail(f"x-api-v2.md section 9 has no price for {needed!r}")
    m = re.search(r"\*\*Owned Reads\*\*: (\d+\.\d+) USD per resource", body)
    if not m:
        fail("x-api-v2.md section 9 has no Owned Reads price")
    prices["Owned Reads"] = usd_micros(m.group(1), "x-api-v2.md section 9, Owned Reads")
    return prices


def resolve(spec, node):
    while isinstance(node, dict) and "$ref" in node:
        kind, name = node["$ref"].split("/")[-2:]
        node = spec["components"][kind][name]
    return node


def data_schema(spec, op):
    """('Post', True) for `data: [Post]`, ('User', False) for `data: User`, None without data."""
    for code in ("200", "201"):
        resp = resolve(spec, op.get("responses", {}).get(code))
        if not resp:
            continue
        for media in resp.get("content", {}).values():
            schema = resolve(spec, media.get("schema", {}))
            data = schema.get("properties", {}).get("data")
            if data is None:
                return None
            if "$ref" in data:
                return (data["$ref"].split("/")[-1], False)
            if data.get("type") == "array":
                items = data.get("items", {})
                return (items.get("$ref", "/object").split("/")[-1], True)
            return (data.get("type", "object"), False)
    return None


def largest_page(spec, op, ops, schema):
    """(page, list parameter or ""): the most resources one answer can hold."""
    if schema is None or not schema[1]:
        return 1, ""
    page, list_param = None, ""
    for param in (op.get("parameters") or []) + (ops.get("parameters") or []):
        param = resolve(spec, param)
        body = resolve(spec, param.get("schema", {}))
        if param.get("name") == "max_results" and "maximum" in body:
            page = int(body["maximum"])
        elif param.get("name") in LIST_PARAMS and "maxItems" in body:
            page, list_param = page or int(body["maxItems"]), param["name"]
    return page or DEFAULT_PAGE, list_param


def price_of(method, path, schema, stream, prices):
    """(unit, category, micro-USD, url micro-USD, owned, basis)."""
    for rule, methods, pattern, category in PATH_RULES:
        if method in methods.split("|") and re.fullmatch(pattern, path):
            unit = "Request" if rule.startswith("W") or rule == "R1" else "Resource"
            url = prices["Post: Create (with URL)"] if category == "Post: Create" else 0
            owned = unit == "Resource" and is_owned(path)
            return unit, category, prices[category], url, owned, f"{rule}: {path_rule_reason(rule)}"
    if method == "GET" and schema is not None and schema[0] in READ_BY_SCHEMA:
        category = READ_BY_SCHEMA[schema[0]]
        shape = f"[{schema[0]}]" if schema[1] else schema[0]
        owned = is_owned(path)
        what = "each message's data" if stream else "data"
        return "Resource", category, prices[category], 0, owned, f"R4: {what} is {shape}"
    rule = "R5" if method == "GET" else "W9"
    return "Unpriced", "", 0, 0, False, f"{rule}: no published price"


def path_rule_reason(rule):
    return {
        "R1": "priced per request in X's table",
        "R2": "reads likes, mutes or blocks",
        "R3": "reads followers or following",
        "W1": "creates a Post",
        "W2": "sends a direct message",
        "W3": "a user interaction, or undoing one",
        "W4": "manages content",
        "W5": "creates or manages a list",
        "W6": "a bookmark",
        "W7": "media metadata",
        "W8": "a privacy setting",
    }[rule]


def is_owned(path):
    m = re.fullmatch(r"/2/users/\{id\}/([a-z_]+)", path)
    return bool(m) and m.group(1) in OWNED


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


def section_body(md, marker, name):
    """The text of the fact sheet after `marker` up to the next top-level section."""
    section = md.split(marker, 1)
    if len(section) != 2:
        fail(f"x-api-v2.md has no {name}")
    return section[1].split("\n## ", 1)[0]


def table_cells(line):
    """'| a | b |' -> ['a', 'b']."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def fact_sheet_rows(md):
    """(METHOD, spec path) -> (app limits, user limits) from section 4.5's tables."""
    body = section_body(md, "### 4.5", "section 4.5")
    rows = {}
    for line in body.splitlines():
        cells = table_cells(line)
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


def price_expr(pr):
    unit, category, micros, url, owned, basis, page, list_param = pr
    return (f"price({unit_expr(unit)}, {rust_str(category)}, {micros}, {url}, {str(owned).lower()}, "
            f"{page}, {rust_str(list_param)}, {rust_str(basis)})")


def unit_expr(unit):
    return {"Resource": "PER_RESOURCE", "Request": "PER_REQUEST", "Unpriced": "UNPRICED"}[unit]


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
    md = (ref / "x-api-v2.md").read_text(encoding="utf-8")
    facts = fact_sheet_rows(md)
    prices = price_table(md)

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
            schema = data_schema(spec, op)
            page = (1, "") if stream else largest_page(spec, op, ops, schema)
            price = price_of(key[0], path, schema, stream, prices) + page
            rows.append((key[0], path, auth, scopes, stream, app, user, True, price))
    if facts:
        fail(f"the fact sheet lists operations the spec lacks: {sorted(facts)}")
    for method, path, app, user, data in EXTRA:
        where = f"extra {method} {path}"
        price = price_of(method, path, (data, True), False, prices) + (DEFAULT_PAGE, "")
        rows.append((method, path, {"APP", "O2U", "O1U"}, [], False,
                     parse_limits(app, where), parse_limits(user, where), False, price))
    rows.sort(key=lambda r: (docs_path(r[1]), r[0]))

    out = []
    out.append("// @generated by scripts/gen_catalogue.py from shared/reference/x-openapi.json and")
    out.append("// shared/reference/x-api-v2.md (sections 4.5 and 9). Do not edit by hand: regenerate")
    out.append("// (README, \"The endpoint catalogue\"). Each price's `basis` names the rule of the")
    out.append("// generator's PRICING notes that chose it.")
    out.append("")
    out.append("use super::{APP, O1U, O2U, PER_REQUEST, PER_RESOURCE, Row, UNPRICED, price, r};")
    out.append("")
    out.append("/// SHA-256 of the x-openapi.json this table was generated from.")
    # Wrapped as rustfmt wraps it (the line is over 100 columns), so the output is the
    # committed file byte for byte.
    out.append("pub(super) const SPEC_SHA256: &str =")
    out.append(f"    {rust_str(hashlib.sha256(spec_bytes).hexdigest())};")
    out.append("")
    out.append("/// X's Owned Reads price per resource, micro-USD (x-api-v2.md section 9).")
    out.append(f"pub(super) const OWNED_READS_MICROS: u32 = {prices['Owned Reads']};")
    out.append("")
    out.append("/// The spec's `info.version`.")
    out.append(f"pub(super) const SPEC_VERSION: &str = {rust_str(spec['info']['version'])};")
    out.append("")
    out.append("/// Every operation of the spec, then the documented endpoints it lacks (`in_spec: false`).")
    out.append("#[rustfmt::skip]")
    out.append("pub(super) static ROWS: &[Row] = &[")
    for method, path, auth, scopes, stream, app, user, in_spec, pr in rows:
        auth_expr = " | ".join(a for a in ("APP", "O2U", "O1U") if a in auth) or "0"
        scopes_expr = "&[" + ", ".join(rust_str(s) for s in scopes) + "]"
        out.append(
            f"    Row {{ method: {rust_str(method)}, path: {rust_str(docs_path(path))}, "
            f"auth: {auth_expr}, scopes: {scopes_expr}, stream: {str(stream).lower()}, "
            f"app: {rates(app)}, user: {rates(user)}, in_spec: {str(in_spec).lower()}, "
            f"price: {price_expr(pr)} }},"
        )
    out.append("];")
    pathlib.Path(args.out).write_text("\n".join(out) + "\n", encoding="utf-8")
    n_spec = sum(1 for r in rows if r[7])
    priced = sum(1 for r in rows if r[8][0] != "Unpriced")
    print(f"wrote {args.out}: {n_spec} operations of spec {spec['info']['version']} + {len(EXTRA)} extra;"
          f" {priced} priced, {len(rows) - priced} unpriced")


if __name__ == "__main__":
    main()

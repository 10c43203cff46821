"""One scenario of the SDK suite with one Python SDK: `run.py SDK SCENARIO`.

SDK is `xdk` (X's Python SDK) or `tweepy`. Prints one JSON line: what the SDK gave back (or
the error it raised, as the SDK shows it). The Rust driver (examples/sdk_suite.rs) checks it
against what FakeX saw. The blocks between `README:` markers are the README's lines, word for
word (a test checks that).
"""

import json
import os
import sys
import time

XGATE_URL = os.environ["XGATE_URL"]
XGATE_KEY = os.environ["XGATE_KEY"]
HARD_QUERY = os.environ["HARD_QUERY"]
IDENTITY = os.environ.get("XGATE_IDENTITY", "main")


def xdk_client():
    # README: xdk-python
    from xdk import Client  # pip install xdk

    # The client key goes where the SDK wants tokens: as the Bearer token, and as the access
    # token too, else the SDK refuses user-context endpoints before sending anything.
    client = Client(base_url=XGATE_URL, bearer_token=XGATE_KEY, access_token=XGATE_KEY)
    client.session.headers["X-Xgate-Identity"] = IDENTITY  # optional: else the client's default
    # README: end
    return client


def tweepy_client():
    # README: tweepy
    import requests
    import tweepy  # pip install tweepy

    class ToXgate(requests.adapters.HTTPAdapter):
        """tweepy has no base-URL setting: send its requests for api.twitter.com to xgate."""

        def send(self, request, **kwargs):
            request.url = XGATE_URL + request.url[len("https://api.twitter.com"):]
            request.headers["X-Xgate-Identity"] = IDENTITY  # optional
            return super().send(request, **kwargs)

    client = tweepy.Client(bearer_token=XGATE_KEY)  # no consumer keys: xgate signs
    client.session.mount("https://api.twitter.com/", ToXgate())
    # README: end
    return client, ToXgate


def tweepy_stream(ToXgate, on_tweet):
    import tweepy

    class Collector(tweepy.StreamingClient):
        def on_tweet(self, tweet):
            on_tweet(self, tweet)

    # README: tweepy-stream
    stream = Collector(XGATE_KEY)  # a tweepy.StreamingClient with on_tweet(self, tweet)
    stream.session.mount("https://api.twitter.com/", ToXgate())
    # README: end
    return stream


def error_view(e):
    """What a user of the SDK is shown for an error answer: status, message, reset."""
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    view = {"status": status, "shown": str(e)}
    if response is not None:
        view["reset"] = response.headers.get("x-rate-limit-reset")
        try:
            # X's Python SDK raises requests' HTTPError, whose text is the status line only;
            # the answer's body (xgate's `detail`) is on e.response.
            view["detail"] = response.json().get("detail")
        except ValueError:
            pass
    reset = getattr(e, "reset_time", None)
    if reset is not None:
        view["reset"] = reset
    return view


def get(obj, key):
    """A field of an SDK model or of a plain dict."""
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


def ids_of(page):
    data = page.data if hasattr(page, "data") else page["data"]
    return [t.id if hasattr(t, "id") else t["id"] for t in data or []]


def stream_ids(iterator, count):
    """The ids of the first `count` posts of a stream, and the gaps between them (ms)."""
    ids, stamps = [], []
    for item in iterator:
        data = item.data if hasattr(item, "data") else item.get("data")
        if data is None:
            continue
        ids.append(data.id if hasattr(data, "id") else data["id"])
        stamps.append(time.monotonic())
        if len(ids) == count:
            break
    gaps = [round((b - a) * 1000) for a, b in zip(stamps, stamps[1:])]
    return ids, gaps


def run_xdk(scenario):
    client = xdk_client()
    if scenario in ("search_app", "search_oauth1"):
        page = next(client.posts.search_recent(query=HARD_QUERY, max_results=10))
        return {"ids": ids_of(page)}
    if scenario == "paginate":
        pages = list(client.posts.search_recent(query=HARD_QUERY, max_results=10))
        return {"pages": len(pages), "ids": [i for p in pages for i in ids_of(p)]}
    if scenario == "lookup":
        post = client.posts.get_by_id(id="20")
        return {"id": get(post.data, "id"), "text": get(post.data, "text")}
    if scenario == "post":
        made = client.posts.create(body={"text": "hello from an SDK"})
        return {"id": get(made.data, "id"), "text": get(made.data, "text")}
    if scenario == "delete":
        gone = client.posts.delete(id="1445880548472328192")
        return {"deleted": get(gone.data, "deleted")}
    if scenario == "x_429":
        client.users.get_by_username(username="busy")
        return {"status": 200}
    if scenario in ("local_429", "wait"):
        start = time.monotonic()
        for _ in range(2):
            client.users.get_by_id(id="2244994945")
        return {"ok": 2, "elapsed_ms": round((time.monotonic() - start) * 1000)}
    if scenario == "forbidden":
        client.posts.get_by_id(id="20")
        return {"status": 200}
    if scenario == "not_found":
        client.lists.get_by_id(id="1")
        return {"status": 200}
    rules = None
    if scenario == "stream_filtered":
        # README: xdk-python-rules
        client.stream.update_rules(body={"add": [{"value": "from:XDevelopers", "tag": "suite"}]})
        rules = [r for page in client.stream.get_rules() for r in (get(page, "data") or [])]
        # README: end
        rules = [{"value": get(r, "value"), "tag": get(r, "tag")} for r in rules]
    if scenario in ("stream_filtered", "stream_sample"):
        method = client.stream.posts if scenario == "stream_filtered" else client.stream.posts_sample
        stream = method()
        ids, gaps = stream_ids(stream, 3)
        # Closing the generator closes its HTTP response, so xgate sees the client leave.
        stream.close()
        return {"ids": ids, "gaps_ms": gaps, "rules": rules}
    raise SystemExit(f"unknown scenario {scenario}")


def run_tweepy(scenario):
    client, ToXgate = tweepy_client()
    if scenario in ("search_app", "search_oauth1"):
        page = client.search_recent_tweets(query=HARD_QUERY, max_results=10)
        return {"ids": [str(t.id) for t in page.data]}
    if scenario == "paginate":
        import tweepy

        pages = list(tweepy.Paginator(client.search_recent_tweets, query=HARD_QUERY, max_results=10))
        return {"pages": len(pages), "ids": [str(t.id) for p in pages for t in p.data]}
    if scenario == "lookup":
        post = client.get_tweet("20")
        return {"id": str(post.data.id), "text": post.data.text}
    if scenario == "post":
        made = client.create_tweet(text="hello from an SDK", user_auth=False)
        return {"id": made.data["id"], "text": made.data["text"]}
    if scenario == "delete":
        gone = client.delete_tweet("1445880548472328192", user_auth=False)
        return {"deleted": gone.data["deleted"]}
    if scenario == "x_429":
        client.get_user(username="busy")
        return {"status": 200}
    if scenario in ("local_429", "wait"):
        start = time.monotonic()
        for _ in range(2):
            client.get_user(id="2244994945")
        return {"ok": 2, "elapsed_ms": round((time.monotonic() - start) * 1000)}
    if scenario == "forbidden":
        client.get_tweet("20")
        return {"status": 200}
    if scenario == "not_found":
        client.get_list("1")
        return {"status": 200}
    if scenario in ("stream_filtered", "stream_sample"):
        import tweepy

        got = []

        def on_tweet(stream, tweet):
            got.append((str(tweet.id), time.monotonic()))
            if len(got) == 3:
                stream.disconnect()

        stream = tweepy_stream(ToXgate, on_tweet)
        rules = None
        if scenario == "stream_filtered":
            # README: tweepy-rules
            stream.add_rules(tweepy.StreamRule("from:XDevelopers", tag="suite"))
            rules = stream.get_rules().data  # this client's rules only, with X's ids
            # README: end
            rules = [{"value": r.value, "tag": r.tag} for r in rules]
            stream.filter()
        else:
            stream.sample()
        gaps = [round((b[1] - a[1]) * 1000) for a, b in zip(got, got[1:])]
        return {"ids": [i for i, _ in got], "gaps_ms": gaps, "rules": rules}
    raise SystemExit(f"unknown scenario {scenario}")


def main():
    sdk, scenario = sys.argv[1], sys.argv[2]
    run = {"xdk": run_xdk, "tweepy": run_tweepy}[sdk]
    try:
        out = run(scenario)
    except SystemExit:
        raise
    except Exception as e:  # the SDK's error, as its user sees it
        out = {"error": type(e).__name__, **error_view(e)}
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()

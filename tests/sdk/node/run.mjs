// One scenario of the SDK suite with one Node.js SDK: `node run.mjs SDK SCENARIO`.
//
// SDK is `xdk` (X's TypeScript SDK, @xdevplatform/xdk) or `twitter-api-v2`. Prints one JSON
// line: what the SDK gave back (or the error it raised, as the SDK shows it). The Rust driver
// (examples/sdk_suite.rs) checks it against what FakeX saw. The blocks between `README:`
// markers are the README's lines, word for word (a test checks that).

const XGATE_URL = process.env.XGATE_URL;
const XGATE_KEY = process.env.XGATE_KEY;
const HARD_QUERY = process.env.HARD_QUERY;
const IDENTITY = process.env.XGATE_IDENTITY ?? "main";

async function xdkClient() {
  // README: xdk-typescript
  const { Client } = await import("@xdevplatform/xdk"); // npm install @xdevplatform/xdk

  // The client key goes where the SDK wants tokens: as the Bearer token, and as the access
  // token too, else the SDK refuses user-context endpoints before sending anything.
  const client = new Client({
    baseUrl: XGATE_URL,
    bearerToken: XGATE_KEY,
    accessToken: XGATE_KEY,
    headers: { "X-Xgate-Identity": IDENTITY }, // optional: else the client's default
  });
  // README: end
  return client;
}

async function twitterApiClient() {
  // README: twitter-api-v2
  const http = await import("node:http");
  const { TwitterApi } = await import("twitter-api-v2"); // npm install twitter-api-v2

  // twitter-api-v2 has no base-URL setting: a plugin sends its requests to xgate, and an
  // http.Agent lets its HTTPS-only request code speak plain HTTP to a local xgate.
  const toXgate = (params) => {
    params.url = params.url.replace(/^https:\/\/api\.(x|twitter)\.com/, XGATE_URL);
    params.headers = { ...params.headers, "X-Xgate-Identity": IDENTITY }; // optional
  };
  const client = new TwitterApi(XGATE_KEY, {
    plugins: [
      {
        onBeforeRequestConfig: ({ params }) => toXgate(params),
        onBeforeStreamRequestConfig: ({ params }) => toXgate(params),
      },
    ],
    httpAgent: new http.Agent({ keepAlive: true }),
  });
  // README: end
  return client;
}

/** What a user of the SDK is shown for an error answer: status, message, reset. */
function errorView(e) {
  const view = { error: e?.constructor?.name ?? "Error", shown: String(e?.message ?? e) };
  view.status = e?.status ?? e?.code ?? null;
  const headers = e?.headers;
  if (headers && typeof headers.get === "function") {
    view.reset = headers.get("x-rate-limit-reset");
  } else if (headers) {
    view.reset = headers["x-rate-limit-reset"] ?? null;
  }
  if (e?.rateLimit?.reset !== undefined) {
    view.reset = e.rateLimit.reset;
  }
  return view;
}

/** The ids of the first `count` posts of an async iterable, and the gaps between them (ms). */
async function streamIds(iterable, count) {
  const ids = [];
  const stamps = [];
  for await (const item of iterable) {
    const data = item?.data;
    if (!data) continue;
    ids.push(data.id);
    stamps.push(performance.now());
    if (ids.length === count) break;
  }
  const gaps = stamps.slice(1).map((t, i) => Math.round(t - stamps[i]));
  return { ids, gaps_ms: gaps };
}

async function runXdk(scenario) {
  const client = await xdkClient();
  switch (scenario) {
    case "search_app":
    case "search_oauth1": {
      const page = await client.posts.searchRecent(HARD_QUERY, { maxResults: 10 });
      return { ids: page.data.map((t) => t.id) };
    }
    case "paginate": {
      const ids = [];
      let pages = 0;
      let token;
      do {
        const page = await client.posts.searchRecent(HARD_QUERY, {
          maxResults: 10,
          ...(token ? { paginationToken: token } : {}),
        });
        pages += 1;
        ids.push(...page.data.map((t) => t.id));
        token = page.meta?.next_token ?? page.meta?.nextToken;
      } while (token && pages < 10);
      return { pages, ids };
    }
    case "lookup": {
      const post = await client.posts.getById("20");
      return { id: post.data.id, text: post.data.text };
    }
    case "post": {
      const made = await client.posts.create({ text: "hello from an SDK" });
      return { id: made.data.id, text: made.data.text };
    }
    case "delete": {
      const gone = await client.posts.delete("1445880548472328192");
      return { deleted: gone.data.deleted };
    }
    case "x_429":
      await client.users.getByUsername("busy");
      return { status: 200 };
    case "local_429":
    case "wait": {
      const start = performance.now();
      for (let i = 0; i < 2; i++) await client.users.getById("2244994945");
      return { ok: 2, elapsed_ms: Math.round(performance.now() - start) };
    }
    case "forbidden":
      await client.posts.getById("20");
      return { status: 200 };
    case "not_found":
      await client.lists.getById("1");
      return { status: 200 };
    case "stream_filtered":
    case "stream_sample": {
      let rules = null;
      if (scenario === "stream_filtered") {
        // README: xdk-typescript-rules
        await client.stream.updateRules({ add: [{ value: "from:XDevelopers", tag: "suite" }] });
        const listed = await client.stream.getRules(); // this client's rules only, with X's ids
        // README: end
        rules = (listed.data ?? []).map((r) => ({ value: r.value, tag: r.tag }));
      }
      const method = scenario === "stream_filtered" ? "posts" : "postsSample";
      const abort = new AbortController();
      const stream = await client.stream[method]({ signal: abort.signal });
      const got = await streamIds(stream, 3);
      // README: xdk-typescript-stream
      stream.close(); // stops the SDK reading, but leaves the HTTP request open...
      abort.abort(); // ...which this ends, so X's one stream connection is free again
      // README: end
      return { ...got, rules };
    }
    default:
      throw new Error(`unknown scenario ${scenario}`);
  }
}

async function runTwitterApi(scenario) {
  const client = await twitterApiClient();
  switch (scenario) {
    case "search_app":
    case "search_oauth1": {
      const page = await client.v2.search(HARD_QUERY, { max_results: 10 });
      return { ids: page.tweets.map((t) => t.id) };
    }
    case "paginate": {
      const page = await client.v2.search(HARD_QUERY, { max_results: 10 });
      let pages = 1;
      while (!page.done && pages < 10) {
        await page.fetchNext();
        pages += 1;
      }
      return { pages, ids: page.tweets.map((t) => t.id) };
    }
    case "lookup": {
      const post = await client.v2.singleTweet("20");
      return { id: post.data.id, text: post.data.text };
    }
    case "post": {
      const made = await client.v2.tweet("hello from an SDK");
      return { id: made.data.id, text: made.data.text };
    }
    case "delete": {
      const gone = await client.v2.deleteTweet("1445880548472328192");
      return { deleted: gone.data.deleted };
    }
    case "x_429":
      await client.v2.userByUsername("busy");
      return { status: 200 };
    case "local_429":
    case "wait": {
      const start = performance.now();
      for (let i = 0; i < 2; i++) await client.v2.user("2244994945");
      return { ok: 2, elapsed_ms: Math.round(performance.now() - start) };
    }
    case "forbidden":
      await client.v2.singleTweet("20");
      return { status: 200 };
    case "not_found":
      await client.v2.list("1");
      return { status: 200 };
    case "stream_filtered":
    case "stream_sample": {
      let rules = null;
      if (scenario === "stream_filtered") {
        // README: twitter-api-v2-rules
        await client.v2.updateStreamRules({ add: [{ value: "from:XDevelopers", tag: "suite" }] });
        const listed = await client.v2.streamRules(); // this client's rules only, with X's ids
        // README: end
        rules = (listed.data ?? []).map((r) => ({ value: r.value, tag: r.tag }));
      }
      const stream =
        scenario === "stream_filtered"
          ? await client.v2.searchStream({ autoConnect: true })
          : await client.v2.sampleStream({ autoConnect: true });
      stream.autoReconnect = false;
      const got = await streamIds(stream, 3);
      stream.close();
      return { ...got, rules };
    }
    default:
      throw new Error(`unknown scenario ${scenario}`);
  }
}

const [sdk, scenario] = process.argv.slice(2);
const run = { xdk: runXdk, "twitter-api-v2": runTwitterApi }[sdk];
let out;
try {
  out = await run(scenario);
} catch (e) {
  out = errorView(e);
}
console.log(JSON.stringify(out));
process.exit(0);

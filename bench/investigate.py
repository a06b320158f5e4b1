#!/usr/bin/env python3
"""Investigation speed over a large history: search and incident detail with timeline.

    python3 bench/investigate.py                  # release build, 1,000,000 calls, SQLite and Postgres
    python3 bench/investigate.py --calls 200000   # a smaller fixture
    python3 bench/investigate.py --backend sqlite # one backend only
    python3 bench/investigate.py --smoke          # CI: debug build, 3,000 calls, checks the script works

The fixture is made by `agv-server demo --calls N` (deterministic realistic calls over 7
days and the incidents they raise) — the same command a user runs. Then the server starts
on it and each query kind is asked --requests times over one keep-alive connection, with
varied values, and its p50/p95 printed:

  search text      GET /v1/calls?q=<word> "<phrase>"      (full text over request and response)
  search filters   GET /v1/calls?q=user:<id> since:7d     (the query syntax a person types)
  search mixed     GET /v1/calls?q=user:<id> <word>
  search policy    GET /v1/calls?q=policy:<id>           (every guardrail, including rare ones)
  search empty     GET /v1/calls?q=policy:dg-002 …       (filters that match no call)
  search no model  GET /v1/calls?q=model:no-such-model   (a model never used: its index holds no call)
  incident list    GET /v1/incidents?min_severity=high
  incident detail  GET /v1/incidents/{id}/timeline        (incident, events, signals, example call)

Targets (DESIGN.md): search over 1,000,000 calls p95 < 50 ms; incident detail with timeline
p95 < 20 ms. Baseline in the same run: GET /health over the same connection (the HTTP and
client floor); each figure is printed with its ratio to the target and to that floor.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_SEARCH_MS = 50.0
TARGET_DETAIL_MS = 20.0
WORDS = ["refund", "invoice", "shipment", "password", "auto-renew", "declined", "discount", "premium"]
PHRASES = ["order arrived damaged", "priority support", "annual billing", "return policy"]
# Every guardrail, common and rare, and some that stop none of the demo's calls.
POLICIES = ["dg-001", "dg-002", "dg-003", "dg-004", "dg-005", "budget", "killswitch"]
# Queries that match no call of the fixture: the worst case of a search that walks calls.
EMPTY = ["user:nobody-at-all", "policy:dg-002", "policy:killswitch since:7d",
         "session:no-such-session", "policy:dg-003 user:nobody-at-all", "status:418"]
# A model the tenant never used (the worst case of a model filter before the calls' model
# index): measured apart, so that it does not hide the other empty queries' figures.
ABSENT_MODEL = "model:no-such-model"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("AGV_", "OPENAI_"))}


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values) + 0.5)) - 1))
    return values[k]


class Client:
    def __init__(self, port, key):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.key = key

    def get(self, path):
        started = time.perf_counter()
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {self.key}"})
        res = self.conn.getresponse()
        body = res.read()
        elapsed = (time.perf_counter() - started) * 1000.0
        if res.status != 200:
            raise RuntimeError(f"GET {path} answered {res.status}: {body[:300]!r}")
        return elapsed, body


def postgres_db(base_url):
    """Creates a fresh database next to `base_url`; returns (url, drop function)."""
    name = f"agv_bench_{os.getpid()}_{int(time.time())}"
    parsed = urllib.parse.urlparse(base_url)
    admin = parsed._replace(path="/postgres").geturl()
    subprocess.run(["psql", admin, "-q", "-c", f"CREATE DATABASE {name}"], check=True,
                   stdout=subprocess.DEVNULL)
    url = parsed._replace(path=f"/{name}").geturl()

    def drop():
        subprocess.run(["psql", admin, "-q", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return url, drop


def run_backend(name, agv, calls, requests, pg_base):
    data = tempfile.mkdtemp(prefix="agv-bench-inv-")
    drop = None
    args = ["--data", data]
    if name == "postgres":
        url, drop = postgres_db(pg_base)
        args += ["--database-url", url]
    server = None
    try:
        log(f"-- {name}: agv-server demo --calls {calls}")
        started = time.monotonic()
        out = subprocess.run([agv, *args, "demo", "--calls", str(calls), "--json"], env=clean_env(),
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        demo = json.loads(out)
        made_s = time.monotonic() - started
        log(f"   {demo['calls']} calls, {demo['incidents']} incidents in {made_s:.1f} s"
            f" ({demo['calls'] / made_s:.0f} calls/s)")
        port = free_port()
        # The floor (/health) is unauthenticated: lift the per-address limit on such requests.
        env = {**clean_env(), "AGV_UNAUTH_RATE_LIMIT_PER_MINUTE": "0"}
        server = subprocess.Popen([agv, *args, "--listen", f"127.0.0.1:{port}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.05)
        # `agv-server demo` indexes its calls for text search before it returns.
        client = Client(port, demo["admin_key"])
        _, body = client.get("/v1/calls?limit=200")
        users = sorted({c["end_user"] for c in json.loads(body)["data"] if c.get("end_user")})
        _, body = client.get("/v1/incidents?limit=200")
        incidents = [i["id"] for i in json.loads(body)["data"]]
        if not users or not incidents:
            raise RuntimeError("the fixture has no end users or incidents")
        rng = random.Random(7)
        kinds = {
            "health (floor)": lambda: "/health",
            "search text": lambda: "/v1/calls?limit=50&q=" + urllib.parse.quote(
                f'{rng.choice(WORDS)} "{rng.choice(PHRASES)}"'),
            "search filters": lambda: "/v1/calls?limit=50&q=" + urllib.parse.quote(
                f"user:{rng.choice(users)} since:7d"),
            "search mixed": lambda: "/v1/calls?limit=50&q=" + urllib.parse.quote(
                f"user:{rng.choice(users)} {rng.choice(WORDS)}"),
            # Rare and empty: a guardrail with few or no calls, filters nothing matches.
            "search policy": lambda: "/v1/calls?limit=50&q=" + urllib.parse.quote(
                f"policy:{rng.choice(POLICIES)}"),
            "search empty": lambda: "/v1/calls?limit=50&q=" + urllib.parse.quote(
                rng.choice(EMPTY)),
            "search no model": lambda: "/v1/calls?limit=50&q=" + urllib.parse.quote(ABSENT_MODEL),
            "incident list": lambda: "/v1/incidents?limit=50&min_severity=high",
            "incident detail": lambda: f"/v1/incidents/{rng.choice(incidents)}/timeline",
        }
        results = {}
        for kind, path in kinds.items():
            n = requests
            for _ in range(min(20, n)):
                client.get(path())  # warm-up
            times = [client.get(path())[0] for _ in range(n)]
            results[kind] = {"p50_ms": pct(times, 50), "p95_ms": pct(times, 95), "n": len(times)}
            log(f"   {kind:<16} p50 {results[kind]['p50_ms']:8.2f} ms  p95 {results[kind]['p95_ms']:8.2f} ms")
        return {"calls": demo["calls"], "incidents": demo["incidents"], "demo_seconds": made_s,
                "results": results}
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if drop:
            drop()
        shutil.rmtree(data, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="debug build, 3,000 calls (CI)")
    ap.add_argument("--calls", type=int, default=None, help="calls in the fixture (default 1,000,000)")
    ap.add_argument("--requests", type=int, default=None, help="requests per query kind (default 300)")
    ap.add_argument("--backend", choices=["both", "sqlite", "postgres"], default="both")
    ap.add_argument("--postgres-url", default=os.environ.get(
        "AGV_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json", action="store_true", help="print all figures as JSON at the end")
    cfg = ap.parse_args()
    release = not cfg.smoke
    calls = cfg.calls or (3_000 if cfg.smoke else 1_000_000)
    requests = cfg.requests or (30 if cfg.smoke else 300)
    if not cfg.no_build:
        cmd = ["cargo", "build", "--bin", "agv-server"] + (["--release"] if release else [])
        log("$ " + " ".join(cmd))
        subprocess.run(cmd, cwd=ROOT, check=True)
    agv = os.path.join(target_dir(), "release" if release else "debug", "agv-server")
    backends = ["sqlite", "postgres"] if cfg.backend == "both" else [cfg.backend]
    figures = {b: run_backend(b, agv, calls, requests, cfg.postgres_url) for b in backends}

    print(f"\ninvestigation benchmark ({'smoke, debug build, not representative' if cfg.smoke else 'release build'};"
          f" {calls} calls; {requests} requests per kind)")
    for b, f in figures.items():
        floor = f["results"]["health (floor)"]["p95_ms"]
        print(f"  {b}: {f['calls']} calls and {f['incidents']} incidents made in {f['demo_seconds']:.1f} s")
        for kind, r in f["results"].items():
            if kind.startswith("health"):
                print(f"    {kind:<16} p50 {r['p50_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms")
                continue
            target = TARGET_DETAIL_MS if kind == "incident detail" else TARGET_SEARCH_MS
            verdict = "meets" if r["p95_ms"] < target else "MISSES"
            print(f"    {kind:<16} p50 {r['p50_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms"
                  f"  target < {target:g} ms  ratio {r['p95_ms'] / target:6.3f} {verdict}"
                  f"  (x{r['p95_ms'] / max(floor, 1e-3):.1f} the floor)")
    if cfg.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Peak memory of agv-server while a tenant admin reads a large history: a policy backtest
over up to 200,000 calls, every page of GET /v1/calls?limit=500, and rare filters and
empty results, each against the idle server as the baseline.

    python3 bench/memory.py                         # release build, 50,000 calls of 16 KiB prompts
    python3 bench/memory.py --smoke                 # CI: debug build, 300 calls of 4 KiB; checks the script
    python3 bench/memory.py --agv-binary OLD --data DIR   # another build on a fixture kept in DIR
    python3 bench/memory.py --no-build --data DIR         # then this build on the same fixture

The fixture is recorded the way users record calls: through the proxy (`agv-server serve`
with AGV_UPSTREAM_URL = the mock upstream, examples/mock_upstream.rs), by the load
generator (examples/loadgen.rs) at a fixed rate, each call a chat completion whose user
message is --prompt-kib KiB of words; the mock answers with the same words, so every call
stores about twice that in bodies. Ten more calls come from one end user (`bench-rare`)
with a word no other call has. The server then runs until its text indexer has caught up
(its CPU goes quiet) and stops. `--data DIR` keeps the fixture there and reuses it when it
matches --calls and --prompt-kib (a newer binary migrates an older fixture forward, not
back: record the fixture with the oldest binary you compare).

Before measuring, the fixture's write-ahead logs are folded into the databases and
truncated (`PRAGMA wal_checkpoint(TRUNCATE)`, the server stopped): the server keeps its WAL
mapped (src/store/resident.rs), so a WAL left at the size of the recording burst would count
in every figure as file pages.

Each phase runs on a freshly started server (`serve` on the fixture, idle 2 s after
/ready), so no phase inherits another's heap. Two peaks per phase:
  * peak RSS: VmHWM from /proc/<pid>/status, exact, reset when the phase starts by writing 5
    to /proc/<pid>/clear_refs where the kernel allows it (else it also covers the start);
    it counts file pages too (the binary, the mapped WAL);
  * peak heap: the largest RssAnon (anonymous memory: what the server allocated) seen by a
    separate sampling process reading /proc/<pid>/status every 5 ms.
The phases:

  idle          the baseline: VmHWM of the server 2 s after /ready
  backtest      POST /v1/policies/backtest over 30 days, max_calls --max-calls (200,000)
  list          GET /v1/calls?limit=500, every page through next_cursor
  rare / empty  GET /v1/calls?limit=500 with user=bench-rare, user=nobody, q=<the rare
                word>, q=<a word no call has>, and a backtest over a range with no calls

Each peak is printed with its ratio to the baseline's, with the phase's time and what it
returned (checked: the backtest evaluates every call up to max_calls, the list walk sees
every call; the count of calls is read from the database after recording).
There is no target in DESIGN.md; the point is that a request's memory is bounded by a page,
not by the history.
"""
import argparse
import datetime
import http.client
import json
import os
import random
import sqlite3
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The scaffolding every benchmark here shares: building, ports, processes, waiting.
import proxy  # noqa: E402
from proxy import binaries, build, clean_env, cpu_seconds, free_port, log, wait_http  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_FILE = "memory-fixture.json"
RARE_USER = "bench-rare"
RARE_WORD = "zanzibarite"
RARE_CALLS = 10
# A server holding a large fixture may take a while to stop cleanly.
STOP_S = 60
ABSENT_WORD = "quetzalcoatlus"
# Words of the prompts: plain English, nothing a prompt-injection check would flag.
VOCABULARY = (
    "account address agent answer balance billing calendar card change charge contract "
    "customer date delivery detail discount email error invoice issue item monthly number "
    "order package payment plan price question receipt refund renewal report request "
    "schedule service shipping status subscription summary support ticket total transfer "
    "update upgrade usage warranty weekly"
).split()
# The tenant's limits, lifted so that the guard does not throttle the recording.
UNLIMITED = {"key_requests_per_minute": 100_000_000, "key_tokens_per_minute": 100_000_000_000,
             "tenant_requests_per_minute": 100_000_000, "tenant_tokens_per_minute": 100_000_000_000,
             "max_tokens_per_request": 1_000_000}


def proc_status(pid, field):
    """A `kB` field of /proc/<pid>/status in MB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# Run as a separate process: the largest RssAnon of a pid until a line arrives on stdin.
SAMPLER = r"""
import select, sys
pid, peak = sys.argv[1], 0.0
while True:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    peak = max(peak, int(line.split()[1]) / 1024.0)
    except OSError:
        break
    if select.select([sys.stdin], [], [], 0.005)[0]:
        break
print(peak, flush=True)
"""


class HeapSampler:
    def __init__(self, pid):
        self.proc = subprocess.Popen([sys.executable, "-c", SAMPLER, str(pid)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def stop(self):
        out, _ = self.proc.communicate("stop\n", timeout=30)
        return float(out.strip())


def reset_peak(pid):
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where it is not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Client:
    """One keep-alive connection to the server, with the admin key."""

    def __init__(self, port, key):
        self.port, self.key = port, key
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)

    def request(self, method, path, body=None, headers=None):
        hdrs = {"Authorization": f"Bearer {self.key}", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body)
            hdrs["Content-Type"] = "application/json"
        try:
            self.conn.request(method, path, body=data, headers=hdrs)
            res = self.conn.getresponse()
            return res.status, res.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3600)
            raise

    def json(self, method, path, body=None, headers=None):
        status, data = self.request(method, path, body, headers)
        if status != 200:
            sys.exit(f"{method} {path} answered {status}: {data[:500]!r}")
        return json.loads(data), len(data)


def server_env(mock_url):
    env = clean_env()
    env.update({"AGV_UPSTREAM_URL": mock_url or "http://127.0.0.1:9/v1", "AGV_UPSTREAM_API_KEY": "sk-bench",
                "AGV_LOG_FORMAT": "text", "AGV_LOG_LEVEL": "warn"})
    return env


def start_server(procs, agv, data, mock_url, tmp):
    port = free_port()
    log_path = os.path.join(tmp, "agv.log")
    with open(log_path, "a") as logf:
        proc = procs.start([agv, "--data", data, "serve", "--listen", f"127.0.0.1:{port}"],
                           env=server_env(mock_url), stdout=subprocess.DEVNULL, stderr=logf)
    try:
        wait_http(port, "/ready", 120, proc)
    except RuntimeError:
        with open(log_path) as f:
            log(f.read()[-4000:])
        raise
    return proc, port


def wait_quiet(pid, limit_s, label):
    """Waits until the process uses under 3% of a core over 3 s (its background work, the
    text indexer above all, is done)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = cpu_seconds(pid)
        time.sleep(3)
        after = cpu_seconds(pid)
        if before is None or after is None or (after - before) / 3 < 0.03:
            log(f"   {label}: quiet after {time.monotonic() - started:.0f} s")
            return
    log(f"   WARNING: {label}: still busy after {limit_s} s")


def prompt(kib, seed):
    rng = random.Random(seed)
    words, size = [], 0
    while size < kib * 1024:
        w = rng.choice(VOCABULARY)
        words.append(w)
        size += len(w) + 1
    return " ".join(words)


def chat(content):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}


def record_fixture(procs, bins, data, cfg, tmp):
    """Records the calls through the proxy; returns the fixture's description."""
    env = server_env(None)

    def cli(*args):
        return subprocess.run([bins["agv"], "--data", data, *args], env=env, check=True,
                              stdout=subprocess.PIPE, text=True).stdout.strip()

    tenant = cli("tenant", "create", "memory-bench")
    key = cli("key", "create", "--tenant", tenant)
    admin = cli("key", "create", "--tenant", tenant, "--scope", "admin")
    mock = procs.start([bins["mock"], "--listen", "127.0.0.1:0", "--latency-ms", "0"],
                       stdout=subprocess.PIPE, text=True)
    mock_url = mock.stdout.readline().strip()
    if not mock_url.startswith("http://"):
        raise RuntimeError("the mock upstream did not print its URL")
    proc, port = start_server(procs, bins["agv"], data, mock_url, tmp)
    client = Client(port, admin)
    client.json("PUT", "/v1/policies", UNLIMITED)

    body_file = os.path.join(tmp, "chat.json")
    with open(body_file, "w") as f:
        json.dump(chat(prompt(cfg.prompt_kib, 7)), f)
    duration = cfg.calls / cfg.rate
    log(f"-- recording {cfg.calls:,} calls of {cfg.prompt_kib} KiB prompts through the proxy "
        f"at {cfg.rate:g}/s ({duration:.0f} s)")
    started = time.monotonic()
    out = subprocess.run([bins["loadgen"], "--url", f"http://127.0.0.1:{port}/v1/chat/completions",
                          "--method", "POST", "--body-file", body_file,
                          "--header", f"Authorization: Bearer {key}",
                          "--rate", str(cfg.rate), "--duration", str(duration),
                          "--timeout-ms", "120000"],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(out)
    log(f"   {result['ok']:,} of {result['sent']:,} answered 2xx in {time.monotonic() - started:.0f} s "
        f"(p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms)")
    if result["ok"] != result["sent"]:
        log(f"   WARNING: not every call was recorded: {result['status_counts']}")
    proxy = Client(port, key)
    for i in range(RARE_CALLS):
        status, answer = proxy.request("POST", "/v1/chat/completions",
                                       chat(f"{RARE_WORD} {i} " + prompt(1, 100 + i)),
                                       {"x-agv-user-id": RARE_USER})
        if status != 200:
            sys.exit(f"a call of the rare end user answered {status}: {answer[:300]!r}")
    wait_quiet(proc.pid, 3600, "indexing the recorded calls")
    procs.stop(proc, STOP_S)
    procs.stop(mock, STOP_S)
    # Every call is recorded, answered or not (timeouts and upstream errors too).
    with sqlite3.connect(os.path.join(data, "agv.db")) as db:
        recorded = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    log(f"   {recorded:,} calls recorded")
    return {"calls": cfg.calls, "prompt_kib": cfg.prompt_kib, "recorded": recorded,
            "admin_key": admin, "recorded_with": bins["agv"],
            "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def truncate_wals(data):
    """Folds the write-ahead logs into the databases and truncates them (server stopped)."""
    for name in ("agv.db", "agv.search.db"):
        path = os.path.join(data, name)
        if os.path.exists(path):
            with sqlite3.connect(path) as db:
                busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                sys.exit(f"could not checkpoint {path}: is a server still running on it?")


def fixture(procs, bins, cfg, tmp):
    """The fixture's data dir and description: reused from --data when it matches."""
    data = cfg.data or os.path.join(tmp, "agv-data")
    meta_path = os.path.join(data, FIXTURE_FILE)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["calls"] == cfg.calls and meta["prompt_kib"] == cfg.prompt_kib:
            log(f"-- reusing the fixture in {data} ({meta['recorded']:,} calls, recorded "
                f"{meta['recorded_at']} with {meta['recorded_with']})")
            truncate_wals(data)
            return data, meta
        sys.exit(f"{data} holds a fixture of {meta['calls']} calls of {meta['prompt_kib']} KiB: "
                 "give another --data, or the same --calls and --prompt-kib")
    os.makedirs(data, exist_ok=True)
    if os.listdir(data):
        sys.exit(f"{data} is not empty and holds no {FIXTURE_FILE}: give an empty or new directory")
    meta = record_fixture(procs, bins, data, cfg, tmp)
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    truncate_wals(data)
    return data, meta


def walk_calls(client, params):
    """Every page of GET /v1/calls with `params`; returns (calls, pages, bytes)."""
    calls = pages = size = 0
    cursor = None
    while True:
        q = dict(params)
        if cursor:
            q["cursor"] = cursor
        page, n = client.json("GET", "/v1/calls?" + urllib.parse.urlencode(q))
        calls += len(page["data"])
        pages += 1
        size += n
        cursor = page.get("next_cursor")
        if not cursor:
            return calls, pages, size


def backtest(client, cfg, **extra):
    body = {"policy": {**UNLIMITED, "max_tokens_per_request": 1000}, "since": "30d",
            "max_calls": cfg.max_calls, **extra}
    result, _ = client.json("POST", "/v1/policies/backtest", body)
    return result["report"]["evaluated"]


def phases(cfg, meta):
    """(name, label, work) per phase; work(client) returns (what it returned, the expected
    value or None)."""
    n = meta["recorded"]

    def idle(client):
        client.request("GET", "/health")
        time.sleep(1)
        return "", None

    def run_backtest(client):
        evaluated = backtest(client, cfg)
        return f"{evaluated:,} calls evaluated", (evaluated, min(n, cfg.max_calls))

    def run_list(client):
        calls, pages, size = walk_calls(client, {"limit": 500})
        return f"{calls:,} calls in {pages} pages, {size / 1e6:,.0f} MB", (calls, n)

    def run_rare(client):
        rare, _, _ = walk_calls(client, {"limit": 500, "user": RARE_USER})
        nobody, _, _ = walk_calls(client, {"limit": 500, "user": "nobody"})
        word, _, _ = walk_calls(client, {"limit": 500, "q": RARE_WORD})
        absent, _, _ = walk_calls(client, {"limit": 500, "q": ABSENT_WORD})
        empty = backtest(client, cfg, since="2001-01-01T00:00:00Z", until="2001-01-02T00:00:00Z")
        got = (rare, nobody, word, absent, empty)
        return (f"user {rare}, nobody {nobody}, rare word {word}, absent word {absent}, "
                f"empty-range backtest {empty}"), (got, (RARE_CALLS, 0, RARE_CALLS, 0, 0))

    return [
        ("idle", "idle after start (the baseline)", idle),
        ("backtest", f"backtest, max_calls={cfg.max_calls}", run_backtest),
        ("list", "GET /v1/calls?limit=500, every page", run_list),
        ("rare", "rare filters and empty results", run_rare),
    ]


def measure(procs, agv, data, meta, cfg, tmp):
    results = {}
    for name, label, work in phases(cfg, meta):
        proc, port = start_server(procs, agv, data, None, tmp)
        client = Client(port, meta["admin_key"])
        time.sleep(2)
        start_rss = proc_status(proc.pid, "VmRSS")
        start_heap = proc_status(proc.pid, "RssAnon")
        reset = name != "idle" and reset_peak(proc.pid)
        log(f"-- {label} (fresh server: RSS {start_rss:.1f} MB, heap {start_heap:.1f} MB"
            f"{'; peak reset' if reset else ''})")
        sampler = HeapSampler(proc.pid)
        started = time.monotonic()
        try:
            what, check = work(client)
        finally:
            elapsed = time.monotonic() - started
            heap = sampler.stop()
        peak = proc_status(proc.pid, "VmHWM")
        end_rss = proc_status(proc.pid, "VmRSS")
        procs.stop(proc, STOP_S)
        ok = check is None or check[0] == check[1]
        results[name] = {"label": label, "peak_mb": peak, "peak_heap_mb": heap,
                         "start_rss_mb": start_rss, "start_heap_mb": start_heap,
                         "end_rss_mb": end_rss, "seconds": elapsed, "returned": what,
                         "checked": ok, "peak_reset": reset}
        log(f"   peak RSS {peak:.1f} MB, peak heap {heap:.1f} MB, RSS after {end_rss:.1f} MB, "
            f"{elapsed:.2f} s; {what}")
        if not ok:
            log(f"   ERROR: expected {check[1]}, got {check[0]}")
    return results


def commit_of_checkout():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              stdout=subprocess.PIPE, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
        return head + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(results, cfg, meta, agv):
    base, base_heap = results["idle"]["peak_mb"], results["idle"]["peak_heap_mb"]
    print(f"\nmemory benchmark ({'smoke, debug build, not representative' if cfg.smoke else cfg.profile + ' build'};"
          f" {meta['recorded']:,} calls of {cfg.prompt_kib} KiB prompts and answers; SQLite)")
    print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable.rsplit('/', 1)[-1]] + sys.argv)}")
    print(f"date:    {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"commit:  {commit_of_checkout()} (the checkout); binary {agv}")
    print(f"{'phase':<38} {'peak RSS':>10} {'vs idle':>8} {'peak heap':>10} {'vs idle':>8} {'time':>9}  returned")
    for r in results.values():
        ratio = r["peak_mb"] / base if base else float("nan")
        heap_ratio = r["peak_heap_mb"] / base_heap if base_heap else float("nan")
        print(f"{r['label']:<38} {r['peak_mb']:7.1f} MB {ratio:7.2f}x {r['peak_heap_mb']:7.1f} MB "
              f"{heap_ratio:7.2f}x {r['seconds']:8.2f}s  {r['returned']}"
              f"{'' if r['checked'] else '  (WRONG: see above)'}")
    if not all(r["peak_reset"] for n, r in results.items() if n != "idle"):
        print("(the kernel did not let the peak be reset: each peak also covers the server's start)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="debug build, 300 calls of 4 KiB (CI)")
    ap.add_argument("--calls", type=int, default=None, help="calls to record (default 50,000)")
    ap.add_argument("--prompt-kib", type=int, default=None, help="KiB of each prompt (default 16)")
    ap.add_argument("--rate", type=float, default=None, help="calls per second while recording (default 250)")
    ap.add_argument("--max-calls", type=int, default=200_000, help="the backtest's max_calls")
    ap.add_argument("--data", default=None, metavar="DIR",
                    help="keep the fixture in DIR, and reuse it when it is there already")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--agv-binary", default=None, metavar="PATH",
                    help="measure this agv-server binary (e.g. one built from another commit) "
                         "with the mock and load generator of --profile")
    ap.add_argument("--profile", choices=["release", "dist"], default="release")
    ap.add_argument("--json", action="store_true", help="print all raw figures as JSON at the end")
    cfg = ap.parse_args()
    cfg.calls = cfg.calls or (300 if cfg.smoke else 50_000)
    cfg.prompt_kib = cfg.prompt_kib or (4 if cfg.smoke else 16)
    cfg.rate = cfg.rate or (100.0 if cfg.smoke else 250.0)
    cfg.profile = "dev" if cfg.smoke else cfg.profile
    if not cfg.no_build:
        build(cfg.profile)
    bins = binaries(cfg.profile)
    if cfg.agv_binary:
        bins["agv"] = os.path.abspath(cfg.agv_binary)
    for path in bins.values():
        if not os.path.exists(path):
            log(f"ERROR: {path} missing (build it, or drop --no-build)")
            return 2
    if cfg.data:
        cfg.data = os.path.abspath(cfg.data)

    procs = proxy.Procs()
    tmp = tempfile.mkdtemp(prefix="agv-bench-memory-")
    try:
        data, meta = fixture(procs, bins, cfg, tmp)
        results = measure(procs, bins["agv"], data, meta, cfg, tmp)
    finally:
        procs.stop_all(STOP_S)
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, cfg, meta, bins["agv"])
    if cfg.json:
        print(json.dumps({k: v for k, v in results.items()}))
    return 0 if all(r["checked"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

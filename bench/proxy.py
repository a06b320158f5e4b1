#!/usr/bin/env python3
"""Proxy overhead and throughput of agv-server against the same local upstream called
directly, and optionally against a peer gateway (LiteLLM proxy).

    python3 bench/proxy.py                  # release build; 1,000 req/s for 10 s + max throughput
    python3 bench/proxy.py --peer litellm   # the same, plus LiteLLM proxy on the same upstream
    python3 bench/proxy.py --smoke          # CI: debug build, 2 s at a low rate; checks the script
    python3 bench/proxy.py --profile dist   # the shipped build (whole-program LTO) instead
    python3 bench/proxy.py --durability power            # every commit waits for the disk
    python3 bench/proxy.py --backend postgres --durability process   # Postgres, async commits

What runs (all on loopback):
  * the mock OpenAI upstream (examples/mock_upstream.rs, latency 0, no request recording);
  * the load generator (examples/loadgen.rs): open loop at a fixed rate, latency measured
    from each request's scheduled send time (no coordinated omission), then closed loop
    at maximum throughput;
  * agv-server (`agv-server --data TMP serve`, AGV_UPSTREAM_URL = the mock), with one
    tenant and one proxy key created through the CLI; on SQLite in TMP, or with
    --backend postgres on a fresh database (created with psql on --postgres-url, dropped
    afterwards); with --durability, AGV_DURABILITY (unset: the backend's default, process
    on SQLite and power on Postgres);
  * a byte relay (examples/relay.rs) in front of the mock: it copies bytes both ways and
    does nothing else, so its added latency is the floor for any proxy on this machine, the
    cost of the extra loopback hop alone (fixed rate only; --no-relay skips it);
  * agv's own histograms (/metrics) read before and after its fixed-rate phase: the report
    splits its mean time per call into the upstream exchange, the recorder (wait and
    commit), the enforcement and the rest;
  * with --peer litellm: LiteLLM proxy from a venv in target/bench-venv, one model routed
    to the mock as an OpenAI-compatible base, no database, a master key (required), no callbacks,
    one worker per core.

Targets (DESIGN.md): added latency (agv - direct) p50 < 0.3 ms and p99 < 1 ms at
1,000 req/s; throughput >= 5,000 req/s on 2 cores; against LiteLLM >= 50x throughput and
<= 1/50 the added latency. Each figure is printed with its ratio to the target; for
latencies a ratio below 1.0 meets the target, for throughput a ratio of 1.0 or more does.

The tenant's rate limits are lifted through PUT /v1/policies (an admin key made with the
CLI) so that the guard does not throttle the load; every other check still runs and every
call is still recorded durably before it is answered.
"""
import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_ADDED_P50_MS = 0.3
TARGET_ADDED_P99_MS = 1.0
TARGET_RPS = 5000.0
TARGET_PEER_THROUGHPUT_X = 50.0
TARGET_PEER_LATENCY_FRACTION = 1.0 / 50.0

CHAT_BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello to the benchmark in a few words."},
    ],
    "max_tokens": 32,
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("AGV_", "OPENAI_"))}


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def build(profile):
    cmd = ["cargo", "build", "--bin", "agv-server", "--example", "mock_upstream",
           "--example", "loadgen", "--example", "relay", "--profile", profile]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True)


def binaries(profile):
    base = os.path.join(target_dir(), "debug" if profile == "dev" else profile)
    return {
        "agv": os.path.join(base, "agv-server"),
        "mock": os.path.join(base, "examples", "mock_upstream"),
        "loadgen": os.path.join(base, "examples", "loadgen"),
        "relay": os.path.join(base, "examples", "relay"),
    }


def wait_http(port, path, timeout_s, proc=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {path} answered")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"127.0.0.1:{port}{path} not ready after {timeout_s} s")


def post_once(port, path, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


class Procs:
    """Child processes, stopped in reverse order on exit."""

    def __init__(self):
        self.procs = []

    def start(self, cmd, **kw):
        proc = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=10):
        """SIGTERM to the process group, SIGKILL after `timeout` seconds."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self, timeout=10):
        for proc in reversed(list(self.procs)):
            self.stop(proc, timeout)


def start_mock(procs, bins):
    proc = procs.start([bins["mock"], "--listen", "127.0.0.1:0", "--latency-ms", "0"],
                       stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        raise RuntimeError("mock upstream did not print its URL")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return url, port


def loadgen(bins, url, body_file, headers, cfg, mode):
    cmd = [bins["loadgen"], "--url", url, "--method", "POST", "--body-file", body_file,
           "--duration", str(cfg.duration), "--timeout-ms", "10000"]
    for h in headers:
        cmd += ["--header", h]
    if mode == "rate":
        cmd += ["--rate", str(cfg.rate), "--warmup", str(cfg.warmup)]
    else:
        cmd += ["--max", "--concurrency", str(cfg.concurrency), "--warmup", str(cfg.warmup)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def settle(port, headers, limit_s=120):
    """Waits until the server answers one request promptly again: an overloaded peer keeps
    working through its backlog after the client has given up, which would poison the
    next phase."""
    hdrs = dict(h.split(": ", 1) for h in headers)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            status, _ = post_once(port, "/v1/chat/completions", CHAT_BODY, hdrs)
            if status == 200 and time.monotonic() - started < 0.5:
                return
        except OSError:
            pass
        time.sleep(1)
    log(f"   WARNING: 127.0.0.1:{port} still slow after {limit_s} s")


# agv's histograms whose means over the fixed-rate phase say where its time per call goes.
BREAKDOWN = {
    "request": 'agv_http_request_duration_seconds{route="/v1/chat/completions",method="POST"}',
    "upstream": "agv_upstream_latency_seconds",
    "recorder": "agv_recorder_wait_seconds",
    "commit": "agv_recorder_commit_seconds",
    "enforcement": "agv_enforcement_seconds",
}


def histogram_totals(port):
    """(sum, count) of each BREAKDOWN histogram, read from agv's /metrics; empty when
    /metrics cannot be read (the breakdown line is then left out, the figures stand)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except OSError as e:
        log(f"   WARNING: could not read agv's /metrics ({e}); no breakdown of its time per call")
        return {}
    totals = {}
    for key, series in BREAKDOWN.items():
        name, _, labels = series.partition("{")
        labels = "{" + labels if labels else ""
        found = {}
        for part in ("sum", "count"):
            m = re.search(rf"^{re.escape(f'{name}_{part}{labels}')} (\S+)$", text, re.M)
            if m:
                found[part] = float(m.group(1))
        if len(found) == 2:
            totals[key] = (found["sum"], found["count"])
    return totals


def cpu_seconds(pid):
    """User + system CPU seconds the process has used so far (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def breakdown_means(before, after):
    """Mean microseconds per event of each histogram between two `histogram_totals`."""
    means = {}
    for key, (s1, c1) in after.items():
        s0, c0 = before.get(key, (0.0, 0.0))
        if c1 > c0:
            means[key] = (s1 - s0) / (c1 - c0) * 1e6
    return means


def measure(name, bins, port, body_file, headers, cfg, cap_rate=False, fixed_only=False,
            probe=None, pid=None):
    """The fixed rate first, on a server that has only seen that rate (a warm-up at the
    same rate, not measured), then max throughput: the figure at 1,000 req/s is the steady
    state at that rate, not the aftermath of a 10-second flood, whose backlog of background
    work (agv's text indexing of 100,000+ calls) would still be running. With `cap_rate`
    (the peer) max throughput comes first, and the fixed rate is lowered to half of it
    when that is below the rate, so that a slow peer's added latency is measured
    unsaturated rather than as its queueing delay (this favours the peer). With `probe`
    (agv), the fixed-rate phase also gets the means of agv's own histograms over it; with
    `pid`, the CPU time that process used per answered call in the fixed-rate phase."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    def fixed_rate(rate):
        at = argparse.Namespace(**{**vars(cfg), "rate": rate})
        if cfg.warmup > 0:
            log(f"-- {name}: warm-up, {rate} req/s for {cfg.warmup} s (not measured)")
            loadgen(bins, url, body_file, headers,
                    argparse.Namespace(**{**vars(at), "duration": cfg.warmup, "warmup": 0.0}), "rate")
        log(f"-- {name}: {rate} req/s for {cfg.duration} s")
        before = probe() if probe else None
        cpu_before = cpu_seconds(pid) if pid else None
        result = loadgen(bins, url, body_file, headers, argparse.Namespace(**{**vars(at), "warmup": 0.0}), "rate")
        cpu_after = cpu_seconds(pid) if pid else None
        if probe:
            result["breakdown_us"] = breakdown_means(before, probe())
        if cpu_before is not None and cpu_after is not None and result["ok"]:
            result["cpu_us_per_call"] = (cpu_after - cpu_before) / result["ok"] * 1e6
        log(f"   {json.dumps(result)}")
        return result

    def max_throughput():
        log(f"-- {name}: max throughput, {cfg.concurrency} connections, {cfg.duration} s")
        result = loadgen(bins, url, body_file, headers, cfg, "max")
        log(f"   {json.dumps(result)}")
        return result

    rate = cfg.rate
    if fixed_only:
        phases = {"fixed": fixed_rate(rate)}
    elif cap_rate:
        peak = max_throughput()
        settle(port, headers)
        if peak["achieved_rps"] / 2 < rate:
            rate = max(1.0, round(peak["achieved_rps"] / 2, 1))
            log(f"   {name} cannot sustain {cfg.rate:g} req/s; its fixed-rate phase uses {rate:g} req/s")
        phases = {"fixed": fixed_rate(rate), "max": peak}
    else:
        # In this order: the fixed rate first (see above).
        phases = {"fixed": fixed_rate(rate), "max": max_throughput()}
    for r in phases.values():
        bad = {k: v for k, v in r["status_counts"].items() if not k.startswith("2")}
        if bad:
            log(f"   WARNING: {name} answered non-2xx or failed: {bad}")
    return phases


def raise_rate_limits(port, admin_key):
    """Lifts the tenant's rate limits so the guard does not throttle the benchmark (every
    other check still runs, and every call is still recorded durably)."""
    body = json.dumps({"key_requests_per_minute": 100_000_000, "key_tokens_per_minute": 100_000_000_000,
                       "tenant_requests_per_minute": 100_000_000, "tenant_tokens_per_minute": 100_000_000_000})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("PUT", "/v1/policies", body=body,
                 headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"})
    res = conn.getresponse()
    text = res.read()
    conn.close()
    if res.status != 200:
        sys.exit(f"could not raise the rate limits: PUT /v1/policies answered {res.status}: {text[:300]!r}")


def start_relay(procs, bins, mock_port):
    proc = procs.start([bins["relay"], "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{mock_port}"],
                       stdout=subprocess.PIPE, text=True)
    addr = proc.stdout.readline().strip()
    if ":" not in addr:
        raise RuntimeError("the relay did not print its address")
    return int(addr.rsplit(":", 1)[1])


def psql(admin_url, sql):
    if shutil.which("psql") is None:
        sys.exit("--backend postgres needs psql (postgresql-client) to create the benchmark's database")
    subprocess.run(["psql", admin_url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], check=True,
                   stdout=subprocess.DEVNULL)


def create_postgres_db(admin_url):
    """A fresh database on the server of `admin_url`; returns (name, its URL)."""
    name = "agv_bench_" + secrets.token_hex(6)
    psql(admin_url, f'CREATE DATABASE "{name}"')
    parts = urllib.parse.urlsplit(admin_url)
    return name, urllib.parse.urlunsplit(parts._replace(path="/" + name))


def start_agv(procs, bins, mock_url, tmp, database_url=None, durability=None):
    data = os.path.join(tmp, "agv-data")
    env = clean_env()
    env.update({"AGV_UPSTREAM_URL": mock_url, "AGV_UPSTREAM_API_KEY": "sk-bench",
                "AGV_LOG_FORMAT": "text", "AGV_LOG_LEVEL": "warn"})
    if database_url:
        env["AGV_DATABASE_URL"] = database_url
    if durability:
        env["AGV_DURABILITY"] = durability

    def cli(*args):
        out = subprocess.run([bins["agv"], "--data", data, *args], env=env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        return out.strip()

    tenant = cli("tenant", "create", "bench")
    key = cli("key", "create", "--tenant", tenant)
    admin_key = cli("key", "create", "--tenant", tenant, "--scope", "admin")
    port = free_port()
    log_path = os.path.join(tmp, "agv.log")
    with open(log_path, "w") as logf:
        proc = procs.start([bins["agv"], "--data", data, "serve", "--listen", f"127.0.0.1:{port}"],
                           env=env, stdout=subprocess.DEVNULL, stderr=logf)
    try:
        wait_http(port, "/ready", 30, proc)
    except RuntimeError:
        with open(log_path) as f:
            log(f.read()[-4000:])
        raise
    raise_rate_limits(port, admin_key)
    return port, key, proc.pid


def start_litellm(procs, mock_url, tmp, smoke):
    venv = os.path.join(ROOT, "target", "bench-venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        log(f"-- creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    log("-- pip install 'litellm[proxy]' (quiet)")
    pip = subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          "litellm[proxy]"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    if pip.returncode != 0:
        log(pip.stdout[-4000:])
        log("ERROR: pip install 'litellm[proxy]' failed (output above); cannot measure the peer")
        sys.exit(3)
    cores = os.cpu_count() or 1
    config = os.path.join(tmp, "litellm.yaml")
    with open(config, "w") as f:
        f.write(
            "model_list:\n"
            "  - model_name: gpt-4o-mini\n"
            "    litellm_params:\n"
            "      model: openai/gpt-4o-mini\n"
            f"      api_base: {mock_url}\n"
            "      api_key: sk-bench\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  drop_params: true\n"
            "  request_timeout: 30\n"
            "general_settings:\n"
            "  disable_spend_logs: true\n"
            "  disable_error_logs: true\n"
        )
    port = free_port()
    master_key = "sk-" + secrets.token_hex(32)
    env = clean_env()
    env.update({
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network fetch of the price list
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
        # LiteLLM refuses to start without a strong master key; agv authenticates every
        # call too, so this keeps the comparison fair. No DB: the key is a string compare.
        "LITELLM_MASTER_KEY": master_key,
    })
    env.pop("DATABASE_URL", None)
    cmd = [os.path.join(venv, "bin", "litellm"), "--config", config, "--host", "127.0.0.1",
           "--port", str(port), "--num_workers", str(cores)]
    log("$ " + " ".join(cmd))
    logf = open(os.path.join(tmp, "litellm.log"), "w")
    proc = procs.start(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)
    try:
        wait_http(port, "/health/liveliness", 180, proc)
    except RuntimeError:
        logf.flush()
        with open(os.path.join(tmp, "litellm.log")) as f:
            log(f.read()[-4000:])
        raise
    return port, master_key


def ratio_line(label, value, target, unit, lower_is_better=True):
    if target == 0 or value is None:
        return f"{label:<44} {value} {unit}"
    r = value / target
    meets = (r < 1.0) if lower_is_better else (r >= 1.0)
    cmp = "<" if lower_is_better else ">="
    return (f"{label:<44} {value:10.3f} {unit:<6} target {cmp} {target:g} {unit}  "
            f"ratio {r:7.3f}  {'meets' if meets else 'MISSES'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="debug build, 2 s at a low rate (CI)")
    ap.add_argument("--peer", choices=["none", "litellm"], default="none")
    ap.add_argument("--rate", type=float, default=None, help="fixed rate, req/s (default 1000)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per phase (default 10)")
    ap.add_argument("--concurrency", type=int, default=None, help="--max connections (default 64)")
    ap.add_argument("--no-relay", action="store_true", help="skip the byte relay's floor")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--agv-binary", default=None, metavar="PATH",
                    help="measure this agv-server binary (e.g. one built with another profile "
                         "or commit) with the mock, load generator and relay of --profile")
    ap.add_argument("--profile", choices=["release", "dist"], default="release",
                    help="cargo profile to build and measure: release (README's run command, "
                         "fast to build) or dist (shipped binaries, whole-program LTO)")
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                    help="agv's database: SQLite in the temp data dir, or a fresh Postgres database")
    ap.add_argument("--postgres-url", metavar="URL",
                    default=os.environ.get("AGV_BENCH_POSTGRES_URL",
                                           "postgres://postgres@127.0.0.1:5432/postgres"),
                    help="with --backend postgres: a server and role that may create databases "
                         "(default $AGV_BENCH_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/postgres)")
    ap.add_argument("--durability", choices=["process", "power"], default=None,
                    help="AGV_DURABILITY for agv (default unset: process on SQLite, power on Postgres)")
    ap.add_argument("--json", action="store_true", help="print all raw figures as JSON at the end")
    cfg = ap.parse_args()
    cfg.rate = cfg.rate or (50.0 if cfg.smoke else 1000.0)
    cfg.duration = cfg.duration or (2.0 if cfg.smoke else 10.0)
    cfg.concurrency = cfg.concurrency or (8 if cfg.smoke else 64)
    cfg.warmup = 0.0 if cfg.smoke else 2.0

    cfg.profile = "dev" if cfg.smoke else cfg.profile
    if not cfg.no_build:
        build(cfg.profile)
    bins = binaries(cfg.profile)
    if cfg.agv_binary:
        bins["agv"] = os.path.abspath(cfg.agv_binary)
    if cfg.no_relay:
        del bins["relay"]
    for path in bins.values():
        if not os.path.exists(path):
            log(f"ERROR: {path} missing (build it, or drop --no-build)")
            return 2

    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="agv-bench-proxy-")
    results = {}
    pg_db = None
    try:
        mock_url, mock_port = start_mock(procs, bins)
        log(f"-- mock upstream at {mock_url}")
        body_file = os.path.join(tmp, "chat.json")
        with open(body_file, "w") as f:
            json.dump(CHAT_BODY, f)

        results["direct"] = measure("direct", bins, mock_port, body_file,
                                    ["Authorization: Bearer sk-bench"], cfg)

        if not cfg.no_relay:
            relay_port = start_relay(procs, bins, mock_port)
            results["relay"] = measure("relay", bins, relay_port, body_file,
                                       ["Authorization: Bearer sk-bench"], cfg, fixed_only=True)

        database_url = None
        if cfg.backend == "postgres":
            pg_db, database_url = create_postgres_db(cfg.postgres_url)
            log(f"-- agv on Postgres, database {pg_db}")
        agv_port, key, agv_pid = start_agv(procs, bins, mock_url, tmp, database_url, cfg.durability)
        status, data = post_once(agv_port, "/v1/chat/completions", CHAT_BODY,
                                 {"Authorization": f"Bearer {key}"})
        if status != 200:
            sys.exit(f"agv-server answered {status} on POST /v1/chat/completions: {data[:500]!r}")
        results["agv"] = measure("agv", bins, agv_port, body_file,
                                 [f"Authorization: Bearer {key}"], cfg,
                                 probe=lambda: histogram_totals(agv_port), pid=agv_pid)

        if cfg.peer == "litellm":
            lport, lkey = start_litellm(procs, mock_url, tmp, cfg.smoke)
            status, data = post_once(lport, "/v1/chat/completions", CHAT_BODY,
                                     {"Authorization": f"Bearer {lkey}"})
            if status != 200:
                log(f"!! LiteLLM answered {status}: {data[:1000]!r}")
                return 1
            results["litellm"] = measure("litellm", bins, lport, body_file,
                                         [f"Authorization: Bearer {lkey}"], cfg, cap_rate=True)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        if pg_db:
            try:
                psql(cfg.postgres_url, f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
            except subprocess.CalledProcessError as e:
                log(f"WARNING: could not drop the benchmark database {pg_db}: {e}")

    report(results, cfg)
    if cfg.json:
        print(json.dumps(results))
    if cfg.smoke and "agv" in results and set(BREAKDOWN) - results["agv"]["fixed"].get("breakdown_us", {}).keys():
        # CI runs the smoke: a histogram renamed in the server must not silently drop the
        # breakdown from every later benchmark.
        log("ERROR: agv's /metrics lacked a histogram the breakdown reads (see BREAKDOWN)")
        return 1
    return 0


def report(results, cfg):
    d = results["direct"]
    durability = cfg.durability or ("power" if cfg.backend == "postgres" else "process") + " (default)"
    print(f"\nproxy benchmark ({'smoke, debug build, not representative' if cfg.smoke else cfg.profile + ' build'};"
          f" agv on {cfg.backend}, durability {durability};"
          f" {cfg.rate:g} req/s for {cfg.duration:g} s; max with {cfg.concurrency} connections)")
    for name in ("direct", "relay", "agv", "litellm"):
        if name in results:
            f, m = results[name]["fixed"], results[name].get("max")
            peak = (f"throughput {m['achieved_rps']:10.1f} req/s (ok {m['ok']}/{m['sent']})"
                    if m else "(fixed rate only)")
            print(f"  {name:<8} @{f['rate']:g}/s p50 {f['p50_ms']:8.3f} ms  p99 {f['p99_ms']:8.3f} ms  "
                  f"max {f['max_ms']:8.3f} ms  ok {f['ok']}/{f['sent']}   {peak}")
    added = {}
    for name in ("relay", "agv", "litellm"):
        if name in results:
            f = results[name]["fixed"]
            added[name] = (f["p50_ms"] - d["fixed"]["p50_ms"], f["p99_ms"] - d["fixed"]["p99_ms"])
    if "relay" in added:
        r50, r99 = added["relay"]
        print(f"{'relay added latency p50 / p99 (the floor)':<44} {r50:10.3f} ms / {r99:.3f} ms"
              "  (a byte relay: the extra hop alone)")
    if "agv" in results:
        a50, a99 = added["agv"]
        print(ratio_line("agv added latency p50 (agv - direct)", a50, TARGET_ADDED_P50_MS, "ms"))
        print(ratio_line("agv added latency p99 (agv - direct)", a99, TARGET_ADDED_P99_MS, "ms"))
        rps = results["agv"]["max"]["achieved_rps"]
        print(ratio_line("agv max throughput", rps, TARGET_RPS, "req/s", lower_is_better=False))
        print(f"{'agv throughput / direct throughput':<44} {rps / max(d['max']['achieved_rps'], 1e-9):10.3f}")
        b = results["agv"]["fixed"].get("breakdown_us", {})
        if set(BREAKDOWN) <= b.keys():
            rest = b["request"] - b["upstream"] - b["recorder"] - b["enforcement"]
            commit = f" (its commit {b['commit']:.0f})"
            print(f"{'agv time per call, means from its /metrics':<44} request {b['request']:.0f} us ="
                  f" upstream exchange {b['upstream']:.0f} + recorder {b['recorder']:.0f}{commit}"
                  f" + enforcement {b['enforcement']:.0f} + the rest {rest:.0f}")
        else:
            print(f"  agv: no breakdown of its time per call; /metrics lacked {sorted(set(BREAKDOWN) - b.keys())}")
        cpu = results["agv"]["fixed"].get("cpu_us_per_call")
        if cpu is not None:
            print(f"{'agv CPU per call at the fixed rate':<44} {cpu:10.1f} us  (user + system, from /proc)")
    else:
        print("  agv: not measured (proxy route missing or failing; see above)")
    if "litellm" in results:
        l50, l99 = added["litellm"]
        print(f"{'litellm added latency p50 / p99':<44} {l50:10.3f} ms / {l99:.3f} ms")
        share = TARGET_PEER_LATENCY_FRACTION
        print(f"{'the target share of that (budget for agv)':<44} {l50 * share:10.3f} ms / {l99 * share:.3f} ms")
        if "agv" in results:
            lrps = results["litellm"]["max"]["achieved_rps"]
            x = results["agv"]["max"]["achieved_rps"] / max(lrps, 1e-9)
            print(ratio_line("agv / litellm throughput", x, TARGET_PEER_THROUGHPUT_X, "x",
                             lower_is_better=False))
            frac = max(added["agv"][0], 0.0) / l50 if l50 > 0 else float("nan")
            print(ratio_line("agv / litellm added latency p50", frac, TARGET_PEER_LATENCY_FRACTION, "x"))
            frac99 = max(added["agv"][1], 0.0) / l99 if l99 > 0 else float("nan")
            print(ratio_line("agv / litellm added latency p99", frac99, TARGET_PEER_LATENCY_FRACTION, "x"))


if __name__ == "__main__":
    sys.exit(main())

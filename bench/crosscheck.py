#!/usr/bin/env python3
"""agv's added latency as widely used load generators see it, next to bench/proxy.py's own
load generator, in one run on the same servers.

    python3 bench/crosscheck.py                       # release build; hey, wrk and loadgen
    python3 bench/crosscheck.py --upstream nginx      # nginx answering a canned completion
    python3 bench/crosscheck.py --no-build --agv-binary before=OLD --agv-binary after=NEW \\
        --rounds 3                                    # A/B, alternated rounds, medians

What runs (all on loopback), for each round and each agv binary in turn:
  * the upstream: the mock (examples/mock_upstream.rs), or with --upstream nginx an nginx
    started on a free port that answers POST /v1/chat/completions with a fixed completion;
  * the byte relay (examples/relay.rs) in front of it: the floor any proxy pays here;
  * a fresh agv-server on SQLite (or --backend postgres), rate limits lifted, as in proxy.py;
  * against each of direct, relay and agv, the same requests from three clients:
      - hey (github.com/rakyll/hey): `-c 4 -q 250`, four workers each sending at most 250
        requests a second, so 1,000 req/s; each worker waits for its answer before the next
        tick, and latency runs from the actual send (closed loop per worker). The workers'
        tickers start together, so their requests arrive four at a time every 4 ms;
      - hey1: the same rate from one worker (`-c 1 -q 1000`): no such bursts;
      - wrk: one thread, one connection, back to back (`-t1 -c1`): the latency of one
        request after another with no idle time in between;
      - loadgen (examples/loadgen.rs): open loop at 1,000 req/s, latency from each request's
        scheduled send time.
Added latency = the client's figure through agv (or the relay) minus the same client's
figure direct, in the same round. The report gives, per client and binary, the medians over
the rounds, and agv's CPU time per call in each client's phase (from /proc).

Needs hey and wrk on PATH (Debian: `apt-get install hey wrk`), and nginx for --upstream nginx.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy  # noqa: E402  (the shared scaffolding: build, binaries, ports, processes)

COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello, benchmark!"}}],
    "usage": {"prompt_tokens": 24, "completion_tokens": 4, "total_tokens": 28},
}


def start_nginx(procs, tmp):
    if shutil.which("nginx") is None:
        sys.exit("--upstream nginx needs nginx on PATH (Debian: apt-get install nginx)")
    port = proxy.free_port()
    root = os.path.join(tmp, "nginx")
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    body = json.dumps(COMPLETION).replace("'", "\\'")
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      default_type application/json;
      return 200 '{body}';
    }}
  }}
}}
""")
    proc = procs.start(["nginx", "-p", root, "-c", conf], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            status, _ = proxy.post_once(port, "/v1/chat/completions", proxy.CHAT_BODY, {})
            if status == 200:
                return f"http://127.0.0.1:{port}/v1", port
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"nginx exited with {proc.returncode}; see {root}/logs/error.log")
        time.sleep(0.05)
    sys.exit("nginx did not answer within 10 s")


def hey(url, body_file, headers, duration, workers=4):
    cmd = ["hey", "-z", f"{duration:g}s", "-c", str(workers), "-q", f"{1000 / workers:g}", "-m", "POST",
           "-T", "application/json", "-D", body_file, "-o", "csv"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], check=True, stdout=subprocess.PIPE, text=True).stdout
    lines = out.strip().splitlines()
    ms, statuses = [], {}
    for line in lines[1:]:
        cols = line.split(",")
        if len(cols) < 7:
            continue
        ms.append(float(cols[0]) * 1000.0)
        statuses[cols[6]] = statuses.get(cols[6], 0) + 1
    if not ms:
        raise RuntimeError(f"hey printed no results for {url}")
    ms.sort()
    return {"n": len(ms), "p50_ms": quantile(ms, 0.50), "p99_ms": quantile(ms, 0.99),
            "mean_ms": statistics.fmean(ms), "status_counts": statuses,
            "achieved_rps": len(ms) / duration}


def wrk(url, body_file, headers, duration, tmp):
    script = os.path.join(tmp, "post.lua")
    with open(body_file) as f:
        body = f.read()
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write(f"wrk.body = {json.dumps(body)}\n")
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
        for h in headers:
            k, v = h.split(": ", 1)
            f.write(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n")
    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{duration:g}s", "--latency", "-s", script, url],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    found = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise RuntimeError(f"wrk printed no {pct}% latency:\n{out}")
        found[pct] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": found["50"], "p99_ms": found["99"],
            "achieved_rps": float(m.group(1)) if m else None,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def loadgen(bins, url, body_file, headers, duration):
    cfg = argparse.Namespace(duration=duration, rate=1000.0, warmup=0.0)
    r = proxy.loadgen(bins, url, body_file, headers, cfg, "rate")
    return {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "achieved_rps": r["achieved_rps"],
            "status_counts": r["status_counts"]}


def quantile(sorted_ms, q):
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


CLIENTS = ("hey", "hey1", "wrk", "loadgen")


def run_clients(bins, port, body_file, headers, cfg, tmp, pid=None):
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    out = {}
    # A short warm-up at the fixed rate, not measured: connections, caches, the first
    # page of the database.
    loadgen(bins, url, body_file, headers, 2.0)
    for client in CLIENTS:
        cpu0 = proxy.cpu_seconds(pid) if pid else None
        if client in ("hey", "hey1"):
            r = hey(url, body_file, headers, cfg.duration, 4 if client == "hey" else 1)
            calls = r["n"]
        elif client == "wrk":
            r = wrk(url, body_file, headers, cfg.duration, tmp)
            calls = (r["achieved_rps"] or 0) * cfg.duration
        else:
            r = loadgen(bins, url, body_file, headers, cfg.duration)
            calls = r["achieved_rps"] * cfg.duration
        cpu1 = proxy.cpu_seconds(pid) if pid else None
        if cpu0 is not None and cpu1 is not None and calls:
            r["cpu_us_per_call"] = (cpu1 - cpu0) / calls * 1e6
        out[client] = r
        proxy.log(f"   {client}: {json.dumps(r)}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", choices=["mock", "nginx"], default="mock")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per client and target")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--agv-binary", action="append", default=[], metavar="[NAME=]PATH",
                    help="an agv-server binary to measure; give several for an A/B (alternated)")
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--postgres-url", default=os.environ.get(
        "AGV_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--json", action="store_true", help="print all raw figures as JSON at the end")
    cfg = ap.parse_args()
    for tool in ("hey", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH (Debian: apt-get install hey wrk)")
    if not cfg.no_build:
        proxy.build("release")
    bins = proxy.binaries("release")
    agvs = []
    for given in cfg.agv_binary or [bins["agv"]]:
        name, _, path = given.rpartition("=")
        agvs.append((name or "agv", os.path.abspath(path)))
    for path in [p for _, p in agvs] + [bins["mock"], bins["loadgen"], bins["relay"]]:
        if not os.path.exists(path):
            sys.exit(f"{path} missing (build it, or drop --no-build)")

    procs = proxy.Procs()
    tmp = tempfile.mkdtemp(prefix="agv-bench-cross-")
    rounds = []
    try:
        body_file = os.path.join(tmp, "chat.json")
        with open(body_file, "w") as f:
            json.dump(proxy.CHAT_BODY, f)
        if cfg.upstream == "nginx":
            up_url, up_port = start_nginx(procs, tmp)
        else:
            up_url, up_port = proxy.start_mock(procs, bins)
        relay_port = proxy.start_relay(procs, bins, up_port)
        auth = ["Authorization: Bearer sk-bench"]
        for i in range(cfg.rounds):
            one = {}
            proxy.log(f"-- round {i + 1}/{cfg.rounds}: direct")
            one["direct"] = run_clients(bins, up_port, body_file, auth, cfg, tmp)
            proxy.log(f"-- round {i + 1}/{cfg.rounds}: relay")
            one["relay"] = run_clients(bins, relay_port, body_file, auth, cfg, tmp)
            for name, path in agvs:
                run_dir = os.path.join(tmp, f"agv-{i}-{name}")
                os.makedirs(run_dir)
                database_url, pg_db = None, None
                if cfg.backend == "postgres":
                    pg_db, database_url = proxy.create_postgres_db(cfg.postgres_url)
                before = list(procs.procs)
                port, key, pid = proxy.start_agv(procs, {**bins, "agv": path}, up_url, run_dir, database_url)
                proxy.log(f"-- round {i + 1}/{cfg.rounds}: {name} ({path})")
                try:
                    one[name] = run_clients(bins, port, body_file, [f"Authorization: Bearer {key}"],
                                            cfg, tmp, pid)
                finally:
                    for p in [p for p in procs.procs if p not in before]:
                        procs.stop(p)
                    if pg_db:
                        proxy.psql(cfg.postgres_url, f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
            rounds.append(one)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    report(rounds, [n for n, _ in agvs], cfg)
    if cfg.json:
        print(json.dumps(rounds))
    return 0


def report(rounds, names, cfg):
    print(f"\nadded latency by client (upstream {cfg.upstream}, agv on {cfg.backend}, "
          f"{cfg.duration:g} s per client, {len(rounds)} round(s); medians over the rounds; "
          "each figure is the client's own through the target minus the same client direct)")
    print(f"  {'client':<8} {'target':<10} {'direct p50/p99 ms':>20} {'added p50 ms':>13} "
          f"{'added p99 ms':>13} {'req/s':>9} {'CPU us/call':>12}")
    for client in CLIENTS:
        for target in ["relay"] + names:
            def med(f):
                vals = [f(r) for r in rounds if f(r) is not None]
                return statistics.median(vals) if vals else float("nan")
            d50 = med(lambda r: r["direct"][client]["p50_ms"])
            d99 = med(lambda r: r["direct"][client]["p99_ms"])
            a50 = med(lambda r: r[target][client]["p50_ms"] - r["direct"][client]["p50_ms"])
            a99 = med(lambda r: r[target][client]["p99_ms"] - r["direct"][client]["p99_ms"])
            rps = med(lambda r: r[target][client]["achieved_rps"])
            cpu = med(lambda r: r[target][client].get("cpu_us_per_call"))
            ranges = ", ".join(f"{r[target][client]['p50_ms'] - r['direct'][client]['p50_ms']:.3f}"
                               for r in rounds)
            print(f"  {client:<8} {target:<10} {d50:9.3f} / {d99:8.3f} {a50:13.3f} {a99:13.3f} "
                  f"{rps:9.1f} {cpu:12.1f}   (added p50 per round: {ranges})")


if __name__ == "__main__":
    sys.exit(main())

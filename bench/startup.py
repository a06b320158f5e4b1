#!/usr/bin/env python3
"""Start-to-ready time, idle RSS and binary size of agv-server.

    python3 bench/startup.py            # builds the release binary, 20 starts
    python3 bench/startup.py --smoke    # CI: debug binary, 3 starts, checks the script works

Each run starts the binary on a prepared data dir (migrated, with tenants, keys and
--calls recorded calls written straight into the SQLite file, 1,000,000 by default),
polls GET /ready every millisecond until it answers 200, and records the wall time from
process spawn. Idle RSS is read from /proc after the server has been idle for 2 s.
Targets (DESIGN.md): start to ready < 300 ms with 1,000,000 calls stored, idle RSS < 40 MB, stripped binary < 30 MB.
Each figure is printed with its ratio to the target (below 1.0 meets it).
"""
import argparse
import hashlib
import http.client
import json
import sqlite3
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_READY_MS = 300.0
TARGET_RSS_MB = 40.0
TARGET_BINARY_MB = 30.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        conn.request("GET", "/ready")
        status = conn.getresponse().status
        conn.close()
        return status == 200
    except OSError:
        return False


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("AGV_", "OPENAI_"))}


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def seed_calls(data, count, tenant_ids):
    """Writes `count` realistic call rows (about 1 KB each) straight into the database the
    CLI created, in big transactions: much faster than sending them through the proxy."""
    db = sqlite3.connect(os.path.join(data, "agv.db"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    keys = dict(db.execute("SELECT tenant_id, id FROM api_keys").fetchall())
    request = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "How do I reset my password? " * 8}]})
    response = json.dumps({"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": "Open settings and choose reset. " * 8}}]})
    decisions = json.dumps([{"policy": p, "outcome": "pass", "reason": "ok", "micros": 5} for p in ("killswitch", "dg-002", "dg-001", "dg-003", "budget", "dg-005")])
    req_hash = hashlib.sha256(request.encode()).hexdigest()
    resp_hash = hashlib.sha256(response.encode()).hexdigest()
    start_ms = int(time.time() * 1000) - count * 10
    batch = 20_000
    for first in range(0, count, batch):
        rows = []
        for i in range(first, min(count, first + batch)):
            tenant = tenant_ids[i % len(tenant_ids)]
            rows.append((f"call_{i:032x}", tenant, keys.get(tenant, "key_" + "0" * 32), start_ms + i * 10,
                         "chat.completions", "gpt-4o-mini", 0, f"user-{i % 5000}", f"sess-{i % 20000}", None,
                         request, 0, req_hash, response, 0, resp_hash, 200, None, 0, None, decisions,
                         40, 60, 0, 100, 21000, 900_000, 850_000, 40, 1, "http://upstream/v1"))
        db.executemany("INSERT INTO calls (id, tenant_id, key_id, created_at, endpoint, model, stream, end_user, session_id, "
                       "metadata, request_body, request_truncated, request_sha256, response_body, response_truncated, "
                       "response_sha256, status, error, blocked, blocked_by, decisions, prompt_tokens, completion_tokens, "
                       "cached_tokens, total_tokens, cost_nanos, latency_us, upstream_latency_us, enforcement_us, "
                       "upstream_attempts, upstream) VALUES (" + ",".join("?" * 31) + ")", rows)
        db.commit()
        if sys.stderr.isatty():
            print(f"\r  {min(count, first + batch):,} / {count:,} calls", end="", file=sys.stderr)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    if sys.stderr.isatty():
        print(file=sys.stderr)


def start_once(binary, data, measure_rss=False):
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "--data", data, "--listen", f"127.0.0.1:{port}", "serve"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(),
    )
    try:
        while not ready(port):
            if proc.poll() is not None:
                sys.exit(f"agv-server exited with {proc.returncode} before it was ready")
            if time.perf_counter() - t0 > 30:
                sys.exit("agv-server was not ready within 30 s")
            time.sleep(0.001)
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        rss = None
        if measure_rss:
            time.sleep(2.0)
            rss = rss_mb(proc.pid)
        return elapsed_ms, rss
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="debug build, few runs: proves the benchmark works")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--tenants", type=int, default=100, help="tenants (with two keys each) stored before starting")
    ap.add_argument("--calls", type=int, default=1_000_000, help="recorded calls stored before starting")
    args = ap.parse_args()
    profile = "debug" if args.smoke else "release"
    runs = 3 if args.smoke else args.runs
    tenants = 5 if args.smoke else args.tenants
    calls = 10_000 if args.smoke else args.calls

    build = ["cargo", "build", "--locked", "--bin", "agv-server"] + ([] if args.smoke else ["--release"])
    print("building:", " ".join(build), file=sys.stderr)
    subprocess.run(build, cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", profile, "agv-server")

    data = tempfile.mkdtemp(prefix="agv-bench-")
    try:
        env = clean_env()
        print(f"preparing a data dir with {tenants} tenants and {2 * tenants} keys…", file=sys.stderr)
        tenant_ids = []
        for i in range(tenants):
            tid = subprocess.run([binary, "--data", data, "tenant", "create", f"bench-{i}"], env=env,
                                 check=True, capture_output=True, text=True).stdout.strip()
            tenant_ids.append(tid)
            for scope in ("proxy", "admin"):
                subprocess.run([binary, "--data", data, "key", "create", "--tenant", tid, "--scope", scope],
                               env=env, check=True, capture_output=True)
        print(f"writing {calls:,} recorded calls…", file=sys.stderr)
        seed_calls(data, calls, tenant_ids)
        db_mb = os.path.getsize(os.path.join(data, "agv.db")) / (1024 * 1024)
        start_once(binary, data)  # warm the page cache once; not counted
        times = []
        for i in range(runs):
            ms, _ = start_once(binary, data)
            times.append(ms)
        _, rss = start_once(binary, data, measure_rss=True)
        size_mb = os.path.getsize(binary) / (1024 * 1024)
        times.sort()
        p50 = statistics.median(times)
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        print(f"profile: {profile}   runs: {runs}   data: {tenants} tenants, {2 * tenants} keys, {calls:,} calls ({db_mb:.0f} MB database)")
        print(f"start to ready   p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   target < {TARGET_READY_MS:.0f} ms   ratio p95/target {p95 / TARGET_READY_MS:.2f}")
        print(f"idle RSS         {rss:7.1f} MB                    target < {TARGET_RSS_MB:.0f} MB    ratio {rss / TARGET_RSS_MB:.2f}")
        print(f"binary size      {size_mb:7.1f} MB                    target < {TARGET_BINARY_MB:.0f} MB    ratio {size_mb / TARGET_BINARY_MB:.2f}")
        if args.smoke:
            print("smoke mode: debug build, figures are not representative")
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()

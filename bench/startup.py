#!/usr/bin/env python3
"""Start-to-ready time, idle RSS and binary size of agv-server.

    python3 bench/startup.py            # builds the release binary, 20 starts
    python3 bench/startup.py --smoke    # CI: debug binary, 3 starts, checks the script works

Each run starts the binary on a prepared data dir (migrated, with tenants and keys),
polls GET /ready every millisecond until it answers 200, and records the wall time from
process spawn. Idle RSS is read from /proc after the server has been idle for 2 s.
Targets (DESIGN.md): start to ready < 300 ms, idle RSS < 40 MB, stripped binary < 30 MB.
Each figure is printed with its ratio to the target (below 1.0 meets it).
"""
import argparse
import http.client
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
    args = ap.parse_args()
    profile = "debug" if args.smoke else "release"
    runs = 3 if args.smoke else args.runs
    tenants = 5 if args.smoke else args.tenants

    build = ["cargo", "build", "--locked", "--bin", "agv-server"] + ([] if args.smoke else ["--release"])
    print("building:", " ".join(build), file=sys.stderr)
    subprocess.run(build, cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", profile, "agv-server")

    data = tempfile.mkdtemp(prefix="agv-bench-")
    try:
        env = clean_env()
        print(f"preparing a data dir with {tenants} tenants and {2 * tenants} keys…", file=sys.stderr)
        for i in range(tenants):
            tid = subprocess.run([binary, "--data", data, "tenant", "create", f"bench-{i}"], env=env,
                                 check=True, capture_output=True, text=True).stdout.strip()
            for scope in ("proxy", "admin"):
                subprocess.run([binary, "--data", data, "key", "create", "--tenant", tid, "--scope", scope],
                               env=env, check=True, capture_output=True)
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
        print(f"profile: {profile}   runs: {runs}   data: {tenants} tenants, {2 * tenants} keys")
        print(f"start to ready   p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   target < {TARGET_READY_MS:.0f} ms   ratio p95/target {p95 / TARGET_READY_MS:.2f}")
        print(f"idle RSS         {rss:7.1f} MB                    target < {TARGET_RSS_MB:.0f} MB    ratio {rss / TARGET_RSS_MB:.2f}")
        print(f"binary size      {size_mb:7.1f} MB                    target < {TARGET_BINARY_MB:.0f} MB    ratio {size_mb / TARGET_BINARY_MB:.2f}")
        if args.smoke:
            print("smoke mode: debug build, figures are not representative")
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Two agv-server builds through bench/proxy.py, in alternated rounds on the same machine,
with the medians of each figure side by side.

    python3 bench/ab.py --a before=target-old/release/agv-server \\
        --b after=target/release/agv-server --rounds 3 [--backend postgres]

Each round runs `proxy.py --no-build --json --agv-binary A`, then the same with B (the
order flips every round, so neither build always runs first), each a whole run: the mock
upstream called directly, the byte relay, and agv at 1,000 req/s and at maximum
throughput, on a fresh data directory (or a fresh Postgres database). The report gives,
for each build, the median over its rounds of agv's added latency (p50 and p99, agv
minus direct in the same run), its max throughput, CPU time per call and the mean
recorder commit, then the ratio B/A of each median. Every run's raw figures are kept with
`--json`.

The release binaries of mock_upstream, loadgen and relay must be built (proxy.py's
`--no-build` uses them from the target directory); A and B are any two agv-server binaries,
e.g. one built from an older commit with `git worktree add` and `CARGO_TARGET_DIR`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

FIGURES = (
    # (name, how to read it from one run, unit)
    ("added p50", lambda r: r["agv"]["fixed"]["p50_ms"] - r["direct"]["fixed"]["p50_ms"], "ms"),
    ("added p99", lambda r: r["agv"]["fixed"]["p99_ms"] - r["direct"]["fixed"]["p99_ms"], "ms"),
    ("max throughput", lambda r: r["agv"]["max"]["achieved_rps"], "req/s"),
    ("CPU per call", lambda r: r["agv"]["fixed"].get("cpu_us_per_call"), "us"),
    ("recorder commit", lambda r: r["agv"]["fixed"].get("breakdown_us", {}).get("commit"), "us"),
    ("relay added p50", lambda r: r.get("relay", {}).get("fixed", {}).get("p50_ms", 0)
     - r["direct"]["fixed"]["p50_ms"] if "relay" in r else None, "ms"),
)


def run(binary, cfg):
    cmd = [sys.executable, os.path.join(HERE, "proxy.py"), "--no-build", "--json",
           "--agv-binary", binary, "--backend", cfg.backend]
    if cfg.durability:
        cmd += ["--durability", cfg.durability]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, metavar="NAME=PATH")
    ap.add_argument("--b", required=True, metavar="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--durability", choices=["process", "power"], default=None)
    ap.add_argument("--json", action="store_true", help="print every run's figures as JSON at the end")
    cfg = ap.parse_args()
    builds = []
    for given in (cfg.a, cfg.b):
        name, _, path = given.rpartition("=")
        if not os.path.exists(path):
            sys.exit(f"{path} does not exist")
        builds.append((name or path, os.path.abspath(path)))
    runs = {name: [] for name, _ in builds}
    for i in range(cfg.rounds):
        order = builds if i % 2 == 0 else list(reversed(builds))
        for name, path in order:
            print(f"-- round {i + 1}/{cfg.rounds}: {name}", file=sys.stderr, flush=True)
            runs[name].append(run(path, cfg))

    (a, _), (b, _) = builds
    print(f"\nA/B through bench/proxy.py (agv on {cfg.backend}, {cfg.rounds} alternated rounds; "
          "medians, each run's figures in brackets)")
    for label, read, unit in FIGURES:
        meds = {}
        cells = []
        for name in (a, b):
            vals = [v for v in (read(r) for r in runs[name]) if v is not None]
            meds[name] = statistics.median(vals) if vals else None
            shown = ", ".join(f"{v:.3f}" if unit == "ms" else f"{v:.0f}" for v in vals)
            med = "n/a" if meds[name] is None else (f"{meds[name]:.3f}" if unit == "ms" else f"{meds[name]:.0f}")
            cells.append(f"{name} {med} {unit} [{shown}]")
        ratio = (f"{meds[b] / meds[a]:.3f}" if meds[a] and meds[b] is not None else "n/a")
        print(f"  {label:<16} {cells[0]:<48} {cells[1]:<48} {b}/{a} {ratio}")
    if cfg.json:
        print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

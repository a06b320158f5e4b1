#!/usr/bin/env python3
"""agv-server against the LiteLLM proxy on the same machine and the same mock upstream.

    python3 bench/litellm.py            # = python3 bench/proxy.py --peer litellm
    python3 bench/litellm.py --smoke    # debug build, 2 s, low rate

Creates target/bench-venv, runs `pip install 'litellm[proxy]'` there (exits non-zero
with pip's output when that fails), starts LiteLLM in its fastest reasonable setup: one
model routed to the mock as an OpenAI-compatible base, no database, no logging callbacks,
one worker per core, and a random master key (LiteLLM refuses to start without one). It
is measured exactly like agv-server and the direct upstream; the script prints the
agv/LiteLLM throughput ratio (target >= 50x) and added-latency ratio (target <= 1/50).
All options of bench/proxy.py apply.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy  # noqa: E402

if __name__ == "__main__":
    sys.argv[1:1] = ["--peer", "litellm"]
    sys.exit(proxy.main())

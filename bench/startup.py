#!/usr/bin/env python3
"""Envoy start -> first routed request, per arm (`./build.sh bench startup`).

Every worker of an Envoy compiles and instantiates the filter's module, so
with a wasm filter the start-up cost grows with the module and the worker
count. Per run: a fresh Envoy at --concurrency 4 (both cores); the clock
starts just before the process is spawned and stops at
- ready: the admin endpoint answers /ready with 200 (listeners are up);
- routed: the listener answers 200 and the request reached svc-f1, the
  cluster only the arm's routing picks (the filter has its table).
Arms are interleaved A B C A B C over rounds; medians, as ratios to the no-op
wasm filter measured in the same run.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import load  # noqa: E402  (the shared helpers: Envoy paths, table, log)

CONCURRENCY = 4
ARMS = ["floor", "noop-wasm", "isogroup", "isogroup-10k", "native"]


def routed_count(admin, cluster):
    _, _, text = load.http_get(f"http://127.0.0.1:{admin}/stats?filter=upstream_rq_total")
    for line in text.splitlines():
        if line.startswith(f"cluster.{cluster}.upstream_rq_total:"):
            return int(line.split(":")[-1])
    return 0


def one_start(config, headers, cluster, timeout=60.0):
    """(seconds to ready, seconds to the first request routed to `cluster`)."""
    cmd = [str(load.ENVOY), "-c", str(config), "--concurrency", str(CONCURRENCY), "--disable-hot-restart",
           "--base-id", "70", "-l", "warning", "--log-path", str(load.OUT / "startup-envoy.log")]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=load.ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = routed = None
    try:
        while routed is None:
            now = time.monotonic() - t0
            if proc.poll() is not None:
                raise SystemExit(f"envoy exited during start-up: see {load.OUT / 'startup-envoy.log'}")
            if now > timeout:
                raise SystemExit(f"{config}: no routed request within {timeout} s")
            try:
                if ready is None and load.http_get(f"http://127.0.0.1:{load.ADMIN}/ready", timeout=1.0)[0] == 200:
                    ready = time.monotonic() - t0
                req = urllib.request.Request(f"http://127.0.0.1:{load.LISTENER}/", headers=headers)
                with urllib.request.urlopen(req, timeout=1.0) as r:
                    ok = r.status == 200
                # The clock stops at the answer; the stat read only confirms its cluster.
                answered = time.monotonic() - t0
                if ok and routed_count(load.ADMIN, cluster) > 0:
                    routed = answered
                    ready = ready if ready is not None else answered
            except (OSError, urllib.error.URLError):
                time.sleep(0.002)  # not listening yet: poll again
    finally:
        load.stop_process(proc)
    return ready, routed


def arm_configs():
    if not load.COMPANION.exists():  # synth's output does not depend on the build
        load.COMPANION = load.ROOT / "target/debug/isogroup-companion"
    configs = {}
    for arm in ARMS:
        if arm == "native":  # the native build's header arm (bench/one_envoy.py), target/libisogroup_native.so
            import one_envoy  # noqa: E402,PLC0415  (needs pyyaml, only for this arm)
            name, text, headers = one_envoy.native_arms()[0]
            path = load.OUT / f"startup-{name}.yaml"
            path.write_text(text)
            configs[arm] = (path, headers, "svc-f1")
            continue
        path, headers, cluster = load.ARMS[arm]
        if arm == "isogroup-10k":
            text = load.with_table((load.ROOT / "bench/envoy/isogroup.yaml").read_text(), load.synth(10000))
            path = load.OUT / "startup-isogroup-10k.yaml"
            path.write_text(text)
        configs[arm] = (path, headers, cluster)
    return configs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    load.OUT.mkdir(parents=True, exist_ok=True)
    configs = arm_configs()
    upstream = load.Envoy("bench/envoy/upstream.yaml", cpus="0,1", admin=19902, base_id=2)
    times = {arm: {"ready": [], "routed": []} for arm in ARMS}
    try:
        for rnd in range(args.rounds):
            order = ARMS[rnd % len(ARMS):] + ARMS[:rnd % len(ARMS)]
            for arm in order:
                ready, routed = one_start(*configs[arm])
                times[arm]["ready"].append(ready * 1000)
                times[arm]["routed"].append(routed * 1000)
                load.log(f"round {rnd + 1}/{args.rounds} {arm:13} ready {ready * 1000:7.1f} ms  routed {routed * 1000:7.1f} ms")
    finally:
        upstream.stop()
    med = {arm: {k: statistics.median(v) for k, v in t.items()} for arm, t in times.items()}
    noop = med["noop-wasm"]["routed"]
    rows = [f"| arm (concurrency {CONCURRENCY}) | start → ready, ms (median, min–max) | start → first routed request, ms | vs no-op wasm |",
            "|---|---|---|---|"]
    for arm in ARMS:
        t = times[arm]
        rows.append(f"| {arm} | {med[arm]['ready']:.0f} ({min(t['ready']):.0f}–{max(t['ready']):.0f}) "
                    f"| {med[arm]['routed']:.0f} ({min(t['routed']):.0f}–{max(t['routed']):.0f}) "
                    f"| {med[arm]['routed'] / noop:.2f}× |")
    text = "\n".join(rows)
    (load.OUT / "startup.md").write_text(text + "\n")
    (load.OUT / "startup.json").write_text(json.dumps({"args": vars(args), "ms": times}, indent=1))
    print(text)


if __name__ == "__main__":
    main()

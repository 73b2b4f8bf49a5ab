#!/usr/bin/env python3
"""Envoy load benchmark for isogroup (run by `./build.sh bench`).

One Envoy version, one run, arms interleaved A B C A B C ... over rounds. Each
run starts a fresh Envoy (--concurrency 1) pinned to core 0; the load client
(oha) and the upstream (a second Envoy answering with direct_response) share
core 1. Per run: Envoy CPU per request (utime+stime from /proc over a fixed
request count at saturation), throughput at saturation, and p50/p99 latency at
a fixed rate below saturation (oha --latency-correction: no coordinated
omission). Results are medians over rounds, as ratios to the floor arm
measured in the same run, with their spread.

Also: wasm sizes, Envoy RSS with and without the filter at concurrency 1 and
2, and table-update propagation time under load (companion source).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENVOY = ROOT / ".venv/bin/envoy"
OHA = ROOT / ".tools/bin/oha"
COMPANION = ROOT / "target/server/isogroup-companion"
OUT = ROOT / ".run/bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LISTENER, ADMIN = 19001, 19901

SMALL = {"host": "svc", "x-isogroup": "f1"}
CLIENT_PICKS = {"host": "svc", "x-isogroup-cluster": "svc-f1"}
# Arm: (config, request headers, the cluster every request must reach).
ARMS = {
    "floor": ("bench/envoy/floor.yaml", CLIENT_PICKS, "svc-f1"),
    "noop-wasm": ("bench/envoy/noop.yaml", CLIENT_PICKS, "svc-f1"),
    # The floor of any routing filter: one header-map read, one header write.
    "probe": ("bench/envoy/probe.yaml", SMALL, "svc-f1"),
    "isogroup": ("bench/envoy/isogroup.yaml", SMALL, "svc-f1"),
    "isogroup-10k": (None, {"host": "svc-5", "x-isogroup": "g-35"}, "outbound|80|g-35|svc-5.default.svc.cluster.local"),
    "isogroup-2hdr": (None, SMALL, "svc-f1"),
    "lua": ("bench/envoy/lua.yaml", SMALL, "svc-f1"),
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def http_get(url, headers=None, timeout=2.0):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, dict(r.headers), r.read().decode()


def wait_for(what, timeout, probe):
    """Polls `probe` until it returns a true value; never sleeps blindly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = probe()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


class Envoy:
    def __init__(self, config, concurrency=1, cpus="0", admin=ADMIN, base_id=1):
        self.admin = admin
        self.log = OUT / f"envoy-{base_id}.log"
        cmd = ["taskset", "-c", cpus, str(ENVOY), "-c", str(config), "--concurrency", str(concurrency),
               "--disable-hot-restart", "--base-id", str(base_id), "-l", "warning", "--log-path", str(self.log)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"envoy {config}", 30, lambda: self.proc.poll() is None and http_get(f"http://127.0.0.1:{admin}/ready")[0] == 200)

    def cpu_seconds(self):
        fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def rss_kb(self):
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stat(self, name):
        _, _, text = http_get(f"http://127.0.0.1:{self.admin}/stats?filter=upstream_rq_total")
        for line in text.splitlines():
            if line.startswith(f"cluster.{name}.upstream_rq_total:"):
                return int(line.split(":")[-1])
        return 0

    def stop(self):
        stop_process(self.proc)


def stop_process(proc):
    """SIGTERM, and SIGKILL when it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def oha(headers, *args):
    cmd = ["taskset", "-c", "1", str(OHA), "--no-tui", "--output-format", "json", f"http://127.0.0.1:{LISTENER}/"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd + list(args), capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def run_arm(arm, config, headers, cluster, args, base_id):
    envoy = Envoy(config, base_id=base_id)
    try:
        before = envoy.stat(cluster)
        oha(headers, "-n", "2000", "-c", "16")  # warm up (JIT, connections)
        if envoy.stat(cluster) < before + 2000:
            raise SystemExit(f"{arm}: requests did not reach cluster {cluster}")
        cpu0 = envoy.cpu_seconds()
        sat = oha(headers, "-n", str(args.requests), "-c", str(args.connections))
        cpu = envoy.cpu_seconds() - cpu0
        ok = sat["statusCodeDistribution"].get("200", 0)
        lat = oha(headers, "-z", f"{args.latency_seconds}s", "-q", str(args.rate), "-c", "16", "--latency-correction")
        pct = lat["latencyPercentiles"]
        return {
            "cpu_us_per_request": cpu / args.requests * 1e6,
            "rps": sat["summary"]["requestsPerSec"],
            "non_200": args.requests - ok,
            "p50_ms": pct["p50"] * 1e3,
            "p99_ms": pct["p99"] * 1e3,
        }
    finally:
        envoy.stop()


def with_table(config_text, table_json, **settings):
    """The isogroup arm's config with its inline table (and settings) replaced."""
    start = config_text.index("                  value: |\n")
    end = config_text.index("                  # end isogroup configuration")
    plugin = json.dumps({"annotate_response": False, **settings, "table": {"inline": json.loads(table_json)}})
    return config_text[:start] + "                  value: |\n                    " + plugin + "\n" + config_text[end:]


def synth(services):
    return subprocess.run([str(COMPANION), "synth", "--services", str(services), "--groups", "100"],
                          capture_output=True, text=True, check=True).stdout


def spread(values):
    return f"{min(values):.1f}–{max(values):.1f}"


def report(results, extra):
    med = {arm: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for arm, runs in results.items()}
    floor, noop = med["floor"], med["noop-wasm"]
    lines = ["| arm | Envoy CPU µs/req (median, min–max) | CPU vs floor | CPU over no-op | throughput vs floor | vs no-op | p50 ms | p99 ms | non-200 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm, m in med.items():
        cpus = [r["cpu_us_per_request"] for r in results[arm]]
        lines.append(
            f"| {arm} | {m['cpu_us_per_request']:.1f} ({spread(cpus)}) | {m['cpu_us_per_request'] / floor['cpu_us_per_request']:.3f} "
            f"| {m['cpu_us_per_request'] - noop['cpu_us_per_request']:+.1f} µs | {m['rps'] / floor['rps']:.3f} | {m['rps'] / noop['rps']:.3f} "
            f"| {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {sum(r['non_200'] for r in results[arm])} |")
    lines.append("")
    lines += [f"- {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines)


def memory(args):
    """Envoy RSS after warm-up, with and without the filter."""
    out = {}
    for name, config in (("floor", "bench/envoy/floor.yaml"), ("isogroup", "bench/envoy/isogroup.yaml")):
        for conc in (1, 2):
            envoy = Envoy(config, concurrency=conc, cpus="0,1", base_id=50 + conc)
            try:
                oha(ARMS[name][1], "-n", "2000", "-c", "16")
                out[f"Envoy RSS, {name}, concurrency {conc}"] = f"{envoy.rss_kb() / 1024:.1f} MiB"
            finally:
                envoy.stop()
    return out


def propagation(args):
    """Table updates under load: companion source, concurrency 2."""
    table = OUT / "table.json"
    table.write_text(json.dumps({"version": 1, "groups": {"f1": {}}, "services": {
        "svc": {"hosts": ["svc"], "clusters": {"base": "svc-base", "f1": "svc-f1"}}}}))
    companion_port = 19080
    env = dict(os.environ, ISOGROUP_TOKEN="bench", RUST_LOG="warn")
    comp = subprocess.Popen([str(COMPANION), "serve", "--listen", f"127.0.0.1:{companion_port}", "--table", str(table)],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = (ROOT / "bench/envoy/isogroup.yaml").read_text()
    plugin = json.dumps({"annotate_response": False, "table": {"companion": {"cluster": "companion", "authority": "companion", "wait_s": 20}}})
    start = cfg.index("                  value: |\n")
    end = cfg.index("                  # end isogroup configuration")
    cfg = cfg[:start] + "                  value: |\n                    " + plugin + "\n" + cfg[end:]
    cfg += (f'  - name: companion\n    type: STATIC\n    load_assignment:\n      cluster_name: companion\n'
            f'      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {companion_port} }} }} }} }}] }}]\n')
    path = OUT / "propagation.yaml"
    path.write_text(cfg)
    envoy = Envoy(path, concurrency=2, cpus="0,1", base_id=60)
    load = None
    try:
        probe_headers = {"host": "svc", "x-isogroup": "f1", "x-isogroup-debug": "1", "connection": "close"}
        # Every worker must have it: eight probes in a row on fresh connections.
        serves = lambda c: all(f"cluster={c}" in http_get(f"http://127.0.0.1:{LISTENER}/", probe_headers)[1].get("x-isogroup-decision", "")
                               for _ in range(8))
        wait_for("first table", 10, lambda: serves("svc-f1"))
        load = subprocess.Popen(["taskset", "-c", "1", str(OHA), "--no-tui", "-z", "60s", "-c", "16", "-H", "host: svc", "-H", "x-isogroup: f1",
                                 f"http://127.0.0.1:{LISTENER}/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times = []
        for i in range(args.updates):
            cluster = "svc-base" if i % 2 == 0 else "svc-f1"
            req = urllib.request.Request(f"http://127.0.0.1:{companion_port}/v1/services/svc/groups/f1", method="PUT",
                                         data=json.dumps({"cluster": cluster}).encode(),
                                         headers={"authorization": "Bearer bench", "content-type": "application/json"})
            t0 = time.monotonic()
            urllib.request.urlopen(req, timeout=5).read()
            wait_for("propagation", 10, lambda: serves(cluster))
            times.append((time.monotonic() - t0) * 1e3)
        times.sort()
        return {"table-update propagation under load (ms, over %d updates)" % len(times):
                f"median {statistics.median(times):.0f}, worst {times[-1]:.0f}"}
    finally:
        if load:
            load.terminate()
            load.wait()
        envoy.stop()
        comp.terminate()
        comp.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--requests", type=int, default=20000, help="per saturation run (CPU per request is over these)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rate", type=int, default=2000, help="fixed rate for the latency run (req/s)")
    p.add_argument("--latency-seconds", type=int, default=4)
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--extra-only", action="store_true", help="only sizes, RSS and propagation")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    base_config = (ROOT / "bench/envoy/isogroup.yaml").read_text()
    small_table = json.dumps({"groups": {"f1": {}}, "services": {"svc": {"hosts": ["svc"], "clusters": {"base": "svc-base", "f1": "svc-f1"}}}})
    generated = {
        "isogroup-10k": with_table(base_config, synth(10_000), target_header=None),
        # The SPEC default: both routing headers written (two route re-matches).
        "isogroup-2hdr": with_table(base_config, small_table),
    }
    big = {}
    for arm, text in generated.items():
        big[arm] = OUT / f"{arm}.yaml"
        big[arm].write_text(text)
    arms = args.arms.split(",")
    results = {arm: [] for arm in arms}
    upstream = Envoy("bench/envoy/upstream.yaml", cpus="1", admin=19902, base_id=2)
    try:
        if not args.extra_only:
            measure(arms, results, args, big)
        extra = {
            "wasm size, isogroup": f"{(ROOT / 'target/isogroup.wasm').stat().st_size} bytes",
            "wasm size, no-op": f"{(ROOT / 'target/bench-noop.wasm').stat().st_size} bytes",
        }
        extra.update(memory(args))
        extra.update(propagation(args))
    finally:
        upstream.stop()
    (OUT / "raw.json").write_text(json.dumps({"args": vars(args), "results": results, "extra": extra}, indent=1))
    text = "\n".join(f"- {k}: {v}" for k, v in extra.items()) if args.extra_only else report(results, extra)
    (OUT / "report.md").write_text(text + "\n")
    print(text)


def measure(arms, results, args, big):
    for rnd in range(args.rounds):
        for i, arm in enumerate(arms):
            config, headers, cluster = ARMS[arm]
            r = run_arm(arm, config or big[arm], headers, cluster, args, base_id=10 + i)
            results[arm].append(r)
            log(f"round {rnd + 1}/{args.rounds} {arm:13} cpu {r['cpu_us_per_request']:6.1f} µs/req  "
                f"{r['rps']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()

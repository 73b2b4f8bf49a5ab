#!/usr/bin/env python3
"""CPU per request with every arm a listener of ONE Envoy (`./build.sh bench one`).

load.py starts a fresh Envoy per arm; here one Envoy (--concurrency 1, pinned
to core 0) holds every arm as its own listener, so all arms share one process,
one heap and the same warm caches, and differ only in their HTTP filters. The
load client (oha, 8 connections) and the upstream share core 1. Per round the
arms run one after another, in a rotated order; an arm's CPU per request is
Envoy's utime+stime over a fixed request count while only that arm has load.
Medians over rounds, as differences to the floor, the no-op wasm and the
minimal probe measured in the same run.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

import yaml

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import load  # noqa: E402  (the shared helpers: Envoy, paths, with_table)

FIRST_PORT = 19010
SMALL_TABLE = {"groups": {"f1": {}}, "services": {"svc": {"hosts": ["svc"], "clusters": {"base": "svc-base", "f1": "svc-f1"}}}}


def arms(extra_wasm=()):
    """(name, Envoy config text, request headers); every arm's requests reach svc-f1.
    `extra_wasm`: (name, path) ablation arms, the lean arm's config with another build of the filter."""
    text = lambda p: (load.ROOT / p).read_text()
    iso = text("bench/envoy/isogroup.yaml")
    table = json.dumps(SMALL_TABLE)
    return [
        ("floor", text("bench/envoy/floor.yaml"), load.CLIENT_PICKS),
        ("noop-wasm", text("bench/envoy/noop.yaml"), load.CLIENT_PICKS),
        ("probe", text("bench/envoy/probe.yaml"), load.SMALL),
        ("lua", text("bench/envoy/lua.yaml"), load.SMALL),
        # one routing header, no response annotation
        ("isogroup-lean", iso, load.SMALL),
        # the SPEC defaults: both routing headers and the response annotation
        ("isogroup-default", load.with_table(iso, table, annotate_response=True), load.SMALL),
    ] + [(name, iso.replace("filename: target/isogroup.wasm", f"filename: {path}"), load.SMALL) for name, path in extra_wasm]


# The companion the `native-decide-companion` arm's bootstrap extension polls (companion()).
COMPANION_PORT = 19081
COMPANION_SOURCE = {"cluster": "isogroup-companion", "authority": "isogroup-companion", "wait_s": 20}
COMPANION_ARMS = ("native-decide-companion",)


def native_arms():
    """The native build (target/libisogroup_native.so) on the lean arm's listener: `native-default`
    hands the cluster over as the wasm build does (routing header + route-cache clear), `native-lean`
    through the route's cluster specifier (dynamic metadata + cluster refresh, no header write),
    `native-decide` by the cluster specifier alone (it decides in select; no HTTP filter), and
    `native-decide-companion` the same with the table long-polled from a companion by the module's
    bootstrap extension (the bench starts the companion: companion())."""
    module = {"module": {"local": {"filename": "target/libisogroup_native.so"}}, "do_not_close": True}
    arms = []
    for name, filter_name in (("native-default", "isogroup"), ("native-lean", "isogroup-lean"), ("native-decide", None),
                              ("native-decide-companion", None)):
        doc = yaml.safe_load((load.ROOT / "bench/envoy/isogroup.yaml").read_text())
        hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        wasm = hcm["http_filters"][0]["typed_config"]
        hcm["http_filters"][0]["typed_config"] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {**module, "metrics_namespace": "isogroup"},
            "filter_name": filter_name,
            "filter_config": wasm["config"]["configuration"],
        }
        specifier = "svc-base"
        if filter_name is None:
            # The same plugin configuration, given to the cluster specifier; no HTTP filter.
            plugin = json.loads(wasm["config"]["configuration"]["value"])
            if name in COMPANION_ARMS:
                # The same settings, the table from the companion (SMALL_TABLE) through the bootstrap extension.
                plugin["table"] = {"companion": COMPANION_SOURCE}
                doc["bootstrap_extensions"] = [{"name": "envoy.bootstrap.dynamic_modules", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.dynamic_modules.v3.DynamicModuleBootstrapExtension",
                    "dynamic_module_config": {**module, "metrics_namespace": "isogroup"},
                    "extension_name": "isogroup",
                    "extension_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                         "value": json.dumps({"table": {"companion": COMPANION_SOURCE}})},
                }}]
                doc["static_resources"]["clusters"].append({
                    "name": "isogroup-companion", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "isogroup-companion", "endpoints": [{"lb_endpoints": [{"endpoint": {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": COMPANION_PORT}}}}]}]}})
            specifier = json.dumps({"decide": True, "default_cluster": "svc-base", "plugin": plugin})
            del hcm["http_filters"][0]
        if filter_name != "isogroup":
            hcm["route_config"]["virtual_hosts"][0]["routes"] = [{"match": {"prefix": "/"}, "route": {
                "inline_cluster_specifier_plugin": {"extension": {"name": "isogroup", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.router.cluster_specifiers.dynamic_modules.v3.DynamicModuleClusterSpecifier",
                    "dynamic_module_config": module,
                    "specifier_name": "isogroup",
                    "specifier_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": specifier},
                }}}}}]
        arms.append((name, yaml.safe_dump(doc, sort_keys=False), load.SMALL))
    return arms


def optional_arms():
    """Arms run only when named in --arms (experiments on what the route re-match costs, the native build)."""
    lua = (load.ROOT / "bench/envoy/lua.yaml").read_text()
    # Lua's work without the route re-match: no clearRouteCache, and the route matched before the
    # filter ran (the catch-all) already goes to svc-f1, so the header written is never read.
    no_clear = lua.replace("handle:clearRouteCache()", "").replace("route: { cluster: svc-base }", "route: { cluster: svc-f1 }")
    probe = (load.ROOT / "bench/envoy/probe.yaml").read_text()
    repeated = lambda what: probe.replace("\n                    {}\n", f'\n                    {{"{what}": {REPEATS}}}\n')
    assert repeated("request_writes") != probe, "probe.yaml's configuration moved"
    return native_arms() + [("lua-noclear", no_clear, load.SMALL),
            # the probe's writes repeated: what one more header write costs Envoy (see per_write)
            (f"probe-req{REPEATS}", repeated("request_writes"), load.SMALL),
            (f"probe-resp{REPEATS}", repeated("response_writes"), load.SMALL),
            (f"probe-read{REPEATS}", repeated("request_reads"), load.SMALL),
            (f"probe-rawread{REPEATS}", repeated("raw_reads"), load.SMALL),
            (f"probe-lookup{REPEATS}", repeated("lookups"), load.SMALL)]


# How many times the repeated-probe arms repeat a write: enough that the sum
# stands well above the spread of Envoy's CPU per request between rounds.
REPEATS = 256


def per_write(cpu, paired):
    """One header write's cost in Envoy, from the repeated-probe arms."""
    lines = []
    for name, what in ((f"probe-req{REPEATS}", "request header replaced (as isogroup's second routing header)"),
                       (f"probe-resp{REPEATS}", "response header written (as the x-isogroup-served annotation)"),
                       (f"probe-read{REPEATS}", "read of the whole request header map, decoded as the SDK does"),
                       (f"probe-rawread{REPEATS}", "read of the whole request header map, left undecoded (the host's part)"),
                       (f"probe-lookup{REPEATS}", "lookup of one request header by name (proxy_get_header_map_value)")):
        if name in cpu:
            one = paired(name, "probe") / REPEATS
            floor = statistics.median(cpu["floor"])
            lines.append(f"- one {what}: {one:.3f} µs ({one / floor * 100:.2f} % of the floor's request), "
                         f"from {name} over the probe, paired, / {REPEATS}")
    return lines


class companion:
    """The companion the companion-fed arms poll (SMALL_TABLE), while any of `arm_names` runs:
    `with companion(names): ...`; nothing without such an arm."""

    def __init__(self, arm_names):
        self.needed = any(a in COMPANION_ARMS for a in arm_names)
        self.proc = None

    def __enter__(self):
        if not self.needed:
            return self
        target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or load.ROOT / "target")
        binary = target / "server/isogroup-companion"
        table = load.OUT / "companion-table.json"
        table.write_text(json.dumps({"version": 1, **SMALL_TABLE}))
        env = dict(os.environ, ISOGROUP_TOKEN="bench", RUST_LOG="warn")
        self.proc = subprocess.Popen([str(binary), "serve", "--listen", f"127.0.0.1:{COMPANION_PORT}", "--table", str(table)],
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load.wait_for("the companion", 10, lambda: load.http_get(f"http://127.0.0.1:{COMPANION_PORT}/v1/table")[0] == 200)
        return self

    def wait_polled(self, admin):
        """Until Envoy's bootstrap extension holds the companion's table."""
        if self.needed:
            version = lambda: [int(l.split(":")[-1]) for l in load.http_get(
                f"http://127.0.0.1:{admin}/stats?filter=isogroup_table_version")[2].splitlines() if ":" in l]
            load.wait_for("the companion's table in Envoy", 60, lambda: any(v >= 1 for v in version()))

    def __exit__(self, *_):
        if self.proc:
            load.stop_process(self.proc)


def combined_config(arm_list):
    """One bootstrap: each arm's listener on its own port, its wasm VM its own (but a "sidecar-" one);
    bootstrap extensions and clusters an arm adds (the companion-fed arms') are kept once."""
    merged = None
    for i, (name, config, _) in enumerate(arm_list):
        doc = yaml.safe_load(config)
        if merged is not None:
            for ext in doc.get("bootstrap_extensions", []):
                if ext not in merged.setdefault("bootstrap_extensions", []):
                    merged["bootstrap_extensions"].append(ext)
            have = {c["name"] for c in merged["static_resources"]["clusters"]}
            merged["static_resources"]["clusters"] += [c for c in doc["static_resources"]["clusters"] if c["name"] not in have]
        listener = doc["static_resources"]["listeners"][0]
        listener["name"] = name
        listener["address"]["socket_address"]["port_value"] = FIRST_PORT + i
        for f in listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]:
            vm = f.get("typed_config", {}).get("config", {}).get("vm_config")
            # A "sidecar-" VM is shared by name by two listeners (a sidecar's two sides, bench/propagation_arms.py).
            if vm is not None and not vm["vm_id"].startswith("sidecar-"):
                vm["vm_id"] = name
                f["typed_config"]["config"]["root_id"] = name
        if merged is None:
            merged = doc
            merged["static_resources"]["listeners"] = [listener]
        else:
            merged["static_resources"]["listeners"].append(listener)
    return yaml.safe_dump(merged, sort_keys=False)


def oha(port, headers, *args):
    cmd = ["taskset", "-c", "1", str(load.OHA), "--no-tui", "--output-format", "json", f"http://127.0.0.1:{port}/"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    return json.loads(subprocess.run(cmd + list(args), capture_output=True, text=True, check=True).stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--arms", help="comma-separated subset of the arms (floor, noop-wasm and probe are always kept)")
    p.add_argument("--wasm", action="append", default=[], metavar="NAME=PATH",
                   help="an ablation arm: the lean arm's config with another build of the filter (repeatable)")
    args = p.parse_args()
    load.OUT.mkdir(parents=True, exist_ok=True)
    arm_list = arms([tuple(w.split("=", 1)) for w in args.wasm])
    if args.arms:
        keep = {"floor", "noop-wasm", "probe", *args.arms.split(","), *(w.split("=", 1)[0] for w in args.wasm)}
        arm_list = [a for a in arm_list + optional_arms() if a[0] in keep]
    config = load.OUT / "one-envoy.yaml"
    config.write_text(combined_config(arm_list))
    cpu = {name: [] for name, _, _ in arm_list}
    load_before = os.getloadavg()
    upstream = load.Envoy("bench/envoy/upstream.yaml", cpus="1", admin=19902, base_id=2)
    companion_proc = companion([a[0] for a in arm_list]).__enter__()
    envoy = load.Envoy(config, cpus="0", base_id=80)
    try:
        companion_proc.wait_polled(load.ADMIN)
        for rnd in range(args.rounds):
            order = arm_list[rnd % len(arm_list):] + arm_list[:rnd % len(arm_list)]
            for name, _, headers in order:
                port = FIRST_PORT + [a[0] for a in arm_list].index(name)
                oha(port, headers, "-n", "2000", "-c", str(args.connections))  # warm-up
                before, cpu0 = envoy.stat("svc-f1"), envoy.cpu_seconds()
                out = oha(port, headers, "-n", str(args.requests), "-c", str(args.connections))
                used = envoy.cpu_seconds() - cpu0
                if envoy.stat("svc-f1") < before + args.requests or out["statusCodeDistribution"].get("200", 0) != args.requests:
                    raise SystemExit(f"{name}: not every request was answered 200 by svc-f1")
                cpu[name].append(used / args.requests * 1e6)
                load.log(f"round {rnd + 1}/{args.rounds} {name:20} {cpu[name][-1]:6.2f} µs/req")
    finally:
        envoy.stop()
        companion_proc.__exit__()
        upstream.stop()
    med = {name: statistics.median(v) for name, v in cpu.items()}
    # Paired: the median of per-round differences (both arms measured minutes apart at most, so a
    # slow phase of the machine shifts both), steadier than a difference of medians.
    paired = lambda name, base: statistics.median(a - b for a, b in zip(cpu[name], cpu[base]))
    rows = ["| arm | Envoy CPU µs/req (median, min–max) | over floor | over no-op | over probe | over probe, paired |",
            "|---|---|---|---|---|---|"]
    for name, m in med.items():
        rows.append(f"| {name} | {m:.2f} ({min(cpu[name]):.2f}–{max(cpu[name]):.2f}) | {m - med['floor']:+.2f} "
                    f"| {m - med['noop-wasm']:+.2f} | {m - med['probe']:+.2f} | {paired(name, 'probe'):+.2f} |")
    if writes := per_write(cpu, paired):
        rows += [""] + writes
    load_after = os.getloadavg()
    rows.append(f"\nload average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
                f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {args.rounds} rounds × {args.requests} requests, "
                f"{args.connections} connections")
    text = "\n".join(rows)
    (load.OUT / "one-envoy.md").write_text(text + "\n")
    (load.OUT / "one-envoy.json").write_text(
        json.dumps({"args": vars(args), "cpu_us": cpu, "loadavg": [load_before, load_after]}, indent=1))
    print(text)


if __name__ == "__main__":
    main()

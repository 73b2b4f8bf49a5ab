"""Arms for what propagation reports cost in Envoy (`./build.sh bench one --callgrind --arms ...`).

A sidecar-like setup, as in a mesh: the wasm filter with `propagation_assist`,
a `workload` and a `namespace`, on an INBOUND and an OUTBOUND listener that
share one VM (the same vm_id, as Istio's CLIENT_AND_SERVER WasmPlugin: the
outbound side finds what the inbound side recorded). Two such VMs, the same
but for reports: `prop-off` without `propagation`, `prop-on` with
`{"sample": 8}`. Arms, per VM (`prop-off-*`, `prop-on-*`):

- `-in`: the inbound side, requests carrying their lane (`x-isogroup: f1`)
  and a `traceparent`: the assist records each (both VMs), reports change
  nothing here but the sampling check;
- `-out`: the outbound side, the same requests (the app forwarded the
  group): no extra host call; a sampled one is classified (`kept`) on the
  next tick, which reads its record;
- `-out-nogroup`: the outbound side, the same traces without the group
  (the app dropped it): the assist's one read, and the lane restored
  (`healed` when sampled), from what the `-in` arm of its VM recorded (the
  tool sends every trace through it once before the first round: `prime`);
- `prop-on-out-unsampled`, `prop-on-out-allsampled`: `prop-on-out` with no
  trace sampled, and every one: what a sampled one costs, apart;
- `prop-on-out-elsewhere`: `prop-on-out-allsampled`, but the VM no longer
  holds the records among its own (each trace's place there was taken by
  another trace recorded after it), as when the inbound request ran on
  another worker: the tick reads each record from shared data.
- `prop-on-out-half`: `prop-on-out` (1 in 8 sampled), but every other
  sampled trace's record is elsewhere, as `-elsewhere`: two workers, half
  the inbound requests on the other one.
  (Builds that keep no records of their own, every one since the shared
  recent-records key, take one path for all of these: the `-elsewhere` and
  `-half` arms then measure it with other trace ids, and compare with
  builds before it through `--was-wasm`.)

With `--was-wasm PATH` (bench/one_envoy_callgrind.py), `was-prop-on-*` are
the `prop-on-*` arms with that build of the filter, in a VM of its own: a
change measured against the build before it, in the same run.

Every request reaches svc-f1 (the tool checks it). The trace ids cycle
through 64 ids (`TRACE_IDS`), 1 in 8 sampled at `sample: 8` (SPEC's FNV-1a
rule), each in its own assist slot, so a record is never overwritten by
another trace's; each sampled one also in its own place among the records
a VM keeps (`local_slot`, as src/propagation.rs places them), but the
`elsewhere` ones, whose places the `shadow` ones take.
"""

import json

import yaml

import load

SAMPLE = 8
SLOTS = 4096  # the assist's default
SMALL_TABLE = {"groups": {"f1": {}}, "services": {"svc": {"hosts": ["svc"], "clusters": {"base": "svc-base", "f1": "svc-f1"}}}}


def fnv1a(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def local_slot(h, bits=7):
    """A sampled trace's place among the records a VM keeps (src/propagation.rs `local_slot`)."""
    return ((h * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) >> (64 - bits)


_seq = iter(range(1, 1 << 30))


def trace_ids(sampled_every, slots, local, count=64, places=None):
    """`count` W3C trace ids, every `sampled_every`-th sampled at `SAMPLE` and no other (None: none),
    each in an assist slot not in `slots` and, sampled, in a VM's place not in `local` (the sets take
    them); `places`: the VM's places the ids take, in order (their traces then share them)."""
    ids = []
    while len(ids) < count:
        i = next(_seq)
        tid = f"{(i * 0x9E3779B97F4A7C15F39CC0605CEDC835) & ((1 << 128) - 1):032x}"
        h = fnv1a(tid.encode())
        want = sampled_every is not None and len(ids) % sampled_every == 0
        place = local_slot(h)
        free = place == places[len(ids)] if places else not want or place not in local
        if h % SLOTS not in slots and (h % SAMPLE == 0) == want and free:
            ids.append(tid)
            slots.add(h % SLOTS)
            if want:
                local.add(place)
    return ids


# 1 in 8 sampled (as `sample: 8` samples traces); for the split of what a sampled one costs,
# none and every one. No two ids share an assist slot, so no record is overwritten by another's;
# the `shadow` ids take the VM's places of the `elsewhere` ones (primed after them).
_slots, _local = set(), set()
TRACE_IDS = {k: trace_ids(every, _slots, _local) for k, every in (("mix", SAMPLE), ("unsampled", None), ("sampled", 1))}
TRACE_IDS["elsewhere"] = trace_ids(1, _slots, _local, count=16)
TRACE_IDS["shadow"] = trace_ids(1, _slots, set(), count=16,
                                places=[local_slot(fnv1a(t.encode())) for t in TRACE_IDS["elsewhere"]])
# Two workers: 1 in 8 sampled, every other sampled one's record elsewhere (its place taken by a
# `half-shadow` id, primed after it), as when half the inbound requests ran on the other worker.
TRACE_IDS["half"] = trace_ids(SAMPLE, _slots, _local)
TRACE_IDS["half-shadow"] = trace_ids(1, _slots, set(), count=4, places=[
    local_slot(fnv1a(t.encode())) for t in TRACE_IDS["half"][::SAMPLE][1::2]])


def requests(group, ids="mix"):
    """One header set per trace id, cycled by the client: with the lane, or without any group."""
    return [{"host": "svc", **({"x-isogroup": group} if group else {}),
             "traceparent": f"00-{tid}-{n + 1:016x}-01"} for n, tid in enumerate(TRACE_IDS[ids])]


def sidecar_listener(direction, vm, plugin):
    """bench/envoy/isogroup.yaml's listener as one side of a sidecar, its VM shared by name."""
    doc = yaml.safe_load((load.ROOT / "bench/envoy/isogroup.yaml").read_text())
    listener = doc["static_resources"]["listeners"][0]
    listener["traffic_direction"] = direction
    config = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["config"]
    config["root_id"] = vm
    config["vm_config"]["vm_id"] = vm  # a "sidecar-" VM is kept by one_envoy.combined_config
    config["configuration"]["value"] = json.dumps(plugin)
    return yaml.safe_dump(doc, sort_keys=False)


def arms(was_wasm=None):
    """(name, Envoy config, request headers: a list, cycled). `was_wasm`: the `was-prop-on-*` arms
    with that build of the filter."""
    out = []
    for name, reports in (("prop-off", {}), ("prop-on", {"propagation": {"sample": SAMPLE}})):
        plugin = {"annotate_response": False, "target_header": None, "workload": "bench", "namespace": "bench",
                  # an hour: the records outlive the whole run (the -out-nogroup arm heals from them)
                  "propagation_assist": {"ttl_s": 3600}, **reports, "table": {"inline": SMALL_TABLE}}
        vm = f"sidecar-{name}"
        out += [(f"{name}-in", sidecar_listener("INBOUND", vm, plugin), requests("f1")),
                (f"{name}-out", sidecar_listener("OUTBOUND", vm, plugin), requests("f1")),
                (f"{name}-out-nogroup", sidecar_listener("OUTBOUND", vm, plugin), requests(None))]
    on = out[-2][1]
    # What a sampled request costs, apart: the outbound side with none sampled, and every one.
    out += [("prop-on-out-unsampled", on, requests("f1", "unsampled")),
            ("prop-on-out-allsampled", on, requests("f1", "sampled")),
            ("prop-on-out-elsewhere", on, requests("f1", "elsewhere")),
            ("prop-on-out-half", on, requests("f1", "half"))]
    if was_wasm:
        was = lambda config: (config.replace("filename: target/isogroup.wasm", f"filename: {was_wasm}")
                              .replace("sidecar-prop-on", "sidecar-was-prop-on"))
        out += [(f"was-{name}", was(config), headers) for name, config, headers in out if name.startswith("prop-on")]
    return out


def prime(arms):
    """(inbound arm, requests) to send before the first round, uncounted: every trace id the
    outbound arms send is recorded by its VM's inbound side (an -out arm then never finds a
    slot empty, whatever the order of the arms)."""
    return [(f"{vm}-in", requests("f1", ids)) for vm in ("prop-off", "prop-on", "was-prop-on") if f"{vm}-in" in arms
            for ids in TRACE_IDS]


# What each outbound arm's traces were recorded as (`refresh`): its ids, then those that take
# their places among a VM's own records after them (builds that keep such records).
_REFRESH = {"out": ("mix",), "out-nogroup": ("mix",), "out-unsampled": ("unsampled",),
            "out-allsampled": ("sampled",), "out-elsewhere": ("elsewhere", "shadow"),
            "out-half": ("half", "half-shadow")}


def refresh(arm, arms):
    """(inbound arm, requests) to send, uncounted, before each round of an outbound arm: its traces
    recorded again by its VM's inbound side, as in a mesh where a trace's inbound request runs just
    before its outbound ones (a VM that shares a bounded window of recent records would otherwise
    have let the other arms' records replace them)."""
    for vm in ("prop-off", "prop-on", "was-prop-on"):
        side = arm.removeprefix(f"{vm}-")
        if side != arm and side in _REFRESH and f"{vm}-in" in arms:
            return [(f"{vm}-in", requests("f1", ids)) for ids in _REFRESH[side]]
    return []

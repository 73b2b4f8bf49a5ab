// The wasm side of a request, without Envoy: each module under a minimal
// proxy-wasm host in Node's V8 (the engine Envoy embeds), driven through the
// callbacks Envoy makes for one HTTP request (context create, request headers
// with the header map read, response headers, done, log, delete: whichever the
// module exports). Envoy's own side of each host call (copying the header map,
// setting a header, re-matching the route) is not here; the Envoy load
// benchmark measures that. Time per request is the minimum over interleaved
// repeats, which a busy machine inflates least.
//
// usage: node bench/wasm_micro.mjs [NAME=WASM[@PLUGIN_CONFIG_JSON] ...] [--requests N] [--repeats R]
//        [--host-copies inline|alloc|both]
// Without arms: the standard set (noop, probe, and isogroup's lean, lean + target header,
// lean + annotation and default configs, as in bench/envoy/isogroup.yaml and bench/one_envoy.py).
// --host-copies: how the host copies bytes in and out of the module. `inline` (default) copies a
// written header's name and value into a preallocated buffer, as Envoy's HeaderString does into
// its inline storage (128 bytes, no heap allocation for short values), through views over the
// memory kept until it grows; `alloc` (this harness before) makes two fresh ArrayBuffers per
// write and a view per access; `both` runs every arm both ways, interleaved.
// --clock cpu|wall (default wall): time a repeat by the process's CPU time or by the wall clock;
// CPU time leaves out the time other processes on a busy machine hold the core.
// --runs K (default 1): K fresh Node processes one after another (each arm's minimum differs
// from process to process by more than within one: code placement, JIT and GC state); the table
// then has the median of the per-run minimums, their range, and differences paired per run.
// --over A,B (default: the first arm): a column per reference arm, "over A" = arm - A (in the
// same host-copies mode; paired per run, their median, with --runs).
// (BENCHMARKS.md, "Per request after the filter's own ABI layer", has the recorded runs.)

import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";

// A plugin configuration's `_headers` ([[name, value], ...]) is not the module's: those request
// headers are added to the arm's request (e.g. a `traceparent`), and the key is taken out.
function parseArm(arg) {
  const [name, rest] = arg.split(/=(.*)/s);
  const at = rest.indexOf("@");
  let config = at < 0 ? "{}" : rest.slice(at + 1);
  let headers = [];
  const parsed = JSON.parse(config);
  if (parsed._headers) {
    headers = parsed._headers;
    delete parsed._headers;
    config = JSON.stringify(parsed);
  }
  return { name, path: at < 0 ? rest : rest.slice(0, at), config, headers };
}

const args = process.argv.slice(2);
let requests = 100000;
let repeats = 9;
let copies = "inline";
let clock = "wall";
let runs = 1;
let over = null;
let emitJson = false;
const childArgs = [];
const arms = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--runs") { runs = Number(args[++i]); continue; }
  if (args[i] === "--over") { over = args[++i].split(","); continue; }
  if (args[i] === "--emit-json") { emitJson = true; continue; }
  childArgs.push(args[i]);
  if (args[i] === "--requests") childArgs.push((requests = Number(args[++i])));
  else if (args[i] === "--repeats") childArgs.push((repeats = Number(args[++i])));
  else if (args[i] === "--host-copies") childArgs.push((copies = args[++i]));
  else if (args[i] === "--clock") childArgs.push((clock = args[++i]));
  else arms.push(parseArm(args[i]));
}
if (!["inline", "alloc", "both"].includes(copies)) throw new Error(`--host-copies: inline, alloc or both, not ${copies}`);
if (arms.length === 0) {
  const table = { groups: { f1: {} }, services: { svc: { hosts: ["svc"], clusters: { base: "svc-base", f1: "svc-f1" } } } };
  const iso = (settings) => `target/isogroup.wasm@${JSON.stringify({ ...settings, table: { inline: table } })}`;
  for (const a of [
    "noop=target/bench-noop.wasm", "probe=target/bench-probe.wasm",
    `lean=${iso({ annotate_response: false, target_header: null })}`,
    `lean+target=${iso({ annotate_response: false })}`,
    `lean+annotation=${iso({ annotate_response: true, target_header: null })}`,
    `default=${iso({ annotate_response: true })}`,
  ]) arms.push(parseArm(a));
}
const modes = copies === "both" ? ["inline", "alloc"] : [copies];
over ??= [arms[0].name];
const label = (name, mode) => (modes.length > 1 ? `${name} (${mode})` : name);

// What oha sends in the benchmark (x-isogroup: f1 to host svc), as Envoy hands it over.
const REQUEST = [
  [":authority", "svc"], [":path", "/"], [":method", "GET"], [":scheme", "http"],
  ["user-agent", "oha/1.16.0"], ["accept", "*/*"], ["x-isogroup", "f1"],
  ["x-forwarded-proto", "http"], ["x-request-id", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"],
];
const RESPONSE = [[":status", "200"], ["content-length", "3"], ["content-type", "text/plain"]];
const enc = new TextEncoder();

function serialise(pairs) {
  const parts = pairs.map(([k, v]) => [enc.encode(k), enc.encode(v)]);
  const size = 4 + parts.length * 8 + parts.reduce((n, [k, v]) => n + k.length + v.length + 2, 0);
  const buf = new Uint8Array(size);
  const dv = new DataView(buf.buffer);
  dv.setUint32(0, parts.length, true);
  let at = 4;
  for (const [k, v] of parts) {
    dv.setUint32(at, k.length, true);
    dv.setUint32(at + 4, v.length, true);
    at += 8;
  }
  for (const [k, v] of parts) {
    buf.set(k, at);
    at += k.length + 1;
    buf.set(v, at);
    at += v.length + 1;
  }
  return buf;
}

function load({ name, path, config, headers }, mode) {
  let ex;
  let view;
  let bytes;
  // Views over the memory. `alloc` (this harness before) asks the Memory for its buffer at every
  // access (an accessor call into V8's C++, tens of ns) and makes a view per copy; `inline` keeps
  // one DataView and one byte view and re-makes them only when the memory grew (growing detaches
  // the old buffer: its views then read length 0), as Envoy keeps the memory's base address.
  const cached = () => {
    if (bytes === undefined || bytes.byteLength === 0) {
      view = new DataView(ex.memory.buffer);
      bytes = new Uint8Array(ex.memory.buffer);
    }
  };
  const mem = mode === "alloc"
    ? () => (view?.buffer === ex.memory.buffer ? view : (view = new DataView(ex.memory.buffer)))
    : () => (cached(), view);
  const u8 = () => (cached(), bytes);
  const give = (data, ptrPtr, sizePtr) => {
    const p = ex.proxy_on_memory_allocate(data.length); // may grow the memory
    if (mode === "alloc") new Uint8Array(ex.memory.buffer, p, data.length).set(data);
    else u8().set(data, p);
    mem().setUint32(ptrPtr, p, true);
    mem().setUint32(sizePtr, data.length, true);
    return 0;
  };
  // Envoy copies a written name and value into its HeaderString, inline up to 128 bytes.
  const inline = new Uint8Array(128);
  const copyOut = (p, n) => {
    const m = u8();
    const dst = n <= inline.length ? inline : new Uint8Array(n);
    for (let i = 0; i < n; i++) dst[i] = m[p + i];
    return dst;
  };
  const read = mode === "alloc" ? (p, n) => new Uint8Array(ex.memory.buffer, p, n).slice() : copyOut;
  const request = [...REQUEST, ...(headers ?? [])];
  const maps = { 0: serialise(request), 2: serialise(RESPONSE) };
  const counts = { writes: 0 };
  const env = {
    proxy_log: () => 0,
    proxy_get_log_level: (p) => (mem().setUint32(p, 3, true), 0),
    proxy_get_buffer_bytes: (kind, _s, _m, pp, sp) => (kind === 7 ? give(enc.encode(config), pp, sp) : 1),
    proxy_get_current_time_nanoseconds: (p) => (mem().setBigUint64(p, BigInt(Date.now()) * 1000000n, true), 0),
    proxy_set_tick_period_milliseconds: () => 0,
    proxy_get_header_map_pairs: (map, pp, sp) => give(maps[map] ?? serialise([]), pp, sp),
    // Envoy copies the name and value into its own map: so does this host.
    proxy_replace_header_map_value: (_m, k, kn, v, vn) => (read(k, kn), read(v, vn), counts.writes++, 0),
    proxy_add_header_map_value: (_m, k, kn, v, vn) => (read(k, kn), read(v, vn), counts.writes++, 0),
    proxy_remove_header_map_value: (_m, k, kn) => (read(k, kn), counts.writes++, 0),
    proxy_define_metric: (_k, _n, _l, p) => (mem().setUint32(p, 1, true), 0),
    proxy_increment_metric: () => 0,
    proxy_record_metric: () => 0,
    proxy_get_shared_data: () => 1,
    proxy_set_shared_data: () => 0,
    proxy_get_property: () => 1,
    proxy_set_effective_context: () => 0,
    proxy_done: () => 0,
    proxy_call_foreign_function: () => 0,
  };
  const stub = (o) => new Proxy(o, { get: (t, k) => t[k] ?? (() => 0) });
  const module = new WebAssembly.Module(readFileSync(path));
  ex = { ...new WebAssembly.Instance(module, { env: stub(env), wasi_snapshot_preview1: stub({}) }).exports };
  // TRACE=1: name the callback that trapped, and its arguments.
  const trace = process.env.TRACE ? (n, fn) => (...a) => { try { return fn(...a); } catch (e) { console.error(name, n, a, e.message); throw e; } } : (_n, fn) => fn;
  for (const n of ["_initialize", "proxy_on_vm_start", "proxy_on_context_create", "proxy_on_configure"]) if (ex[n]) ex[n] = trace(n, ex[n]);
  ex._initialize?.();
  ex.proxy_on_context_create(1, 0);
  ex.proxy_on_vm_start?.(1, 0);
  if (ex.proxy_on_configure && !ex.proxy_on_configure(1, config.length)) throw new Error(`${name}: configure failed`);
  let id = 2;
  const nothing = () => 0;
  const f = (n) => ex[n] ?? nothing;
  const [create, reqH, respH, respB, done, log, del] = [
    "proxy_on_context_create", "proxy_on_request_headers", "proxy_on_response_headers",
    "proxy_on_response_body", "proxy_on_done", "proxy_on_log", "proxy_on_delete",
  ].map((n) => trace(n, f(n)));
  const one = () => {
    const c = id++;
    create(c, 1);
    reqH(c, request.length, 1);
    respH(c, RESPONSE.length, 0);
    respB(c, 3, 1);
    done(c);
    log(c);
    del(c);
  };
  const exported = ["proxy_on_response_headers", "proxy_on_response_body", "proxy_on_done", "proxy_on_log"]
    .filter((n) => ex[n]).map((n) => n.replace("proxy_on_", "")).join(" ");
  return { name, mode, one, counts, exported };
}

// One run in this process: per arm its minimum and median ns/request.
function measure() {
  const loaded = modes.flatMap((m) => arms.map((a) => load({ ...a, name: label(a.name, m) }, m)));
  for (const a of loaded) for (let i = 0; i < 20000; i++) a.one(); // warm-up: V8 tiers up
  const ns = Object.fromEntries(loaded.map((a) => [a.name, []]));
  for (let r = 0; r < repeats; r++) {
    for (const a of loaded) {
      if (clock === "cpu") {
        const c0 = process.cpuUsage();
        for (let i = 0; i < requests; i++) a.one();
        const c = process.cpuUsage(c0);
        ns[a.name].push(((c.user + c.system) * 1000) / requests);
      } else {
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < requests; i++) a.one();
        ns[a.name].push(Number(process.hrtime.bigint() - t0) / requests);
      }
    }
  }
  return loaded.map((a) => {
    const v = ns[a.name].slice().sort((x, y) => x - y);
    const writes = a.counts.writes / (20000 + repeats * requests);
    return { name: a.name, mode: a.mode, min: v[0], median: v[v.length >> 1], writes, exported: a.exported };
  });
}

const median = (v) => {
  const s = v.slice().sort((x, y) => x - y);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

if (emitJson) {
  console.log(JSON.stringify(measure()));
} else {
  const results = [];
  for (let r = 0; r < runs; r++) {
    if (runs === 1) {
      results.push(measure());
      break;
    }
    const child = spawnSync(process.execPath, [process.argv[1], ...childArgs, "--emit-json"], { encoding: "utf8" });
    if (child.status !== 0) throw new Error(`run ${r + 1} failed: ${child.stderr}`);
    results.push(JSON.parse(child.stdout));
  }
  const first = results[0];
  const minOf = (run, name) => run.find((a) => a.name === name).min;
  console.log(`host copies: ${copies}; clock: ${clock}; ${requests} requests x ${repeats} repeats` +
    (runs > 1 ? `; ${runs} runs (fresh processes)` : ""));
  const cols = runs > 1
    ? ["module", `ns/request (median of ${runs} runs' min of ${repeats})`, "range of the runs' min"]
    : ["module", `ns/request (min of ${repeats})`, "median"];
  const refs = over.map((o) => `over ${o}${runs > 1 ? " (paired)" : ""}`);
  console.log(`| ${[...cols, ...refs, "header writes/request", "callbacks exported"].join(" | ")} |`);
  console.log(`|${"---|".repeat(cols.length + refs.length + 2)}`);
  for (const a of first) {
    const mins = results.map((run) => minOf(run, a.name));
    const lead = runs > 1
      ? [median(mins).toFixed(0), `${Math.min(...mins).toFixed(0)}–${Math.max(...mins).toFixed(0)}`]
      : [a.min.toFixed(0), a.median.toFixed(0)];
    const diffs = over.map((o) => {
      const ref = label(o, a.mode);
      if (!first.some((b) => b.name === ref)) return "-";
      return median(results.map((run) => minOf(run, a.name) - minOf(run, ref))).toFixed(0);
    });
    console.log(`| ${[a.name, ...lead, ...diffs, a.writes.toFixed(1), a.exported].join(" | ")} |`);
  }
}

// Checks the built filter module as Envoy's host will see it:
// - no exported malloc/free (or kin): proxy-wasm hosts allocate the buffers
//   they hand over with an exported `malloc` when there is one, and the
//   filter frees them with its own allocator: `proxy_on_memory_allocate`
//   must be the only allocator exported, and it must be there;
// - single-threaded: no shared memory and no atomic instruction (the filter
//   keeps its state in a static that assumes one thread).
// Reads the binary itself (sections, imports, exports and every instruction
// of every function); an instruction it cannot read fails the check.
// Usage: node tools/check-wasm.mjs MODULE.wasm (first checks itself on
// small modules, each with one of the faults).
import { readFileSync } from "node:fs";
import process from "node:process";

// Immediates of each opcode the filter's target emits (MVP, sign-ext,
// multivalue, bulk memory, non-trapping float-to-int, reference types).
const NONE = new Set([0x00, 0x01, 0x05, 0x0b, 0x0f, 0x1a, 0x1b, 0xd1]);
const ONE_INDEX = new Set([0x0c, 0x0d, 0x10, 0x12, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x3f, 0x40, 0xd2]);
const ALLOCATORS = ["malloc", "free", "calloc", "realloc", "aligned_alloc", "posix_memalign"];

/// The module's problems (empty: it passes) and its export names.
function check(b) {
  if (b.length < 8 || b.readUInt32LE(0) !== 0x6d736100) return { problems: ["not a wasm module"], exports: [] };
  let p = 8;
  const problems = [], exports = [];
  const u32 = () => {
    let r = 0, s = 0, x;
    do { x = b[p++]; r += (x & 0x7f) * 2 ** s; s += 7; } while (x & 0x80);
    return r;
  };
  const skipLeb = () => { while (b[p++] & 0x80); };
  const name = () => { const n = u32(); const s = b.toString("utf8", p, p + n); p += n; return s; };
  const limits = (what) => {
    const flags = b[p++];
    u32();
    if (flags & 1) u32();
    if (flags & 2) problems.push(`${what} is shared (a threaded module)`);
  };
  // One function's instructions; false when one cannot be read.
  const code = (end, fn) => {
    while (p < end) {
      const at = p, op = b[p++];
      if (NONE.has(op) || (op >= 0x45 && op <= 0xc4)) continue;
      if (ONE_INDEX.has(op)) { u32(); continue; }
      if (op >= 0x28 && op <= 0x3e) { u32(); u32(); continue; } // memarg
      switch (op) {
        case 0x02: case 0x03: case 0x04: // block type: empty, a value type or a type index
          if (b[p] === 0x40 || (b[p] >= 0x6f && b[p] <= 0x7f)) p++; else skipLeb();
          continue;
        case 0x0e: { const n = u32(); for (let i = 0; i <= n; i++) u32(); continue; }
        case 0x11: case 0x13: u32(); u32(); continue;
        case 0x1c: { const n = u32(); p += n; continue; }
        case 0x41: case 0x42: skipLeb(); continue;
        case 0x43: p += 4; continue;
        case 0x44: p += 8; continue;
        case 0xd0: p++; continue;
        case 0xfc: {
          const sub = u32();
          if (sub <= 7) continue;
          if ([8, 10, 12, 14].includes(sub)) { u32(); u32(); continue; }
          if (sub <= 17) { u32(); continue; }
          break;
        }
        case 0xfe: problems.push(`function ${fn}: atomic instruction 0xfe ${b[p]} at byte ${at}`); return false;
      }
      problems.push(`function ${fn}: cannot read opcode 0x${op.toString(16)} at byte ${at}`);
      return false;
    }
    return true;
  };
  while (p < b.length) {
    const id = b[p++], size = u32(), end = p + size;
    if (id === 2) { // imports
      for (let n = u32(); n > 0; n--) {
        const field = `${name()}.${name()}`, kind = b[p++];
        if (kind === 0) u32();
        else if (kind === 1) { p++; limits(`imported table ${field}`); }
        else if (kind === 2) limits(`imported memory ${field}`);
        else if (kind === 3) p += 2;
        else { problems.push(`import ${field} of kind ${kind}`); break; }
      }
    } else if (id === 5) { // memories
      for (let n = u32(), i = 0; i < n; i++) limits(`memory ${i}`);
    } else if (id === 7) { // exports
      for (let n = u32(); n > 0; n--) { exports.push(name()); p++; u32(); }
    } else if (id === 10) { // code
      for (let n = u32(), fn = 0; fn < n; fn++) {
        const bodyEnd = u32() + p;
        for (let locals = u32(); locals > 0; locals--) { u32(); p++; }
        if (code(bodyEnd, fn) && p !== bodyEnd) problems.push(`function ${fn}: instructions end at byte ${p}, its body at ${bodyEnd}`);
        p = bodyEnd;
      }
    }
    p = end;
  }
  for (const allocator of ALLOCATORS) {
    if (exports.includes(allocator)) problems.push(`exports ${allocator}: the host would allocate what it hands over with it`);
  }
  if (!exports.includes("proxy_on_memory_allocate")) problems.push("does not export proxy_on_memory_allocate");
  return { problems, exports };
}

/// A module of one function `(i32) -> i32` with `body` (locals included),
/// one memory with `memoryFlags`, exporting the function under `names`.
function module(body, memoryFlags, names) {
  const section = (id, bytes) => [id, bytes.length, ...bytes];
  const exports = names.flatMap((n) => [n.length, ...Buffer.from(n), 0, 0]);
  return Buffer.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 1, 0x7f, 1, 0x7f]),
    ...section(3, [1, 0]),
    ...section(5, memoryFlags & 1 ? [1, memoryFlags, 1, 1] : [1, memoryFlags, 1]),
    ...section(7, [names.length, ...exports]),
    ...section(10, [1, body.length, ...body]),
  ]);
}

const GET = [0x00, 0x20, 0x00, 0x0b]; // no locals; local.get 0; end
const ATOMIC_LOAD = [0x00, 0x20, 0x00, 0xfe, 0x10, 0x02, 0x00, 0x0b]; // local.get 0; i32.atomic.load
const cases = [
  [module(GET, 0, ["proxy_on_memory_allocate"]), []],
  [module(GET, 0, ["proxy_on_memory_allocate", "malloc"]), ["exports malloc"]],
  [module(GET, 0, ["free"]), ["exports free", "does not export proxy_on_memory_allocate"]],
  [module(GET, 3, ["proxy_on_memory_allocate"]), ["memory 0 is shared"]],
  [module(ATOMIC_LOAD, 0, ["proxy_on_memory_allocate"]), ["function 0: atomic instruction"]],
  [module([0x00, 0xfd, 0x0c, 0x0b], 0, ["proxy_on_memory_allocate"]), ["function 0: cannot read opcode 0xfd"]],
];
for (const [bytes, want] of cases) {
  const { problems } = check(bytes);
  if (problems.length !== want.length || !want.every((w, i) => problems[i].startsWith(w))) {
    console.log(`check-wasm.mjs checks itself wrongly: wanted ${JSON.stringify(want)}, got ${JSON.stringify(problems)}`);
    process.exit(2);
  }
}

const path = process.argv[2];
const { problems, exports } = check(readFileSync(path));
if (problems.length) {
  console.log(`${path}:\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.log(`${path}: ${exports.length} exports, proxy_on_memory_allocate and no malloc/free; no shared memory, no atomic instruction`);

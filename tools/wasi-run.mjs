// Runs a wasm32-wasip1 program (a test binary cargo built for the filter's
// own target) under Node.js's WASI preview1: cargo's runner for
// `cargo test --target wasm32-wasip1`. Arguments after the module pass to it.
// Run it with `node --single-threaded`: Node 20 exits from inside the
// module's proc_exit while V8's background compile threads still run, and
// crashed (SIGSEGV) at that exit in 7 of 12 runs of core's test binary;
// with no background threads, in none of 18.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import process from "node:process";

const [module, ...args] = process.argv.slice(2);
const wasi = new WASI({
  version: "preview1",
  args: [module, ...args],
  env: process.env,
  returnOnExit: false,
});
const compiled = await WebAssembly.compile(await readFile(module));
const instance = await WebAssembly.instantiate(compiled, wasi.getImportObject());
wasi.start(instance);

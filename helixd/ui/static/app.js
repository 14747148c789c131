// helixd live view: follows /ui/api/events and keeps the page in step with it.
//
// A module script: strict, deferred, and nothing leaks onto window. All names shown
// come from helixd's config or from clients, so text only ever goes in through
// textContent or attributes, never through innerHTML. Styles go through classes, or
// element.style for the computed bar widths and colours (the CSP allows CSSOM).

const API = "/ui/api";
const KEY_STORE = "helixd-key";   // sessionStorage: gone with the tab, never in a URL
const RETRY_MS = 2000;            // after the events stream drops
const FORBIDDEN_RETRY_MS = 10000; // a 403 will not clear by itself; do not hammer
const STALE_S = 15;               // snapshots come at least every 5 s: 15 s silent is lost
const KEEP_REQUESTS = 50;
const KEEP_LOG_LINES = 2000;
const TOAST_MS = 4000;
const TOAST_ERROR_MS = 8000;
const LOAD_STATES = new Set(["unloaded", "failed", "sleeping"]);
const TRANSITIONS = new Set(["loading", "unloading"]);
const SEVERITIES = new Set(["info", "warning", "error", "critical"]);
const VERBS = { load: "Load", unload: "Unload", pin: "Pin", unpin: "Unpin", restart: "Restart", run: "Run" };
const DOING = { load: "loading", unload: "unloading", pin: "pinning", unpin: "unpinning", restart: "restarting", run: "starting" };
const GIB = 1024 ** 3;
const MIB = 1024 ** 2;

const $ = (id) => document.getElementById(id);

// Everything the page knows, in one place.
const state = {
  doc: null,              // the last snapshot
  clockOffset: 0,         // server time − browser time, so countdowns agree with helixd
  requests: new Map(),    // key → request record, merged from snapshots and events
  pending: new Set(),     // "action\0target" posted and not yet answered
  confirming: null,       // {action, target} while the dialog is open
  events: { ctrl: null, retry: 0, lastSeen: 0, up: false, endReason: "" },
  log: { ctrl: null, name: null, stick: true, scrollQueued: false },
  toastTimer: 0,
};

// -- small defensive helpers: every field of the document may be missing -----------------

const list = (v) => (Array.isArray(v) ? v : []);
const obj = (v) => (v !== null && typeof v === "object" && !Array.isArray(v) ? v : {});
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const text = (v) => (v === null || v === undefined || v === "" ? "-" : String(v));
const now = () => Date.now() / 1000 + state.clockOffset;

function size(bytes) {
  const b = num(bytes);
  if (b === null) return "-";
  return b >= GIB ? `${(b / GIB).toFixed(1)} GiB` : `${(b / MIB).toFixed(1)} MiB`;
}

// Same shape as helixctl's durations: 42s, 3m12s, 5h03m, 2d04h.
function duration(seconds) {
  const v = num(seconds);
  if (v === null) return "-";
  const s = Math.max(0, Math.floor(v));
  const pad = (n) => String(n).padStart(2, "0");
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
}

function ago(epoch) {
  const t = num(epoch);
  if (t === null) return "-";
  const d = now() - t;
  return d < 1 ? "just now" : `${duration(d)} ago`;
}

const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});

// Local wall-clock time; the date only when it is not today, to keep columns narrow.
function clock(epoch) {
  const t = num(epoch);
  if (t === null) return "-";
  const d = new Date(t * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return (today ? timeFormat : dateTimeFormat).format(d);
}

const fullTime = (epoch) => (num(epoch) === null ? "" : new Date(epoch * 1000).toLocaleString());

// -- DOM helpers: write only on change, so a quiet snapshot touches nothing -------------

function el(tag, className, content) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (content !== undefined) node.textContent = content;
  return node;
}

function setText(node, value) {
  const s = String(value);
  if (node.textContent !== s) node.textContent = s;
}

function setAttr(node, name, value) {
  if (value === null || value === undefined || value === "") {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else if (node.getAttribute(name) !== String(value)) {
    node.setAttribute(name, String(value));
  }
}

function setHidden(node, hidden) {
  if (node.hidden !== hidden) node.hidden = hidden;
}

// Sets one cell: its text and an optional tooltip.
function setCell(td, value, title) {
  setText(td, value);
  setAttr(td, "title", title);
}

// Makes a row whose cells carry class names, so updates find cells by column.
function makeRow(columns) {
  const tr = document.createElement("tr");
  for (const col of columns) {
    tr.append(el("td", col));
  }
  return tr;
}

const cell = (tr, col) => tr.querySelector(`:scope > td.${col}`);

function button(label, attrs, title) {
  const b = el("button", "", label);
  b.type = "button";
  for (const [k, v] of Object.entries(attrs)) b.setAttribute(k, v);
  if (title) b.title = title;
  return b;
}

// Keeps a container's children in the order of `items`, reusing the child that carries
// the same key in `attr`: rows are updated in place and never rebuilt, so a click that
// lands between two snapshots still finds its button. Returns whether anything is shown.
function reconcile(parent, items, attr, keyOf, create, update) {
  const old = new Map();
  for (const child of parent.children) old.set(child.getAttribute(attr), child);
  const seen = new Set();
  let cursor = parent.firstElementChild;
  for (const item of items) {
    const key = String(keyOf(item));
    if (seen.has(key)) continue; // a duplicate name would fight over one row
    seen.add(key);
    let node = old.get(key);
    if (node) {
      old.delete(key);
    } else {
      node = create(key, item);
      node.setAttribute(attr, key);
    }
    update(node, item, key);
    if (node === cursor) cursor = cursor.nextElementSibling;
    else parent.insertBefore(node, cursor);
  }
  for (const node of old.values()) node.remove();
  return seen.size > 0;
}

// Shows a table's "none" paragraph (the section's .empty) when it has no rows.
function markEmpty(sectionId, any) {
  const p = $(sectionId).querySelector(":scope > p.empty");
  if (p) setHidden(p, any);
}

// -- colours: one per model, the same in every bar and in the models table --------------

function colourOf(name, doc) {
  let i = list(doc.models).findIndex((m) => obj(m).name === name);
  if (i < 0) {
    i = 0; // not a known model: a stable hash keeps its colour from jumping
    for (const ch of String(name)) i = (i * 31 + ch.codePointAt(0)) >>> 0;
  }
  // Golden-angle steps keep neighbours in config order far apart on the wheel.
  return `hsl(${Math.round((i * 137.508 + 210) % 360)} 55% 45%)`;
}

// -- rendering ---------------------------------------------------------------------------

// Renders the whole document. Idempotent and cheap when nothing changed, so the
// one-second ticker simply calls it again to move the clocks on.
function render() {
  const doc = state.doc;
  if (!doc) return;
  const ui = obj(doc.ui);
  document.body.classList.toggle("no-actions", ui.actions === false);
  for (const part of [renderHeader, renderAlerts, renderMemory, renderModels, renderProviders,
    renderRequests, renderJobs, renderSpend]) {
    try {
      part(doc);
    } catch (err) {
      // A malformed part must not blank the rest of the page.
      console.error(`helixd ui: cannot render ${part.name}`, err);
    }
  }
}

function renderHeader(doc) {
  setText($("version"), doc.version ? `v${doc.version}` : "");
  setText($("host"), text(doc.host));
  const started = num(doc.started_at);
  setText($("uptime"), started === null ? "" : `up ${duration(now() - started)}`);
  setAttr($("uptime"), "title", started === null ? "" : `started ${fullTime(started)}`);
  setText($("summary"), doc.summary || "");
  const title = doc.host ? `helixd · ${doc.host}` : "helixd";
  if (document.title !== title) document.title = title;
}

function renderAlerts(doc) {
  const alerts = list(doc.alerts).map(obj);
  const any = reconcile($("alerts"), alerts, "data-alert", (a) => a.key ?? a.message,
    () => {
      const li = el("li");
      li.append(el("span", "severity"), el("span", "message"), el("span", "since muted"));
      return li;
    },
    (li, a) => {
      const severity = SEVERITIES.has(a.severity) ? a.severity : "info";
      if (li.className !== severity) li.className = severity;
      setText(li.querySelector(".severity"), severity);
      setText(li.querySelector(".message"), text(a.message));
      const since = num(a.since);
      setText(li.querySelector(".since"), since === null ? "" : `since ${clock(since)} (${ago(since)})`);
    });
  setHidden($("alerts-section"), !any);
}

// -- memory ------------------------------------------------------------------------------

function renderMemory(doc) {
  const devices = obj(doc.devices);
  const bars = list(devices.gpus).map(obj).map((g) => ({ key: String(g.id ?? g.name ?? "gpu"), ...g }));
  if (devices.ram) bars.push({ key: "ram", name: "RAM", ...obj(devices.ram) });
  const any = reconcile($("memory"), bars, "data-device-row", (b) => b.key, createDevice,
    (row, dev) => updateDevice(row, dev, doc));
  const note = [devices.mode && devices.mode !== "nvml" ? `mode: ${devices.mode}` : "", devices.note || ""]
    .filter(Boolean).join(" · ");
  setText($("memory-note"), note);
  setHidden($("memory-note"), !note);
  markEmpty("memory-section", any);
}

function createDevice(key) {
  const row = el("div", "device");
  const label = el("div", "device-label");
  label.append(el("span", "device-name"), el("span", "device-used"));
  const bar = el("div", "bar");
  bar.dataset.device = key;
  row.append(label, bar);
  return row;
}

function updateDevice(row, dev, doc) {
  const total = num(dev.total_bytes);
  const name = dev.key === "ram" ? "RAM" : `${dev.key}${dev.name ? ` · ${dev.name}` : ""}`;
  setText(row.querySelector(".device-name"), name);
  const used = num(dev.used_bytes);
  const pct = total && used !== null ? ` (${Math.round((used / total) * 100)}%)` : "";
  setText(row.querySelector(".device-used"), `${size(used)} / ${size(total)}${pct}`);
  const segments = list(dev.models).map(obj).map((m) => ({ key: String(m.name ?? "?"), bytes: m.bytes }));
  if (num(dev.other_bytes)) segments.push({ key: "other", bytes: dev.other_bytes, other: true });
  reconcile(row.querySelector(".bar"), segments, "data-segment", (s) => s.key,
    () => el("div", "segment"),
    (seg, s) => updateSegment(seg, s, total, doc));
}

function updateSegment(seg, s, total, doc) {
  const bytes = num(s.bytes) ?? 0;
  const pct = total ? Math.min(100, (bytes / total) * 100) : 0;
  seg.style.width = `${pct.toFixed(2)}%`;
  seg.classList.toggle("other", Boolean(s.other));
  // A model named "other" would share the key with unowned memory; colour only models.
  seg.style.backgroundColor = s.other ? "" : colourOf(s.key, doc);
  const label = s.other ? "other (not helixd's)" : s.key;
  setText(seg, s.other ? "other" : s.key);
  setAttr(seg, "title", `${label}: ${size(bytes)}`);
}

// -- models ------------------------------------------------------------------------------

const MODEL_COLUMNS = ["name", "state", "device", "memory", "pinned", "keepalive", "busy", "rpm",
  "last-used", "evict", "message", "actions"];

function renderModels(doc) {
  const any = reconcile($("models").tBodies[0], list(doc.models).map(obj), "data-model",
    (m) => text(m.name), createModelRow, (tr, m) => updateModelRow(tr, m, doc));
  markEmpty("models-section", any);
}

function createModelRow(name) {
  const tr = makeRow(MODEL_COLUMNS);
  const nameCell = cell(tr, "name");
  nameCell.append(el("span", "swatch"), el("span", "label", name));
  const memory = cell(tr, "memory");
  memory.append(el("span", "value"), el("span", "source muted"));
  for (const col of ["memory", "keepalive", "busy", "rpm", "last-used"]) cell(tr, col).classList.add("num");
  cell(tr, "actions").append(
    button("load", { "data-action": "load", "data-target": name }),
    button("unload", { "data-action": "unload", "data-target": name }),
    button("pin", { "data-action": "pin", "data-target": name }, "keep loaded, never evict"),
    button("unpin", { "data-action": "unpin", "data-target": name }),
    button("log", { "data-log": name }, "follow this model's process log"),
  );
  return tr;
}

function updateModelRow(tr, m, doc) {
  const st = typeof m.state === "string" ? m.state : "unknown";
  setAttr(tr, "data-state", st);
  cell(tr, "name").querySelector(".swatch").style.backgroundColor = colourOf(m.name, doc);
  setAttr(cell(tr, "name"), "title", m.provider ? `provider: ${m.provider}` : "");
  const since = num(m.state_since);
  const elapsed = TRANSITIONS.has(st) && since !== null ? ` ${duration(now() - since)}` : "";
  setCell(cell(tr, "state"), st + elapsed, since === null ? "" : `since ${fullTime(since)}`);
  setCell(cell(tr, "device"), text(m.device));
  updateModelMemory(cell(tr, "memory"), m);
  setCell(cell(tr, "pinned"), m.pinned ? "yes" : "-");
  updateKeepAlive(cell(tr, "keepalive"), m);
  const maxc = num(m.max_concurrency);
  setCell(cell(tr, "busy"), `${text(num(m.in_flight))} / ${text(num(m.queued))}`,
    maxc === null ? "in flight / queued" : `in flight / queued (max ${maxc} at once)`);
  const rpm = num(m.requests_per_min);
  setCell(cell(tr, "rpm"), rpm === null ? "-" : rpm.toFixed(rpm < 10 && rpm % 1 ? 1 : 0));
  setCell(cell(tr, "last-used"), ago(m.last_used), fullTime(m.last_used));
  setCell(cell(tr, "evict"), evictText(m));
  setCell(cell(tr, "message"), m.message || "", m.message || "");
  updateModelButtons(tr, m, st);
}

function updateModelMemory(td, m) {
  // Resident on the GPU: its VRAM; in RAM: its RAM; unloaded: whichever size is known.
  const onRam = m.device === "ram";
  const bytes = onRam ? (num(m.ram_bytes) ?? num(m.vram_bytes)) : (num(m.vram_bytes) || num(m.ram_bytes));
  const source = typeof m.memory_source === "string" ? m.memory_source : "";
  const prefix = source === "estimated" && bytes !== null ? "~" : "";
  setText(td.querySelector(".value"), prefix + size(bytes));
  setText(td.querySelector(".source"), source ? ` ${source}` : "");
  setAttr(td, "title", source ? `memory figure: ${source}` : "");
}

function updateKeepAlive(td, m) {
  const expires = num(m.expires_at);
  const ka = num(m.keep_alive_s);
  const title = ka === null ? "" : `keep-alive ${duration(ka)}`;
  if (expires === null) {
    setCell(td, "-", title);
    return;
  }
  const left = expires - now();
  setCell(td, left > 0 ? duration(left) : "due", `${title}; ends ${fullTime(expires)}`.replace(/^; /, ""));
}

function evictText(m) {
  if (m.pinned) return "pinned";
  const rank = num(m.evict_rank);
  if (rank === null) return "-";
  return rank === 1 ? "next" : `#${rank}`;
}

function updateModelButtons(tr, m, st) {
  const pinned = Boolean(m.pinned);
  const show = {
    load: LOAD_STATES.has(st),
    unload: st === "loaded" && !pinned, // helixd refuses to unload a pinned model
    pin: !pinned,
    unpin: pinned,
  };
  updateButtons(tr, m.name, (action) => show[action]);
}

// Shows a row's buttons: an action when sensible and helixd allows actions, disabled
// while one is posted; none at all for a nameless entry, which has nothing to target.
function updateButtons(tr, name, sensible, hasLog = true) {
  const named = typeof name === "string" && name !== "";
  const allowed = obj(state.doc && state.doc.ui).actions !== false;
  for (const b of tr.querySelectorAll("button")) {
    const action = b.dataset.action;
    if (action === undefined) {
      setHidden(b, !(named && hasLog)); // the log button
      continue;
    }
    setHidden(b, !(named && allowed && sensible(action)));
    const busy = state.pending.has(`${action}\0${b.dataset.target}`);
    if (b.disabled !== busy) b.disabled = busy;
  }
}

// -- providers ---------------------------------------------------------------------------

const PROCESSLESS = new Set(["per model", "remote"]);
const PROVIDER_COLUMNS = ["name", "kind", "state", "pid", "restarts", "uptime", "message", "actions"];

function renderProviders(doc) {
  const any = reconcile($("providers").tBodies[0], list(doc.providers).map(obj), "data-provider",
    (p) => text(p.name), createProviderRow, (tr, p) => updateProviderRow(tr, p, doc));
  markEmpty("providers-section", any);
}

function createProviderRow(name) {
  const tr = makeRow(PROVIDER_COLUMNS);
  cell(tr, "name").append(el("span", "label", name));
  for (const col of ["pid", "restarts", "uptime"]) cell(tr, col).classList.add("num");
  cell(tr, "actions").append(
    button("restart", { "data-action": "restart", "data-target": name }),
    button("log", { "data-log": name }, "follow this provider's log"),
  );
  return tr;
}

function updateProviderRow(tr, p, doc) {
  const st = typeof p.state === "string" ? p.state : "unknown";
  setAttr(tr, "data-state", st);
  setCell(cell(tr, "kind"), text(p.kind));
  setCell(cell(tr, "state"), st, num(p.since) === null ? "" : `since ${fullTime(p.since)}`);
  setCell(cell(tr, "pid"), text(num(p.pid)));
  setCell(cell(tr, "restarts"), text(num(p.restarts)));
  // uptime_s was measured when the snapshot was built: move it on by the time since.
  const up = num(p.uptime_s);
  const built = num(doc.time);
  setCell(cell(tr, "uptime"), up === null ? "-" : duration(up + (built === null ? 0 : Math.max(0, now() - built))));
  const exit = p.last_exit ? obj(p.last_exit) : null;
  const exitText = exit ? `last exit: ${exit.description || exitCode(exit)}` : "";
  const message = [p.message, exitText].filter(Boolean).join(" · ");
  setCell(cell(tr, "message"), message, message);
  // A per-model or remote provider has no process of its own: nothing to restart or follow.
  const own = !PROCESSLESS.has(st);
  updateButtons(tr, p.name, () => own, own);
}

function exitCode(exit) {
  if (exit.signal !== null && exit.signal !== undefined) return `signal ${exit.signal}`;
  return `code ${text(exit.code)}`;
}

// -- requests ----------------------------------------------------------------------------

const REQUEST_COLUMNS = ["time", "model", "route", "status", "ms", "ttft"];

const requestKey = (r) => [r.time, r.path, r.model, r.status, r.ms].map(String).join("|");

// Merges records from snapshots and from `request` events, newest first, capped.
function addRequests(records) {
  for (const r of records) {
    const rec = obj(r);
    state.requests.set(requestKey(rec), rec);
  }
  if (state.requests.size <= KEEP_REQUESTS) return;
  const newest = [...state.requests.entries()]
    .sort((a, b) => (num(b[1].time) ?? 0) - (num(a[1].time) ?? 0))
    .slice(0, KEEP_REQUESTS);
  state.requests = new Map(newest);
}

function renderRequests() {
  const rows = [...state.requests.entries()]
    .sort((a, b) => (num(b[1].time) ?? 0) - (num(a[1].time) ?? 0));
  const any = reconcile($("requests").tBodies[0], rows, "data-request", ([key]) => key,
    () => {
      const tr = makeRow(REQUEST_COLUMNS);
      for (const col of ["status", "ms", "ttft"]) cell(tr, col).classList.add("num");
      return tr;
    },
    (tr, [, r]) => updateRequestRow(tr, r));
  markEmpty("requests-section", any);
}

function updateRequestRow(tr, r) {
  setCell(cell(tr, "time"), clock(r.time), fullTime(r.time));
  const asked = r.asked ?? null;
  const model = r.model ?? null;
  const shown = asked && model && asked !== model ? `${asked} → ${model}` : text(model ?? asked);
  setCell(cell(tr, "model"), shown, [r.method, r.path].filter(Boolean).join(" "));
  setCell(cell(tr, "route"), text(r.route));
  const status = num(r.status);
  const attempts = num(r.attempts);
  setCell(cell(tr, "status"), text(status), attempts > 1 ? `${attempts} attempts` : "");
  cell(tr, "status").classList.toggle("error", status >= 400);
  setCell(cell(tr, "ms"), num(r.ms) === null ? "-" : Math.round(r.ms));
  setCell(cell(tr, "ttft"), num(r.ttft_ms) === null ? "-" : Math.round(r.ttft_ms));
}

// -- jobs and spend ----------------------------------------------------------------------

const JOB_COLUMNS = ["name", "kind", "schedule", "state", "next-run", "last-result", "actions"];

function renderJobs(doc) {
  const any = reconcile($("jobs").tBodies[0], list(doc.jobs).map(obj), "data-job",
    (j) => text(j.name), createJobRow, updateJobRow);
  markEmpty("jobs-section", any);
}

function createJobRow(name) {
  const tr = makeRow(JOB_COLUMNS);
  cell(tr, "name").append(el("span", "label", name));
  cell(tr, "actions").append(button("run", { "data-action": "run", "data-target": name }, "run now"));
  return tr;
}

function updateJobRow(tr, j) {
  let st = j.running ? "running" : "idle";
  if (j.enabled === false) st = "disabled";
  setAttr(tr, "data-state", st);
  setCell(cell(tr, "kind"), text(j.kind));
  setCell(cell(tr, "schedule"), text(j.schedule));
  setCell(cell(tr, "state"), st);
  const next = num(j.next_run);
  const inText = next === null ? "" : ` (in ${duration(next - now())})`;
  setCell(cell(tr, "next-run"), next === null ? "-" : clock(next) + inText, fullTime(next));
  const last = j.last_run ? obj(j.last_run) : null;
  const result = last ? [text(last.result), clock(last.finished_at)].join(" · ") : "-";
  setCell(cell(tr, "last-result"), result, last ? last.message || "" : "");
  cell(tr, "last-result").classList.toggle("error", Boolean(last) && last.result !== "ok");
  updateButtons(tr, j.name, () => !j.running);
}

function renderSpend(doc) {
  const spend = Object.entries(obj(doc.spend)).map(([name, s]) => ({ name, ...obj(s) }));
  const any = reconcile($("spend"), spend, "data-spend", (s) => s.name,
    () => {
      const row = el("div", "spend-row");
      row.append(el("span", "label"), el("span", "amount"), el("div", "meter"));
      row.querySelector(".meter").append(el("div", "fill"));
      return row;
    },
    updateSpendRow);
  setHidden($("spend-section"), !any);
}

function updateSpendRow(row, s) {
  const today = num(s.today_usd);
  const budget = num(s.budget_usd);
  setText(row.querySelector(".label"), s.name);
  const amount = today === null ? "-" : `$${today.toFixed(2)}`;
  setText(row.querySelector(".amount"), budget === null ? `${amount} today` : `${amount} of $${budget.toFixed(2)} today`);
  const ratio = budget ? Math.min(1, (today ?? 0) / budget) : 0;
  setHidden(row.querySelector(".meter"), !budget);
  row.querySelector(".fill").style.width = `${(ratio * 100).toFixed(1)}%`;
  row.classList.toggle("over", budget !== null && today !== null && today >= budget);
}

// -- server-sent events over fetch -------------------------------------------------------

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// Reads an SSE body and calls onEvent(type, data) per event. EventSource cannot send an
// Authorization header, hence this small parser. Resolves when the stream ends.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let type = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, "");
      buffer = buffer.slice(nl + 1);
      if (line === "") {
        // A blank line ends an event; one without data is not dispatched (SSE rules).
        if (data.length) onEvent(type || "message", data.join("\n"));
        type = "";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = val;
        else if (field === "data") data.push(val);
      }
    }
  }
}

// The server's error message from a JSON error body, or the HTTP status.
async function errorMessage(response) {
  try {
    const body = await response.json();
    const message = obj(obj(body).error).message;
    if (message) return String(message);
  } catch {
    // not JSON: fall back to the status line
  }
  return `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`;
}

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return null; // a torn or foreign event: skip it, the next snapshot repairs the page
  }
}

// -- the events stream -------------------------------------------------------------------

function setConnection(cls, message, title) {
  const c = $("connection");
  if (c.className !== cls) c.className = cls;
  setText(c, message);
  setAttr(c, "title", title || "");
  // Dim the figures when they are no longer live, so nobody trusts a frozen page.
  document.body.classList.toggle("stale", cls !== "up" && state.doc !== null);
}

function scheduleConnect(delay) {
  clearTimeout(state.events.retry);
  state.events.retry = setTimeout(connect, delay);
}

// Drops the current stream (if any) and connects again after `delay` ms.
function reconnect(delay) {
  const ev = state.events;
  if (ev.ctrl) ev.ctrl.abort();
  ev.ctrl = null;
  ev.up = false;
  scheduleConnect(delay);
}

async function connect() {
  const ev = state.events;
  clearTimeout(ev.retry);
  const ctrl = new AbortController();
  ev.ctrl = ctrl;
  try {
    const res = await fetch(`${API}/events`, {
      headers: authHeaders({ Accept: "text/event-stream" }),
      cache: "no-store",
      signal: ctrl.signal,
    });
    if (ev.ctrl !== ctrl) return;
    if (res.status === 401) {
      // Wait for a key rather than retry: the same request would only fail again.
      ev.ctrl = null;
      setConnection("down", "sign in required");
      showLogin();
      return;
    }
    if (!res.ok) {
      ev.ctrl = null;
      const message = await errorMessage(res);
      setConnection("down", message, `HTTP ${res.status}; retrying`);
      scheduleConnect(res.status === 403 ? FORBIDDEN_RETRY_MS : RETRY_MS);
      return;
    }
    hideLogin();
    ev.up = true;
    ev.lastSeen = Date.now();
    setConnection("up", "live");
    await readEvents(res, onEvent);
  } catch (err) {
    if (ev.ctrl !== ctrl) return; // aborted on purpose: someone else reconnects
  }
  if (ev.ctrl !== ctrl) return;
  ev.ctrl = null;
  ev.up = false;
  setConnection("down", "disconnected, retrying…", ev.endReason ? `stream ended: ${ev.endReason}` : "");
  ev.endReason = "";
  scheduleConnect(RETRY_MS);
}

function onEvent(type, data) {
  state.events.lastSeen = Date.now();
  const value = parse(data);
  if (value === null || typeof value !== "object" || Array.isArray(value)) return;
  if (type === "snapshot") {
    state.doc = value;
    const built = num(value.time);
    state.clockOffset = built === null ? 0 : built - Date.now() / 1000;
    addRequests(list(value.requests));
    setAttr($("connection"), "title", `last snapshot ${clock(built)}`);
    render();
  } else if (type === "request") {
    addRequests([value]);
    if (state.doc) renderRequests();
  } else if (type === "end") {
    // helixd is stopping: the stream closes next and connect() retries; keep the why.
    state.events.endReason = text(value.reason);
  }
}

// -- login -------------------------------------------------------------------------------

function showLogin() {
  const form = $("login");
  const hadKey = Boolean(sessionStorage.getItem(KEY_STORE));
  setText($("login-message"), hadKey ? "that key was refused" : "this helixd asks for an API key");
  if (form.hidden) {
    form.hidden = false;
    $("login-key").focus();
  }
}

function hideLogin() {
  setHidden($("login"), true);
}

function onLogin(event) {
  event.preventDefault(); // the CSP forbids form submission anyway; stay on the page
  const input = $("login-key");
  const key = input.value.trim();
  input.value = "";
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  hideLogin();
  setConnection("", "connecting…");
  reconnect(0);
  if (state.log.name) followLog(state.log.name);
}

// -- actions -----------------------------------------------------------------------------

function askConfirm(action, target) {
  if (obj(state.doc && state.doc.ui).actions === false) return;
  state.confirming = { action, target };
  const what = action === "restart" ? `provider ${target}` : action === "run" ? `job ${target} now` : target;
  setText($("confirm-text"), `${VERBS[action] || action} ${what}?`);
  const dialog = $("confirm");
  if (!dialog.open) dialog.showModal();
  $("confirm-no").focus(); // the safe answer takes Enter
}

function closeConfirm(yes) {
  const dialog = $("confirm");
  const asked = state.confirming;
  state.confirming = null;
  if (dialog.open) dialog.close();
  if (yes && asked) postAction(asked.action, asked.target);
}

async function postAction(action, target) {
  const key = `${action}\0${target}`;
  if (state.pending.has(key)) return;
  state.pending.add(key);
  render(); // disable the button at once
  // A load can take minutes: say so now, the answer replaces this toast.
  toast(`${DOING[action] || action} ${target}…`, "pending");
  try {
    const res = await fetch(`${API}/actions`, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({ action, target }),
      cache: "no-store",
    });
    if (res.status === 401) {
      showLogin();
      toast(`${action} ${target}: ${await errorMessage(res)}`, "error");
    } else if (!res.ok) {
      toast(`${action} ${target}: ${await errorMessage(res)}`, "error");
    } else {
      const body = obj(await res.json().catch(() => null));
      toast(body.message || `${action} ${target}: done`, body.ok === false ? "error" : "");
    }
  } catch (err) {
    toast(`${action} ${target}: ${err.message || "network error"}`, "error");
  } finally {
    state.pending.delete(key);
    render();
  }
}

function toast(message, kind) {
  const t = $("toast");
  t.className = kind || "";
  t.textContent = message;
  t.hidden = false;
  clearTimeout(state.toastTimer);
  // A pending toast waits for its answer; the others go away by themselves.
  if (kind !== "pending") {
    state.toastTimer = setTimeout(() => { t.hidden = true; }, kind === "error" ? TOAST_ERROR_MS : TOAST_MS);
  }
}

// -- log panel ---------------------------------------------------------------------------

function atBottom(view) {
  return view.scrollTop + view.clientHeight >= view.scrollHeight - 4;
}

// Appends one line; scrolling waits for the next frame so a burst of 200 lines costs
// one layout, and follows only if the reader was already at the bottom.
function appendLog(content, cls) {
  const view = $("log-view");
  const log = state.log;
  if (!log.scrollQueued) {
    log.stick = atBottom(view);
    log.scrollQueued = true;
    requestAnimationFrame(() => {
      log.scrollQueued = false;
      if (log.stick) view.scrollTop = view.scrollHeight;
    });
  }
  view.append(el("span", cls, `${content}\n`));
  while (view.childElementCount > KEEP_LOG_LINES) view.firstElementChild.remove();
}

function onLogEvent(type, data) {
  const value = obj(parse(data));
  if (type === "line") {
    const stream = value.stream === "stderr" || value.stream === "helixd" ? value.stream : "";
    appendLog(`${clock(value.ts)} ${value.text ?? ""}`, stream);
  } else if (type === "end") {
    appendLog(`— log ended: ${text(value.reason)}`, "note");
    return true;
  }
  return false;
}

async function followLog(name) {
  const log = state.log;
  if (log.ctrl) log.ctrl.abort(); // one log at a time
  const ctrl = new AbortController();
  log.ctrl = ctrl;
  log.name = name;
  $("log-view").replaceChildren();
  setText($("log-title"), `Log: ${name}`);
  $("log-panel").hidden = false;
  document.body.classList.add("log-open");
  let ended = false;
  try {
    const res = await fetch(`${API}/logs/${encodeURIComponent(name)}?lines=200`, {
      headers: authHeaders({ Accept: "text/event-stream" }),
      cache: "no-store",
      signal: ctrl.signal,
    });
    if (res.status === 401) showLogin();
    if (!res.ok) {
      const message = await errorMessage(res);
      // Another log may have been opened meanwhile: do not write into its panel.
      if (log.ctrl === ctrl) appendLog(`— cannot follow ${name}: ${message}`, "note");
      return;
    }
    await readEvents(res, (type, data) => { ended = onLogEvent(type, data) || ended; });
    if (!ended && log.ctrl === ctrl) appendLog("— log stream closed", "note");
  } catch (err) {
    if (!ctrl.signal.aborted) appendLog(`— log stream lost: ${err.message || err}`, "note");
  }
}

function closeLog() {
  const log = state.log;
  if (log.ctrl) log.ctrl.abort();
  log.ctrl = null;
  log.name = null;
  $("log-panel").hidden = true;
  document.body.classList.remove("log-open");
}

// -- wiring ------------------------------------------------------------------------------

// One listener for the whole page: rows come and go with snapshots, the document stays.
function onClick(event) {
  const target = event.target instanceof Element ? event.target : null;
  if (!target) return;
  const actionButton = target.closest("button[data-action]");
  if (actionButton && !actionButton.disabled) {
    askConfirm(actionButton.dataset.action, actionButton.dataset.target);
    return;
  }
  const logButton = target.closest("button[data-log]");
  if (logButton) {
    followLog(logButton.dataset.log);
    return;
  }
  if (target.closest("#confirm-yes")) closeConfirm(true);
  else if (target.closest("#confirm-no")) closeConfirm(false);
  else if (target.closest("#log-close")) closeLog();
}

// Once a second: move the clocks on, and drop a stream that went silent (a half-open
// connection never errors by itself).
function tick() {
  const ev = state.events;
  if (ev.up && Date.now() - ev.lastSeen > STALE_S * 1000) {
    setConnection("down", "disconnected, retrying…", "no snapshot for 15 s");
    reconnect(0);
  }
  render();
}

function start() {
  document.addEventListener("click", onClick);
  $("login").addEventListener("submit", onLogin);
  // Escape closes the dialog without our buttons: treat it as "no".
  $("confirm").addEventListener("close", () => { state.confirming = null; });
  setInterval(tick, 1000);
  connect();
}

start();

// The dbkeep dashboard: a client of the API like any other. The token lives in this tab's
// session storage only; every request sends it as a bearer token.
"use strict";

const TOKEN_KEY = "dbkeep-token";
// `backupsDb`: the database the table shows; every action on a row goes to it.
const state = { databases: [], backups: [], backupsDb: null, maxAge: 93600, running: [], stream: null };

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem(TOKEN_KEY);

/** An element with attributes (and properties for `on*`), then children (strings or nodes). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) e.append(c);
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function local(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function say(text, bad) {
  const m = $("message");
  m.textContent = text;
  m.className = bad ? "message bad" : "message";
}

async function api(method, path, body, tok) {
  const headers = { Authorization: "Bearer " + (tok || token()) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : null;
  if (!r.ok) {
    const err = new Error((data && data.error) || "the server answered " + r.status);
    err.status = r.status;
    throw err;
  }
  return data;
}

const q = (db) => "database=" + encodeURIComponent(db);

// ---- sign-in ----

async function signIn(ev) {
  ev.preventDefault();
  const t = $("token").value.trim();
  const out = $("signin-error");
  out.hidden = true;
  try {
    await api("GET", "/api/databases", undefined, t);
  } catch (e) {
    out.textContent = e.status === 401 ? "That token was refused: check it and try again." : e.message;
    out.hidden = false;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, t);
  $("token").value = "";
  start();
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.stream) { state.stream.abort(); state.stream = null; }
  $("app").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  if (reason) {
    $("signin-error").textContent = reason;
    $("signin-error").hidden = false;
  }
}

async function start() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  try {
    const h = await fetch("/healthz").then((r) => r.json());
    if (h.max_age_seconds) state.maxAge = h.max_age_seconds;
  } catch (e) { /* the default limit stands */ }
  await refresh();
  watch();
}

// ---- data ----

async function refresh() {
  try {
    const d = await api("GET", "/api/databases");
    state.databases = d.databases;
    fillDatabaseSelects();
    renderOverview();
    await loadBackups();
  } catch (e) {
    if (e.status === 401) return signOut("Your token is no longer accepted: sign in again.");
    say(e.message, true);
  }
}

function selectedDb() {
  return $("filter-database").value || (state.databases[0] && state.databases[0].name);
}

function fillDatabaseSelects() {
  for (const id of ["filter-database", "create-database"]) {
    const s = $(id);
    const keep = s.value;
    s.replaceChildren(...state.databases.map((d) => el("option", { value: d.name }, d.name)));
    if (state.databases.some((d) => d.name === keep)) s.value = keep;
  }
}

async function loadBackups() {
  const db = selectedDb();
  if (!db) return;
  if (state.backupsDb !== db) {
    // Never leave another database's rows (and their buttons) on screen meanwhile.
    state.backups = [];
    state.backupsDb = null;
    state.renderedBackups = null;
    $("backups").tBodies[0].replaceChildren(el("tr", {}, el("td", { colspan: 10, class: "muted" }, "Loading " + db + " …")));
  }
  const list = await api("GET", "/api/backup/list?" + q(db));
  state.backups = list.backups;
  state.backupsDb = db;
  const series = [...new Set(list.backups.map((b) => b.series))].sort();
  const s = $("filter-series");
  const keep = s.value;
  s.replaceChildren(el("option", { value: "" }, "All series"),
    ...series.map((x) => el("option", { value: x }, x)));
  if (series.includes(keep)) s.value = keep;
  renderBackups();
  renderCharts();
}

// ---- overview ----

function failing(st) {
  if (!st.last_success) return "no successful backup";
  if (st.last_failure && Date.parse(st.last_failure) > Date.parse(st.last_success)) return "the last backup failed";
  if ((Date.now() - Date.parse(st.last_success)) / 1000 > state.maxAge) return "the last success is too old";
  return null;
}

function renderOverview() {
  const cards = state.databases.map((d) => {
    const st = d.statistics;
    const bad = failing(st);
    const next = (st.schedules || []).map((s) => s.next_run).filter(Boolean).sort()[0];
    // A channel is failing while its last failure is newer than its last delivery.
    const notes = Object.entries(st.notifications || {}).filter(([, n]) =>
      n.last_failure && (!n.last_success || Date.parse(n.last_failure) >= Date.parse(n.last_success)));
    const drill = st.last_drill;
    return el("article", { class: bad ? "card failing" : "card", "aria-label": "database " + d.name },
      el("h3", {}, d.name + (d.type ? " (" + d.type + ")" : "")),
      el("dl", {},
        el("dt", {}, "Backups"), el("dd", {}, st.successful_backups + " ok, " + st.failed_backups + " failed"),
        el("dt", {}, "Size"), el("dd", {}, st.total_size_mb + " MB"),
        el("dt", {}, "Last success"),
        el("dd", { class: bad ? "bad" : "ok", title: st.last_success || "" }, ago(st.last_success) + (bad ? " — " + bad : "")),
        el("dt", {}, "Last drill"),
        el("dd", { class: drill && drill.outcome === "failed" ? "bad" : "" },
          drill ? drill.outcome + ", " + ago(drill.verified_at) : "none yet"),
        ...(st.pitr ? [
          el("dt", {}, "Recoverable"),
          el("dd", { class: st.pitr.gap ? "bad" : "ok", "data-pitr": "window" },
            "any second from " + local(st.pitr.first_recoverable) + " to " + local(st.pitr.last_recoverable) +
            (st.pitr.gap ? " — " + st.pitr.gap + " is missing after the newest base backup" : "")),
          el("dt", {}, "Last recovery drill"),
          el("dd", { class: st.pitr.last_pitr_drill && st.pitr.last_pitr_drill.outcome === "failed" ? "bad" : "" },
            st.pitr.last_pitr_drill
              ? st.pitr.last_pitr_drill.outcome + ", " + ago(st.pitr.last_pitr_drill.verified_at)
              : "none yet"),
        ] : []),
        el("dt", {}, "Next run"), el("dd", { title: next || "" }, next ? local(next) : "not scheduled"),
        el("dt", {}, "Free space"), el("dd", {}, bytes(st.free_space_bytes)),
        el("dt", {}, "Notifications"),
        el("dd", { class: notes.length ? "bad" : "" }, notes.length
          ? notes.map(([n, s]) => n + " failing since " + local(s.last_failure) + " (" + (s.last_error || "") + ")").join("; ")
          : "no failures")));
  });
  $("overview").replaceChildren(...cards);
}

// ---- the table ----

function renderBackups() {
  const series = $("filter-series").value;
  const db = state.backupsDb;
  // A refresh that changes nothing leaves the rows alone: a button under the pointer or holding
  // the keyboard's focus is not swapped for a copy between press and release.
  const key = JSON.stringify([db, series, state.backups]);
  if (state.renderedBackups === key) return;
  state.renderedBackups = key;
  const focused = document.activeElement && document.activeElement.closest("#backups")
    ? document.activeElement.getAttribute("aria-label") : null;
  const rows = [];
  for (const b of state.backups.filter((b) => !series || b.series === series)) {
    const v = b.verification;
    const status = b.success ? "ok" : "FAILED";
    const n = b.backup_name;
    const actions = b.success ? [
      button("Verify", "Verify " + n, () => act("verify", n, db)),
      button("Drill", "Restore drill of " + n, () => act("drill", n, db)),
      button("Download", "Download " + n, () => download(n, db)),
      button(b.pinned ? "Unpin" : "Pin", (b.pinned ? "Unpin " : "Pin ") + n, () => act(b.pinned ? "unpin" : "pin", n, db)),
      button("Restore", "Restore " + n, () => askRestore(n, db)),
      button("Delete", "Delete " + n, () => act("delete", n, db)),
    ] : [
      button("Error", "Show the error of " + n, (ev) => toggleError(ev.target, b)),
      button("Delete", "Delete the failed attempt " + n, () => act("delete", n, db)),
    ];
    rows.push(el("tr", { "data-name": n, "data-database": db },
      el("td", {}, n, b.pinned ? el("span", { class: "pin", title: "pinned: retention keeps it" }, " (pinned)") : null),
      el("td", {}, b.series),
      el("td", { title: b.timestamp }, local(b.timestamp)),
      el("td", { class: "num" }, b.success ? bytes(b.file_size) : "—"),
      el("td", {}, b.compression),
      el("td", {}, b.encryption === "age" ? "yes" : "no"),
      el("td", { class: "num" }, b.duration.toFixed(1) + " s"),
      el("td", { class: b.success ? "ok" : "bad" }, status),
      el("td", { class: v && v.outcome === "failed" ? "bad" : "" }, v ? v.outcome + ", " + ago(v.verified_at) : "—"),
      el("td", { class: "actions" }, ...actions)));
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 10, class: "muted" }, "No backups yet.")));
  $("backups").tBodies[0].replaceChildren(...rows);
  if (focused) {
    const again = [...$("backups").querySelectorAll("button")].find((x) => x.getAttribute("aria-label") === focused);
    if (again) again.focus();
  }
}

function button(text, label, onclick) {
  return el("button", { type: "button", "aria-label": label, onclick }, text);
}

function toggleError(btn, b) {
  const row = btn.closest("tr");
  const next = row.nextElementSibling;
  if (next && next.classList.contains("detail")) { next.remove(); btn.setAttribute("aria-expanded", "false"); return; }
  row.after(el("tr", { class: "detail" }, el("td", { colspan: 10 }, b.error || "no error recorded")));
  btn.setAttribute("aria-expanded", "true");
}

// ---- actions ----

async function act(what, name, db) {
  const path = {
    verify: ["POST", "/api/backup/verify/" + encodeURIComponent(name) + "?" + q(db)],
    drill: ["POST", "/api/backup/verify/" + encodeURIComponent(name) + "?restore=true&" + q(db)],
    pin: ["POST", "/api/backup/pin/" + encodeURIComponent(name) + "?" + q(db)],
    unpin: ["POST", "/api/backup/unpin/" + encodeURIComponent(name) + "?" + q(db)],
    delete: ["DELETE", "/api/backup/delete/" + encodeURIComponent(name) + "?" + q(db)],
    restore: ["POST", "/api/backup/restore/" + encodeURIComponent(name) + "?" + q(db)],
  }[what];
  if (what === "delete" && !window.confirm("Delete the backup " + name + " of database " + db + "? This cannot be undone.")) return;
  say(what + " " + name + " …");
  try {
    const r = await api(path[0], path[1]);
    const done = {
      verify: "verified " + name + ": " + (r.checks || []).join(", "),
      drill: "restore drill of " + name + " passed: " + (r.checks || []).join(", "),
      pin: "pinned " + name,
      unpin: "unpinned " + name,
      delete: "deleted " + name,
      restore: "restored " + name + " into database " + db + " in " + (r.duration || 0).toFixed(1) + " s",
    }[what];
    say(done);
  } catch (e) {
    if (e.status === 401) return signOut("Your token is no longer accepted: sign in again.");
    say(what + " " + name + " failed: " + e.message, true);
  }
  await refresh();
}

async function download(name, db) {
  try {
    const r = await fetch("/api/backup/download/" + encodeURIComponent(name) + "?" + q(db),
      { headers: { Authorization: "Bearer " + token() } });
    if (!r.ok) {
      const data = await r.json().catch(() => null);
      throw new Error((data && data.error) || "the server answered " + r.status);
    }
    const disposition = r.headers.get("content-disposition") || "";
    const m = /filename="([^"]+)"/.exec(disposition);
    const url = URL.createObjectURL(await r.blob());
    const a = el("a", { href: url, download: m ? m[1] : name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    say("downloaded " + name);
  } catch (e) {
    say("download of " + name + " failed: " + e.message, true);
  }
}

function askRestore(name, db) {
  const d = $("restore-dialog");
  d.dataset.name = name;
  d.dataset.database = db;
  $("restore-warning").textContent = "This replaces the live database " + db +
    " with the backup " + name + ". Everything written since that backup is lost (dbkeep keeps the live one until the restored one is complete).";
  $("restore-confirm").value = "";
  $("restore-go").disabled = true;
  d.showModal();
  $("restore-confirm").focus();
}

async function create(ev) {
  ev.preventDefault();
  const db = $("create-database").value;
  const name = $("create-name").value.trim();
  const body = { compress: $("create-compress").checked };
  if (name) body.backup_name = name;
  say("backup of " + db + " started …");
  try {
    const r = await api("POST", "/api/backup/create?" + q(db), body);
    say("backup " + r.backup_name + " done: " + bytes(r.file_size) + " in " + r.duration.toFixed(1) + " s");
    $("create-name").value = "";
  } catch (e) {
    if (e.status === 401) return signOut("Your token is no longer accepted: sign in again.");
    say("backup failed: " + e.message, true);
  }
  $("filter-database").value = db;
  await refresh();
}

// ---- live progress (the server-sent event stream, read with the token) ----

function renderRunning(ops) {
  const had = state.running.length;
  state.running = ops;
  const box = $("running");
  if (!ops.length) {
    box.replaceChildren(el("p", { class: "muted" }, "Nothing is running."));
    if (had) refresh();
    return;
  }
  box.replaceChildren(...ops.map((o) => el("div", { class: "op", "data-kind": o.kind },
    el("strong", {}, o.kind + " " + (o.backup_name || "") + " (" + o.database + ")"),
    " — " + o.phase + ": ",
    bytes(o.bytes_read) + " read, " + bytes(o.bytes_written) + (o.kind === "restore" ? " loaded" : " written") +
      ", " + bytes(o.rate_bytes_per_second) + "/s, " + Math.round(o.elapsed_seconds) + " s",
    el("progress", { "aria-label": o.kind + " " + (o.backup_name || "") + " in progress" }))));
}

async function watch() {
  if (state.stream) state.stream.abort();
  const mine = new AbortController();
  state.stream = mine;
  while (token() && state.stream === mine) {
    try {
      const r = await fetch("/api/operations/events", { headers: { Authorization: "Bearer " + token() }, signal: mine.signal });
      if (r.status === 401) return signOut("Your token is no longer accepted: sign in again.");
      if (!r.ok || !r.body) throw new Error("no stream");
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const chunk = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (data) renderRunning(JSON.parse(data).operations);
        }
      }
    } catch (e) { /* reconnect below */ }
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

// ---- charts: inline SVG per series, size and duration of the successful backups ----

function chart(title, points, format) {
  const w = 320, h = 120, pad = 28;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y1 = Math.max(...ys, 1e-9);
  const px = (x) => pad + (x1 === x0 ? (w - 2 * pad) / 2 : ((x - x0) / (x1 - x0)) * (w - 2 * pad));
  const py = (y) => h - pad + -(y / y1) * (h - 2 * pad);
  const when = (t) => (x1 - x0 < 2 * 86400000 ? new Date(t).toLocaleTimeString() : new Date(t).toLocaleDateString());
  const line = points.map((p) => px(p[0]).toFixed(1) + "," + py(p[1]).toFixed(1)).join(" ");
  const s = svg("svg", { viewBox: "0 0 " + w + " " + h, role: "img", "aria-label": title + ": " + points.length + " backups, largest " + format(y1) },
    svg("title", {}, title),
    svg("line", { x1: pad, y1: h - pad, x2: w - pad, y2: h - pad, stroke: "#8c959f" }),
    svg("line", { x1: pad, y1: pad, x2: pad, y2: h - pad, stroke: "#8c959f" }),
    svg("polyline", { points: line, fill: "none", stroke: "#0550ae", "stroke-width": 2 }),
    ...points.map((p) => svg("circle", { cx: px(p[0]).toFixed(1), cy: py(p[1]).toFixed(1), r: 3, fill: "#0550ae" })),
    svg("text", { x: 2, y: pad - 6, "font-size": 10, fill: "#1b1f24" }, format(y1)),
    svg("text", { x: pad, y: h - 8, "font-size": 10, fill: "#1b1f24" }, when(x0)),
    svg("text", { x: w - pad, y: h - 8, "font-size": 10, fill: "#1b1f24", "text-anchor": "end" }, when(x1)));
  s.querySelector("title").textContent = title;
  return el("figure", { class: "chart" }, el("h3", {}, title), s);
}

function renderCharts() {
  const bySeries = new Map();
  for (const b of state.backups.filter((b) => b.success)) {
    if (!bySeries.has(b.series)) bySeries.set(b.series, []);
    bySeries.get(b.series).push(b);
  }
  const figs = [];
  for (const [series, list] of [...bySeries.entries()].sort()) {
    const pts = list.map((b) => [Date.parse(b.timestamp), b]).sort((a, b) => a[0] - b[0]);
    figs.push(chart(series + ": size", pts.map(([t, b]) => [t, b.file_size]), bytes));
    figs.push(chart(series + ": duration", pts.map(([t, b]) => [t, b.duration]), (s) => s.toFixed(1) + " s"));
  }
  $("charts").replaceChildren(...(figs.length ? figs : [el("p", { class: "muted" }, "No successful backup to chart yet.")]));
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  $("create-form").addEventListener("submit", create);
  $("filter-database").addEventListener("change", () => loadBackups().catch((e) => say(e.message, true)));
  $("filter-series").addEventListener("change", () => { renderBackups(); });
  $("restore-confirm").addEventListener("input", () => {
    $("restore-go").disabled = $("restore-confirm").value !== $("restore-dialog").dataset.name;
  });
  $("restore-cancel").addEventListener("click", () => $("restore-dialog").close());
  $("restore-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("restore-dialog").dataset.name;
    if ($("restore-confirm").value !== name) return;
    $("restore-dialog").close();
    act("restore", name, $("restore-dialog").dataset.database);
  });
  if (token()) start();
});

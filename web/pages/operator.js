// #/operator (operators only): the health banner, the first-run checklist until the first
// protected call, instance health, tenants (create, drill down, per-tenant kill switch), the
// instance upstream, a live incident stream across tenants (filtered by severity, status
// and tenant, counted by severity, with pause and resume), backups, jobs and dead letters, and
// whether a newer signed release is out (checked by the server, at most hourly; a failed
// check is a quiet note, not an error).
import * as api from "../api.js";
import { html, render, icon, compact, money, pct, bytes, seconds, timeAgo, absTime, severityBadge, statusBadge, loadingState, errorState, emptyState, toast, num, field, validate, validators, formValues, showApiError, busy } from "../ui.js";
import { reasonDialog, confirmDialog } from "../components/dialog.js";
import { mountUpstream } from "../components/upstream.js";
import { renderFirstRun } from "../components/first-run.js";
import { renderBanner } from "../components/health-banner.js";

const SEVERITIES = ["critical", "high", "medium", "low"];
const STATUSES = [["", "Any status"], ["open", "Open"], ["acknowledged", "Acknowledged"], ["resolved", "Resolved"]];

export default {
  name: "operator",
  title: "Operator",
  nav: "operator",
  async mount(root, ctx) {
    let health = null, tenants = null, incidents = null, counts = null, backups = null, jobs = null, update = null, setup = null;
    // The incident stream's filters; while paused, the incidents that came in meanwhile.
    const stream = { severity: "", status: "", tenant: "", paused: false, waiting: new Map() };
    let streamSeq = 0;
    let checking = false;
    const errors = {};
    const verified = new Map(); // file -> {ok, error, counts}: kept across redraws
    let backupsSig = null;
    let pollTimer = null;

    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Operator</h1>
        <p class="sub">This instance: its health and updates, every tenant, backups and background jobs.</p></div>
        <div class="actions"><a class="btn btn-sm" href="#/enforcement" data-testid="open-enforcement">${icon("enforcement", 16)} Enforcement log</a></div></div>
      <div id="op-banner"></div>
      <div id="op-setup"></div>
      <div id="op-health" data-testid="operator-health"></div>
      <section class="card" id="tenants"><div class="card-head"><h2>Tenants</h2><span class="hint">today</span></div>
        <div class="card-body"><form novalidate id="tenant-form" class="inline-form">
          ${field({ name: "name", label: "New tenant", required: true, testid: "tenant-name", placeholder: "Acme Inc.", autocomplete: "off", hint: "A customer or team with its own keys, calls, budgets and incidents." })}
          <button type="submit" class="btn btn-primary filter-btn" data-testid="tenant-create">${icon("plus", 16)} Create tenant</button>
        </form></div>
        <div class="card-body flush" id="op-tenants"></div></section>
      <div id="op-upstream"></div>
      <section class="card" data-testid="incident-stream-card"><div class="card-head"><h2>Incident stream</h2><span class="hint">all tenants, newest first, live</span>
          <button type="button" class="btn btn-sm" data-action="stream-pause" data-testid="stream-pause" aria-pressed="false">Pause</button></div>
        <div class="card-body stream-tools"><div class="filters">
          <label>Severity <select class="input" data-stream="severity" data-testid="stream-severity"><option value="">Any</option>${SEVERITIES.map((v) => html`<option value="${v}">${v.charAt(0).toUpperCase() + v.slice(1)}</option>`)}</select></label>
          <label>Status <select class="input" data-stream="status" data-testid="stream-status">${STATUSES.map(([v, l]) => html`<option value="${v}">${l}</option>`)}</select></label>
          <label>Tenant <select class="input" data-stream="tenant" data-testid="stream-tenant" id="op-stream-tenant"><option value="">All tenants</option></select></label></div>
          <div class="sev-counts" id="op-sev-counts" data-testid="severity-counts"></div>
          <div id="op-stream-waiting" aria-live="polite"></div></div>
        <div class="card-body flush scroll-box" id="op-incidents"></div></section>
      <div class="grid grid-2">
        <section class="card"><div class="card-head"><h2>Backups</h2><button type="button" class="btn btn-sm btn-primary" data-action="backup" data-testid="backup-now">Back up now</button></div><div class="card-body flush" id="op-backups"></div></section>
        <section class="card"><div class="card-head"><h2>Jobs</h2></div><div class="card-body flush" id="op-jobs"></div></section>
      </div>
      <section class="card"><div class="card-head"><h2>Updates</h2><button type="button" class="btn btn-sm" data-action="update-check" data-testid="update-check">Check now</button></div><div class="card-body" id="op-update" aria-live="polite"></div></section>
      <section class="card" data-testid="managed-service"><div class="card-head"><h2>Managed service</h2><span class="hint">optional — this instance needs nothing from outside</span></div><div class="card-body" id="op-managed"><p class="hint">Loading…</p></div></section>`);
    const $ = (id) => root.querySelector(id);

    const streamParams = () => ({ severity: stream.severity, status: stream.status, tenant: stream.tenant });
    const get = async (key, path, params = null) => {
      try { const r = await api.get(path, params, { signal: ctx.signal }); delete errors[key]; return r; } catch (err) {
        if (err?.name === "AbortError") throw err;
        errors[key] = err; return null;
      }
    };

    function drawHealth() {
      renderBanner($("#op-banner"), health, errors.health);
      const box = $("#op-health");
      if (errors.health) { render(box, html`<div class="card">${errorState(errors.health, { testid: "health-error" })}</div>`); return; }
      if (!health) { render(box, html`<div class="kpis"><span class="skeleton sk-kpi"></span><span class="skeleton sk-kpi"></span><span class="skeleton sk-kpi"></span><span class="skeleton sk-kpi"></span></div>`); return; }
      const h = health;
      const errBad = (h.error_rate_5m || 0) >= 0.05;
      const dead = h.queue?.dead || 0;
      const lb = h.last_backup;
      const next = h.backup_schedule?.next_at;
      // Red only when a backup is overdue: the last one is older than a day and a half, or
      // none was taken although the server has run that long. A fresh instance waits for
      // its first scheduled backup, which is said plainly.
      const dayAndHalf = 36 * 3600 * 1000;
      const backupOld = lb ? Date.now() - lb.at > dayAndHalf : (h.uptime_s || 0) * 1000 > dayAndHalf || !next;
      const backupValue = lb ? timeAgo(lb.at) : "None yet";
      const backupNote = lb ? bytes(lb.bytes) : next ? `first scheduled ${absTime(next)}` : "automatic backups are off";
      render(box, html`<div class="kpis kpis-wide">
        <div class="kpi"><div class="kpi-label">Calls, last minute</div><div class="kpi-value" data-testid="health-calls">${compact(h.calls_last_minute ?? h.calls_per_minute)}</div><div class="kpi-note">${h.calls_5m !== undefined ? `${compact(h.calls_5m)} in 5 min · ` : ""}up ${seconds(h.uptime_s)}</div></div>
        <div class="kpi ${errBad ? "bad" : ""}"><div class="kpi-label">Error rate, 5 min</div><div class="kpi-value">${pct(h.error_rate_5m)}</div><div class="kpi-note">provider failures</div></div>
        <div class="kpi"><div class="kpi-label">Latency p95</div><div class="kpi-value">${h.latency_p95_ms === null || h.latency_p95_ms === undefined ? "—" : `${num(h.latency_p95_ms)} ms`}</div><div class="kpi-note">end to end</div></div>
        <div class="kpi ${dead ? "bad" : ""}"><div class="kpi-label">Job queue</div><div class="kpi-value">${compact(h.queue?.pending ?? 0)}</div><div class="kpi-note">pending · ${compact(dead)} dead</div></div>
        <div class="kpi"><div class="kpi-label">Disk</div><div class="kpi-value">${bytes(h.disk?.data_bytes)}</div><div class="kpi-note">${h.disk?.free_bytes !== undefined && h.disk?.free_bytes !== null ? `${bytes(h.disk.free_bytes)} free` : h.disk?.used_percent !== undefined && h.disk?.used_percent !== null ? `disk ${pct(h.disk.used_percent / 100)} full` : "data directory"}</div></div>
        <div class="kpi ${backupOld ? "bad" : ""}" data-testid="health-backup" data-overdue="${String(backupOld)}"><div class="kpi-label">Last backup</div><div class="kpi-value">${backupValue}</div><div class="kpi-note">${backupNote}</div></div>
        <div class="kpi"><div class="kpi-label">Version</div><div class="kpi-value mono" data-testid="health-version">${h.version || h.update?.current || "—"}</div><div class="kpi-note">${h.backend || ""}</div><div class="kpi-note">${h.update?.channel ? `${h.update.channel} channel` : ""}</div></div>
      </div>`);
    }

    function drawUpdate() {
      const box = $("#op-update");
      const btn = root.querySelector('[data-action="update-check"]');
      btn.disabled = checking;
      btn.textContent = checking ? "Checking…" : "Check now";
      if (errors.update) {
        render(box, html`<p class="quiet-note" data-testid="update-state" data-state="failed">Could not read the update state (${errors.update.message}). <button type="button" class="linkbtn" data-action="retry" data-testid="update-error">Try again</button></p>`);
        return;
      }
      if (!update) {
        render(box, html`<div data-testid="update-state" data-state="loading" aria-busy="true"><span class="spinner" aria-hidden="true"></span>&nbsp; Checking for a newer release…</div>`);
        return;
      }
      const u = update;
      const when = html`<span class="hint">checked ${timeAgo(u.checked_at)}</span>`;
      const rollback = u.rollback_available
        ? html`<p class="cell-sub">The previous binary is kept: <code>agv-server update --rollback</code> goes back to it.</p>` : "";
      if (u.error) {
        // Often just a server without internet access: a note, not an alarm.
        render(box, html`<div class="quiet-note" role="status" data-testid="update-state" data-state="error">
            <p>Running <span class="mono">${u.current}</span>. Could not check for a newer release: the release server did not answer · ${when}</p>
            <details><summary>Why, and what to do</summary><p data-testid="update-error-detail">${u.error}</p></details></div>${rollback}`);
      } else if (u.available) {
        render(box, html`<div class="notice info" role="status" data-testid="update-state" data-state="available"><span>Update available: <span class="mono">${u.current}</span> → <span class="mono" data-testid="update-latest">${u.latest}</span></span></div>
          <p>${u.in_container ? "This server runs in a container:" : "On the server, run:"} <code data-testid="update-how">${u.how_to}</code></p>
          <p class="cell-sub">The signature of the release was verified. ${u.in_container ? "" : "The update backs the instance up first; restart the service afterwards."} ${when}</p>${rollback}`);
      } else {
        render(box, html`<div class="notice ok" role="status" data-testid="update-state" data-state="current"><span>Up to date: <span class="mono">${u.current}</span>${u.latest && u.latest !== u.current ? html` (the latest release is <span class="mono">${u.latest}</span>)` : ""}</span></div>
          <p class="cell-sub">${when}</p>${rollback}`);
      }
    }

    async function loadUpdate(force) {
      checking = true; drawUpdate();
      try {
        update = force ? await api.post("/api/operator/update/check", {}, { signal: ctx.signal })
          : await api.get("/api/operator/update", null, { signal: ctx.signal });
        delete errors.update;
      } catch (err) {
        if (err?.name === "AbortError") return;
        if (force) toast(`The update check failed: ${err.message}`, "bad");
        else errors.update = err;
      } finally { checking = false; }
      if (!ctx.alive()) return;
      drawUpdate();
    }

    function drawTenantChoice() {
      const sel = $("#op-stream-tenant");
      render(sel, html`<option value="">All tenants</option>${(tenants || []).map((t) => html`<option value="${t.id}" ${t.id === stream.tenant ? "selected" : ""}>${t.name}</option>`)}`);
    }

    function drawTenants() {
      drawTenantChoice();
      const box = $("#op-tenants");
      if (errors.tenants) { render(box, errorState(errors.tenants, { testid: "tenants-error" })); return; }
      if (!tenants) { render(box, loadingState("table")); return; }
      if (!tenants.length) { render(box, emptyState({ title: "No tenants yet", text: "Create the first one above, then give it a proxy key from its API keys page, or invite its owner from Settings.", testid: "tenants-empty" })); return; }
      render(box, html`<div class="table-wrap"><table class="table" data-testid="tenants-table"><thead><tr><th>Tenant</th><th class="num">Calls</th><th class="num">Blocked</th><th class="num">Spend</th><th class="num">Open</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>
        ${tenants.map((t) => html`<tr data-testid="tenant-row" data-tenant-id="${t.id}" data-frozen="${String(!!t.frozen)}">
          <td><button type="button" class="linkbtn" data-action="view" data-testid="tenant-view">${t.name}</button>${t.frozen ? html` <span class="badge bad">Stopped</span>` : ""}<div class="cell-sub mono">${t.id}</div></td>
          <td class="num">${compact(t.calls_today)}</td><td class="num">${compact(t.blocked_today)}</td><td class="num">${money(t.spend_today_usd)}</td>
          <td class="num">${t.open_incidents ? html`<span class="badge bad plain">${compact(t.open_incidents)}</span>` : "0"}</td>
          <td><div class="row-actions">${t.frozen
            ? html`<button type="button" class="btn btn-sm" data-action="unfreeze" data-testid="tenant-unfreeze">Resume</button>`
            : html`<button type="button" class="btn btn-sm btn-danger-soft" data-action="freeze" data-testid="tenant-freeze">Stop</button>`}
            <button type="button" class="btn btn-sm" data-action="view">Open →</button></div></td></tr>`)}
        </tbody></table></div>`);
    }

    // The incidents a live event may add: those the filters let through.
    const passes = (i) => (!stream.severity || i.severity === stream.severity) && (!stream.status || i.status === stream.status) && (!stream.tenant || i.tenant_id === stream.tenant);

    function drawCounts() {
      const box = $("#op-sev-counts");
      if (!counts) { render(box, ""); return; }
      render(box, html`${SEVERITIES.map((v) => html`<button type="button" class="sev-count ${v === stream.severity ? "on" : ""}" data-sev="${v}" data-testid="severity-count" data-severity="${v}" aria-pressed="${String(v === stream.severity)}" title="${v === stream.severity ? "Show every severity" : `Show only ${v}`}">${severityBadge(v)} <span class="sev-n">${compact(counts[v] ?? 0)}</span></button>`)}
        <span class="hint">${stream.status ? `${stream.status} ` : ""}incidents${stream.tenant ? " of this tenant" : ""}, by severity</span>`);
    }

    function drawWaiting() {
      const btn = root.querySelector('[data-action="stream-pause"]');
      btn.textContent = stream.paused ? "Resume" : "Pause";
      btn.setAttribute("aria-pressed", String(stream.paused));
      const n = stream.waiting.size;
      render($("#op-stream-waiting"), stream.paused
        ? html`<div class="notice info stream-paused" data-testid="stream-paused">${n ? html`<button type="button" class="linkbtn" data-action="stream-pause" data-testid="stream-new">${n} new</button> <span>incident${n === 1 ? "" : "s"} since you paused — resume to show ${n === 1 ? "it" : "them"}.</span>` : "Paused: new incidents are counted here and shown when you resume."}</div>`
        : "");
    }

    function drawIncidents(fresh = new Set()) {
      drawCounts();
      const box = $("#op-incidents");
      if (errors.incidents) { render(box, errorState(errors.incidents, { testid: "stream-error" })); return; }
      if (!incidents) { render(box, loadingState("table")); return; }
      const filtered = stream.severity || stream.status || stream.tenant;
      if (!incidents.length) {
        render(box, filtered
          ? emptyState({ title: "No incidents match", text: "Nothing with these filters. Widen them to see more.", testid: "stream-empty", action: html`<button type="button" class="btn btn-sm" data-action="stream-clear" data-testid="stream-clear">Clear filters</button>` })
          : emptyState({ title: "Quiet", text: "No incidents on any tenant. New ones appear here as they open.", iconName: "shield", testid: "stream-empty" }));
        return;
      }
      render(box, html`<div class="table-wrap"><table class="table stream-table" data-testid="incident-stream"><tbody>
        ${incidents.slice(0, 30).map((i) => html`<tr class="${fresh.has(i.id) ? "flash" : ""}" data-testid="incident-row" data-incident-id="${i.id}" data-tenant-id="${i.tenant_id}" data-severity="${i.severity}" data-status="${i.status}">
          <td class="c-sev">${severityBadge(i.severity)}</td>
          <td class="c-title"><button type="button" class="linkbtn" data-action="open-incident">${i.title}</button><div class="cell-sub">${i.tenant_name || i.tenant_id}</div></td>
          <td class="c-status">${statusBadge(i.status)}</td><td class="num c-age">${timeAgo(i.updated_at ?? i.created_at)}</td></tr>`)}
        </tbody></table></div>`);
    }

    function drawBackups() {
      const box = $("#op-backups");
      const btn = root.querySelector('[data-action="backup"]');
      if (errors.backups) { render(box, errorState(errors.backups, { testid: "backups-error" })); return; }
      if (!backups) { render(box, loadingState("table")); return; }
      // Polling while a backup runs must not redraw rows under the pointer for nothing.
      const sig = JSON.stringify([backups, [...verified.entries()]]);
      if (sig === backupsSig && box.firstChild) return;
      backupsSig = sig;
      btn.disabled = !!backups.running;
      btn.textContent = backups.running ? "Backing up…" : "Back up now";
      const list = backups.data || [];
      render(box, html`${backups.running ? html`<div class="notice info card-body" role="status"><span class="spinner" aria-hidden="true"></span>&nbsp; A backup is running.</div>` : ""}
        ${backups.last_error ? html`<div class="notice bad" role="alert">Last backup failed: ${backups.last_error}</div>` : ""}
        ${list.length ? html`<div class="table-wrap"><table class="table" data-testid="backups-table"><thead><tr><th>File</th><th>Taken</th><th class="num">Size</th><th><span class="sr-only">Verify</span></th></tr></thead><tbody>
          ${list.map((b) => html`<tr data-testid="backup-row" data-file="${b.file}"><td class="mono">${b.file}</td><td>${timeAgo(b.at)}</td><td class="num">${bytes(b.bytes)}</td>
            <td><div class="row-actions"><span class="verify-result">${verifyBadge(verified.get(b.file))}</span><button type="button" class="btn btn-sm" data-action="verify" data-testid="backup-verify">Verify</button></div></td></tr>`)}
          </tbody></table></div>` : emptyState({ title: "No backups yet", text: "Back up now, or wait for the scheduled backup (daily by default)." })}`);
    }

    function verifyBadge(r) {
      if (!r) return "";
      return r.ok ? html`<span class="badge ok" data-testid="verify-ok" title="${r.counts ? JSON.stringify(r.counts) : ""}">Verified</span>`
        : html`<span class="badge bad" data-testid="verify-failed" title="${r.error || ""}">Failed</span>`;
    }

    function drawJobs() {
      const box = $("#op-jobs");
      if (errors.jobs) { render(box, errorState(errors.jobs, { testid: "jobs-error" })); return; }
      if (!jobs) { render(box, loadingState("table")); return; }
      const stats = Object.entries(jobs.stats || {});
      const dead = jobs.dead || [];
      render(box, html`${stats.length ? html`<div class="card-body"><dl class="dl">${stats.map(([k, v]) => html`<dt>${k.replace(/_/g, " ")}</dt><dd>${typeof v === "object" && v !== null ? JSON.stringify(v) : typeof v === "number" ? num(v) : String(v)}</dd>`)}</dl></div>` : ""}
        ${dead.length ? html`<div class="table-wrap"><table class="table" data-testid="dead-jobs"><thead><tr><th>Dead letter</th><th class="num">Tries</th><th>Failed</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>
          ${dead.map((j) => html`<tr data-testid="dead-row" data-job-id="${j.id}"><td><span class="cell-main">${j.kind}</span><div class="cell-sub">${j.error || ""}</div><div class="cell-sub mono">${j.id}</div></td>
            <td class="num">${num(j.attempts)}</td><td>${timeAgo(j.failed_at)}</td>
            <td><div class="row-actions"><button type="button" class="btn btn-sm" data-action="retry-job" data-testid="job-retry">Retry</button><button type="button" class="btn btn-sm btn-ghost" data-action="discard-job" data-testid="job-discard">Discard</button></div></td></tr>`)}
          </tbody></table></div>` : emptyState({ title: "No dead letters", text: "Jobs that fail every retry (alert deliveries, exports) land here for a retry or discard." })}`);
    }

    async function loadSetup() {
      const box = $("#op-setup");
      try {
        setup = await api.get("/api/operator/setup", null, { signal: ctx.signal });
      } catch (err) {
        if (err?.name === "AbortError") return;
        setup = err instanceof Error ? err : new Error(String(err));
      }
      if (ctx.alive()) { renderFirstRun(box, setup); drawManaged(); }
    }

    // What a managed service adds, and the move there (or to a bigger host): one backup,
    // one restore. The commands carry this server's own data directory.
    function drawManaged() {
      const prefix = setup && !(setup instanceof Error) && setup.cli?.prefix ? setup.cli.prefix : "agv-server";
      render($("#op-managed"), html`<p>A managed agv-server runs this same binary on an operated Postgres. What it adds is operations, not features: point-in-time recovery, off-site backups, upgrades and someone on call. Nothing here phones home; moving is a backup here and a restore there, and everything comes along — calls, incidents, keys (your clients keep theirs) and this instance's signing key, so certificates issued here still verify.</p>
        <pre><code>${prefix} backup --passphrase-file pass.txt</code></pre>
        <p class="hint">The passphrase seals the instance's key files into the backup. On the new host, into an empty database:</p>
        <pre><code>agv-server --data ./data --database-url postgres://… restore agv-backup-….tar --passphrase-file pass.txt</code></pre>
        <p class="hint">README, “Moving to another host, or to a managed service”, has the details.</p>`);
    }

    const tenantForm = root.querySelector("#tenant-form");
    tenantForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (!validate(tenantForm, { name: [validators.required] })) return;
      const { name } = formValues(tenantForm);
      try {
        const r = await busy(tenantForm.querySelector('[type="submit"]'), () => api.post("/api/operator/tenants", { name: name.trim() }));
        tenantForm.reset();
        toast(`Tenant “${r.tenant.name}” created`, "ok");
        await Promise.all([reload("tenants"), loadSetup()]);
      } catch (err) {
        if (err?.name === "AbortError") return;
        showApiError(tenantForm, err);
      }
    });

    async function loadAll({ ready = true } = {}) {
      ctx.loading();
      drawHealth(); drawTenants(); drawIncidents(); drawBackups(); drawJobs();
      const [h, t, i, b, j] = await Promise.all([
        get("health", "/api/operator/health"), get("tenants", "/api/operator/tenants"), get("incidents", "/api/operator/incidents", streamParams()),
        get("backups", "/api/operator/backups"), get("jobs", "/api/operator/jobs"),
      ]);
      if (!ctx.alive()) return;
      health = h; tenants = t?.data ?? null; incidents = i?.data ?? null; counts = i?.counts ?? null; backups = b; jobs = j;
      drawHealth(); drawTenants(); drawIncidents(); drawBackups(); drawJobs();
      if (backups?.running) pollBackups();
      if (ready) ctx.ready();
    }
    async function reload(key, fresh = new Set()) {
      const map = { health: "/api/operator/health", tenants: "/api/operator/tenants", incidents: "/api/operator/incidents", backups: "/api/operator/backups", jobs: "/api/operator/jobs" };
      // Only the answer to the latest filters of the stream counts.
      const seq = key === "incidents" ? ++streamSeq : 0;
      const r = await get(key, map[key], key === "incidents" ? streamParams() : null);
      if (!ctx.alive() || (key === "incidents" && seq !== streamSeq)) return;
      if (key === "health") { health = r; drawHealth(); }
      if (key === "tenants") { tenants = r?.data ?? null; drawTenants(); }
      if (key === "incidents") { incidents = r?.data ?? null; counts = r?.counts ?? null; drawIncidents(fresh); }
      if (key === "backups") { backups = r; drawBackups(); }
      if (key === "jobs") { jobs = r; drawJobs(); }
    }
    function pollBackups() {
      clearTimeout(pollTimer);
      pollTimer = setTimeout(async () => {
        await reload("backups").catch(() => {});
        if (!ctx.alive()) return;
        if (backups?.running) pollBackups();
        else { reload("health").catch(() => {}); if (!backups?.last_error) toast("Backup finished", "ok"); }
      }, 2000);
    }

    function setStreamFilter(next) {
      Object.assign(stream, next);
      for (const sel of root.querySelectorAll("[data-stream]")) sel.value = stream[sel.dataset.stream];
      stream.waiting.clear();
      drawWaiting();
      incidents = null; drawIncidents();
      reload("incidents").catch(() => {});
    }
    root.addEventListener("change", (e) => {
      const sel = e.target.closest("[data-stream]");
      if (sel) setStreamFilter({ [sel.dataset.stream]: sel.value });
    });

    root.addEventListener("click", async (e) => {
      const chip = e.target.closest("[data-sev]");
      if (chip) { setStreamFilter({ severity: chip.dataset.sev === stream.severity ? "" : chip.dataset.sev }); return; }
      const a = e.target.closest("[data-action]");
      if (!a) return;
      const act = a.dataset.action;
      if (a.closest("#op-upstream")) return; // the upstream card handles its own buttons
      if (act === "first-run-tenant" || act === "first-run-upstream") {
        const input = root.querySelector(act === "first-run-tenant" ? "[data-testid='tenant-name']" : "[data-testid='upstream-url']");
        input?.scrollIntoView({ block: "center" });
        input?.focus({ preventScroll: true });
        return;
      }
      if ((act === "first-run-keys" || act === "first-run-connect") && setup?.tenant) {
        return ctx.viewTenant(setup.tenant, act === "first-run-keys" ? "#/keys" : "#/overview");
      }
      if (act === "retry") {
        const sec = a.closest("[data-testid]")?.dataset.testid || "";
        const key = sec.replace("-error", "").replace("stream", "incidents");
        if (key === "update") { delete errors.update; update = null; return loadUpdate(false); }
        return key && ["health", "tenants", "incidents", "backups", "jobs"].includes(key) ? reload(key) : loadAll();
      }
      if (act === "update-check") { if (!checking) await loadUpdate(true); return; }
      if (act === "stream-pause") {
        stream.paused = !stream.paused;
        const shown = new Set(stream.waiting.keys());
        stream.waiting.clear();
        drawWaiting();
        if (!stream.paused) reload("incidents", shown).catch(() => {});
        return;
      }
      if (act === "banner-retry") { delete errors.health; health = null; drawHealth(); reload("health").catch(() => {}); return; }
      if (act === "stream-clear") { setStreamFilter({ severity: "", status: "", tenant: "" }); return; }
      if (act === "backup") {
        a.disabled = true;
        try { await api.post("/api/operator/backups", {}); toast("Backup started", "ok"); backups = { ...(backups || {}), running: true }; drawBackups(); pollBackups(); }
        catch (err) { a.disabled = false; if (err?.name !== "AbortError") toast(err.status === 409 ? "A backup is already running." : `Backup failed to start: ${err.message}`, "bad"); }
        return;
      }
      if (act === "verify") {
        const row = a.closest("[data-file]");
        const out = row.querySelector(".verify-result");
        a.disabled = true;
        render(out, html`<span class="spinner" aria-label="Verifying"></span>`);
        try {
          const r = await api.post("/api/operator/backups/verify", { file: row.dataset.file });
          verified.set(row.dataset.file, r);
          render(out, verifyBadge(r));
          if (!r.ok) toast(`Backup ${row.dataset.file} does not verify: ${r.error || "unknown error"}`, "bad");
        } catch (err) { render(out, html``); if (err?.name !== "AbortError") toast(err.message, "bad"); }
        finally { a.disabled = false; }
        return;
      }
      if (act === "retry-job" || act === "discard-job") {
        const id = a.closest("[data-job-id]").dataset.jobId;
        const go = act === "retry-job"
          ? () => api.post(`/api/operator/jobs/${encodeURIComponent(id)}/retry`, {})
          : () => api.del(`/api/operator/jobs/${encodeURIComponent(id)}`);
        if (act === "discard-job") {
          const ok = await confirmDialog({ title: "Discard this job?", text: "It will not run again. This cannot be undone.", confirmLabel: "Discard", danger: true, action: go });
          if (!ok) return;
        } else {
          a.disabled = true;
          try { await go(); } catch (err) { a.disabled = false; if (err?.name !== "AbortError") toast(err.message, "bad"); return; }
        }
        toast(act === "retry-job" ? "Job queued again" : "Job discarded", "ok");
        reload("jobs").catch(() => {});
        return;
      }
      if (act === "open-incident") {
        const row = a.closest("[data-incident-id]");
        const t = (tenants || []).find((x) => x.id === row.dataset.tenantId) || { id: row.dataset.tenantId, name: null };
        ctx.viewTenant(t, `#/incidents/${encodeURIComponent(row.dataset.incidentId)}`);
        return;
      }
      const trow = a.closest("[data-tenant-id]");
      const t = (tenants || []).find((x) => x.id === trow?.dataset.tenantId);
      if (!t) return;
      if (act === "view") return ctx.viewTenant(t);
      if (act === "freeze") {
        const ok = await reasonDialog({ title: `Stop all traffic of ${t.name}?`, text: "Every call of this tenant is refused (HTTP 423) until traffic is resumed. Its admins see why.", confirmLabel: "Stop traffic",
          action: (reason) => api.post("/api/killswitch/tenant", { reason }, { tenant: t.id }) });
        if (ok) { toast(`${t.name}: traffic stopped`, "ok"); reload("tenants").catch(() => {}); }
      } else if (act === "unfreeze") {
        const ok = await reasonDialog({ title: `Resume traffic of ${t.name}?`, text: "Calls reach the provider again.", confirmLabel: "Resume traffic", required: false, danger: false,
          action: (reason) => api.del("/api/killswitch/tenant", reason ? { reason } : {}, { tenant: t.id }) });
        if (ok) { toast(`${t.name}: traffic resumed`, "ok"); reload("tenants").catch(() => {}); }
      }
    });

    ctx.on("health", (h) => { if (h && typeof h === "object") { health = { ...(health || {}), ...h }; delete errors.health; drawHealth(); } });
    let incTimer = null;
    ctx.on("incident", (ev) => {
      if (!incidents || !ev?.id) return;
      if (stream.paused) {
        if (passes(ev)) { stream.waiting.set(ev.id, ev); drawWaiting(); }
        return;
      }
      const idx = incidents.findIndex((i) => i.id === ev.id);
      const name = (tenants || []).find((t) => t.id === ev.tenant_id)?.name;
      const merged = { ...(idx >= 0 ? incidents[idx] : {}), ...ev, tenant_name: name || (idx >= 0 ? incidents[idx].tenant_name : null), updated_at: Date.now() };
      if (idx >= 0) incidents.splice(idx, 1);
      if (passes(merged)) incidents.unshift(merged);
      drawIncidents(new Set([ev.id]));
      // The counts (and the tenants' open incidents) from the server, once the burst is over.
      clearTimeout(incTimer);
      incTimer = setTimeout(() => { reload("tenants").catch(() => {}); if (!stream.paused) reload("incidents", new Set([ev.id])).catch(() => {}); }, 1500);
    });

    // The first check may wait for the release server (up to 10 s): the page does not.
    loadUpdate(false);
    const upstreamDone = mountUpstream($("#op-upstream"), ctx, { onChange: () => loadSetup() });
    await Promise.all([loadAll({ ready: false }), loadSetup(), upstreamDone]);
    if (ctx.alive()) ctx.ready();
    return () => { clearTimeout(pollTimer); clearTimeout(incTimer); };
  },
};

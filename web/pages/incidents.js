// #/incidents?status=…&severity=…&q=…: the incident list (severity, status, age) with
// filters, and a search box over the calls (`q` → GET /api/calls). Live: `incident` events
// reload the list and highlight what changed.
import * as api from "../api.js";
import { html, render, compact, nanos, moneyDigits, timeAgo, severityBadge, statusBadge, loadingState, emptyState, errorState, cap } from "../ui.js";
import { searchForm, bindChips, callResults } from "../components/call-search.js";

const STATUSES = [["", "All"], ["open", "Open"], ["acknowledged", "Acknowledged"], ["resolved", "Resolved"]];
const SEVERITIES = ["", "critical", "high", "medium", "low"];

export function incidentRows(list, fresh = new Set()) {
  const digits = moneyDigits(list.map((i) => (i.cost ?? 0) / 1e9));
  return list.map((i) => {
    const href = `#/incidents/${encodeURIComponent(i.id)}`;
    return html`<tr class="clickable ${fresh.has(i.id) ? "flash" : ""} ${i.status === "resolved" ? "dim" : ""}" data-testid="incident-row" data-incident-id="${i.id}" data-status="${i.status}" data-href="${href}">
      <td>${severityBadge(i.severity)}</td>
      <td><a class="rowlink" href="${href}">${i.title}</a><div class="cell-sub">${i.subject}${i.tenant_name ? html` · ${i.tenant_name}` : ""}</div></td>
      <td>${statusBadge(i.status)}${i.assignee ? html`<div class="cell-sub" title="${i.assignee}">→ ${i.assignee_email || i.assignee}</div>` : ""}</td>
      <td class="num">${compact(i.call_count)}</td>
      <td class="num">${nanos(i.cost, { digits })}</td>
      <td>${timeAgo(i.first_signal_at ?? i.created_at)}<div class="cell-sub nowrap">last ${timeAgo(i.last_signal_at ?? i.updated_at)}</div></td></tr>`;
  });
}
export function incidentTable(list, fresh) {
  return html`<div class="table-wrap"><table class="table" data-testid="incidents-table"><thead><tr><th>Severity</th><th>Incident</th><th>Status</th><th class="num">Calls</th><th class="num">Cost</th><th>Age</th></tr></thead>
    <tbody>${incidentRows(list, fresh)}</tbody></table></div>`;
}

export default {
  name: "incidents",
  title: "Incidents",
  nav: "incidents",
  async mount(root, ctx) {
    const status = ctx.query.get("status") || "";
    const severity = ctx.query.get("severity") || "";
    const q = (ctx.query.get("q") || "").trim();
    let list = [], cursor = null;

    const hashFor = (over) => {
      const p = new URLSearchParams({ status, severity, q, ...over });
      for (const [k, v] of [...p.entries()]) if (!v) p.delete(k);
      const s = p.toString();
      return `#/incidents${s ? `?${s}` : ""}`;
    };

    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Incidents</h1>
        <p class="sub">Problems grouped from guardrail trips, provider failures and cost spikes. Open one to see its timeline, act on it and export the evidence.</p></div></div>
      <section class="card"><div class="card-body">${searchForm(q, { label: "Search calls" })}</div></section>
      ${q ? html`<section class="card" data-testid="call-results"><div class="card-head"><h2>Matching calls</h2><a class="btn btn-sm" href="${hashFor({ q: "" })}">Clear search</a></div><div class="card-body flush" id="inc-calls"></div></section>` : ""}
      <section class="card">
        <div class="card-head"><h2>${q ? "Incidents" : "All incidents"}</h2>
          <div class="filters">
            <div class="segmented" role="group" aria-label="Status">${STATUSES.map(([v, l]) => html`<button type="button" data-status="${v}" aria-pressed="${status === v}" data-testid="filter-status-${v || "all"}">${l}</button>`)}</div>
            <label>Severity <select class="input" id="sev-filter" data-testid="filter-severity">${SEVERITIES.map((s) => html`<option value="${s}" ${s === severity ? "selected" : ""}>${s ? cap(s) : "Any"}</option>`)}</select></label>
          </div></div>
        <div class="card-body flush" id="inc-list"></div></section>`);

    const form = root.querySelector("form");
    bindChips(form);
    form.addEventListener("submit", (e) => { e.preventDefault(); ctx.navigate(hashFor({ q: form.elements.q.value.trim() })); });
    root.querySelector("#sev-filter").addEventListener("change", (e) => ctx.navigate(hashFor({ severity: e.target.value })));
    const box = root.querySelector("#inc-list");

    async function load(fresh) {
      if (!fresh) render(box, loadingState("table"));
      try {
        const r = await api.get("/api/incidents", { status: status || undefined, severity: severity || undefined, limit: 50 }, { signal: ctx.signal });
        if (!ctx.alive()) return;
        const before = new Set(list.map((i) => i.id + i.status + i.updated_at));
        list = r.data || [];
        cursor = r.next_cursor || null;
        draw(fresh ? new Set(list.filter((i) => !before.has(i.id + i.status + i.updated_at)).map((i) => i.id)) : new Set());
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        if (!fresh) render(box, errorState(err));
      }
    }
    function draw(fresh) {
      if (!list.length) {
        const filtered = status || severity;
        render(box, emptyState({
          title: filtered ? "No incidents match these filters" : "No incidents yet",
          text: filtered ? "Clear the filters to see every incident." : "That is good news. Incidents open when a guardrail blocks calls, the provider fails, or spending spikes — and your alert routes hear about it.",
          action: filtered ? html`<a class="btn btn-sm" href="${hashFor({ status: "", severity: "" })}">Clear filters</a>` : html`<a class="btn btn-sm" href="#/alerts">Set up alerts</a>`,
          iconName: "shield",
        }));
        return;
      }
      render(box, html`${incidentTable(list, fresh)}${cursor ? html`<div class="more"><button type="button" class="btn" data-action="more">Load more</button></div>` : ""}`);
    }

    root.addEventListener("click", async (e) => {
      const sb = e.target.closest("[data-status]");
      if (sb && sb.tagName === "BUTTON") { ctx.navigate(hashFor({ status: sb.dataset.status })); return; }
      const a = e.target.closest("[data-action]");
      if (a?.dataset.action === "retry" && box.contains(a)) { load(false); return; }
      if (a?.dataset.action === "more") {
        a.disabled = true; a.textContent = "Loading…";
        try {
          const r = await api.get("/api/incidents", { status: status || undefined, severity: severity || undefined, limit: 50, cursor }, { signal: ctx.signal });
          list = list.concat(r.data || []);
          cursor = r.next_cursor || null;
          draw(new Set());
        } catch (err) { if (err?.name !== "AbortError") { a.disabled = false; a.textContent = "Load more"; render(box.querySelector(".more"), errorState(err, { retry: false })); } }
        return;
      }
      const row = e.target.closest("#inc-list tr[data-href]");
      if (row && !e.target.closest("a,button")) ctx.navigate(row.dataset.href);
    });

    let timer = null;
    ctx.on("incident", () => {
      clearTimeout(timer);
      // Only the first page follows live changes; a longer list would jump under the reader.
      timer = setTimeout(() => { if (!cursor || list.length <= 50) load(true); }, 400);
    });

    const jobs = [load(false)];
    if (q) jobs.push(callResults(root.querySelector("#inc-calls"), { q, ctx, prefix: "calls", form }));
    await Promise.all(jobs);
    ctx.ready();
    return () => clearTimeout(timer);
  },
};

// #/enforcement (operators only): every call a guardrail stopped, on every tenant, newest
// first — when, tenant, key, end user, policy, status and why — filtered by tenant, policy
// and time (kept in the link), with "Load more" and the same filter as a CSV download.
import * as api from "../api.js";
import { html, render, icon, timeAgo, absTime, httpBadge, policyName, idText, loadingState, errorState, emptyState, saveBlob, toast, busy } from "../ui.js";
import { mountHealthBanner } from "../components/health-banner.js";

const POLICIES = ["killswitch", "budget", "dg-003", "dg-005", "dg-002", "dg-001"];
const SINCE = [["", "All time"], ["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"]];
const PAGE = 50;

export default {
  name: "enforcement",
  title: "Enforcement log",
  nav: "enforcement",
  async mount(root, ctx) {
    const filter = { tenant: ctx.query.get("tenant") || "", policy: ctx.query.get("policy") || "", since: ctx.query.get("since") || "" };
    let rows = [], cursor = null, tenants = [];
    const select = (name, testid, options) => html`<label>${name} <select class="input" name="${name.toLowerCase()}" data-testid="${testid}">${options.map(([v, l]) => html`<option value="${v}" ${v === filter[name.toLowerCase()] ? "selected" : ""}>${l}</option>`)}</select></label>`;
    function filtersHtml() {
      return html`${select("Tenant", "enf-tenant", [["", "All tenants"], ...tenants.map((t) => [t.id, t.name])])}
        ${select("Policy", "enf-policy", [["", "Any policy"], ...POLICIES.map((p) => [p, policyName(p)])])}
        ${select("Since", "enf-since", SINCE)}
        <span class="spacer"></span>
        <button type="button" class="btn btn-sm" data-action="csv" data-testid="enf-csv">${icon("download", 16)} Download CSV</button>`;
    }
    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Enforcement log</h1>
        <p class="sub">Every call a guardrail stopped, on every tenant, newest first: who made it, which policy stopped it and why.</p></div></div>
      <div id="enf-banner"></div>
      <section class="card"><div class="card-body"><form class="filters enf-filters" id="enf-filter" role="search" data-testid="enf-filter">${filtersHtml()}</form></div>
        <div class="card-body flush" id="enf-box"></div></section>`);
    const form = root.querySelector("#enf-filter");
    const box = root.querySelector("#enf-box");
    const params = (extra = {}) => ({ tenant: filter.tenant, policy: filter.policy, since: filter.since, ...extra });
    const tenantName = (id) => tenants.find((t) => t.id === id)?.name;

    form.addEventListener("submit", (e) => e.preventDefault());
    form.addEventListener("change", (e) => {
      const el = e.target.closest("select");
      if (!el) return;
      const next = { ...filter, [el.name]: el.value };
      const q = new URLSearchParams(Object.entries(next).filter(([, v]) => v)).toString();
      ctx.navigate(q ? `#/enforcement?${q}` : "#/enforcement");
    });

    function rowHtml(r) {
      const name = r.tenant_name || tenantName(r.tenant_id);
      return html`<tr data-testid="enf-row" data-call-id="${r.call_id}" data-tenant-id="${r.tenant_id}" data-policy="${r.policy}">
        <td class="c-when"><button type="button" class="linkbtn nowrap" data-action="open-call" title="${absTime(r.created_at)} · open the call">${timeAgo(r.created_at)}</button></td>
        <td class="c-tenant"><span class="cell-main">${name || r.tenant_id}</span>${name ? html`<div class="cell-sub">${idText(r.tenant_id)}</div>` : ""}</td>
        <td class="c-key">${r.key_name ? html`<span class="cell-main">${r.key_name}</span><div class="cell-sub">${idText(r.key_id)}</div>` : idText(r.key_id)}</td>
        <td class="c-user mono">${r.end_user || html`<span class="muted">no end user</span>`}</td>
        <td class="c-policy"><span class="badge bad plain">${policyName(r.policy)}</span></td>
        <td class="c-status">${httpBadge(r.status, true)}</td>
        <td class="c-reason">${r.reason || html`<span class="muted">—</span>`}</td></tr>`;
    }
    function draw() {
      if (!rows.length) {
        const filtered = filter.tenant || filter.policy || filter.since;
        render(box, emptyState({ title: filtered ? "No blocked calls match" : "No call has been blocked yet",
          text: filtered ? "Nothing was stopped with these filters. Widen the time range or clear the filters." : "When a guardrail, a budget or the kill switch stops a call on any tenant, it is listed here.",
          iconName: "shield", testid: "enf-empty",
          action: filtered ? html`<a class="btn btn-sm" href="#/enforcement" data-testid="enf-clear">Clear filters</a>` : "" }));
        return;
      }
      render(box, html`<div class="table-wrap"><table class="table enf-table" data-testid="enf-table"><thead><tr><th>When</th><th>Tenant</th><th>Key</th><th>End user</th><th>Policy</th><th>Status</th><th>Reason</th></tr></thead>
        <tbody>${rows.map(rowHtml)}</tbody></table></div>
        ${cursor ? html`<div class="more"><button type="button" class="btn" data-action="more" data-testid="enf-more">Load more</button></div>` : html`<p class="hint card-body" data-testid="enf-end">${rows.length} blocked call${rows.length === 1 ? "" : "s"}: the whole log${filter.tenant || filter.policy || filter.since ? " for these filters" : ""}.</p>`}`);
    }
    async function load() {
      ctx.loading();
      render(box, loadingState("table"));
      try {
        const [page, t] = await Promise.all([
          api.get("/api/operator/enforcement", params({ limit: PAGE }), { signal: ctx.signal }),
          api.get("/api/operator/tenants", null, { signal: ctx.signal }).catch((err) => { if (err?.name === "AbortError") throw err; return null; }),
        ]);
        if (!ctx.alive()) return;
        if (t?.data) { tenants = t.data; render(form, filtersHtml()); }
        rows = page.data || [];
        cursor = page.next_cursor || null;
        draw();
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        render(box, errorState(err, { testid: "enf-error" }));
      }
      ctx.ready();
    }

    root.addEventListener("click", async (e) => {
      const a = e.target.closest("[data-action]");
      if (!a) return;
      const act = a.dataset.action;
      if (act === "retry") return load();
      if (act === "more") {
        a.disabled = true; a.textContent = "Loading…";
        try {
          const r = await api.get("/api/operator/enforcement", params({ limit: PAGE, cursor }), { signal: ctx.signal });
          rows = rows.concat(r.data || []);
          cursor = r.next_cursor || null;
          draw();
        } catch (err) { if (err?.name !== "AbortError") { a.disabled = false; a.textContent = "Load more"; toast(err.message, "bad"); } }
        return;
      }
      if (act === "csv") {
        try {
          await busy(a, async () => {
            const { blob, filename } = await api.fetchFile("/api/operator/enforcement", params({ format: "csv", limit: 1000 }), "enforcement.csv");
            saveBlob(blob, filename);
          });
        } catch (err) { if (err?.name !== "AbortError") toast(`The download failed: ${err.message}`, "bad"); }
        return;
      }
      if (act === "open-call") {
        const row = a.closest("[data-call-id]");
        const id = row.dataset.tenantId;
        ctx.viewTenant({ id, name: tenantName(id) || null }, `#/calls/${encodeURIComponent(row.dataset.callId)}`);
      }
    });

    await Promise.all([mountHealthBanner(root.querySelector("#enf-banner"), ctx), load()]);
  },
};

// #/incidents?text=…&status=…&severity=…: the incident list (severity, status, age),
// searched by words of the title (`text` → GET /api/incidents) and filtered by status and
// severity, all kept in the hash so a reload or a shared link shows the same list. People
// who may change incidents select rows and acknowledge or resolve them at once, or merge
// duplicates (the same title) into the newest. Live: `incident` events reload the list and
// highlight what changed.
import * as api from "../api.js";
import { html, render, compact, nanos, moneyDigits, timeAgo, severityBadge, statusBadge, loadingState, emptyState, errorState, cap, toast, shortId, relTime } from "../ui.js";
import { confirmDialog } from "../components/dialog.js";
import { canChange } from "../state.js";

const STATUSES = [["", "All"], ["open", "Open"], ["acknowledged", "Acknowledged"], ["resolved", "Resolved"]];
const SEVERITIES = ["", "critical", "high", "medium", "low"];
const PAGE = 50;

/** Rows of incidents; with `selected` (a Set of ids), each row leads with its checkbox. */
export function incidentRows(list, fresh = new Set(), selected = null) {
  const digits = moneyDigits(list.map((i) => (i.cost ?? 0) / 1e9));
  return list.map((i) => {
    const href = `#/incidents/${encodeURIComponent(i.id)}`;
    const into = i.merged_into ? `#/incidents/${encodeURIComponent(i.merged_into)}` : "";
    return html`<tr class="clickable ${fresh.has(i.id) ? "flash" : ""} ${i.status === "resolved" ? "dim" : ""} ${selected?.has(i.id) ? "selected" : ""}" data-testid="incident-row" data-incident-id="${i.id}" data-status="${i.status}" data-href="${href}">
      ${selected ? html`<td class="sel"><input type="checkbox" data-testid="incident-select" data-select="${i.id}" aria-label="Select ${i.title}" ${selected.has(i.id) ? "checked" : ""}></td>` : ""}
      <td class="c-sev">${severityBadge(i.severity)}</td>
      <td class="c-title"><a class="rowlink" href="${href}">${i.title}</a><div class="cell-sub">${i.subject}${i.tenant_name ? html` · ${i.tenant_name}` : ""}${into ? html` · merged into <a class="nowrap" href="${into}" data-testid="merged-into" title="${i.merged_into}">${shortId(i.merged_into)}</a>` : ""}</div></td>
      <td class="c-status">${statusBadge(i.status)}${i.assignee ? html`<div class="cell-sub" title="${i.assignee}">→ ${i.assignee_email || i.assignee}</div>` : ""}</td>
      <td class="num c-calls">${compact(i.call_count)}<span class="phone-only"> ${i.call_count === 1 ? "call" : "calls"}</span></td>
      <td class="num c-cost">${nanos(i.cost, { digits })}</td>
      <td class="c-age">${timeAgo(i.first_signal_at ?? i.created_at)}<div class="cell-sub nowrap">last ${timeAgo(i.last_signal_at ?? i.updated_at)}</div></td></tr>`;
  });
}
export function incidentTable(list, fresh, selected = null) {
  const all = selected && list.length > 0 && list.every((i) => selected.has(i.id));
  const head = selected ? html`<th class="sel"><label class="sel-all"><input type="checkbox" data-testid="select-all" data-select-all="1" aria-label="Select every incident shown" ${all ? "checked" : ""}><span class="sel-label" aria-hidden="true">Select all</span></label></th>` : "";
  return html`<div class="table-wrap"><table class="table inc-table ${selected ? "selectable" : ""}" data-testid="incidents-table"><thead><tr>${head}<th>Severity</th><th>Incident</th><th>Status</th><th class="num">Calls</th><th class="num">Cost</th><th>Age</th></tr></thead>
    <tbody>${incidentRows(list, fresh, selected)}</tbody></table></div>`;
}

/** The incidents of the selection that "Merge into newest" would merge, and where: only
 * when every selected one has the same title, none is merged already, and the newest that
 * is not resolved can take them. */
export function mergePlan(chosen) {
  if (chosen.length < 2) return null;
  if (chosen.some((i) => i.title !== chosen[0].title || i.merged_into)) return null;
  const byAge = [...chosen].sort((a, b) => (b.created_at ?? 0) - (a.created_at ?? 0));
  const target = byAge.find((i) => i.status !== "resolved");
  if (!target) return null;
  return { target, from: byAge.filter((i) => i.id !== target.id) };
}

export default {
  name: "incidents",
  title: "Incidents",
  nav: "incidents",
  async mount(root, ctx) {
    // `q` is what links made before incidents were searched by title carried.
    const text = (ctx.query.get("text") || ctx.query.get("q") || "").trim();
    const status = ctx.query.get("status") || "";
    const severity = ctx.query.get("severity") || "";
    const acting = canChange();
    const selected = acting ? new Set() : null;
    let list = [], cursor = null;

    const hashFor = (over) => {
      const p = new URLSearchParams({ text, status, severity, ...over });
      for (const [k, v] of [...p.entries()]) if (!v) p.delete(k);
      const s = p.toString();
      return `#/incidents${s ? `?${s}` : ""}`;
    };
    const params = (extra = {}) => ({ text: text || undefined, status: status || undefined, severity: severity || undefined, limit: PAGE, ...extra });
    const filtered = Boolean(text || status || severity);

    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Incidents</h1>
        <p class="sub">Problems grouped from guardrail trips, provider failures and cost spikes. Open one to see its timeline, act on it and export the evidence.</p></div></div>
      <section class="card"><div class="card-body">
        <form class="search-form" role="search" data-testid="incident-search">
          <label class="sr-only" for="incident-search-input">Search incidents</label>
          <div class="search">
            <input class="input" id="incident-search-input" name="text" type="search" value="${text}" data-testid="incident-search-input" placeholder="Search titles: injection, budget, cust_8372…" autocomplete="off" spellcheck="false">
            <button type="submit" class="btn btn-primary" data-testid="incident-search-submit">Search</button>
          </div>
          <div class="filters search-filters">
            <div class="segmented" role="group" aria-label="Status">${STATUSES.map(([v, l]) => html`<button type="button" data-status="${v}" aria-pressed="${status === v}" data-testid="filter-status-${v || "all"}">${l}</button>`)}</div>
            <label>Severity <select class="input" id="sev-filter" data-testid="filter-severity">${SEVERITIES.map((s) => html`<option value="${s}" ${s === severity ? "selected" : ""}>${s ? cap(s) : "Any"}</option>`)}</select></label>
            ${filtered ? html`<a class="btn btn-sm btn-ghost" href="${hashFor({ text: "", status: "", severity: "" })}" data-testid="clear-search">Clear</a>` : ""}
          </div>
        </form></div></section>
      <section class="card">
        <div class="card-head"><h2 data-testid="incidents-heading">${filtered ? "Matching incidents" : "All incidents"}</h2>
          ${text ? html`<a class="hint" href="#/calls?q=${encodeURIComponent(text)}" data-testid="search-calls-instead">Search calls for “${text}”</a>` : ""}</div>
        ${acting ? html`<div class="bulk-bar" id="bulk-bar" data-testid="bulk-bar" aria-live="polite"></div>` : ""}
        <div class="card-body flush" id="inc-list"></div></section>`);

    const form = root.querySelector("form");
    form.addEventListener("submit", (e) => { e.preventDefault(); ctx.navigate(hashFor({ text: form.elements.text.value.trim() })); });
    root.querySelector("#sev-filter").addEventListener("change", (e) => ctx.navigate(hashFor({ severity: e.target.value })));
    const box = root.querySelector("#inc-list");
    const bar = root.querySelector("#bulk-bar");
    let lastResult = null;

    async function load(fresh) {
      if (!fresh) { render(box, loadingState("table")); if (bar) bar.hidden = true; }
      try {
        const r = await api.get("/api/incidents", params(), { signal: ctx.signal });
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

    function what() {
      const parts = [];
      if (status) parts.push(cap(status).toLowerCase());
      if (severity) parts.push(`${severity} severity`);
      return parts.join(", ");
    }

    function draw(fresh) {
      if (selected) for (const id of [...selected]) if (!list.some((i) => i.id === id)) selected.delete(id);
      if (!list.length) {
        if (bar) bar.hidden = true;
        const w = what();
        render(box, emptyState({
          title: text ? `No incident matches “${text}”${w ? ` (${w})` : ""}` : filtered ? `No ${w} incidents` : "No incidents yet",
          text: text ? "Titles name what went wrong and for whom: try a rule (injection, budget, upstream), an end user or a model. Or clear the search to see every incident." : filtered ? "Clear the filters to see every incident." : "That is good news. Incidents open when a guardrail blocks calls, the provider fails, or spending spikes — and your alert routes hear about it.",
          action: filtered
            ? html`<div class="state-actions"><a class="btn btn-sm" href="${hashFor({ text: "", status: "", severity: "" })}" data-testid="empty-clear">Clear ${text ? "search" : "filters"}</a>${text ? html`<a class="btn btn-sm btn-ghost" href="#/calls?q=${encodeURIComponent(text)}">Search calls instead</a>` : ""}</div>`
            : html`<a class="btn btn-sm" href="#/alerts">Set up alerts</a>`,
          iconName: text ? "inbox" : "shield",
          testid: filtered ? "no-match" : "page-empty",
        }));
        return;
      }
      render(box, html`${incidentTable(list, fresh, selected)}${cursor ? html`<div class="more"><button type="button" class="btn" data-action="more" data-testid="load-more">Load more</button></div>` : ""}`);
      drawBar();
    }

    function drawBar() {
      if (!bar) return;
      bar.hidden = false;
      const chosen = list.filter((i) => selected.has(i.id));
      const plan = mergePlan(chosen);
      bar.classList.toggle("active", chosen.length > 0);
      const all = box.querySelector("[data-select-all]");
      if (all) {
        all.checked = chosen.length > 0 && chosen.length === list.length;
        all.indeterminate = chosen.length > 0 && chosen.length < list.length;
      }
      render(bar, html`<span class="bulk-count" data-testid="bulk-count">${chosen.length ? `${chosen.length} selected` : "Select incidents to act on several at once"}</span>
        <div class="bulk-actions">
          <button type="button" class="btn btn-sm" data-bulk="ack" data-testid="bulk-ack" ${chosen.some((i) => i.status === "open") ? "" : "disabled"}>Acknowledge</button>
          <button type="button" class="btn btn-sm" data-bulk="resolve" data-testid="bulk-resolve" ${chosen.some((i) => i.status !== "resolved") ? "" : "disabled"}>Resolve</button>
          ${plan ? html`<button type="button" class="btn btn-sm btn-primary" data-bulk="merge" data-testid="bulk-merge" title="Resolve the older ones as duplicates of ${plan.target.id}">Merge into newest</button>` : ""}
          ${chosen.length ? html`<button type="button" class="btn btn-sm btn-ghost" data-bulk="clear" data-testid="bulk-clear">Clear selection</button>` : ""}
        </div>
        ${lastResult ? html`<p class="bulk-result ${lastResult.bad ? "bad" : "ok"}" data-testid="bulk-result">${lastResult.text}</p>` : ""}`);
    }

    async function bulk(action, button) {
      const ids = list.filter((i) => selected.has(i.id)).map((i) => i.id);
      if (!ids.length) return;
      button.disabled = true;
      const label = button.textContent;
      button.textContent = action === "ack" ? "Acknowledging…" : "Resolving…";
      try {
        const r = await api.post("/api/incidents/bulk", { action, ids });
        const verb = action === "ack" ? "acknowledged" : "resolved";
        const failed = (r.results || []).filter((x) => !x.ok);
        const reasons = [...new Set(failed.map((x) => x.error?.message).filter(Boolean))];
        lastResult = {
          bad: failed.length > 0,
          text: `${r.ok} ${verb}${failed.length ? `; ${failed.length} left as ${failed.length === 1 ? "it was" : "they were"}: ${reasons.join("; ")}` : "."}`,
        };
        toast(lastResult.text, failed.length ? "" : "ok");
        for (const x of r.results || []) if (x.ok) selected.delete(x.id);
        await load(true);
      } catch (err) {
        if (err?.name === "AbortError") return;
        lastResult = { bad: true, text: err.message };
        drawBar();
        button.disabled = false;
        button.textContent = label;
      }
    }

    async function merge() {
      const plan = mergePlan(list.filter((i) => selected.has(i.id)));
      if (!plan) return;
      const n = plan.from.length;
      const ok = await confirmDialog({
        title: `Merge ${n} duplicate${n === 1 ? "" : "s"} into the newest?`,
        text: `“${plan.target.title}” (${shortId(plan.target.id)}, opened ${relTime(plan.target.created_at)}) takes in their calls and cost; ${n === 1 ? "the older one is" : `the ${n} older ones are`} resolved as merged into it. Both histories and the audit log record it.`,
        confirmLabel: "Merge",
        action: () => api.post(`/api/incidents/${encodeURIComponent(plan.target.id)}/merge`, { from: plan.from.map((i) => i.id) }),
      });
      if (!ok) return;
      lastResult = { bad: false, text: `Merged ${n} into ${shortId(plan.target.id)}.` };
      toast(lastResult.text, "ok");
      selected.clear();
      await load(true);
    }

    root.addEventListener("click", async (e) => {
      const sb = e.target.closest("[data-status]");
      if (sb && sb.tagName === "BUTTON") { ctx.navigate(hashFor({ status: sb.dataset.status })); return; }
      const b = e.target.closest("[data-bulk]");
      if (b && !b.disabled) {
        if (b.dataset.bulk === "clear") { selected.clear(); lastResult = null; draw(new Set()); }
        else if (b.dataset.bulk === "merge") await merge();
        else await bulk(b.dataset.bulk, b);
        return;
      }
      const a = e.target.closest("[data-action]");
      if (a?.dataset.action === "retry" && box.contains(a)) { load(false); return; }
      if (a?.dataset.action === "more") {
        a.disabled = true; a.textContent = "Loading…";
        try {
          const r = await api.get("/api/incidents", params({ cursor }), { signal: ctx.signal });
          list = list.concat(r.data || []);
          cursor = r.next_cursor || null;
          draw(new Set());
        } catch (err) { if (err?.name !== "AbortError") { a.disabled = false; a.textContent = "Load more"; render(box.querySelector(".more"), errorState(err, { retry: false })); } }
        return;
      }
      // The checkbox's cell is part of the checkbox: a miss-tap there selects, it does not open.
      const cell = e.target.closest("#inc-list td.sel");
      if (cell && e.target.tagName !== "INPUT") { cell.querySelector("input")?.click(); return; }
      const row = e.target.closest("#inc-list tr[data-href]");
      if (row && !e.target.closest("a,button,input,label")) ctx.navigate(row.dataset.href);
    });
    root.addEventListener("change", (e) => {
      const t = e.target;
      if (!selected || t.type !== "checkbox") return;
      if (t.dataset.selectAll) {
        if (t.checked) list.forEach((i) => selected.add(i.id)); else selected.clear();
        box.querySelectorAll("[data-select]").forEach((c) => { c.checked = t.checked; c.closest("tr")?.classList.toggle("selected", t.checked); });
      } else if (t.dataset.select) {
        if (t.checked) selected.add(t.dataset.select); else selected.delete(t.dataset.select);
        t.closest("tr")?.classList.toggle("selected", t.checked);
      } else return;
      lastResult = null;
      drawBar();
    });

    let timer = null;
    ctx.on("incident", () => {
      clearTimeout(timer);
      // Only the first page follows live changes; a longer list would jump under the reader.
      timer = setTimeout(() => { if (!cursor || list.length <= PAGE) load(true); }, 400);
    });

    await load(false);
    ctx.ready();
    return () => clearTimeout(timer);
  },
};

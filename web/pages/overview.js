// #/overview: is this tenant protected (and is it live or demo data), what happened today,
// what the guardrails saved in the last 30 days and which are in force, the 24 h / 7 d
// charts, the open incidents, and the big red kill switch. Live: `overview` events refresh
// the badge and the numbers, `incident` events the list.
import * as api from "../api.js";
import { canChange, session, isOperator } from "../state.js";
import { html, render, icon, money, compact, timeAgo, severityBadge, statusBadge, loadingState, errorState, emptyState, toast } from "../ui.js";
import { protectionBadge } from "../components/protection.js";
import { callsChart, spendChart } from "../components/chart.js";
import { connectCard, loadCli } from "../components/connect.js";
import { reasonDialog } from "../components/dialog.js";
import { modeBadge, savingsCard, guardrailsCard } from "../components/savings.js";

const EXPLAIN = {
  protected: "Every call is checked against the kill switch, guardrails and budgets before it reaches the provider.",
  at_risk: "Calls are flowing, but something needs attention: open incidents, or keys that are frozen.",
  stopped: "Every call of this tenant is refused (HTTP 423) and nothing reaches the provider until you resume traffic.",
};

export default {
  name: "overview",
  title: "Overview",
  nav: "overview",
  async mount(root, ctx) {
    let data = null;
    let incidents = null, incidentsError = null;
    let guards = null, guardsError = null;
    let range = "24h";
    let cli = null;

    async function loadIncidents() {
      try {
        const r = await api.get("/api/incidents", { status: "open", limit: 6 }, { signal: ctx.signal });
        incidents = r.data || [];
        incidentsError = null;
      } catch (err) {
        if (err?.name === "AbortError") throw err;
        incidentsError = err;
      }
    }
    // The guardrails card loads on its own: the page shows while it is on its way.
    async function loadGuards() {
      guards = null; guardsError = null;
      try {
        guards = await api.get("/api/policies/active", null, { signal: ctx.signal });
      } catch (err) {
        if (err?.name === "AbortError") return;
        guardsError = err;
      }
      const box = root.querySelector("#ov-guards");
      if (box && ctx.alive()) render(box, guardrailsCard(guards, guardsError, { frozen: frozen() }));
    }
    function applyWidths(el) {
      for (const bar of el.querySelectorAll("[data-width]")) bar.style.width = `${bar.dataset.width}%`;
    }
    async function load() {
      ctx.loading();
      render(root, loadingState());
      const guarded = loadGuards();
      try {
        const [ov, c] = await Promise.all([api.get("/api/overview", null, { signal: ctx.signal }), loadCli({ signal: ctx.signal }), loadIncidents()]);
        cli = c;
        if (!ctx.alive()) return;
        data = ov;
        if (ov.tenant && !isOperator() && (!session.tenant || !session.tenant.name)) { session.tenant = ov.tenant; ctx.refreshShell(); }
        draw();
        await guarded;
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        render(root, html`${head()}<div class="card">${errorState(err)}</div>`);
      }
      ctx.ready();
    }

    function head() {
      const t = data?.tenant;
      return html`<div class="page-head"><div class="titles">
        <div class="title-row"><h1 data-testid="page-title">Overview</h1>${modeBadge(t)}</div>
        <p class="sub">${t?.name ? html`${t.name} · ` : ""}today so far, with the last 24 hours and 7 days</p></div></div>`;
    }

    function frozen() { return !!data?.frozen?.tenant || data?.protection === "stopped"; }

    function heroHtml() {
      const p = data.protection;
      const keys = data.frozen?.keys || [];
      const kill = !canChange() ? html`<p class="hint">Viewers cannot stop traffic. Ask an admin.</p>`
        : frozen()
          ? html`<button type="button" class="btn btn-resume" data-testid="killswitch-button" data-state="frozen" data-action="unfreeze">${icon("power")} Resume traffic</button>`
          : html`<button type="button" class="btn btn-kill" data-testid="killswitch-button" data-state="live" data-action="freeze">${icon("stop")} Stop all traffic</button>`;
      return html`<section class="hero ${frozen() ? "frozen" : ""}" aria-label="Protection">
        ${protectionBadge(p)}
        <div class="hero-text"><strong>${frozen() ? "The kill switch is on" : p === "at_risk" ? "Needs attention" : "All checks are on"}</strong>
          <p>${EXPLAIN[p] || ""}${frozen() && data.frozen?.reason ? html` Reason: “${data.frozen.reason}”.` : ""}${keys.length ? html` ${keys.length} key${keys.length === 1 ? " is" : "s are"} frozen — see <a href="#/keys">API keys</a>.` : ""}</p></div>
        ${kill}</section>`;
    }

    function kpisHtml() {
      const t = data.today || {};
      const errorsBad = (t.errors || 0) > 0;
      return html`<div class="kpis" data-testid="kpis">
        <div class="kpi"><div class="kpi-label">Calls today</div><div class="kpi-value" data-testid="kpi-calls" title="${String(t.calls ?? 0)}">${compact(t.calls ?? 0)}</div></div>
        <div class="kpi ${t.blocked ? "bad" : ""}"><div class="kpi-label">Blocked</div><div class="kpi-value" data-testid="kpi-blocked">${compact(t.blocked ?? 0)}</div><div class="kpi-note">${t.calls ? `${Math.round(((t.blocked || 0) / t.calls) * 1000) / 10}% of calls` : "stopped by a check"}</div></div>
        <div class="kpi ${errorsBad ? "bad" : ""}"><div class="kpi-label">Errors</div><div class="kpi-value" data-testid="kpi-errors">${compact(t.errors ?? 0)}</div><div class="kpi-note">failed at the provider</div></div>
        <div class="kpi"><div class="kpi-label">Spend today</div><div class="kpi-value" data-testid="kpi-spend">${money(t.spend_usd)}</div><div class="kpi-note">${t.spend_usd === null ? "price unknown for some models" : html`<a href="#/usage">Budgets</a>`}</div></div>
        <a class="kpi ${t.open_incidents ? "bad" : ""}" href="#/incidents?status=open"><div class="kpi-label">Open incidents</div><div class="kpi-value" data-testid="kpi-incidents">${compact(t.open_incidents ?? 0)}</div><div class="kpi-note">${t.open_incidents ? "review them →" : "nothing open"}</div></a>
      </div>`;
    }

    function noTraffic() {
      const all = [...(data.series?.["24h"] || []), ...(data.series?.["7d"] || [])];
      return !(data.today?.calls > 0) && !all.some((b) => b.calls > 0);
    }

    function chartsHtml() {
      const pts = data.series?.[range] || [];
      const seg = html`<div class="segmented" role="group" aria-label="Time range">
        <button type="button" data-range="24h" aria-pressed="${range === "24h"}">24 hours</button>
        <button type="button" data-range="7d" aria-pressed="${range === "7d"}">7 days</button></div>`;
      return html`<section class="card chart-card" data-testid="charts">
        <div class="card-head"><h2>Traffic</h2>${seg}</div>
        <div class="card-body"><div class="grid grid-2">
          <div><div class="row"><h3>Calls</h3><span class="spacer"></span><div class="legend"><span><i class="swatch s1"></i>passed</span><span><i class="swatch s2"></i>errors</span><span><i class="swatch s3"></i>blocked</span></div></div>
            ${pts.length ? callsChart(pts, range) : html`<p class="hint">No data for this range.</p>`}</div>
          <div><div class="row"><h3>Spend</h3><span class="spacer"></span><span class="hint">${money(pts.reduce((a, b) => a + (Number(b.spend_usd) || 0), 0))} in ${range === "7d" ? "7 days" : "24 hours"}</span></div>
            ${pts.length ? spendChart(pts, range) : html`<p class="hint">No data for this range.</p>`}</div>
        </div></div></section>`;
    }

    function incidentsHtml() {
      let body;
      if (incidentsError) body = errorState(incidentsError, { testid: "incidents-error" });
      else if (!incidents.length) body = emptyState({ title: "No open incidents", text: "When a guardrail trips or the provider fails, an incident opens here and your alert routes are notified.", iconName: "shield", testid: "incidents-empty", action: html`<a class="btn btn-sm" href="#/alerts">Set up alerts</a>` });
      else body = html`<div class="table-wrap"><table class="table"><thead><tr><th>Severity</th><th>Incident</th><th>Status</th><th class="num">Calls</th><th>Opened</th></tr></thead><tbody>
        ${incidents.map((i) => html`<tr class="clickable" data-testid="incident-row" data-incident-id="${i.id}" data-href="#/incidents/${encodeURIComponent(i.id)}">
          <td>${severityBadge(i.severity)}</td>
          <td><a class="rowlink" href="#/incidents/${encodeURIComponent(i.id)}">${i.title}</a><div class="cell-sub">${i.subject}</div></td>
          <td>${statusBadge(i.status)}</td><td class="num">${compact(i.call_count)}</td><td>${timeAgo(i.first_signal_at ?? i.created_at)}</td></tr>`)}
        </tbody></table></div>`;
      return html`<section class="card" id="ov-incidents"><div class="card-head"><h2>Open incidents</h2><a class="btn btn-sm" href="#/incidents">All incidents</a></div><div class="card-body flush">${body}</div></section>`;
    }

    const sigs = { hero: null, kpis: null };
    function draw() {
      sigs.hero = JSON.stringify([data.protection, data.frozen]);
      sigs.kpis = JSON.stringify(data.today);
      ctx.setNavCount(data.today?.open_incidents ?? null);
      render(root, html`${head()}
        <div id="ov-hero">${heroHtml()}</div>
        <div id="ov-kpis">${kpisHtml()}</div>
        ${noTraffic() ? connectCard({ tenant: data.tenant, canCreateKeys: canChange(), cli }) : ""}
        <div class="grid grid-2 ov-protect"><div id="ov-saved">${savingsCard(data.saved)}</div><div id="ov-guards">${guardrailsCard(guards, guardsError, { frozen: frozen() })}</div></div>
        <div id="ov-charts">${chartsHtml()}</div>
        <div id="ov-inc">${incidentsHtml()}</div>`);
      applyWidths(root);
    }
    function drawLive() {
      const hero = root.querySelector("#ov-hero"), kpis = root.querySelector("#ov-kpis");
      if (!hero || !kpis) return;
      // Keep the focus on the kill switch when it changes state under the keyboard.
      // Redraw only what changed, so the kill switch is not replaced under the pointer.
      const heroSig = JSON.stringify([data.protection, data.frozen]);
      const kpiSig = JSON.stringify(data.today);
      if (heroSig !== sigs.hero) {
        const hadFocus = hero.contains(document.activeElement);
        render(hero, heroHtml());
        if (hadFocus) hero.querySelector('[data-testid="killswitch-button"]')?.focus();
      }
      if (kpiSig !== sigs.kpis) render(kpis, kpisHtml());
      sigs.hero = heroSig; sigs.kpis = kpiSig;
      ctx.setNavCount(data.today?.open_incidents ?? null);
    }

    root.addEventListener("click", async (e) => {
      const rangeBtn = e.target.closest("[data-range]");
      if (rangeBtn) { range = rangeBtn.dataset.range; render(root.querySelector("#ov-charts"), chartsHtml()); return; }
      const a = e.target.closest("[data-action]");
      if (a?.dataset.action === "retry") return load();
      if (a?.dataset.action === "freeze") {
        const ok = await reasonDialog({
          title: "Stop all traffic?",
          text: `Every call of ${data.tenant?.name || "this tenant"} will be refused with HTTP 423 until someone resumes traffic. Nothing reaches the provider.`,
          confirmLabel: "Stop all traffic",
          placeholder: "e.g. runaway agent loop on the support bot",
          action: (reason) => api.post("/api/killswitch/tenant", { reason }),
        });
        if (ok) { toast("Traffic stopped. Every call is now refused.", "ok"); await refresh(); }
        return;
      }
      if (a?.dataset.action === "unfreeze") {
        const ok = await reasonDialog({
          title: "Resume traffic?",
          text: "Calls will reach the provider again, checked by the guardrails as before.",
          confirmLabel: "Resume traffic", required: false, danger: false,
          action: (reason) => api.del("/api/killswitch/tenant", reason ? { reason } : {}),
        });
        if (ok) { toast("Traffic resumed.", "ok"); await refresh(); }
        return;
      }
      const row = e.target.closest("tr[data-href]");
      if (row && !e.target.closest("a,button")) ctx.navigate(row.dataset.href);
    });

    async function refresh() {
      try {
        const ov = await api.get("/api/overview", null, { signal: ctx.signal });
        if (!ctx.alive()) return;
        data = ov;
        drawLive();
        render(root.querySelector("#ov-charts") || document.createElement("div"), chartsHtml());
        const saved = root.querySelector("#ov-saved");
        if (saved) applyWidths(render(saved, savingsCard(data.saved)));
        const g = root.querySelector("#ov-guards");
        if (g) render(g, guardrailsCard(guards, guardsError, { frozen: frozen() }));
      } catch (err) { if (err?.name !== "AbortError") toast(err.message, "bad"); }
    }

    let incTimer = null;
    ctx.on("overview", (ev) => {
      if (!data) return;
      if (ev.today) data.today = { ...data.today, ...ev.today };
      if (ev.protection) data.protection = ev.protection;
      if (ev.frozen) data.frozen = ev.frozen;
      drawLive();
    });
    ctx.on("incident", () => {
      if (!data) return;
      clearTimeout(incTimer);
      incTimer = setTimeout(async () => {
        try { await loadIncidents(); } catch { return; }
        const box = root.querySelector("#ov-inc");
        if (box && ctx.alive()) render(box, incidentsHtml());
      }, 400);
    });

    await load();
    return () => clearTimeout(incTimer);
  },
};

// #/usage: spend against the budgets (today, this month), spend by model this month, and
// the usage history: requests, tokens and spend by day, by key and by end user over the
// last 7, 30 or 90 days (UTC days), with the calls chart.
import * as api from "../api.js";
import { canChange } from "../state.js";
import { html, render, money, moneyDigits, compact, num, pct, idText, loadingState, errorState, emptyState } from "../ui.js";
import { callsChart } from "../components/chart.js";

const RANGES = [["7d", 7], ["30d", 30], ["90d", 90]];
const VIEWS = [["day", "By day"], ["key", "By key"], ["user", "By end user"]];
/** The history's days are UTC days: named as such, whatever the browser's time zone. */
const utcDay = new Intl.DateTimeFormat(undefined, { weekday: "short", month: "short", day: "numeric", timeZone: "UTC" });

/** The history's table for one view: its rows, largest spend first (days in order). */
function historyTable(h, view) {
  const head = (first) => html`<thead><tr><th>${first}</th><th class="num">Requests</th><th class="num">Tokens</th><th class="num">Spend</th></tr></thead>`;
  const cells = (r) => html`<td class="num">${num(r.calls)}</td><td class="num">${num(r.tokens)}</td><td class="num">${money(r.spend_usd, { digits })}</td>`;
  const rows = view === "day" ? [...(h.by_day || [])].reverse() : view === "key" ? h.by_key || [] : h.by_user || [];
  const digits = moneyDigits(rows.map((r) => r.spend_usd));
  if (!rows.length || (view === "day" && !rows.some((r) => r.calls))) {
    return emptyState({ title: "No calls in this range", text: "Requests, tokens and spend appear here once calls go through this server.", testid: "history-empty" });
  }
  let body;
  if (view === "day") body = rows.map((r) => html`<tr data-testid="history-row" class="${r.calls ? "" : "dim"}"><td class="nowrap">${utcDay.format(new Date(r.t))}</td>${cells(r)}</tr>`);
  else if (view === "key") body = rows.map((r) => html`<tr data-testid="history-row"><td>${r.name ? html`<span class="cell-main">${r.name}</span><div class="cell-sub">${idText(r.key_id)}</div>` : idText(r.key_id)}</td>${cells(r)}</tr>`);
  else body = rows.map((r) => html`<tr data-testid="history-row"><td class="mono">${r.end_user ?? html`<span class="muted">no end user</span>`}</td>${cells(r)}</tr>`);
  return html`<div class="table-wrap"><table class="table history-table" data-testid="history-table" data-view="${view}">${head(view === "day" ? "Day (UTC)" : view === "key" ? "Key" : "End user")}<tbody>${body}</tbody></table></div>
    ${view === "user" && h.by_user_truncated ? html`<p class="hint card-body">The ${h.by_user.length} busiest end users.</p>` : ""}`;
}

function meter(label, spent, budget, soft, testid) {
  if (budget === null || budget === undefined) {
    return html`<div class="kpi" data-testid="${testid}"><div class="kpi-label">${label}</div><div class="kpi-value">${money(spent)}</div>
      <div class="kpi-note">No budget set${canChange() ? html` — <a href="#/policies">set one</a>` : ""}</div></div>`;
  }
  const ratio = budget > 0 ? (Number(spent) || 0) / budget : 0;
  const cls = ratio >= 1 ? "bad" : soft && ratio >= soft ? "warn" : "";
  return html`<div class="kpi" data-testid="${testid}"><div class="kpi-label">${label}</div>
    <div class="kpi-value">${money(spent)} <span class="hint">of ${money(budget)}</span></div>
    <div class="meter" role="meter" aria-valuemin="0" aria-valuemax="${budget}" aria-valuenow="${Number(spent) || 0}" aria-label="${label}"><div class="meter-fill ${cls}" data-width="${Math.min(100, ratio * 100)}"></div>${soft ? html`<span class="meter-mark" data-left="${soft * 100}" title="${`Warning at ${pct(soft)}`}"></span>` : ""}</div>
    <div class="kpi-note">${pct(ratio)} used${ratio >= 1 ? " — calls are refused until the period ends" : soft && ratio >= soft ? " — past the warning threshold" : ""}</div></div>`;
}
/** Widths come from data attributes: the CSP allows no style="" in markup. */
function applyWidths(root) {
  for (const el of root.querySelectorAll("[data-width]")) el.style.width = `${el.dataset.width}%`;
  for (const el of root.querySelectorAll("[data-left]")) el.style.left = `${el.dataset.left}%`;
}

export default {
  name: "usage",
  title: "Usage & budgets",
  nav: "usage",
  async mount(root, ctx) {
    async function load() {
      ctx.loading();
      render(root, loadingState());
      try {
        const u = await api.get("/api/usage", null, { signal: ctx.signal });
        if (!ctx.alive()) return;
        draw(u);
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        render(root, html`${head()}<div class="card">${errorState(err)}</div>`);
      }
      ctx.ready();
    }
    const head = () => html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Usage &amp; budgets</h1>
      <p class="sub">What this tenant spends at the provider's prices. When a budget runs out, calls are refused until the period ends.</p></div></div>`;
    function draw(u) {
      const b = u.budgets || {}, s = u.spent || {};
      const models = [...(u.by_model || [])].sort((a, c) => (Number(c.spend_usd) || 0) - (Number(a.spend_usd) || 0));
      const total = models.reduce((a, m) => a + (Number(m.spend_usd) || 0), 0);
      // The rows and their total with the same digits, so that they visibly add up.
      const digits = moneyDigits([total, ...models.map((m) => m.spend_usd)]);
      render(root, html`${head()}
        <div class="grid grid-2">${meter("Today", s.today_usd, b.daily_usd, b.soft_threshold, "budget-today")}${meter("This month", s.month_usd, b.monthly_usd, b.soft_threshold, "budget-month")}</div>
        <section class="card section-gap"><div class="card-head"><h2>Spend by model this month</h2><span class="hint" data-testid="usage-total">${money(total, { digits })} in all</span></div>
          <div class="card-body flush">${models.length ? html`<div class="table-wrap"><table class="table" data-testid="usage-models"><thead><tr><th>Model</th><th class="num">Calls</th><th class="num">Tokens</th><th class="num">Spend</th><th>Share</th></tr></thead><tbody>
            ${models.map((m) => html`<tr data-testid="usage-row"><td><a class="rowlink" href="#/calls?q=${encodeURIComponent(`model:${m.model}`)}">${m.model || "unknown"}</a></td><td class="num">${compact(m.calls)}</td><td class="num">${compact(m.tokens)}</td><td class="num">${money(m.spend_usd, { digits })}</td>
              <td><div class="share" title="${total ? pct((Number(m.spend_usd) || 0) / total) : ""}"><span data-width="${total ? ((Number(m.spend_usd) || 0) / total) * 100 : 0}"></span></div></td></tr>`)}
            </tbody></table></div>`
            : emptyState({ title: "No spend this month", text: "Spend appears here once calls go through this server. Models without a known price count calls and tokens but no dollars." })}</div></section>
        <section class="card section-gap" id="usage-history" data-testid="usage-history"></section>`);
      applyWidths(root);
      drawHistory();
    }
    // The history loads on its own: the budgets show while it is on its way.
    let range = "30d", view = "day", history = null, historyError = null, historySeq = 0;
    function drawHistory() {
      const box = root.querySelector("#usage-history");
      if (!box) return;
      const seg = (items, current, attr) => html`<div class="segmented" role="group">${items.map(([v, l]) => html`<button type="button" ${attr}="${v}" aria-pressed="${String(v === current)}" data-testid="history-${v}">${l}</button>`)}</div>`;
      let body;
      if (historyError) body = errorState(historyError, { testid: "history-error" });
      else if (!history) body = loadingState("table");
      else {
        const t = history.totals || {};
        body = html`<div class="card-body history-sum" data-testid="history-totals"><strong>${num(t.calls)}</strong> requests · <strong>${num(t.tokens)}</strong> tokens · <strong>${money(t.spend_usd)}</strong> in ${history.days} days
            <div class="history-chart">${callsChart(history.by_day || [], "days")}</div>
            ${seg(VIEWS, view, "data-view")}</div>
          ${historyTable(history, view)}`;
      }
      render(box, html`<div class="card-head"><h2>Usage history</h2>${seg(RANGES.map(([v]) => [v, v.replace("d", " days")]), range, "data-range")}</div><div class="card-body flush">${body}</div>`);
    }
    async function loadHistory() {
      history = null; historyError = null; drawHistory();
      const seq = ++historySeq;
      const days = RANGES.find(([v]) => v === range)[1];
      try {
        const h = await api.get("/api/usage/history", { since: `${days - 1}d` }, { signal: ctx.signal });
        if (seq !== historySeq) return;
        history = h;
      } catch (err) {
        if (err?.name === "AbortError" || seq !== historySeq) return;
        historyError = err;
      }
      if (ctx.alive()) drawHistory();
    }
    root.addEventListener("click", (e) => {
      const r = e.target.closest("[data-range]");
      if (r) { range = r.dataset.range; loadHistory(); return; }
      const v = e.target.closest("[data-view]");
      if (v) { view = v.dataset.view; drawHistory(); return; }
      const a = e.target.closest('[data-action="retry"]');
      if (a?.closest("#usage-history")) loadHistory();
      else if (a) load();
    });
    await load();
    await loadHistory();
  },
};

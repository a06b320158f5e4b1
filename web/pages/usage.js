// #/usage: spend against the budgets (today, this month) and spend by model this month.
import * as api from "../api.js";
import { canChange } from "../state.js";
import { html, render, money, moneyDigits, compact, pct, loadingState, errorState, emptyState } from "../ui.js";

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
            : emptyState({ title: "No spend this month", text: "Spend appears here once calls go through this server. Models without a known price count calls and tokens but no dollars." })}</div></section>`);
      applyWidths(root);
    }
    root.addEventListener("click", (e) => { if (e.target.closest('[data-action="retry"]')) load(); });
    await load();
  },
};

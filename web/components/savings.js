// Two overview cards: what the guardrails saved (the `saved` part of GET /api/overview:
// blocked calls of the last 30 days and their estimated cost, by policy) and the
// guardrails in force (GET /api/policies/active). Each has its loading, empty and error
// state; the overview page fetches, these only draw.
import { html, money, compact, num, pct, seconds, errorState, emptyState, icon } from "../ui.js";

/** "Live" or "Demo data": whether the tenant's calls are real or made by `agv-server demo`. */
export function modeBadge(tenant) {
  if (!tenant?.mode) return "";
  return tenant.mode === "demo"
    ? html`<span class="badge info" data-testid="tenant-mode" data-mode="demo" title="Made by agv-server demo: sample calls and incidents, not real traffic">Demo data</span>`
    : html`<span class="badge ok" data-testid="tenant-mode" data-mode="live" title="Real traffic through this gateway">Live traffic</span>`;
}

function savingsBody(saved) {
  if (!saved) return html`<div class="card-body" data-testid="savings-loading" aria-busy="true" aria-label="Loading"><span class="skeleton sk-line"></span><span class="skeleton sk-line"></span><span class="skeleton sk-line short"></span></div>`;
  if (saved.error) return errorState({ message: saved.error }, { testid: "savings-error" });
  const days = saved.days || 30;
  if (!(saved.blocked_calls > 0)) {
    return emptyState({
      title: `Nothing blocked in the last ${days} days`,
      text: "When the kill switch, a budget, a rate limit or another guardrail stops a call, what it would have cost shows here.",
      iconName: "shield", testid: "savings-empty",
      action: html`<a class="btn btn-sm" href="#/policies">Review guardrails</a>`,
    });
  }
  const groups = saved.by_policy || [];
  const max = Math.max(...groups.map((g) => Number(g.cost_avoided_usd) || 0), 0);
  const unpriced = saved.unpriced_calls || 0;
  return html`<div class="card-body">
    <div class="saved-total">
      <div class="kpi-value" data-testid="cost-avoided" title="${String(saved.cost_avoided_usd)}">${money(saved.cost_avoided_usd, { compact: true })}</div>
      <span class="badge warn plain" data-testid="cost-avoided-estimated" title="Blocked calls were never made, so their cost is an estimate">estimated</span>
    </div>
    <p class="hint">Cost avoided by ${compact(saved.blocked_calls)} blocked call${saved.blocked_calls === 1 ? "" : "s"} in the last ${days} days.</p>
    <ul class="saved-list">
      ${groups.map((g) => html`<li data-testid="savings-row" data-group="${g.id}" class="${g.calls ? "" : "dim"}">
        <span class="saved-name">${g.name}</span>
        <span class="saved-calls">${compact(g.calls)} call${g.calls === 1 ? "" : "s"}</span>
        <span class="saved-amount">${money(g.cost_avoided_usd)}</span>
        <span class="share saved-share" aria-hidden="true"><span data-width="${max > 0 ? Math.round(((Number(g.cost_avoided_usd) || 0) / max) * 100) : 0}"></span></span>
      </li>`)}
    </ul>
    <p class="hint saved-note">Estimated: each blocked request at the most it could have cost by the guard's own check (list price, full completion allowance); requests stopped before that check (kill switch, token limit) at their prompt size × the model's input price.${unpriced ? html` ${compact(unpriced)} call${unpriced === 1 ? " is" : "s are"} of a model without a known price and count as $0.` : ""}</p>
  </div>`;
}

export function savingsCard(saved) {
  return html`<section class="card" data-testid="savings" aria-label="Cost avoided">
    <div class="card-head"><h2>Cost avoided</h2><a class="btn btn-sm" href="#/calls?q=${encodeURIComponent("blocked:true")}">Blocked calls</a></div>
    ${savingsBody(saved)}</section>`;
}

const perReq = (v, unit) => (v > 0 ? `${unit === "usd" ? money(v) : num(v)}${unit === "usd" ? "" : " tokens"} per request` : null);
const perMin = (req, tok) => [req > 0 ? `${num(req)} req/min` : null, tok > 0 ? `${compact(tok)} tokens/min` : null].filter(Boolean).join(" · ");

/** [state, text] of one policy as GET /api/policies/active reports it. */
function describe(p, frozen) {
  const t = p.thresholds || {};
  switch (p.id) {
    case "killswitch":
      return frozen ? ["stopped", "On: every call is refused"] : ["on", "Ready: stops all traffic when pressed"];
    case "dg-001": { const s = perReq(t.max_cost_per_request_usd, "usd"); return s ? ["on", s] : ["off", "No cost limit per request"]; }
    case "dg-002": { const s = perReq(t.max_tokens_per_request, "tokens"); return s ? ["on", s] : ["off", "No token limit per request"]; }
    case "dg-003": {
      const key = perMin(t.key_requests_per_minute, t.key_tokens_per_minute);
      const tenant = perMin(t.tenant_requests_per_minute, t.tenant_tokens_per_minute);
      if (!key && !tenant) return ["off", "No rate limit"];
      return ["on", [key ? `per key ${key}` : null, tenant ? `whole tenant ${tenant}` : null].filter(Boolean).join("; ")];
    }
    case "dg-004":
      return p.enabled ? ["on", `Freezes at ${pct(t.failure_spike_ratio)} failures of ${num(t.failure_spike_min_calls)}+ calls in ${seconds(t.failure_spike_window_secs)}`] : ["off", "Off"];
    case "dg-005":
      return p.enabled ? ["on", "Blocks known injection patterns"] : ["off", "Off"];
    case "budget": {
      const parts = [t.budget_daily_usd != null ? `${money(t.budget_daily_usd)} a day` : null, t.budget_monthly_usd != null ? `${money(t.budget_monthly_usd)} a month` : null].filter(Boolean);
      return parts.length ? ["on", `${parts.join(" · ")}, warns at ${pct(t.budget_soft_ratio)}`] : ["off", "No budget"];
    }
    default:
      return [p.enabled ? "on" : "off", p.enabled ? "On" : "Off"];
  }
}

const STATE_BADGE = { on: ["ok", "On"], off: ["", "Off"], stopped: ["bad", "Stopped"] };

/** `active`: the policies response, `null` while loading; `error`: why it failed. */
export function guardrailsCard(active, error, { frozen = false } = {}) {
  let body;
  if (error) body = errorState(error, { testid: "guardrails-error" });
  else if (!active) body = html`<div class="card-body" data-testid="guardrails-loading" aria-busy="true" aria-label="Loading"><span class="skeleton sk-line"></span><span class="skeleton sk-line"></span><span class="skeleton sk-line"></span><span class="skeleton sk-line short"></span></div>`;
  else if (!(active.policies || []).length) body = emptyState({ title: "No guardrails reported", text: "The server listed no checks for this tenant. Open Policies to set limits.", iconName: "shield", testid: "guardrails-empty" });
  else {
    const rows = active.policies.map((p) => [p, ...describe(p, frozen)]);
    const on = rows.filter(([, s]) => s !== "off").length;
    body = html`<div class="card-body">
      <p class="hint"><strong data-testid="guardrails-on">${on} of ${rows.length}</strong> checks have a limit set for this tenant.</p>
      <ul class="guard-list">${rows.map(([p, s, text]) => html`<li data-testid="guardrail" data-policy="${p.id}" data-state="${s}">
        <span class="badge ${STATE_BADGE[s][0]}">${STATE_BADGE[s][1]}</span>
        <span class="guard-text"><strong>${p.name}</strong><span class="cell-sub">${text}</span></span></li>`)}</ul></div>`;
  }
  return html`<section class="card" data-testid="guardrails" aria-label="Guardrails in force">
    <div class="card-head"><h2>Guardrails in force</h2><a class="btn btn-sm" href="#/policies">${icon("shield", 16)} Policies</a></div>
    ${body}</section>`;
}

// #/policies: the guardrails in force and their thresholds (GET /api/policies/active);
// admins edit them (PUT /api/policies, takes effect at once) and can first backtest a
// proposal over recorded calls (POST /api/policies/backtest) to see what would change.
import * as api from "../api.js";
import { canChange } from "../state.js";
import { confirmDialog } from "../components/dialog.js";
import { html, render, money, num, pct, compact, timeAgo, loadingState, errorState, toast, busy, clearErrors, fieldError, formError, policyName, seconds } from "../ui.js";

// Every setting the editor shows: [key, label, unit/kind, hint]
const SETTINGS = [
  ["max_cost_per_request_usd", "Max cost per request", "usd", "dg-001 · estimated before the call, checked after"],
  ["max_tokens_per_request", "Max tokens per request", "int", "dg-002 · prompt estimate plus max_tokens"],
  ["key_requests_per_minute", "Requests per minute, per key", "int", "dg-003"],
  ["key_tokens_per_minute", "Tokens per minute, per key", "int", "dg-003"],
  ["tenant_requests_per_minute", "Requests per minute, whole tenant", "int", "dg-003"],
  ["tenant_tokens_per_minute", "Tokens per minute, whole tenant", "int", "dg-003"],
  ["failure_spike_enabled", "Freeze on a failure spike", "bool", "dg-004"],
  ["failure_spike_ratio", "Failure ratio that freezes", "ratio", "dg-004 · between 0 and 1, e.g. 0.5 = half the calls failed"],
  ["failure_spike_min_calls", "At least this many calls", "int", "dg-004"],
  ["failure_spike_window_secs", "Window (seconds)", "int", "dg-004 · the failures must fall within this many seconds"],
  ["prompt_injection_enabled", "Block prompt injection", "bool", "dg-005"],
  ["budget_daily_usd", "Daily budget", "usd?", "Empty: no daily budget"],
  ["budget_monthly_usd", "Monthly budget", "usd?", "Empty: no monthly budget"],
  ["budget_soft_ratio", "Warn at this share of a budget", "ratio", "e.g. 0.8 opens an incident at 80 %"],
];
const LABEL = Object.fromEntries(SETTINGS.map(([k, l]) => [k, l]));

function fmt(key, v) {
  if (v === null || v === undefined) return "none";
  if (key.endsWith("_usd")) return money(v);
  if (key.endsWith("_ratio")) return pct(v);
  if (key.endsWith("_secs")) return seconds(v);
  return typeof v === "number" ? num(v) : String(v);
}

/** Current values of every setting, read from the active policies. */
function currentValues(policies) {
  const v = {};
  for (const p of policies) for (const [k, val] of Object.entries(p.thresholds || {})) v[k] = val;
  const byId = Object.fromEntries(policies.map((p) => [p.id, p]));
  if (byId["dg-004"]) v.failure_spike_enabled = !!byId["dg-004"].enabled;
  if (byId["dg-005"]) v.prompt_injection_enabled = !!byId["dg-005"].enabled;
  return v;
}

export default {
  name: "policies",
  title: "Policies",
  nav: "policies",
  async mount(root, ctx) {
    let active = null;
    let editing = false;

    async function load() {
      ctx.loading();
      render(root, loadingState());
      try {
        active = await api.get("/api/policies/active", null, { signal: ctx.signal });
        if (!ctx.alive()) return;
        draw();
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        render(root, html`${head()}<div class="card">${errorState(err)}</div>`);
      }
      ctx.ready();
    }
    function head() {
      return html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Policies</h1>
        <p class="sub">The checks every call passes before it reaches the provider. Changes take effect at once for every key of this tenant.</p></div>
        ${canChange() && active && !editing ? html`<div class="actions"><button type="button" class="btn btn-primary" data-action="edit" data-testid="policies-edit">Edit thresholds</button></div>` : ""}</div>`;
    }

    function tableHtml() {
      return html`<section class="card"><div class="card-head"><h2>Guardrails in force</h2><span class="hint">price table ${active.price_table_version ?? "—"}</span></div>
        <div class="card-body flush"><div class="table-wrap"><table class="table stack-sm" data-testid="policies-table"><thead><tr><th>Guardrail</th><th>Status</th><th>Thresholds</th></tr></thead><tbody>
        ${(active.policies || []).map((p) => html`<tr data-testid="policy-row" data-policy-id="${p.id}">
          <td><span class="cell-main">${p.name || policyName(p.id)}</span><div class="cell-sub mono">${p.id}</div></td>
          <td>${p.enabled ? html`<span class="badge ok">On</span>` : html`<span class="badge">Off</span>`}</td>
          <td>${Object.keys(p.thresholds || {}).length ? html`<dl class="dl">${Object.entries(p.thresholds).map(([k, v]) => html`<dt>${(LABEL[k] || k).replace(" (seconds)", "")}</dt><dd class="mono" data-threshold="${k}">${fmt(k, v)}</dd>`)}</dl>` : html`<span class="muted">${p.id === "killswitch" ? "Set on the overview and per key" : "No thresholds"}</span>`}
            ${p.id === "budget" && active.spend ? html`<p class="hint" data-testid="budget-spend">Spent ${money(active.spend.day_usd)} today and ${money(active.spend.month_usd)} this month (UTC).</p>` : ""}</td></tr>`)}
        </tbody></table></div></div></section>`;
    }

    function editorHtml() {
      const v = currentValues(active.policies || []);
      const input = ([key, label, kind, hint]) => {
        const id = `pol-${key}`;
        if (kind === "bool") {
          return html`<div class="field" data-field="${key}"><span class="field-label">${label}</span><label class="check"><input type="checkbox" id="${id}" name="${key}" ${v[key] ? "checked" : ""}> On</label><p class="hint">${hint}</p><p class="field-error" data-error-for="${key}" hidden></p></div>`;
        }
        const val = v[key] === null || v[key] === undefined ? "" : String(v[key]);
        return html`<div class="field" data-field="${key}"><label for="${id}">${label}${kind.startsWith("usd") ? " (USD)" : ""}</label>
          <input class="input" type="number" id="${id}" name="${key}" value="${val}" step="any" min="0" ${kind === "usd?" ? "" : "required"} data-kind="${kind}" data-testid="policy-input-${key}" aria-describedby="${id}-msg">
          <p class="hint">${hint}</p><p class="field-error" id="${id}-msg" data-error-for="${key}" hidden></p></div>`;
      };
      return html`<section class="card" data-testid="policies-editor"><div class="card-head"><h2>Edit thresholds</h2><span class="hint">Backtest first to see which recorded calls the change would decide differently.</span></div>
        <div class="card-body"><form novalidate id="policy-form">
          <div class="grid grid-3">${SETTINGS.map(input)}</div>
          <div class="form-actions">
            <label class="filters">Backtest over <select class="input" name="since" data-testid="backtest-since"><option value="24h">the last 24 hours</option><option value="7d">the last 7 days</option><option value="30d">the last 30 days</option></select></label>
            <span class="spacer"></span>
            <button type="button" class="btn" data-action="cancel">Cancel</button>
            <button type="button" class="btn" data-action="backtest" data-testid="backtest-run">Backtest</button>
            <button type="submit" class="btn btn-primary" data-testid="policies-save">Save and apply</button>
          </div></form></div></section><div id="backtest-box"></div>`;
    }

    function draw() {
      render(root, html`${head()}${editing ? editorHtml() : ""}${tableHtml()}`);
      if (editing) root.querySelector("#policy-form").addEventListener("submit", (e) => { e.preventDefault(); save(); });
    }

    /** The form as overrides, or null after showing what is wrong. */
    function collect(form) {
      clearErrors(form);
      const out = {};
      let bad = null;
      for (const [key, , kind] of SETTINGS) {
        const el = form.elements.namedItem(key);
        if (!el) continue;
        if (kind === "bool") { out[key] = el.checked; continue; }
        const raw = el.value.trim();
        if (raw === "") {
          if (kind === "usd?") { out[key] = null; continue; }
          fieldError(form, key, "Enter a value."); bad = bad || el; continue;
        }
        const n = Number(raw);
        if (!Number.isFinite(n) || n < 0) { fieldError(form, key, "Enter a number of 0 or more."); bad = bad || el; continue; }
        if (kind === "int" && !Number.isInteger(n)) { fieldError(form, key, "Enter a whole number."); bad = bad || el; continue; }
        if (kind === "ratio" && (n <= 0 || n > 1)) { fieldError(form, key, "Enter a number above 0 and at most 1."); bad = bad || el; continue; }
        out[key] = n;
      }
      if (bad) { bad.focus(); return null; }
      return out;
    }
    function serverError(form, err) {
      const key = err.param || SETTINGS.map(([k]) => k).find((k) => err.message?.includes(k));
      if (key && fieldError(form, key, err.message)) form.elements.namedItem(key)?.focus();
      else formError(form, err.message);
    }

    async function save() {
      const form = root.querySelector("#policy-form");
      const overrides = collect(form);
      if (!overrides) return;
      try {
        // PUT replaces every override: keep the stored ones this editor does not show
        // (redaction, for one) and change only what it does.
        const kept = { ...(active?.overrides || {}), ...overrides };
        const submit = form.querySelector('[type="submit"]');
        // A budget the spend already reaches stops the tenant at once: ask first, and save it
        // only when the person confirms (the server refuses it otherwise, and says why).
        const askStop = async (text) => confirmDialog({
          title: "This budget stops the tenant now", text,
          confirmLabel: "Save and stop calls", danger: true,
          action: () => api.request("PUT", "/api/policies", { body: kept, params: { confirm: "stop" } }),
        });
        const check = await busy(submit, () => api.request("PUT", "/api/policies", { body: kept, params: { dry_run: "true" } }));
        const stops = (check?.budget_stops || []).map((b) => `${b.message[0].toUpperCase()}${b.message.slice(1)}.`);
        if (stops.length) {
          if (!(await askStop(stops.join(" ")))) return;
        } else {
          try {
            await busy(submit, () => api.put("/api/policies", kept));
          } catch (err) {
            // Spend that arrived since the check can still make the budget stop the tenant.
            if (err?.code !== "budget_stops_tenant") throw err;
            if (!(await askStop(err.message.replace(/^Not saved: /, "").replace(/\. Raise the budget, or send.*$/, ".")))) return;
          }
        }
        toast("Policies saved and applied", "ok");
        editing = false;
        await load();
      } catch (err) { if (err?.name !== "AbortError") serverError(form, err); }
    }

    async function backtest(btn) {
      const form = root.querySelector("#policy-form");
      const policy = collect(form);
      if (!policy) return;
      const box = root.querySelector("#backtest-box");
      render(box, html`<section class="card"><div class="card-head"><h2>Backtest</h2></div>${loadingState("table")}</section>`);
      try {
        const r = await busy(btn, () => api.post("/api/policies/backtest", { policy, since: form.elements.since.value }));
        if (!ctx.alive()) return;
        render(box, backtestHtml(r));
        box.scrollIntoView({ behavior: "smooth", block: "start" });
      } catch (err) {
        if (err?.name === "AbortError") return;
        render(box, html``);
        serverError(form, err);
      }
    }

    function backtestHtml(r) {
      const rep = r.report || {};
      const changes = rep.changes || [];
      const by = Object.entries(rep.changed_by_policy || {});
      return html`<section class="card" data-testid="backtest-result"><div class="card-head"><h2>Backtest result</h2>
          <span class="hint">${r.range_truncated ? html`capped: from ${timeAgo(r.evaluated_from)}` : html`since ${timeAgo(r.since)}`}</span></div>
        <div class="card-body">
          <div class="facts">
            <div class="fact"><div class="kpi-label">Calls replayed</div><strong data-testid="backtest-evaluated">${compact(rep.evaluated)}</strong></div>
            <div class="fact"><div class="kpi-label">Decided differently</div><strong data-testid="backtest-changed" class="${rep.changed ? "diff-yes" : "diff-no"}">${compact(rep.changed)}</strong></div>
            <div class="fact"><div class="kpi-label">Newly blocked</div><strong>${compact(rep.newly_blocked)}</strong></div>
            <div class="fact"><div class="kpi-label">Newly allowed</div><strong>${compact(rep.newly_allowed)}</strong></div>
            <div class="fact"><div class="kpi-label">Not compared</div><strong>${compact((rep.skipped_kill_switch || 0) + (rep.skipped_no_request || 0))}</strong></div>
          </div>
          ${by.length ? html`<p class="section-gap">By guardrail: ${by.map(([k, n], i) => html`${i ? ", " : ""}<strong>${k === "none" ? "allowed" : policyName(k)}</strong> ${compact(n)}`)}</p>` : ""}
          ${(r.budget_stops || []).map((b) => html`<p class="notice bad section-gap" data-testid="backtest-budget-stop">Saving this stops the tenant: the ${b.period} budget of ${money(b.limit_usd)} is not above the ${money(b.spent_usd)} already spent; calls are blocked until ${new Date(b.until).toLocaleString()}.</p>`)}
          ${!rep.changed ? html`<p class="section-gap">No recorded call would be decided differently. Saving is safe for the traffic seen in this range.</p>` : ""}
        </div>
        ${changes.length ? html`<div class="table-wrap"><table class="table"><thead><tr><th>Call</th><th>When</th><th>Model</th><th>Recorded</th><th>Proposed</th><th>Why</th></tr></thead><tbody>
          ${changes.slice(0, 200).map((c) => html`<tr class="clickable" data-testid="call-row" data-call-id="${c.call_id}" data-href="#/calls/${encodeURIComponent(c.call_id)}">
            <td><a class="rowlink mono" href="#/calls/${encodeURIComponent(c.call_id)}">${c.call_id}</a></td><td>${timeAgo(c.created_at)}</td><td>${c.model || "—"}</td>
            <td>${c.recorded?.blocked ? html`<span class="badge bad">Blocked</span>` : html`<span class="badge ok">Allowed</span>`}</td>
            <td>${c.proposed?.blocked ? html`<span class="badge bad">Blocked · ${policyName(c.proposed.blocked_by)}</span>` : html`<span class="badge ok">Allowed</span>`}</td>
            <td>${c.why || c.decision?.reason || "—"}</td></tr>`)}</tbody></table></div>
          ${changes.length > 200 || rep.changes_truncated ? html`<p class="hint card-body">Showing the first ${Math.min(200, changes.length)} changed calls.</p>` : ""}` : ""}
      </section>`;
    }

    root.addEventListener("click", (e) => {
      const a = e.target.closest("[data-action]");
      const act = a?.dataset.action;
      if (act === "retry") load();
      else if (act === "edit") { editing = true; draw(); root.querySelector("#policy-form input")?.focus(); }
      else if (act === "cancel") { editing = false; draw(); }
      else if (act === "backtest") backtest(a);
      else {
        const row = e.target.closest("tr[data-href]");
        if (row && !e.target.closest("a,button")) ctx.navigate(row.dataset.href);
      }
    });
    await load();
  },
};

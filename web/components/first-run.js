// The operator console's first-run checklist: the four steps from an empty instance to
// the first protected call — a tenant, the upstream, a proxy key, a call — each shown done
// or not (GET /api/operator/setup), with the way to do it. Once all four are done it is
// no longer shown.
import { html, render, icon } from "../ui.js";

const STEPS = [
  ["tenant", "Create a tenant", "A tenant is one customer or team: its keys, calls, budgets and incidents stay its own."],
  ["upstream", "Set the upstream provider", "Where the calls go: an OpenAI-compatible URL and its API key."],
  ["proxy_key", "Create a proxy key", "Your app calls this server with it instead of the provider's key."],
  ["call", "Make a call", "Point the OpenAI SDK at this server; the call is checked, forwarded and recorded."],
];

/**
 * Renders the checklist for `setup` (the answer of GET /api/operator/setup, or null while
 * loading, or an Error). Actions are buttons with data-action: first-run-tenant,
 * first-run-upstream, first-run-keys, first-run-connect.
 */
export function firstRunHtml(setup) {
  if (setup instanceof Error) {
    return html`<p class="hint" data-testid="first-run-box" data-state="unknown">Could not read the setup state: ${setup.message}</p>`;
  }
  if (!setup) return html`<div data-testid="first-run-box" data-state="loading"></div>`;
  const s = setup.steps || {};
  const done = STEPS.filter(([k]) => s[k]).length;
  if (done === STEPS.length) return html`<div data-testid="first-run-box" data-state="complete"></div>`;
  const t = setup.tenant;
  const origin = window.location.origin;
  const action = (key) => {
    if (key === "tenant") return html`<button type="button" class="btn btn-sm" data-action="first-run-tenant">Create one below</button>`;
    if (key === "upstream") return html`<button type="button" class="btn btn-sm" data-action="first-run-upstream">Set it below</button>`;
    if (key === "proxy_key") {
      return t ? html`<button type="button" class="btn btn-sm" data-action="first-run-keys" data-testid="first-run-keys">Open ${t.name}’s API keys</button>`
        : html`<span class="hint">after the tenant</span>`;
    }
    return t ? html`<button type="button" class="btn btn-sm" data-action="first-run-connect" data-testid="first-run-connect">How to connect</button>`
      : html`<span class="hint">after the key</span>`;
  };
  const next = STEPS.find(([k]) => !s[k])?.[0];
  return html`<section class="card first-run" data-testid="first-run-box" data-state="incomplete" aria-labelledby="first-run-title">
    <div class="card-head"><h2 id="first-run-title">Get started: four steps to the first protected call</h2><span class="hint">${done} of ${STEPS.length} done</span></div>
    <div class="card-body"><ol class="checklist" data-testid="first-run">
      ${STEPS.map(([key, title, text], i) => html`<li class="${s[key] ? "done" : key === next ? "next" : ""}" data-testid="first-run-step" data-step="${key}" data-done="${String(!!s[key])}">
        <span class="check" aria-hidden="true">${s[key] ? icon("check", 16) : String(i + 1)}</span>
        <div class="check-text"><strong>${title}</strong> <span class="sr-only">${s[key] ? "(done)" : "(not done yet)"}</span>
          <p class="hint">${key === "call" && t && !s.call ? html`Base URL <code>${origin}/v1</code> with the proxy key, in place of the provider’s.` : text}</p></div>
        <div class="check-action">${s[key] ? html`<span class="badge ok">Done</span>` : action(key)}</div></li>`)}
    </ol></div></section>`;
}

export function renderFirstRun(box, setup) {
  render(box, firstRunHtml(setup));
}

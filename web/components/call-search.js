// Searching recorded calls: the search box (free text plus filters such as
// `user:alice model:gpt-4o status:5xx blocked:true since:24h`, passed as `q` to
// GET /api/calls), the results table and "Load more". Used by #/calls and #/incidents.
import * as api from "../api.js";
import { html, render, compact, nanos, micros, timeAgo, httpBadge, policyName, loadingState, emptyState, errorState, shortId, moneyDigits } from "../ui.js";

export const EXAMPLES = ["blocked:true", "status:5xx", "since:24h", "model:gpt-4o", "user:alice", "policy:prompt_injection"];

export function searchForm(q, { label = "Search calls", placeholder = 'refund user:alice since:24h "auto-renew"' } = {}) {
  return html`<form class="search-form" role="search" data-role="call-search">
    <label class="sr-only" for="search-input">${label}</label>
    <div class="search">
      <input class="input" id="search-input" name="q" type="search" value="${q}" data-testid="search-input" placeholder="${placeholder}" autocomplete="off" spellcheck="false">
      <button type="submit" class="btn btn-primary" data-testid="search-submit">Search</button>
    </div>
    <div class="chips" aria-label="Filter examples">${EXAMPLES.map((x) => html`<button type="button" class="chip" data-chip="${x}">${x}</button>`)}</div>
    <p class="field-error" data-error-for="q" hidden></p>
  </form>`;
}

/** Wires the chips: clicking one appends its filter to the box. */
export function bindChips(form) {
  form.addEventListener("click", (e) => {
    const chip = e.target.closest("[data-chip]");
    if (!chip) return;
    const input = form.elements.q;
    const v = input.value.trim();
    input.value = v ? `${v} ${chip.dataset.chip}` : chip.dataset.chip;
    input.focus();
  });
}

// Pages import shortId from here as well as from ui.js.
export { shortId };

/** Rows of calls: what was asked (the list's `preview`) leads, the id's telling end beside it. */
export function callRows(calls) {
  const digits = moneyDigits(calls.map((c) => (c.cost ?? 0) / 1e9));
  return calls.map((c) => {
    const href = `#/calls/${encodeURIComponent(c.id)}`;
    const tokens = c.total_tokens ?? ((c.prompt_tokens ?? 0) + (c.completion_tokens ?? 0) || null);
    return html`<tr class="clickable" data-testid="call-row" data-call-id="${c.id}" data-href="${href}">
      <td>${timeAgo(c.created_at)}</td>
      <td class="call-cell">${c.preview
        ? html`<a class="rowlink call-preview" href="${href}" title="${c.preview}" data-testid="call-preview">${c.preview}</a><div class="cell-sub"><span class="mono" title="${c.id}" data-full-id="${c.id}">${shortId(c.id)}</span> · ${c.endpoint || ""}${c.stream ? " · stream" : ""}</div>`
        : html`<a class="rowlink mono" href="${href}" title="${c.id}" data-full-id="${c.id}">${shortId(c.id)}</a><div class="cell-sub">${c.endpoint || ""}${c.stream ? " · stream" : ""}</div>`}</td>
      <td class="nowrap">${c.model || html`<span class="muted">—</span>`}</td>
      <td>${c.end_user || html`<span class="muted">—</span>`}</td>
      <td>${httpBadge(c.status, c.blocked)}${c.blocked ? html` <span class="badge bad plain" title="${c.blocked_by || ""}">Blocked · ${policyName(c.blocked_by)}</span>` : ""}</td>
      <td class="num">${tokens === null ? "—" : compact(tokens)}</td>
      <td class="num">${nanos(c.cost, { digits })}</td>
      <td class="num">${micros(c.latency_us)}</td></tr>`;
  });
}
export function callsTable(calls) {
  return html`<div class="table-wrap"><table class="table" data-testid="calls-table"><thead><tr><th>When</th><th>Call</th><th>Model</th><th>End user</th><th>Result</th><th class="num">Tokens</th><th class="num">Cost</th><th class="num">Latency</th></tr></thead>
    <tbody>${callRows(calls)}</tbody></table></div>`;
}

/**
 * Loads and shows calls for `q` in `box`, with "Load more". `ids` names the testids of
 * the states (page-… on the calls page, calls-… inside another page).
 */
export function callResults(box, { q, ctx, prefix = "page", onDone = () => {}, form = null }) {
  let cursor = null;
  let calls = [];
  async function first() {
    render(box, html`<div data-testid="${prefix}-loading">${loadingState("table")}</div>`);
    cursor = null; calls = [];
    try {
      const r = await api.get("/api/calls", { q: q || undefined, limit: 50 }, { signal: ctx.signal });
      if (!ctx.alive()) return;
      calls = r.data || [];
      cursor = r.next_cursor || null;
      draw();
    } catch (err) {
      if (err?.name === "AbortError" || !ctx.alive()) return;
      if (err?.status === 400 && form) {
        const msg = form.querySelector('[data-error-for="q"]');
        if (msg) { msg.textContent = err.message; msg.hidden = false; form.elements.q.setAttribute("aria-invalid", "true"); }
      }
      render(box, errorState(err, { testid: `${prefix}-error`, retry: err?.status !== 400 }));
      box.querySelector('[data-action="retry"]')?.addEventListener("click", first);
    }
    onDone();
  }
  function draw() {
    if (!calls.length) {
      render(box, emptyState({
        title: q ? "No calls match this search" : "No calls recorded yet",
        text: q ? "Try fewer words or filters, a longer time range (since:7d), or check the spelling of user and model names." : "Calls appear here as soon as a client sends requests through this server with one of your API keys.",
        testid: `${prefix}-empty`, iconName: "calls",
        action: q ? html`<a class="btn btn-sm" href="#/calls">Show all calls</a>` : html`<a class="btn btn-sm" href="#/keys">Create an API key</a>`,
      }));
      return;
    }
    render(box, html`<p class="hint search-count card-body">${compact(calls.length)}${cursor ? "+" : ""} call${calls.length === 1 ? "" : "s"}${q ? html` matching <code>${q}</code>` : ", newest first"}</p>
      ${callsTable(calls)}
      ${cursor ? html`<div class="more"><button type="button" class="btn" data-action="more-calls">Load more</button></div>` : ""}`);
  }
  box.addEventListener("click", async (e) => {
    const more = e.target.closest('[data-action="more-calls"]');
    if (more) {
      more.disabled = true;
      more.textContent = "Loading…";
      try {
        const r = await api.get("/api/calls", { q: q || undefined, limit: 50, cursor }, { signal: ctx.signal });
        calls = calls.concat(r.data || []);
        cursor = r.next_cursor || null;
        draw();
      } catch (err) {
        if (err?.name === "AbortError") return;
        more.disabled = false;
        more.textContent = "Load more";
        render(box.querySelector(".more") || box, errorState(err, { testid: `${prefix}-error`, retry: false }));
      }
      return;
    }
    const row = e.target.closest("tr[data-href]");
    if (row && !e.target.closest("a,button")) ctx.navigate(row.dataset.href);
  });
  return first();
}

// The instance upstream card of the operator console: where every tenant's calls go (unless
// a tenant has its own), where that value comes from, a form to set it — the key is sent
// once, stored encrypted by the server and never shown again (only "set" and its last four
// characters) — and "Test connection", which asks the upstream for its model list.
// GET/PUT/DELETE /api/operator/upstream, POST /api/operator/upstream/test.
import * as api from "../api.js";
import { html, render, icon, timeAgo, loadingState, errorState, toast, field, validate, validators, formValues, showApiError, busy, clearErrors } from "../ui.js";
import { confirmDialog } from "./dialog.js";

const FROM = { console: "set in the console", default: "built-in default", flag: "command-line flag", "config.toml": "config.toml" };
const from = (s) => (s ? FROM[s] || (s.startsWith("env ") ? `environment (${s.slice(4)})` : s) : "");

/** Renders the card into `box`; `onChange()` runs after the upstream was saved or reset. */
export function mountUpstream(box, ctx, { onChange = () => {} } = {}) {
  let state = null, error = null, test = null;
  render(box, html`<section class="card" data-testid="upstream-card" id="upstream">
    <div class="card-head"><h2>Upstream provider</h2><span class="hint">where calls go, for every tenant without its own</span></div>
    <div class="card-body">
      <div id="up-state" aria-live="polite"></div>
      <form novalidate id="up-form" class="section-gap">
        ${field({ name: "base_url", label: "Base URL", required: true, testid: "upstream-url", placeholder: "https://api.openai.com/v1", autocomplete: "off", hint: "OpenAI-compatible, usually ending in /v1." })}
        ${field({ name: "api_key", label: "API key", type: "password", testid: "upstream-key", autocomplete: "off", placeholder: "sk-…", hint: "Leave empty to keep the current key. Stored encrypted; it is never shown again." })}
        <p class="hint">Saved here, it overrides <code>upstream_url</code> and <code>upstream_api_key</code> from the environment or config.toml, for the next call — no restart.</p>
        <div class="form-actions">
          <button type="submit" class="btn btn-primary" data-testid="upstream-save">Save</button>
          <button type="button" class="btn" data-action="upstream-test" data-testid="upstream-test">Test connection</button>
          <span class="spacer"></span>
          <button type="button" class="btn btn-ghost" data-action="upstream-reset" data-testid="upstream-reset" hidden>Use the configured value</button>
        </div>
      </form>
      <div id="up-test" aria-live="polite"></div>
    </div></section>`);
  const $ = (s) => box.querySelector(s);
  const form = $("#up-form");

  function draw() {
    const out = $("#up-state");
    if (error) { render(out, errorState(error, { testid: "upstream-error" })); return; }
    if (!state) { render(out, loadingState("table")); return; }
    const s = state;
    render(out, html`<dl class="dl" data-testid="upstream-state" data-source="${s.source}" data-key-set="${String(!!s.api_key_set)}">
      <dt>In use</dt><dd><span class="mono" data-testid="upstream-in-use">${s.base_url}</span> <span class="badge plain ${s.source === "console" ? "accent" : ""}">${from(s.base_url_from)}</span></dd>
      <dt>API key</dt><dd data-testid="upstream-key-state">${s.api_key_set
        ? html`<span class="badge ok">Set</span>${s.api_key_last4 ? html` <span class="mono">…${s.api_key_last4}</span>` : ""} <span class="hint">${from(s.api_key_from)}</span>`
        : html`<span class="badge">Not set</span> <span class="hint">fine for an upstream that needs none</span>`}</dd>
      ${s.source === "console" ? html`<dt>Saved</dt><dd>${timeAgo(s.updated_at)} <span class="hint">· configured otherwise: <span class="mono">${s.configured?.base_url}</span></span></dd>` : ""}
    </dl>`);
    const url = form.elements.namedItem("base_url");
    if (!url.value) url.value = s.base_url || "";
    $("[data-action='upstream-reset']").hidden = s.source !== "console";
  }

  function drawTest() {
    const out = $("#up-test");
    if (!test) { render(out, html``); return; }
    if (test.running) { render(out, html`<p class="hint section-gap" data-testid="upstream-test-result" data-ok="pending"><span class="spinner" aria-hidden="true"></span>&nbsp; Asking ${state?.base_url || "the upstream"}/models…</p>`); return; }
    const r = test.result;
    render(out, html`<div class="notice ${r.ok ? "ok" : "bad"} section-gap" role="status" data-testid="upstream-test-result" data-ok="${String(!!r.ok)}">
      <span><strong>${r.ok ? "Connected" : "Not connected"}</strong>: ${r.message}${r.latency_ms !== undefined ? html` <span class="muted">· ${r.latency_ms} ms</span>` : ""}</span></div>`);
  }

  async function load() {
    try {
      state = await api.get("/api/operator/upstream", null, { signal: ctx.signal });
      error = null;
    } catch (err) {
      if (err?.name === "AbortError") return;
      error = err;
    }
    if (ctx.alive()) draw();
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const httpUrl = (v) => (/^https?:\/\/[^\s/]+/.test(String(v).trim()) ? "" : "Enter the full base URL, like https://api.openai.com/v1.");
    if (!validate(form, { base_url: [validators.required, httpUrl] })) return;
    const v = formValues(form);
    const body = { base_url: v.base_url.trim() };
    if (v.api_key.trim()) body.api_key = v.api_key.trim();
    try {
      state = await busy(form.querySelector('[type="submit"]'), () => api.put("/api/operator/upstream", body));
      form.elements.namedItem("api_key").value = "";
      test = null; drawTest();
      draw();
      toast("Upstream saved. The next call uses it.", "ok");
      onChange();
    } catch (err) {
      if (err?.name === "AbortError") return;
      showApiError(form, err);
    }
  });

  box.addEventListener("click", async (e) => {
    const a = e.target.closest("[data-action]");
    if (!a) return;
    if (a.dataset.action === "retry") { error = null; draw(); return load(); }
    if (a.dataset.action === "upstream-test") {
      clearErrors(form);
      test = { running: true }; drawTest();
      try {
        const result = await busy(a, () => api.post("/api/operator/upstream/test", {}));
        test = { result };
      } catch (err) {
        if (err?.name === "AbortError") return;
        test = { result: { ok: false, message: err.message } };
      }
      if (ctx.alive()) drawTest();
      return;
    }
    if (a.dataset.action === "upstream-reset") {
      const ok = await confirmDialog({
        title: "Use the configured upstream?", confirmLabel: "Use the configured value", danger: false,
        text: `Calls go to ${state?.configured?.base_url || "the configured upstream"} again (from ${from(state?.configured?.base_url_from)}); the key saved here is deleted.`,
        action: () => api.del("/api/operator/upstream"),
      });
      if (!ok) return;
      form.elements.namedItem("base_url").value = "";
      test = null; drawTest();
      toast("The configured upstream is in use again.", "ok");
      await load();
      onChange();
    }
  });

  draw();
  return load();
}

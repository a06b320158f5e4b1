// Shared building blocks of the console: an escaping html`` template, formatters for
// numbers, money and times, the loading/empty/error states, badges, toasts and form
// helpers. Nothing here talks to the server (that is api.js) and nothing here knows a page.
//
// Every value interpolated into html`` is escaped unless it is itself the result of html``
// (or raw(), used only for constant markup such as icons). The CSP forbids inline styles
// and handlers, so markup carries classes and data-action attributes only.

class Safe {
  constructor(s) { this.s = s; }
  toString() { return this.s; }
}

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "`": "&#96;" };
export function escapeHtml(v) {
  return String(v).replace(/[&<>"'`]/g, (c) => ESC[c]);
}

function part(v) {
  if (v === null || v === undefined || v === false) return "";
  if (v instanceof Safe) return v.s;
  if (Array.isArray(v)) return v.map(part).join("");
  return escapeHtml(v);
}

/** Tagged template: escapes every interpolation; nested html`` stays as markup. */
export function html(strings, ...values) {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += part(values[i]) + strings[i + 1];
  return new Safe(out);
}

/** Trusted constant markup (icons). Never pass server data. */
export function raw(s) { return new Safe(s); }

/** Replaces the children of `el` with the markup. */
export function render(el, markup) {
  el.innerHTML = markup instanceof Safe ? markup.s : escapeHtml(markup ?? "");
  return el;
}

export function $(sel, root = document) { return root.querySelector(sel); }
export function $$(sel, root = document) { return Array.from(root.querySelectorAll(sel)); }

// ---------- formatting ----------
const LOCALE = undefined; // the browser's
const usd2 = new Intl.NumberFormat(LOCALE, { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 2 });
const usd4 = new Intl.NumberFormat(LOCALE, { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 4 });
const usdCompact = new Intl.NumberFormat(LOCALE, { style: "currency", currency: "USD", notation: "compact", maximumFractionDigits: 1 });
const intFmt = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 0 });
const decFmt = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 2 });
const compactFmt = new Intl.NumberFormat(LOCALE, { notation: "compact", maximumFractionDigits: 1 });
const pctFmt = new Intl.NumberFormat(LOCALE, { style: "percent", maximumFractionDigits: 1 });
const absFmt = new Intl.DateTimeFormat(LOCALE, { dateStyle: "medium", timeStyle: "medium" });
const shortDate = new Intl.DateTimeFormat(LOCALE, { month: "short", day: "numeric" });
const hourFmt = new Intl.DateTimeFormat(LOCALE, { hour: "2-digit", minute: "2-digit" });
const weekday = new Intl.DateTimeFormat(LOCALE, { weekday: "short" });

const usdFixed = { 2: usd2, 4: new Intl.NumberFormat(LOCALE, { style: "currency", currency: "USD", minimumFractionDigits: 4, maximumFractionDigits: 4 }) };

/**
 * US dollars; null/undefined is "unknown" (a price the server does not know). Alone, an
 * amount gets the digits it needs (four below a dollar, else cents); `digits` (from
 * moneyDigits) fixes them, so that the rows of a table and their total read alike.
 */
export function money(usd, { compact = false, digits = 0 } = {}) {
  if (usd === null || usd === undefined || Number.isNaN(Number(usd))) return "—";
  const n = Number(usd);
  if (compact && Math.abs(n) >= 10000) return usdCompact.format(n);
  if (usdFixed[digits]) return usdFixed[digits].format(n);
  if (n !== 0 && Math.abs(n) < 1) return usd4.format(n);
  return usd2.format(n);
}
/** The fraction digits that show every amount of a set: four when any is a fraction of a dollar, else two. */
export function moneyDigits(amounts) {
  return amounts.some((v) => { const n = Math.abs(Number(v)); return n > 0 && n < 1; }) ? 4 : 2;
}
/** Money stored as nano-dollars (call and incident `cost`); `digits` as for money(). */
export function nanos(n, opts = {}) {
  if (n === null || n === undefined) return "—";
  return money(Number(n) / 1e9, opts);
}
export function num(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "—";
  return Number.isInteger(Number(n)) ? intFmt.format(n) : decFmt.format(n);
}
export function compact(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "—";
  return Math.abs(Number(n)) >= 10000 ? compactFmt.format(n) : intFmt.format(n);
}
export function pct(ratio) {
  if (ratio === null || ratio === undefined || Number.isNaN(Number(ratio))) return "—";
  return pctFmt.format(ratio);
}
export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = Number(n), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? intFmt.format(v) : decFmt.format(v)} ${units[i]}`;
}
export function micros(us) {
  if (us === null || us === undefined) return "—";
  const n = Number(us);
  if (n < 1000) return `${intFmt.format(n)} µs`;
  if (n < 1e6) return `${decFmt.format(n / 1000)} ms`;
  return `${decFmt.format(n / 1e6)} s`;
}
export function seconds(s) {
  if (s === null || s === undefined) return "—";
  const n = Number(s);
  if (n < 60) return `${intFmt.format(n)} s`;
  if (n < 3600) return `${intFmt.format(Math.round(n / 60))} min`;
  if (n < 86400) return `${decFmt.format(n / 3600)} h`;
  return `${decFmt.format(n / 86400)} days`;
}

/** Milliseconds since the epoch from a number (ms) or an RFC 3339 string. */
export function toMillis(t) {
  if (t === null || t === undefined || t === "") return null;
  if (typeof t === "number") return t;
  const n = Number(t);
  if (!Number.isNaN(n) && /^\d+$/.test(String(t))) return n;
  const d = Date.parse(t);
  return Number.isNaN(d) ? null : d;
}
export function absTime(t) {
  const ms = toMillis(t);
  return ms === null ? "—" : absFmt.format(new Date(ms));
}
export function relTime(t, now = Date.now()) {
  const ms = toMillis(t);
  if (ms === null) return "—";
  const diff = Math.round((now - ms) / 1000);
  const future = diff < 0;
  const s = Math.abs(diff);
  let text;
  if (s < 45) return future ? "in a moment" : "just now";
  if (s < 3600) text = `${Math.max(1, Math.round(s / 60))} min`;
  else if (s < 86400) text = `${Math.round(s / 3600)} h`;
  else if (s < 86400 * 2) return future ? "tomorrow" : "yesterday";
  else if (s < 86400 * 45) text = `${Math.round(s / 86400)} days`;
  else return shortDate.format(new Date(ms)) + (new Date(ms).getFullYear() !== new Date(now).getFullYear() ? ` ${new Date(ms).getFullYear()}` : "");
  return future ? `in ${text}` : `${text} ago`;
}
/** A <time> element: relative text, the absolute time on hover; refreshed by refreshTimes(). */
export function timeAgo(t, fallback = "—") {
  const ms = toMillis(t);
  if (ms === null) return html`<span class="muted">${fallback}</span>`;
  return html`<time class="nowrap" datetime="${new Date(ms).toISOString()}" title="${absTime(ms)}" data-rel="${ms}">${relTime(ms)}</time>`;
}
export function refreshTimes(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll("time[data-rel]")) el.textContent = relTime(Number(el.dataset.rel), now);
}
export function hourLabel(ms) { return hourFmt.format(new Date(ms)); }
export function dayLabel(ms) { return `${weekday.format(new Date(ms))} ${shortDate.format(new Date(ms))}`; }

/**
 * call_0192f7a4c1d87e3a9b5c2d1e4f3a2b1c → call_…4f3a2b1c. Call ids begin with the time
 * (UUIDv7), so calls of one day share their start: the end is what tells them apart.
 */
export function shortId(id) {
  const s = String(id || "");
  const i = s.indexOf("_");
  return i > 0 && s.length > i + 13 ? `${s.slice(0, i + 1)}…${s.slice(-8)}` : s;
}
/** An id shortened for reading; the whole id on hover, and copying it copies the whole id (app.js). */
export function idText(id) {
  return html`<span class="mono" title="${id}" data-full-id="${id}">${shortId(id)}</span>`;
}

/**
 * A streamed answer (server-sent events of chat completion chunks) as its text: the
 * deltas of each choice joined, tool-call arguments too. `null` when the body is not such
 * a stream.
 */
export function streamedText(body) {
  if (typeof body !== "string" || !/^\s*(data|event|:)/.test(body)) return null;
  const choices = new Map();
  let chunks = 0, finish = null;
  for (const line of body.split(/\r?\n/)) {
    if (!line.startsWith("data:")) continue;
    const data = line.slice(5).trim();
    if (!data || data === "[DONE]") continue;
    let chunk;
    try { chunk = JSON.parse(data); } catch { continue; }
    chunks++;
    for (const c of chunk.choices || []) {
      const i = c.index ?? 0;
      const d = c.delta || {};
      let text = choices.get(i) || "";
      if (typeof d.content === "string") text += d.content;
      else if (typeof c.text === "string") text += c.text;
      for (const t of d.tool_calls || []) {
        if (t.function?.name) text += `${text ? "\n" : ""}[tool call ${t.function.name}] `;
        if (t.function?.arguments) text += t.function.arguments;
      }
      choices.set(i, text);
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  if (!chunks) return null;
  const text = [...choices.entries()].sort((a, b) => a[0] - b[0]).map(([, t]) => t).join("\n\n— next choice —\n\n");
  return { text, chunks, finish };
}

/** Pretty JSON when the text is JSON, otherwise the text itself. */
export function prettyJson(text) {
  if (text === null || text === undefined) return "";
  if (typeof text !== "string") return JSON.stringify(text, null, 2);
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

// ---------- icons (constant markup) ----------
const ICONS = {
  overview: '<path d="M3 10.5 10 4l7 6.5V17a1 1 0 0 1-1 1h-4v-5H8v5H4a1 1 0 0 1-1-1z" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linejoin="round"/>',
  incidents: '<path d="M10 3 18 17H2Z" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linejoin="round"/><path d="M10 8v4M10 14.2v.3" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/>',
  calls: '<circle cx="9" cy="9" r="5.5" fill="none" stroke="currentColor" stroke-width="1.6"/><path d="m13 13 4.5 4.5" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/>',
  keys: '<circle cx="7" cy="10" r="3.5" fill="none" stroke="currentColor" stroke-width="1.6"/><path d="M10.5 10H18m-3 0v3m-2.5-3v2" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linecap="round"/>',
  policies: '<path d="M10 2.5 16.5 5v5c0 4-3 6.5-6.5 7.5C6.5 16.5 3.5 14 3.5 10V5Z" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linejoin="round"/><path d="m7 10 2 2 4-4" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linecap="round" stroke-linejoin="round"/>',
  usage: '<path d="M3 17V9m5 8V4m5 13v-6m5 6V7" stroke="currentColor" stroke-width="2" stroke-linecap="round"/>',
  alerts: '<path d="M5 14V9a5 5 0 0 1 10 0v5l1.5 2h-13Z" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linejoin="round"/><path d="M8.5 18h3" stroke="currentColor" stroke-width="1.6" stroke-linecap="round"/>',
  audit: '<path d="M5 2.5h7l3.5 3.5v11.5H5Z" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linejoin="round"/><path d="M8 9h5M8 12h5M8 15h3" stroke="currentColor" stroke-width="1.5" stroke-linecap="round"/>',
  settings: '<circle cx="10" cy="10" r="2.6" fill="none" stroke="currentColor" stroke-width="1.6"/><path d="M10 2.5v2.2m0 10.6v2.2M2.5 10h2.2m10.6 0h2.2M4.7 4.7l1.6 1.6m7.4 7.4 1.6 1.6M4.7 15.3l1.6-1.6m7.4-7.4 1.6-1.6" stroke="currentColor" stroke-width="1.6" stroke-linecap="round"/>',
  operator: '<rect x="2.5" y="3.5" width="15" height="5" rx="1.2" fill="none" stroke="currentColor" stroke-width="1.6"/><rect x="2.5" y="11.5" width="15" height="5" rx="1.2" fill="none" stroke="currentColor" stroke-width="1.6"/><path d="M5.5 6h.1M5.5 14h.1" stroke="currentColor" stroke-width="2.2" stroke-linecap="round"/>',
  enforcement: '<circle cx="10" cy="10" r="7" fill="none" stroke="currentColor" stroke-width="1.6"/><path d="m5.2 14.8 9.6-9.6" stroke="currentColor" stroke-width="1.6" stroke-linecap="round"/>',
  shield: '<path d="M10 2.5 16.5 5v5c0 4-3 6.5-6.5 7.5C6.5 16.5 3.5 14 3.5 10V5Z" fill="currentColor" opacity=".18"/><path d="M10 2.5 16.5 5v5c0 4-3 6.5-6.5 7.5C6.5 16.5 3.5 14 3.5 10V5Z" fill="none" stroke="currentColor" stroke-width="1.7" stroke-linejoin="round"/><path d="m7 10 2 2 4-4" fill="none" stroke="currentColor" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/>',
  warn: '<path d="M10 3 18 17H2Z" fill="currentColor" opacity=".18"/><path d="M10 3 18 17H2Z" fill="none" stroke="currentColor" stroke-width="1.7" stroke-linejoin="round"/><path d="M10 8v4M10 14.2v.3" stroke="currentColor" stroke-width="1.9" stroke-linecap="round"/>',
  stop: '<circle cx="10" cy="10" r="7.5" fill="currentColor" opacity=".18"/><circle cx="10" cy="10" r="7.5" fill="none" stroke="currentColor" stroke-width="1.7"/><rect x="7" y="7" width="6" height="6" rx="1" fill="currentColor"/>',
  power: '<path d="M10 2.5v7" stroke="currentColor" stroke-width="2" stroke-linecap="round"/><path d="M6 5.2a6 6 0 1 0 8 0" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round"/>',
  inbox: '<path d="M3 11 5 4h10l2 7v5H3Z M3 11h4l1 2h4l1-2h4" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linejoin="round"/>',
  error: '<circle cx="10" cy="10" r="7.5" fill="none" stroke="currentColor" stroke-width="1.7"/><path d="M10 6v5M10 13.6v.3" stroke="currentColor" stroke-width="1.9" stroke-linecap="round"/>',
  copy: '<rect x="7" y="7" width="10" height="10" rx="1.5" fill="none" stroke="currentColor" stroke-width="1.6"/><path d="M13 4.5V4a1 1 0 0 0-1-1H4a1 1 0 0 0-1 1v8a1 1 0 0 0 1 1h.5" fill="none" stroke="currentColor" stroke-width="1.6"/>',
  download: '<path d="M10 3v9m-4-4 4 4 4-4M4 16h12" fill="none" stroke="currentColor" stroke-width="1.7" stroke-linecap="round" stroke-linejoin="round"/>',
  plus: '<path d="M10 4v12M4 10h12" stroke="currentColor" stroke-width="1.9" stroke-linecap="round"/>',
  check: '<path d="m5 10.5 3.2 3.2L15 7" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"/>',
  close: '<path d="m5 5 10 10M15 5 5 15" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/>',
};
export function icon(name, size = 18) {
  return raw(`<svg width="${size}" height="${size}" viewBox="0 0 20 20" aria-hidden="true" focusable="false">${ICONS[name] || ""}</svg>`);
}

// ---------- badges ----------
const SEVERITY_CLASS = { low: "", medium: "warn", high: "bad", critical: "sev-critical" };
export function severityBadge(s) {
  return html`<span class="badge ${SEVERITY_CLASS[s] ?? ""}">${cap(s || "unknown")}</span>`;
}
const STATUS_CLASS = { open: "bad", acknowledged: "warn", resolved: "ok" };
export function statusBadge(s) {
  return html`<span class="badge ${STATUS_CLASS[s] ?? ""}">${cap(s || "unknown")}</span>`;
}
const OUTCOME_CLASS = { pass: "ok", block: "bad", throttle: "warn", freeze: "bad" };
export function outcomeBadge(o) {
  return html`<span class="badge ${OUTCOME_CLASS[o] ?? ""}">${cap(o || "—")}</span>`;
}
export function httpBadge(status, blocked) {
  const cls = blocked ? "bad" : status >= 500 ? "bad" : status >= 400 ? "warn" : "ok";
  return html`<span class="badge ${cls} plain mono">${status ?? "—"}</span>`;
}
export function cap(s) { s = String(s ?? ""); return s.charAt(0).toUpperCase() + s.slice(1).replace(/_/g, " "); }

export const POLICY_NAMES = {
  killswitch: "Kill switch", "dg-001": "Max cost per request", "dg-002": "Max tokens per request",
  "dg-003": "Rate limits", "dg-004": "Failure-spike freeze", "dg-005": "Prompt-injection block", budget: "Budgets",
};
export function policyName(id) { return POLICY_NAMES[id] || id || "—"; }

// ---------- states ----------
export function loadingState(kind = "page") {
  if (kind === "table") {
    return html`<div class="card-body" data-testid="page-loading" aria-busy="true" aria-label="Loading">
      <span class="skeleton sk-line"></span><span class="skeleton sk-line"></span><span class="skeleton sk-line short"></span></div>`;
  }
  return html`<div data-testid="page-loading" aria-busy="true" aria-label="Loading">
    <span class="skeleton sk-title"></span>
    <div class="kpis"><span class="skeleton sk-kpi"></span><span class="skeleton sk-kpi"></span><span class="skeleton sk-kpi"></span><span class="skeleton sk-kpi"></span></div>
    <span class="skeleton sk-block"></span></div>`;
}
export function emptyState({ title, text, action = "", iconName = "inbox", testid = "page-empty" }) {
  return html`<div class="state" data-testid="${testid}">
    <div class="state-icon">${icon(iconName, 22)}</div>
    <h3>${title}</h3>${text ? html`<p>${text}</p>` : ""}${action}</div>`;
}
export function errorState(err, { retry = true, testid = "page-error" } = {}) {
  const msg = err?.message || "Something went wrong.";
  const code = err?.code ? `${err.status ? err.status + " · " : ""}${err.code}` : err?.status ? String(err.status) : "";
  return html`<div class="state error" data-testid="${testid}" role="alert">
    <div class="state-icon">${icon("error", 22)}</div>
    <h3>${err?.status === 403 ? "Not allowed" : err?.status === 404 ? "Not found" : "Could not load this"}</h3>
    <p>${msg}</p>${code ? html`<p class="error-code">${code}</p>` : ""}
    ${retry ? html`<button type="button" class="btn" data-action="retry">Retry</button>` : ""}</div>`;
}

// ---------- toasts ----------
export function toast(message, kind = "") {
  const box = document.getElementById("toasts");
  if (!box) return;
  const el = document.createElement("div");
  el.className = `toast ${kind}`;
  el.textContent = message;
  box.appendChild(el);
  setTimeout(() => el.remove(), kind === "bad" ? 7000 : 4000);
}

// ---------- clipboard & downloads ----------
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast("Copied to the clipboard", "ok");
  } catch {
    // Clipboard needs a secure context; fall back to selecting a textarea.
    const ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.className = "sr-only";
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch { ok = false; }
    ta.remove();
    toast(ok ? "Copied to the clipboard" : "Copy failed: select the text and copy it by hand", ok ? "ok" : "bad");
  }
}
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.className = "sr-only";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

// ---------- forms ----------
const EMAIL_RE = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;
export const validators = {
  required: (v) => (String(v ?? "").trim() ? "" : "This field is required."),
  email: (v) => (EMAIL_RE.test(String(v ?? "").trim()) ? "" : "Enter an email address like name@example.com."),
  password: (v) => (String(v ?? "").length >= 10 ? "" : "Use at least 10 characters."),
  url: (v) => { try { const u = new URL(String(v)); return /^https?:$/.test(u.protocol) ? "" : "Use an http:// or https:// URL."; } catch { return "Enter a full URL like https://hooks.slack.com/…"; } },
  number: (v) => (v === "" || !Number.isNaN(Number(v)) ? "" : "Enter a number."),
};

/** A labelled input with room for its error message. */
export function field({ name, label, type = "text", value = "", hint = "", required = false, testid = "", autocomplete = "", placeholder = "", options = null, rows = 0, attrs = "" }) {
  const id = `f-${name}-${Math.random().toString(36).slice(2, 8)}`;
  const describedBy = `${id}-msg${hint ? ` ${id}-hint` : ""}`;
  let control;
  if (options) {
    control = html`<select class="input" id="${id}" name="${name}" aria-describedby="${describedBy}" ${testid ? html`data-testid="${testid}"` : ""}>${options.map((o) => html`<option value="${o.value}" ${String(o.value) === String(value) ? "selected" : ""}>${o.label}</option>`)}</select>`;
  } else if (rows) {
    control = html`<textarea class="input" id="${id}" name="${name}" rows="${rows}" aria-describedby="${describedBy}" ${required ? "required" : ""} ${testid ? html`data-testid="${testid}"` : ""} placeholder="${placeholder}">${value}</textarea>`;
  } else {
    control = html`<input class="input ${attrs}" id="${id}" name="${name}" type="${type}" value="${value}" aria-describedby="${describedBy}" ${required ? "required" : ""} ${autocomplete ? html`autocomplete="${autocomplete}"` : ""} ${placeholder ? html`placeholder="${placeholder}"` : ""} ${type === "number" ? "step=any" : ""} ${testid ? html`data-testid="${testid}"` : ""}>`;
  }
  return html`<div class="field" data-field="${name}">
    <label for="${id}">${label}${required || options ? "" : html` <span class="muted">(optional)</span>`}</label>
    ${control}
    ${hint ? html`<p class="hint" id="${id}-hint">${hint}</p>` : ""}
    <p class="field-error" id="${id}-msg" data-error-for="${name}" hidden></p>
  </div>`;
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll("[data-error-for]")) { el.hidden = true; el.textContent = ""; }
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const fe = form.querySelector(".form-error");
  if (fe) fe.remove();
}
/** Shows `message` under the field `name`; returns false when the form has no such field. */
export function fieldError(form, name, message) {
  const msg = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
  const input = form.elements.namedItem(name);
  if (!msg) return false;
  msg.textContent = message;
  msg.hidden = false;
  if (input && input.setAttribute) input.setAttribute("aria-invalid", "true");
  return true;
}
export function formError(form, message) {
  let fe = form.querySelector(".form-error");
  if (!fe) {
    fe = document.createElement("div");
    fe.className = "form-error";
    fe.setAttribute("role", "alert");
    form.prepend(fe);
  }
  fe.textContent = message;
}
/** Error codes the server uses for a field when `param` is not given. */
const CODE_FIELDS = {
  invalid_email: "email", invalid_password: "password", invalid_credentials: "password", invalid_new_password: "new_password",
  wrong_password: "current_password", invalid_current_password: "current_password", invalid_reason: "reason",
  invalid_name: "name", invalid_note: "note", invalid_assignee: "assignee", invalid_webhook_url: "url", invalid_role: "role",
  invalid_scope: "scope", email_taken: "email", user_exists: "email",
};
/** Maps an API error onto the form: `param` (or a known code) to its field, else a banner. */
export function showApiError(form, err) {
  const name = err?.param || CODE_FIELDS[err?.code];
  if (name && fieldError(form, name, err.message)) {
    const input = form.elements.namedItem(name);
    if (input && input.focus) input.focus();
    return;
  }
  formError(form, err?.message || "Something went wrong.");
}
/** Runs the client-side rules: { fieldName: [validator, …] }. Focuses the first bad field. */
export function validate(form, rules) {
  clearErrors(form);
  let first = null;
  for (const [name, checks] of Object.entries(rules)) {
    const input = form.elements.namedItem(name);
    const value = input ? input.value : "";
    for (const check of checks) {
      const msg = check(value, form);
      if (msg) {
        fieldError(form, name, msg);
        if (!first) first = input;
        break;
      }
    }
  }
  if (first && first.focus) first.focus();
  return !first;
}
export function formValues(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    out[el.name] = el.type === "checkbox" ? el.checked : el.value;
  }
  return out;
}
/** Disables the submit button with a spinner while `work` runs. */
export async function busy(button, work) {
  if (!button) return work();
  const label = button.innerHTML;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.innerHTML = `<span class="spinner" aria-hidden="true"></span> ${escapeHtml(button.textContent.trim())}`;
  try { return await work(); } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.innerHTML = label;
  }
}

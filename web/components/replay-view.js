// A replay beside its original: what each side asked and answered, their SHA-256 hashes,
// model, status, latency and cost, the match level as a coloured badge, and what differs
// marked (facts in a differing row, words of the answer that were removed or added).
//
// The report (POST /api/replay/{call_id}, GET /api/replays/{id}) carries each side's
// facts; the text comes from the two calls (GET /api/calls/{id}), which the caller loads
// and passes in — `undefined` while they load, `null` when they could not be read.
// On a narrow screen the two sides stack (CSS `.sbs`).

import { html, micros, nanos, num, policyName, prettyJson, streamedText, cap, absTime } from "../ui.js";

/** EXACT … MISMATCH, best first, with what each means and its colour. */
export const MATCH_LEVELS = {
  EXACT: { cls: "ok", label: "Exact", text: "The same answer: the content hashes are identical." },
  LOGICAL: { cls: "info", label: "Logical", text: "The same decisions, status, finish reasons and tool calls." },
  SEMANTIC: { cls: "warn", label: "Semantic", text: "The same words once whitespace and case are ignored." },
  MISMATCH: { cls: "bad", label: "Mismatch", text: "The answer is different." },
};

/** The match level as a badge (`data-level` for tests and styling). */
export function matchBadge(level, { big = false } = {}) {
  const m = MATCH_LEVELS[level];
  if (!m) return html`<span class="badge plain" data-testid="match-badge" data-level="">No grade</span>`;
  return html`<span class="badge ${m.cls}${big ? " badge-lg" : ""}" data-testid="match-badge" data-level="${level}" title="${m.text}">${m.label}</span>`;
}

/** The answer of a stored response as people read it: the text of its choices. */
export function answerText(body) {
  if (body === null || body === undefined || body === "") return null;
  const s = streamedText(body);
  if (s) return s.text;
  try {
    const v = JSON.parse(body);
    if (v?.error) return `Error: ${v.error.message || JSON.stringify(v.error)}`;
    if (Array.isArray(v?.choices)) {
      return v.choices.map((c) => {
        const m = c.message || {};
        let t = typeof m.content === "string" ? m.content : Array.isArray(m.content) ? m.content.map((p) => p.text || "").join("") : (c.text ?? "");
        for (const tc of m.tool_calls || []) t += `${t ? "\n" : ""}[tool call ${tc.function?.name}] ${tc.function?.arguments ?? ""}`;
        return t;
      }).join("\n\n— next choice —\n\n");
    }
    return JSON.stringify(v, null, 2);
  } catch { return body; }
}

const MAX_DIFF_WORDS = 1500;

/**
 * Word diff of two texts (longest common subsequence over whitespace-kept tokens).
 * Returns [leftParts, rightParts], each [{text, changed}]; `null` when too long to diff.
 */
export function wordDiff(a, b) {
  const ta = a.split(/(\s+)/).filter((t) => t !== "");
  const tb = b.split(/(\s+)/).filter((t) => t !== "");
  if (ta.length > MAX_DIFF_WORDS || tb.length > MAX_DIFF_WORDS) return null;
  const n = ta.length, m = tb.length;
  const dp = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) dp[i][j] = ta[i] === tb[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const left = [], right = [];
  const push = (arr, text, changed) => {
    const last = arr[arr.length - 1];
    if (last && last.changed === changed) last.text += text; else arr.push({ text, changed });
  };
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (ta[i] === tb[j]) { push(left, ta[i], false); push(right, tb[j], false); i++; j++; }
    else if (dp[i + 1][j] >= dp[i][j + 1]) { push(left, ta[i], !/^\s+$/.test(ta[i])); i++; }
    else { push(right, tb[j], !/^\s+$/.test(tb[j])); j++; }
  }
  for (; i < n; i++) push(left, ta[i], !/^\s+$/.test(ta[i]));
  for (; j < m; j++) push(right, tb[j], !/^\s+$/.test(tb[j]));
  return [left, right];
}

function marked(parts, cls) {
  return parts.map((p) => (p.changed ? html`<mark class="${cls}">${p.text}</mark>` : p.text));
}

function hashRow(label, value, differs) {
  return html`<dt>${label}</dt><dd class="mono hash${differs ? " differs" : ""}" title="${value || ""}">${value || "—"}</dd>`;
}

function factRow(label, value, differs, testid = "") {
  return html`<dt>${label}</dt><dd class="${differs ? "differs" : ""}" ${testid ? html`data-testid="${testid}"` : ""}>${value}</dd>`;
}

/** The text of a call's request or answer, or why there is none. */
function textBlock(call, which, diffParts, diffCls, testid) {
  if (call === undefined) return html`<span class="skeleton sk-line"></span><span class="skeleton sk-line short"></span>`;
  if (call === null) return html`<p class="hint" data-testid="${testid}">The call could not be read, so its text is not shown; the hashes above still name it.</p>`;
  if (call.body_pruned_at) return html`<p class="hint" data-testid="${testid}">Removed by retention; the SHA-256 still names what was sent.</p>`;
  const body = which === "request" ? call.request_body : call.response_body;
  if (!body) return html`<p class="hint" data-testid="${testid}">Not stored (no ${which}, or the tenant keeps hashes only).</p>`;
  if (which === "request") return html`<pre class="wrap sbs-pre" data-testid="${testid}">${prettyJson(body)}</pre>`;
  const text = answerText(body);
  return html`<pre class="wrap sbs-pre" data-testid="${testid}">${diffParts ? marked(diffParts, diffCls) : text}</pre>
    <details class="section-gap"><summary class="link">Raw response</summary><pre class="wrap sbs-pre">${prettyJson(body)}</pre></details>`;
}

function sideHtml({ title, side, call, other, diffParts, diffCls, testid }) {
  const s = side || {};
  const o = other || {};
  const latency = s.latency_us ?? call?.latency_us;
  const cost = s.cost !== undefined ? s.cost : call?.cost;
  const blocked = s.blocked ? html` <span class="badge bad">Blocked by ${policyName(s.blocked_by)}</span>` : "";
  return html`<section class="sbs-side" data-testid="${testid}">
    <h3>${title} ${s.call_id ? html`<a class="mono sbs-id" href="#/calls/${encodeURIComponent(s.call_id)}" title="${s.call_id}">${s.call_id}</a>` : ""}</h3>
    <dl class="dl sbs-facts">
      ${factRow("Model", s.model || "—", s.model !== o.model, `${testid}-model`)}
      ${factRow(html`Status`, html`${s.status ?? "—"}${blocked}`, s.status !== o.status, `${testid}-status`)}
      ${factRow("Latency", latency === undefined || latency === null ? "—" : micros(latency), false)}
      ${factRow("Cost", cost === undefined ? "—" : nanos(cost), false)}
      ${factRow("When", s.created_at ? absTime(s.created_at) : "—", false)}
      ${hashRow("Request SHA-256", s.request_sha256 ?? call?.request_sha256, s.request_sha256 !== undefined && o.request_sha256 !== undefined && s.request_sha256 !== o.request_sha256)}
      ${hashRow("Response SHA-256", s.response_sha256, s.response_sha256 !== o.response_sha256)}
      ${hashRow("Content SHA-256", s.content_sha256, s.content_sha256 !== o.content_sha256)}
    </dl>
    <h4>Answer</h4>${textBlock(call, "response", diffParts, diffCls, `${testid}-response`)}
    <details class="section-gap"><summary class="link">Request</summary>${textBlock(call, "request", null, "", `${testid}-request`)}</details>
  </section>`;
}

function upstreamHtml(r, calls) {
  const cmp = r.comparison || {};
  const drift = r.model_drift && typeof r.model_drift === "object" ? r.model_drift : { detected: !!r.model_drift, reasons: [] };
  const left = calls.original, right = calls.replay;
  let diff = null;
  const lt = left && !left.body_pruned_at ? answerText(left.response_body) : null;
  const rt = right && !right.body_pruned_at ? answerText(right.response_body) : null;
  if (lt !== null && rt !== null && lt !== rt) diff = wordDiff(lt, rt);
  const checks = [["Decisions", cmp.same_decisions], ["Status", cmp.same_status], ["Finish reasons", cmp.same_finish_reasons], ["Tool calls", cmp.same_tool_calls], ["Text", cmp.same_text]];
  return html`<div data-testid="replay-result" data-mode="upstream" data-level="${r.match_level || ""}">
    <div class="replay-verdict">
      ${matchBadge(r.match_level, { big: true })}
      <p><strong>${MATCH_LEVELS[r.match_level]?.text || "Not graded."}</strong>
        ${drift.detected ? html`<span class="badge warn" data-testid="drift-badge">Model drift</span>` : ""}</p>
    </div>
    <ul class="checks" aria-label="What was compared">
      ${checks.map(([label, same]) => html`<li class="${same ? "same" : "changed"}" data-same="${same ? "1" : "0"}">${same ? "✓" : "≠"} ${label}${label === "Text" && !same && cmp.same_normalized_text ? " (same ignoring case and spaces)" : ""}</li>`)}
    </ul>
    ${drift.detected && drift.reasons?.length ? html`<div class="notice" role="note"><strong>Drift:</strong>&nbsp;${drift.reasons.join("; ")}</div>` : ""}
    ${cmp.notes?.length ? html`<ul class="hint">${cmp.notes.map((n) => html`<li>${n}</li>`)}</ul>` : ""}
    ${diff === null && lt !== null && rt !== null && lt !== rt ? html`<p class="hint">The answers are too long to mark word by word; compare them below.</p>` : ""}
    <div class="sbs">
      ${sideHtml({ title: "Original", side: r.original, call: left, other: r.replay, diffParts: diff?.[0], diffCls: "diff-del", testid: "replay-original" })}
      ${sideHtml({ title: "Replay", side: r.replay, call: right, other: r.original, diffParts: diff?.[1], diffCls: "diff-ins", testid: "replay-new" })}
    </div>
    ${diff ? html`<p class="hint sbs-legend"><mark class="diff-del">removed</mark> only in the original · <mark class="diff-ins">added</mark> only in the replay</p>` : ""}
  </div>`;
}

function decisionList(ds, changed) {
  if (!ds?.length) return html`<p class="hint">No checks ran.</p>`;
  return html`<ul class="sbs-decisions">${ds.map((d) => html`<li class="${changed.has(d.policy) ? "differs" : ""}" data-policy="${d.policy}"><span>${policyName(d.policy)}</span> <span class="badge ${d.outcome === "pass" ? "ok" : d.outcome === "throttle" ? "warn" : "bad"}">${cap(d.outcome)}</span>${d.value !== undefined && d.value !== null ? html` <span class="hint">${num(d.value)}${d.unit ? ` ${d.unit}` : ""}${d.threshold !== undefined && d.threshold !== null ? html` / ${num(d.threshold)}` : ""}</span>` : ""}</li>`)}</ul>`;
}

function policyHtml(r) {
  const o = r.original || {};
  const changed = new Set((r.changes || []).map((c) => (typeof c === "string" ? c : c.policy)));
  const verdict = r.would_block
    ? html`<span class="badge bad badge-lg" data-testid="match-badge" data-level="WOULD_BLOCK">Would be blocked</span>`
    : r.differs
      ? html`<span class="badge warn badge-lg" data-testid="match-badge" data-level="DIFFERS">Decided differently</span>`
      : html`<span class="badge ok badge-lg" data-testid="match-badge" data-level="SAME">Same outcome</span>`;
  const then = o.blocked ? `Blocked by ${policyName(o.blocked_by)}` : "Allowed";
  const now = r.would_block ? `Blocked by ${policyName(r.blocked_by)}` : "Allowed";
  return html`<div data-testid="replay-result" data-mode="policy">
    <div class="replay-verdict">${verdict}<p><strong>Policy dry run against today's guardrails</strong> — nothing was sent to the provider.</p></div>
    <div class="sbs">
      <section class="sbs-side" data-testid="replay-original"><h3>Back then</h3>
        <dl class="dl sbs-facts">${factRow("Outcome", then, then !== now)}${factRow("Status", o.status ?? "—", o.status !== r.status)}</dl>
        <h4>Decisions</h4>${decisionList(o.decisions, changed)}</section>
      <section class="sbs-side" data-testid="replay-new"><h3>Today</h3>
        <dl class="dl sbs-facts">${factRow("Outcome", now, then !== now)}${factRow("Status", r.status ?? "—", o.status !== r.status)}</dl>
        <h4>Decisions</h4>${decisionList(r.decisions, changed)}</section>
    </div>
    ${changed.size ? html`<p class="hint">Marked: the checks that decide differently today.</p>` : ""}
  </div>`;
}

/**
 * The whole comparison. `calls` = {original, replay}: call records, `undefined` while
 * loading, `null` when unreadable (upstream mode only).
 */
export function replayView(report, calls = {}) {
  return report.mode === "policy" ? policyHtml(report) : upstreamHtml(report, calls);
}

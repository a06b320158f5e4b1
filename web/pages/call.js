// #/calls/{id}: the call inspector — what was asked and answered (pretty JSON), each
// guardrail decision with its measured value and threshold, replays (a policy dry run
// against today's rules, or sending the stored request upstream again) and certificates.
// A streamed answer reads as its assembled text; the raw chunks are one click away.
import * as api from "../api.js";
import { canChange } from "../state.js";
import { html, render, icon, compact, nanos, micros, num, timeAgo, absTime, httpBadge, outcomeBadge, policyName, prettyJson, loadingState, errorState, emptyState, toast, copyText, saveBlob, cap, streamedText } from "../ui.js";
import { confirmDialog, infoDialog } from "../components/dialog.js";

function bodyBlock(title, text, truncated, sha, testid, prunedAt) {
  const pretty = prettyJson(text);
  const missing = prunedAt
    ? html`<p class="muted" data-testid="${testid}">Removed by retention ${timeAgo(prunedAt)}; the SHA-256 below still names what was sent.</p>`
    : html`<p class="muted" data-testid="${testid}">Not stored (no response, or the tenant's redaction keeps hashes only).</p>`;
  return html`<section class="card"><div class="card-head"><h2>${title}</h2>
      ${truncated ? html`<span class="badge warn plain" title="Only the first part was stored; the hash covers the whole body">truncated</span>` : ""}
      <div class="body-tools">${text ? html`<button type="button" class="btn btn-sm" data-copy="${testid}">${icon("copy", 14)} Copy</button>` : ""}</div></div>
    <div class="card-body">${text ? html`<pre class="tall wrap" data-testid="${testid}">${pretty}</pre>` : missing}
      ${sha ? html`<p class="hint">SHA-256 <span class="mono">${sha}</span></p>` : ""}</div></section>`;
}

/** A streamed response: the answer as text, the server-sent events it came in underneath. */
function streamBlock(c, s) {
  return html`<section class="card"><div class="card-head"><h2>Response</h2>
      <span class="badge plain" title="Assembled from the stream's chunks">streamed · ${compact(s.chunks)} chunk${s.chunks === 1 ? "" : "s"}${s.finish ? ` · ${s.finish}` : ""}</span>
      ${c.response_truncated ? html`<span class="badge warn plain" title="Only the first part was stored; the hash covers the whole body">truncated</span>` : ""}
      <div class="body-tools"><button type="button" class="btn btn-sm" data-copy="call-response">${icon("copy", 14)} Copy</button></div></div>
    <div class="card-body"><pre class="tall wrap" data-testid="call-response">${s.text || "(no text: the stream carried no content)"}</pre>
      <details class="section-gap" data-testid="call-response-raw"><summary class="link">Raw chunks</summary><pre class="tall wrap">${c.response_body}</pre></details>
      ${c.response_sha256 ? html`<p class="hint">SHA-256 <span class="mono">${c.response_sha256}</span></p>` : ""}</div></section>`;
}

function decisionsTable(decisions, testid = "decision-row") {
  if (!decisions?.length) return html`<p class="hint card-body">No checks ran (for example, the request could not be parsed).</p>`;
  return html`<div class="table-wrap"><table class="table"><thead><tr><th>Check</th><th>Outcome</th><th class="num">Measured</th><th class="num">Threshold</th><th>Why</th><th class="num">Took</th></tr></thead><tbody>
    ${decisions.map((d) => html`<tr data-testid="${testid}" data-policy="${d.policy}" data-outcome="${d.outcome}">
      <td><span class="cell-main">${policyName(d.policy)}</span><div class="cell-sub mono">${d.policy}</div></td>
      <td class="decision-outcome">${outcomeBadge(d.outcome)}</td>
      <td class="num">${d.value === undefined || d.value === null ? "—" : `${num(d.value)}${d.unit ? ` ${d.unit}` : ""}`}</td>
      <td class="num">${d.threshold === undefined || d.threshold === null ? "—" : `${num(d.threshold)}${d.unit ? ` ${d.unit}` : ""}`}</td>
      <td>${d.reason}</td><td class="num">${d.micros ? micros(d.micros) : "—"}</td></tr>`)}
  </tbody></table></div>`;
}

function replayHtml(r) {
  if (r.mode === "policy") {
    return html`<div data-testid="replay-result" data-mode="policy">
      <p><strong>Policy dry run</strong> against today's guardrails — nothing was sent to the provider.</p>
      <div class="facts">
        <div class="fact"><div class="kpi-label">Today it would be</div><strong class="${r.would_block ? "diff-yes" : "diff-no"}">${r.would_block ? `Blocked (${policyName(r.blocked_by)})` : "Allowed"}</strong></div>
        <div class="fact"><div class="kpi-label">Back then it was</div><strong>${r.original?.blocked ? `Blocked (${policyName(r.original.blocked_by)})` : "Allowed"}</strong></div>
        <div class="fact"><div class="kpi-label">Different?</div><strong class="${r.differs ? "diff-yes" : "diff-no"}">${r.differs ? "Yes" : "No"}</strong></div>
      </div>
      ${r.changes?.length ? html`<ul>${r.changes.map((c) => html`<li>${typeof c === "string" ? c : JSON.stringify(c)}</li>`)}</ul>` : ""}
      <h3 class="section-gap">Decisions today</h3>${decisionsTable(r.decisions, "replay-decision-row")}
      <p class="hint">Replay <span class="mono">${r.id}</span></p></div>`;
  }
  const cmp = r.comparison || {};
  const yes = (b) => (b ? html`<span class="diff-no">same</span>` : html`<span class="diff-yes">different</span>`);
  return html`<div data-testid="replay-result" data-mode="upstream">
    <p><strong>Upstream replay</strong> — the stored request was sent to the provider again${r.replay_call_id ? html` as <a class="mono" href="#/calls/${encodeURIComponent(r.replay_call_id)}">${r.replay_call_id}</a>` : ""}.</p>
    <div class="facts">
      <div class="fact"><div class="kpi-label">Match</div><strong>${cap(r.match_level || "—")}</strong></div>
      <div class="fact"><div class="kpi-label">Model drift</div><strong class="${r.model_drift ? "diff-yes" : "diff-no"}">${r.model_drift ? "Yes" : "No"}</strong></div>
      <div class="fact"><div class="kpi-label">Status</div><strong>${r.original?.status ?? "—"} → ${r.replay?.status ?? "—"}</strong></div>
    </div>
    <dl class="dl section-gap"><dt>Decisions</dt><dd>${yes(cmp.same_decisions)}</dd><dt>Status</dt><dd>${yes(cmp.same_status)}</dd>
      <dt>Finish reasons</dt><dd>${yes(cmp.same_finish_reasons)}</dd><dt>Tool calls</dt><dd>${yes(cmp.same_tool_calls)}</dd>
      <dt>Text</dt><dd>${yes(cmp.same_text)}${!cmp.same_text && cmp.same_normalized_text ? html` <span class="muted">(same after normalising whitespace and case)</span>` : ""}</dd></dl>
    ${cmp.notes?.length ? html`<ul>${cmp.notes.map((n) => html`<li>${n}</li>`)}</ul>` : ""}
    <p class="hint">Replay <span class="mono">${r.id}</span></p></div>`;
}

export default {
  name: "call",
  title: "Call",
  nav: "calls",
  async mount(root, ctx) {
    const id = ctx.params.id;
    let call = null;
    const crumbs = html`<div class="crumbs"><a href="#/calls">Calls</a> / <span class="mono">${id}</span></div>`;

    async function load() {
      ctx.loading();
      render(root, html`${crumbs}${loadingState()}`);
      try {
        call = await api.get(`/api/calls/${encodeURIComponent(id)}`, null, { signal: ctx.signal });
        if (!ctx.alive()) return;
        draw();
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        render(root, html`${crumbs}<div class="page-head"><div class="titles"><h1 data-testid="page-title">Call</h1><p class="sub mono">${id}</p></div></div>
          <div class="card">${err?.status === 404 ? emptyState({ title: "No such call", text: "It may belong to another tenant, or the link is mistyped.", action: html`<a class="btn" href="#/calls">Search calls</a>`, testid: "page-error", iconName: "error" }) : errorState(err)}</div>`);
      }
      ctx.ready();
    }

    function draw() {
      const c = call;
      const tokens = c.total_tokens ?? null;
      const stream = c.stream ? streamedText(c.response_body) : null;
      render(root, html`${crumbs}
        <div class="page-head"><div class="titles">
            <div class="row">${httpBadge(c.status, c.blocked)}${c.blocked ? html`<span class="badge bad">Blocked by ${policyName(c.blocked_by)}</span>` : html`<span class="badge ok">Allowed</span>`}${c.stream ? html`<span class="badge plain">stream</span>` : ""}</div>
            <h1 data-testid="page-title">${c.model || c.endpoint || "Call"}</h1>
            <p class="sub"><span class="mono" data-testid="call-id">${c.id}</span> <button type="button" class="btn btn-sm btn-ghost" data-copy-id="${c.id}" title="Copy the call id" aria-label="Copy the call id">${icon("copy", 14)}</button> · ${timeAgo(c.created_at)} · ${absTime(c.created_at)}</p></div>
          ${canChange() ? html`<div class="actions">
            <button type="button" class="btn" data-action="replay-policy" data-testid="replay-policy" title="Check the stored request against today's guardrails; nothing is sent">Dry run against today's policy</button>
            <button type="button" class="btn" data-action="replay-upstream" data-testid="replay-upstream" title="Send the stored request to the provider again">Replay upstream</button>
            <button type="button" class="btn btn-primary" data-action="certificate" data-testid="issue-certificate">Issue certificate</button></div>` : ""}
        </div>
        ${c.error ? html`<div class="notice bad" role="note"><strong>Error:</strong>&nbsp;${c.error}</div>` : ""}
        <div class="kpis">
          <div class="kpi"><div class="kpi-label">Tokens</div><div class="kpi-value">${tokens === null ? "—" : compact(tokens)}</div><div class="kpi-note">${c.prompt_tokens ?? "—"} in · ${c.completion_tokens ?? "—"} out${c.cached_tokens ? ` · ${c.cached_tokens} cached` : ""}</div></div>
          <div class="kpi"><div class="kpi-label">Cost</div><div class="kpi-value">${nanos(c.cost)}</div><div class="kpi-note">${c.cost === null ? "price unknown" : "at the price table"}</div></div>
          <div class="kpi"><div class="kpi-label">Latency</div><div class="kpi-value">${micros(c.latency_us)}</div><div class="kpi-note">provider ${micros(c.upstream_latency_us)} · checks ${micros(c.enforcement_us)}</div></div>
          <div class="kpi"><div class="kpi-label">Provider attempts</div><div class="kpi-value">${num(c.upstream_attempts)}</div><div class="kpi-note">${c.upstream || "not called"}</div></div>
        </div>
        <section class="card"><div class="card-head"><h2>Details</h2></div><div class="card-body"><dl class="dl">
          <dt>Endpoint</dt><dd>${c.endpoint}</dd>
          <dt>End user</dt><dd>${c.end_user ? html`<a href="#/calls?q=${encodeURIComponent(`user:${c.end_user}`)}">${c.end_user}</a>` : "—"}</dd>
          <dt>Session</dt><dd>${c.session_id ? html`<a href="#/calls?q=${encodeURIComponent(`session:${c.session_id}`)}">${c.session_id}</a>` : "—"}</dd>
          <dt>API key</dt><dd class="mono">${c.key_id}</dd>
          ${c.metadata ? html`<dt>Metadata</dt><dd><code>${JSON.stringify(c.metadata)}</code></dd>` : ""}
        </dl></div></section>
        <section class="card"><div class="card-head"><h2>Guardrail decisions</h2><span class="hint">in the order they ran</span></div><div class="card-body flush">${decisionsTable(c.decisions)}</div></section>
        <div id="replay-box"></div>
        <div class="grid grid-2">
          ${bodyBlock("Request", c.request_body, c.request_truncated, c.request_sha256, "call-request", c.body_pruned_at)}
          ${stream ? streamBlock(c, stream) : bodyBlock("Response", c.response_body, c.response_truncated, c.response_sha256, "call-response", c.body_pruned_at)}
        </div>`);
    }

    function showReplay(r) {
      const box = root.querySelector("#replay-box");
      render(box, html`<section class="card"><div class="card-head"><h2>Replay result</h2><button type="button" class="btn btn-sm btn-ghost" data-action="close-replay">Close</button></div><div class="card-body">${replayHtml(r)}</div></section>`);
      box.scrollIntoView({ behavior: "smooth", block: "nearest" });
    }

    async function issueCertificate(btn) {
      btn.disabled = true;
      try {
        let cert;
        try {
          cert = await api.post("/api/certificates", { call_id: id });
        } catch (err) {
          // The console contract names the subject as {"subject":"call","id"}; accept either.
          if (err?.status !== 400) throw err;
          cert = await api.post("/api/certificates", { subject: "call", id });
        }
        const text = JSON.stringify(cert, null, 2);
        const certId = cert.certificate_id || cert.id || "certificate";
        await infoDialog({
          title: "Certificate issued", wide: true, testid: "certificate-dialog",
          body: html`<p>A signed statement of what this call was and how it was decided. Anyone can check it offline with <code>agv-server verify CERT.json</code>, or online at <a href="/v1/certificates/${encodeURIComponent(certId)}/verify" target="_blank" rel="noopener">/v1/certificates/${certId}/verify</a>.</p>
            <div class="row section-gap"><button type="button" class="btn" data-cert="copy">${icon("copy", 14)} Copy</button><button type="button" class="btn" data-cert="download" data-testid="certificate-download">${icon("download", 14)} Download</button></div>
            <pre class="tall section-gap" data-testid="certificate-json">${text}</pre>`,
          onMount: (dlg) => dlg.addEventListener("click", (e) => {
            const b = e.target.closest("[data-cert]");
            if (!b) return;
            if (b.dataset.cert === "copy") copyText(text);
            else saveBlob(new Blob([text], { type: "application/json" }), `${certId}.json`);
          }),
        });
      } catch (err) {
        if (err?.name !== "AbortError") toast(`Could not issue the certificate: ${err.message}`, "bad");
      } finally { btn.disabled = false; }
    }

    root.addEventListener("click", async (e) => {
      const cp = e.target.closest("[data-copy]");
      if (cp) {
        const stream = call.stream ? streamedText(call.response_body) : null;
        if (cp.dataset.copy === "call-response" && stream) copyText(stream.text);
        else copyText(prettyJson(cp.dataset.copy === "call-request" ? call.request_body : call.response_body));
        return;
      }
      const cid = e.target.closest("[data-copy-id]");
      if (cid) { copyText(cid.dataset.copyId); return; }
      const a = e.target.closest("[data-action]");
      const act = a?.dataset.action;
      if (act === "retry") return load();
      if (act === "close-replay") { render(root.querySelector("#replay-box"), html``); return; }
      if (act === "replay-policy") {
        a.disabled = true;
        try { showReplay(await api.post(`/api/replay/${encodeURIComponent(id)}`, { mode: "policy" })); } catch (err) { if (err?.name !== "AbortError") toast(`Dry run failed: ${err.message}`, "bad"); } finally { a.disabled = false; }
        return;
      }
      if (act === "replay-upstream") {
        let report = null;
        const ok = await confirmDialog({
          title: "Send this request to the provider again?",
          text: "The stored request goes through the guardrails and to the provider as a new call. It costs what a normal call costs and is recorded like one.",
          confirmLabel: "Replay upstream",
          action: async () => { report = await api.post(`/api/replay/${encodeURIComponent(id)}`, { mode: "upstream" }); },
        });
        if (ok && report) showReplay(report);
        return;
      }
      if (act === "certificate") return issueCertificate(a);
    });

    await load();
  },
};

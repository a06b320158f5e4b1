// #/calls/{id}: the call inspector — what was asked and answered (pretty JSON), each
// guardrail decision with its measured value and threshold, replays (a policy dry run
// against today's rules, or sending the stored request upstream again) shown beside the
// original (components/replay-view.js), and certificates for the call or the replay.
// `#/calls/{id}?replay=rpl_…` opens a replay made before (an incident's batch links here).
// A streamed answer reads as its assembled text; the raw chunks are one click away.
import * as api from "../api.js";
import { canChange } from "../state.js";
import { html, render, icon, compact, nanos, micros, num, timeAgo, absTime, httpBadge, outcomeBadge, policyName, prettyJson, loadingState, errorState, emptyState, toast, copyText, streamedText } from "../ui.js";
import { confirmDialog, infoDialog } from "../components/dialog.js";
import { replayView } from "../components/replay-view.js";
import { issueCertificate, certificateHtml, certificateLoading, certificateError, wireCertificate } from "../components/certificate.js";

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

    // The replay shown now: its report, and the two calls it compares (their text).
    let shown = null;

    function replayBox() { return root.querySelector("#replay-box"); }

    function drawReplay() {
      const box = replayBox();
      if (!box || !shown) return;
      const { report: r, calls, cert, certState } = shown;
      let certPart = "";
      if (certState === "loading") certPart = certificateLoading();
      else if (certState === "error") certPart = certificateError(shown.certError);
      else if (cert) certPart = certificateHtml(cert);
      render(box, html`<section class="card" data-testid="replay-card"><div class="card-head"><h2>Replay ${r.mode === "policy" ? "— policy dry run" : "— sent upstream again"}</h2>
          <span class="hint mono">${r.id}</span>
          ${canChange() && r.id ? html`<button type="button" class="btn btn-sm btn-primary" data-action="replay-certificate" data-testid="replay-issue-certificate" ${certState === "loading" ? "disabled" : ""}>Issue certificate</button>` : ""}
          <button type="button" class="btn btn-sm btn-ghost" data-action="close-replay">Close</button></div>
        <div class="card-body">${replayView(r, calls)}
          ${certPart ? html`<div class="section-gap" id="replay-cert">${certPart}</div>` : ""}</div></section>`);
      const certEl = box.querySelector('[data-testid="certificate"]');
      if (certEl && cert) wireCertificate(certEl, cert);
    }

    function replayLoading(what) {
      const box = replayBox();
      if (!box) return;
      shown = null;
      render(box, html`<section class="card" data-testid="replay-loading" aria-busy="true"><div class="card-head"><h2>${what}</h2></div>
        <div class="card-body"><div class="sbs"><div><span class="skeleton sk-line"></span><span class="skeleton sk-block"></span></div><div><span class="skeleton sk-line"></span><span class="skeleton sk-block"></span></div></div></div></section>`);
      box.scrollIntoView({ behavior: "smooth", block: "nearest" });
    }

    function replayFailed(what, err) {
      const box = replayBox();
      if (!box) return;
      shown = null;
      render(box, html`<section class="card"><div class="card-head"><h2>${what}</h2><button type="button" class="btn btn-sm btn-ghost" data-action="close-replay">Close</button></div>
        ${errorState(err, { retry: false, testid: "replay-error" })}</section>`);
    }

    async function showReplay(r) {
      shown = { report: r, calls: {} };
      if (r.mode !== "policy") {
        shown.calls = { original: undefined, replay: r.replay_call_id ? undefined : null };
      }
      drawReplay();
      replayBox()?.scrollIntoView({ behavior: "smooth", block: "start" });
      if (r.mode === "policy") return;
      const mine = shown;
      const read = (cid) => (cid === id && call ? Promise.resolve(call) : api.get(`/api/calls/${encodeURIComponent(cid)}`, null, { signal: ctx.signal }).catch((err) => { if (err?.name === "AbortError") throw err; return null; }));
      try {
        const [o, n] = await Promise.all([read(r.original?.call_id || r.call_id), r.replay_call_id ? read(r.replay_call_id) : Promise.resolve(null)]);
        if (!ctx.alive() || shown !== mine) return;
        shown.calls = { original: o, replay: n };
        drawReplay();
      } catch { /* the page was left */ }
    }

    async function replayCertificate() {
      if (!shown?.report?.id) return;
      const mine = shown;
      shown.certState = "loading";
      drawReplay();
      try {
        mine.cert = await issueCertificate({ replay_id: mine.report.id });
        mine.certState = "done";
        toast("Certificate issued", "ok");
      } catch (err) {
        if (err?.name === "AbortError") return;
        mine.certState = "error";
        mine.certError = err;
      }
      if (shown === mine) {
        drawReplay();
        replayBox()?.querySelector("#replay-cert")?.scrollIntoView({ behavior: "smooth", block: "nearest" });
      }
    }

    async function callCertificate(btn) {
      btn.disabled = true;
      try {
        const cert = await issueCertificate({ call_id: id });
        await infoDialog({
          title: "Certificate issued", wide: true, testid: "certificate-dialog",
          body: certificateHtml(cert),
          onMount: (dlg) => wireCertificate(dlg, cert),
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
      if (act === "close-replay") { shown = null; render(replayBox(), html``); return; }
      if (act === "replay-certificate") return replayCertificate();
      if (act === "replay-policy") {
        a.disabled = true;
        replayLoading("Checking against today's guardrails…");
        try { await showReplay(await api.post(`/api/replay/${encodeURIComponent(id)}`, { mode: "policy" })); } catch (err) { if (err?.name !== "AbortError") replayFailed("The dry run failed", err); } finally { a.disabled = false; }
        return;
      }
      if (act === "replay-upstream") {
        const ok = await confirmDialog({
          title: "Send this request to the provider again?",
          text: "The stored request goes through the guardrails and to the provider as a new call. It costs what a normal call costs and is recorded like one.",
          confirmLabel: "Replay upstream",
        });
        if (!ok) return;
        a.disabled = true;
        replayLoading("Sending the request again…");
        try { await showReplay(await api.post(`/api/replay/${encodeURIComponent(id)}`, { mode: "upstream" })); } catch (err) { if (err?.name !== "AbortError") replayFailed("The replay failed", err); } finally { a.disabled = false; }
        return;
      }
      if (act === "certificate") return callCertificate(a);
    });

    await load();
    // #/calls/{id}?replay=rpl_…: a replay made before (a batch replay links here).
    const wanted = ctx.query?.get("replay");
    if (wanted && call && ctx.alive()) {
      replayLoading("Loading the replay…");
      try { await showReplay(await api.get(`/api/replays/${encodeURIComponent(wanted)}`, null, { signal: ctx.signal })); } catch (err) { if (err?.name !== "AbortError" && ctx.alive()) replayFailed("The replay could not be loaded", err); }
    }
  },
};

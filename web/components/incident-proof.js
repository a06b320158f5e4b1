// "Prove it" on the incident page: replay every call of the incident as a background task
// (POST /api/incidents/{id}/replay → GET /api/tasks/{id} polled for progress) and show its
// summary — counts by match level, would-block, drift, failures, a link to each replay —
// and issue a signed certificate for the whole incident.
//
// The page redraws itself on live events; this part keeps its own state and is attached
// again to the page's new `#proof-box` after each redraw (`attach`). Only one batch runs
// at a time: the button stays disabled until the task is done or failed, also after the
// page is reloaded (a running task of this incident is found in GET /api/tasks).

import * as api from "../api.js";
import { canChange } from "../state.js";
import { html, render, compact, num, timeAgo, toMillis, errorState, emptyState, toast } from "../ui.js";
import { shortId } from "./call-search.js";
import { MATCH_LEVELS, matchBadge } from "./replay-view.js";
import { issueCertificate, certificateHtml, certificateLoading, certificateError, wireCertificate } from "./certificate.js";

const TASK_KIND = "incident.replay";

/** A server message as a sentence: capitalised, with its full stop. */
function sentence(s) {
  const t = String(s).trim();
  return `${t.charAt(0).toUpperCase()}${t.slice(1)}${/[.!?]$/.test(t) ? "" : "."}`;
}
const LISTED = 50;

export function incidentProof({ id, signal, alive }) {
  const st = {
    mode: "policy",
    task: null, // the latest replay task of this incident
    starting: false,
    loadError: null,
    loaded: false,
    cert: null, certState: null, certError: null,
  };
  let box = null;
  let timer = null;

  const running = () => st.starting || (st.task && (st.task.status === "queued" || st.task.status === "running"));

  function progressHtml(t) {
    const total = t.progress_total || 0, done = t.progress_done || 0;
    const pct = total ? Math.min(100, Math.round((done * 100) / total)) : 0;
    return html`<div data-testid="batch-progress" data-status="${t.status}">
      <div class="progress${total ? "" : " indeterminate"}" role="progressbar" aria-label="Replay progress" aria-valuemin="0" aria-valuemax="${total || 100}" ${total ? html`aria-valuenow="${done}"` : ""}><span data-width="${pct}"></span></div>
      <p class="hint">${t.status === "queued" ? "Queued — waiting for a worker…" : total ? `${num(done)} of ${num(total)} calls replayed (${pct}%)` : "Listing the incident's calls…"}</p></div>`;
  }

  function summaryHtml(t) {
    const r = t.result || {};
    const levels = r.by_match_level || {};
    const replays = r.replays || [];
    const failures = r.failures || [];
    const upstream = r.mode === "upstream";
    return html`<div data-testid="batch-summary" data-mode="${r.mode || ""}">
      <p><strong>${num(r.replayed ?? 0)} of ${num(r.calls ?? 0)} calls replayed</strong> ${upstream ? "upstream" : "against today's guardrails"} · ${timeAgo(t.updated_at)}</p>
      <div class="batch-counts">
        ${upstream ? Object.keys(MATCH_LEVELS).map((lv) => html`<span class="badge ${levels[lv] ? MATCH_LEVELS[lv].cls : "plain"}" data-testid="batch-level" data-level="${lv}">${MATCH_LEVELS[lv].label} ${compact(levels[lv] || 0)}</span>`) : ""}
        <span class="badge ${r.would_block ? "bad" : "plain"}" data-testid="batch-would-block">Would be blocked ${compact(r.would_block || 0)}</span>
        ${upstream ? html`<span class="badge ${r.model_drift ? "warn" : "plain"}" data-testid="batch-drift">Model drift ${compact(r.model_drift || 0)}</span>` : ""}
        <span class="badge ${r.failed ? "bad" : "plain"}" data-testid="batch-failed">Failed ${compact(r.failed || 0)}</span>
      </div>
      ${!r.calls ? emptyState({ title: "No calls to replay", text: "This incident's signals name no call (for example a budget threshold).", testid: "batch-empty" }) : ""}
      ${replays.length ? html`<div class="table-wrap"><table class="table batch-table"><thead><tr><th>Call</th><th>Result</th><th></th></tr></thead><tbody>
        ${replays.slice(0, LISTED).map((x) => html`<tr data-testid="batch-replay-row">
          <td><a class="mono" href="#/calls/${encodeURIComponent(x.call_id)}" title="${x.call_id}">${shortId(x.call_id)}</a></td>
          <td>${x.match_level ? matchBadge(x.match_level) : x.would_block ? html`<span class="badge bad">Would be blocked</span>` : html`<span class="badge ok">Allowed</span>`}${x.model_drift ? html` <span class="badge warn">drift</span>` : ""}</td>
          <td><a href="#/calls/${encodeURIComponent(x.call_id)}?replay=${encodeURIComponent(x.replay_id)}" data-testid="batch-replay-link">Side by side</a></td></tr>`)}
      </tbody></table></div>${replays.length > LISTED ? html`<p class="hint">Showing ${LISTED} of ${num(replays.length)} replays.</p>` : ""}` : ""}
      ${failures.length ? html`<details class="section-gap" data-testid="batch-failures"><summary class="link">${num(failures.length)} call${failures.length === 1 ? "" : "s"} could not be replayed</summary>
        <ul>${failures.slice(0, LISTED).map((f) => html`<li><a class="mono" href="#/calls/${encodeURIComponent(f.call_id)}">${shortId(f.call_id)}</a> — ${f.error} <span class="hint mono">${f.code}</span></li>`)}</ul></details>` : ""}
    </div>`;
  }

  function batchHtml() {
    if (!st.loaded) return html`<span class="skeleton sk-line" data-testid="batch-loading"></span>`;
    if (st.loadError) return errorState(st.loadError, { retry: false, testid: "batch-error" });
    const t = st.task;
    if (!t) return html`<p class="hint" data-testid="batch-none">No batch replay yet. A policy dry run re-checks every call against today's guardrails and sends nothing; an upstream replay sends each stored request again and grades the answers.</p>`;
    if (t.status === "failed") {
      return html`<div class="notice bad" role="alert" data-testid="batch-failed-task"><div><strong>The batch replay failed.</strong> ${sentence(t.error || "No reason was given")} Fix the cause, then replay again.</div></div>`;
    }
    if (t.status === "done") return summaryHtml(t);
    return progressHtml(t);
  }

  function certPart() {
    if (st.certState === "loading") return certificateLoading();
    if (st.certState === "error") return certificateError(st.certError);
    if (st.cert) return certificateHtml(st.cert);
    return "";
  }

  function draw() {
    if (!box || !box.isConnected) return;
    const busyNow = running();
    const change = canChange();
    render(box, html`<section class="card" data-testid="incident-proof"><div class="card-head"><h2>Replay and certify</h2>
        <span class="hint">prove what happened, and what would happen today</span></div>
      <div class="card-body">
        ${change ? html`<div class="proof-controls">
          <div class="segmented" role="group" aria-label="Replay mode">
            <button type="button" data-mode="policy" aria-pressed="${st.mode === "policy"}" data-testid="batch-mode-policy" ${busyNow ? "disabled" : ""}>Policy dry run</button>
            <button type="button" data-mode="upstream" aria-pressed="${st.mode === "upstream"}" data-testid="batch-mode-upstream" ${busyNow ? "disabled" : ""}>Upstream</button></div>
          <button type="button" class="btn btn-primary" data-proof="replay" data-testid="incident-replay" ${busyNow ? "disabled" : ""}>${busyNow ? html`<span class="spinner" aria-hidden="true"></span> Replaying…` : "Replay all calls"}</button>
          <button type="button" class="btn" data-proof="certificate" data-testid="incident-issue-certificate" ${st.certState === "loading" ? "disabled" : ""}>Issue certificate</button>
        </div>` : html`<p class="hint">Viewers can read results; replaying and certifying needs an admin.</p>`}
        <div class="section-gap" data-testid="batch">${batchHtml()}</div>
        ${certPart() ? html`<div class="section-gap" id="incident-cert">${certPart()}</div>` : ""}
      </div></section>`);
    for (const el of box.querySelectorAll("[data-width]")) el.style.width = `${el.dataset.width}%`;
    const certEl = box.querySelector('[data-testid="certificate"]');
    if (certEl && st.cert) wireCertificate(certEl, st.cert);
  }

  async function poll() {
    clearTimeout(timer);
    if (!st.task || !alive()) return;
    let delay = 500;
    try {
      const t = await api.get(`/api/tasks/${encodeURIComponent(st.task.id)}`, null, { signal });
      if (!alive()) return;
      st.task = t;
      if (t.status === "done") toast("Batch replay finished", "ok");
      if (t.status === "failed") toast("The batch replay failed", "bad");
    } catch (err) {
      if (err?.name === "AbortError" || !alive()) return;
      delay = 2000; // a hiccup: keep following the task, a little slower
    }
    draw();
    if (running()) timer = setTimeout(poll, delay);
  }

  async function start() {
    if (running()) return;
    st.starting = true;
    draw();
    try {
      const accepted = await api.post(`/api/incidents/${encodeURIComponent(id)}/replay`, { mode: st.mode });
      st.task = { id: accepted.task_id || accepted.id, status: accepted.status || "queued", progress_done: 0, progress_total: 0 };
    } catch (err) {
      st.starting = false;
      if (err?.name === "AbortError") return;
      toast(`Could not start the replay: ${err.message}`, "bad");
      draw();
      return;
    }
    st.starting = false;
    draw();
    timer = setTimeout(poll, 300);
  }

  async function certify() {
    st.certState = "loading";
    draw();
    try {
      st.cert = await issueCertificate({ incident_id: id });
      st.certState = "done";
      toast("Incident certificate issued", "ok");
    } catch (err) {
      if (err?.name === "AbortError") return;
      st.certState = "error";
      st.certError = err;
    }
    draw();
    box?.querySelector("#incident-cert")?.scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  function onClick(e) {
    const m = e.target.closest("[data-mode]");
    if (m && !running()) { st.mode = m.dataset.mode; draw(); return; }
    const p = e.target.closest("[data-proof]");
    if (p?.dataset.proof === "replay") start();
    else if (p?.dataset.proof === "certificate") certify();
  }

  /** The latest replay task of this incident, if any; a running one is followed. */
  async function load() {
    try {
      const list = await api.get("/api/tasks", null, { signal });
      if (!alive()) return;
      const mine = (list.data || []).filter((t) => t.kind === TASK_KIND && t.params?.incident_id === id);
      mine.sort((a, b) => (toMillis(b.created_at) || 0) - (toMillis(a.created_at) || 0));
      if (!st.task) st.task = mine[0] || null;
      if (st.task?.params?.mode) st.mode = st.task.params.mode;
    } catch (err) {
      if (err?.name === "AbortError" || !alive()) return;
      // Viewers may not list tasks; that is no error worth a wall.
      if (err?.status !== 403) st.loadError = err;
    }
    st.loaded = true;
    draw();
    if (running()) timer = setTimeout(poll, 300);
  }

  return {
    /** Draws into the page's (new) container. */
    attach(el) {
      if (!el) return;
      box = el;
      el.addEventListener("click", onClick);
      draw();
    },
    load,
    stop() { clearTimeout(timer); },
  };
}

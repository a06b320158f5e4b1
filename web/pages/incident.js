// #/incidents/{id}: summary, timeline, affected calls, and the actions: acknowledge,
// assign, add a note, resolve, reopen, export (signed JSON evidence pack, PDF report, CSV).
// People show by email (the API answers `actor_email` / `assignee_email` beside the id).
// Exports go through fetch → blob → <a download> because they need the session headers.
import * as api from "../api.js";
import { canChange } from "../state.js";
import { html, render, icon, compact, nanos, timeAgo, absTime, severityBadge, statusBadge, outcomeBadge, policyName, loadingState, errorState, emptyState, toast, num, saveBlob, validators, field, micros, validate, showApiError, busy } from "../ui.js";
import { formDialog, confirmDialog } from "../components/dialog.js";
import { shortId } from "../components/call-search.js";
import { incidentProof } from "../components/incident-proof.js";

const KIND_LABEL = { signal: "Signal", event: "Event", decision: "Decision", root_cause: "Root cause", input: "Request", upstream: "Provider", output: "Response" };

/**
 * The summary in the reader's own time zone: the API marks each moment in `summary_parts`
 * (`{"time": RFC 3339}` between `{"text"}` pieces); the plain `summary` says UTC.
 */
function summaryText(inc, tl) {
  const parts = inc.summary_parts || tl?.summary_parts;
  if (Array.isArray(parts) && parts.length) return parts.map((p) => (p.time ? absTime(p.time) : p.text ?? "")).join("");
  return inc.summary || tl?.summary || "No summary yet.";
}

/** Who someone is, as people read it: the email when the API knows one, the id on hover. */
function person(label, email) {
  if (!label) return "";
  return email ? html`<span title="${label}">${email}</span>` : html`<span class="mono">${label}</span>`;
}

/** The server's summary can list every action taken; long ones fold after a few lines. */
function summaryHtml(text) {
  if (text.length <= 420) return html`<p class="summary-text" data-testid="incident-summary">${text}</p>`;
  const cut = text.lastIndexOf(" ", 380);
  return html`<details class="summary-fold" data-testid="incident-summary"><summary><span class="summary-text">${text.slice(0, cut > 200 ? cut : 380)}…</span> <span class="link">Show all</span></summary><p class="summary-text">${text}</p></details>`;
}

function stepHtml(s) {
  const meta = [];
  if (s.policy) meta.push(html`<span class="badge plain">${policyName(s.policy)}</span>`);
  if (s.outcome) meta.push(outcomeBadge(s.outcome));
  if (s.value !== undefined && s.value !== null) meta.push(html`<span class="badge plain info">measured ${num(s.value)}${s.unit ? ` ${s.unit}` : ""}</span>`);
  if (s.threshold !== undefined && s.threshold !== null) meta.push(html`<span class="badge plain">threshold ${num(s.threshold)}${s.unit ? ` ${s.unit}` : ""}</span>`);
  if (s.actor) meta.push(html`<span class="badge plain">by ${person(s.actor, s.actor_email)}</span>`);
  if (s.call_id) meta.push(html`<a class="mono" href="#/calls/${encodeURIComponent(s.call_id)}" title="${s.call_id}">${shortId(s.call_id)}</a>`);
  return html`<li class="timeline-item k-${s.kind}" data-testid="timeline-item" data-kind="${s.kind}">
    <span class="tl-dot" aria-hidden="true"></span>
    <div class="tl-head"><span class="badge plain">${KIND_LABEL[s.kind] || s.kind}</span><span class="tl-title">${s.title}</span><span class="tl-time">${timeAgo(s.at)}${s.offset_us ? html` <span class="muted">· +${micros(s.offset_us)}</span>` : ""}</span></div>
    ${s.detail ? html`<p class="tl-detail">${s.detail}</p>` : ""}
    ${meta.length ? html`<div class="tl-meta">${meta}</div>` : ""}</li>`;
}

export default {
  name: "incident",
  title: "Incident",
  nav: "incidents",
  async mount(root, ctx) {
    const id = ctx.params.id;
    let inc = null, tl = null, tlError = null, lastSig = null;
    // Batch replay and incident certificate: state of its own, kept across redraws.
    const proof = incidentProof({ id, signal: ctx.signal, alive: ctx.alive });

    async function load(quiet = false) {
      if (!quiet) { ctx.loading(); render(root, html`${crumbs()}${loadingState()}`); }
      try {
        const [i, t] = await Promise.all([
          api.get(`/api/incidents/${encodeURIComponent(id)}`, null, { signal: ctx.signal }),
          api.get(`/api/incidents/${encodeURIComponent(id)}/timeline`, null, { signal: ctx.signal }).catch((err) => { if (err?.name === "AbortError") throw err; tlError = err; return null; }),
        ]);
        if (!ctx.alive()) return;
        // Live events also arrive after our own changes: redraw only when something changed,
        // so what the reader is typing or pointing at stays put.
        const sig = JSON.stringify([i.status, i.severity, i.assignee, i.updated_at, i.signal_count, t?.steps?.length, !!tlError]);
        inc = i; tl = t; if (t) tlError = null;
        if (quiet && sig === lastSig) return;
        lastSig = sig;
        draw();
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        if (quiet) { toast(err.message, "bad"); return; }
        render(root, html`${crumbs()}<div class="page-head"><div class="titles"><h1 data-testid="page-title">Incident</h1><p class="sub mono">${id}</p></div></div>
          <div class="card">${err?.status === 404 ? emptyState({ title: "No such incident", text: "It may belong to another tenant, or the link is mistyped.", action: html`<a class="btn" href="#/incidents">All incidents</a>`, testid: "page-error", iconName: "error" }) : errorState(err)}</div>`);
      }
      ctx.ready();
    }
    function crumbs() { return html`<div class="crumbs"><a href="#/incidents">Incidents</a> / <span class="mono">${id}</span></div>`; }

    function affectedCalls() {
      const seen = new Map();
      for (const s of tl?.steps || []) if (s.call_id && !seen.has(s.call_id)) seen.set(s.call_id, s);
      return [...seen.values()];
    }

    function actionsHtml() {
      const exp = html`<div class="segmented" role="group" aria-label="Export">
          <button type="button" data-export="json" data-testid="export-json" title="Signed evidence pack (verifiable offline)">${icon("download", 14)} JSON</button>
          <button type="button" data-export="pdf" data-testid="export-pdf" title="Report for people">PDF</button>
          <button type="button" data-export="csv" data-testid="export-csv" title="Affected calls as a spreadsheet">CSV</button></div>`;
      if (!canChange()) return html`<div class="action-bar">${exp}</div>`;
      return html`<div class="action-bar">
        ${inc.status === "open" ? html`<button type="button" class="btn btn-primary" data-action="ack" data-testid="incident-ack">Acknowledge</button>` : ""}
        <button type="button" class="btn" data-action="assign" data-testid="incident-assign">${inc.assignee ? "Reassign" : "Assign"}</button>
        ${inc.status !== "resolved" ? html`<button type="button" class="btn" data-action="resolve" data-testid="incident-resolve">Resolve</button>` : inc.merged_into ? "" : html`<button type="button" class="btn" data-action="reopen" data-testid="incident-reopen">Reopen</button>`}
        ${exp}</div>`;
    }

    function draw() {
      const calls = affectedCalls();
      const steps = tl?.steps || [];
      render(root, html`${crumbs()}
        <div class="page-head"><div class="titles">
            <div class="row">${severityBadge(inc.severity)}${statusBadge(inc.status)}${inc.demo ? html`<span class="badge info plain">demo</span>` : ""}</div>
            <h1 data-testid="page-title">${inc.title}</h1>
            <p class="sub">${inc.subject} · opened ${timeAgo(inc.created_at)} · <span class="mono">${inc.id}</span>${inc.merged_into ? html` · merged into <a class="mono" href="#/incidents/${encodeURIComponent(inc.merged_into)}" data-testid="incident-merged-into">${inc.merged_into}</a>` : ""}${inc.assignee ? html` · assigned to <strong data-testid="incident-assignee">${person(inc.assignee, inc.assignee_email)}</strong>` : ""}</p></div>
          <div class="actions">${actionsHtml()}</div></div>

        <div class="grid grid-2">
          <section class="card"><div class="card-head"><h2>Summary</h2></div><div class="card-body">
            ${summaryHtml(summaryText(inc, tl))}
            ${inc.narrative ? html`<div class="callout"><strong>Narrative</strong><p>${typeof inc.narrative === "string" ? inc.narrative : inc.narrative.text || JSON.stringify(inc.narrative)}</p></div>` : ""}
            ${tl?.root_cause ? html`<div class="callout bad" data-testid="root-cause"><strong>Root cause</strong><p>${tl.root_cause}</p></div>` : ""}
            <div class="facts">
              <div class="fact"><div class="kpi-label">Signals</div><strong>${compact(inc.signal_count)}</strong></div>
              <div class="fact"><div class="kpi-label">Calls affected</div><strong>${compact(inc.call_count)}</strong></div>
              <div class="fact"><div class="kpi-label">End users</div><strong>${compact(inc.end_user_count)}</strong></div>
              <div class="fact"><div class="kpi-label">Known cost</div><strong>${nanos(inc.cost)}</strong></div>
            </div>
            <dl class="dl">
              <dt>Rule</dt><dd>${policyName(inc.rule)} <span class="muted mono">${inc.rule}</span></dd>
              <dt>First signal</dt><dd>${absTime(inc.first_signal_at)}</dd>
              <dt>Last signal</dt><dd>${absTime(inc.last_signal_at)}</dd>
              ${inc.acknowledged_at ? html`<dt>Acknowledged</dt><dd>${absTime(inc.acknowledged_at)}</dd>` : ""}
              ${inc.resolved_at ? html`<dt>Resolved</dt><dd>${absTime(inc.resolved_at)}</dd>` : ""}
            </dl>
          </div></section>

          <section class="card"><div class="card-head"><h2>Affected calls</h2><span class="hint">${compact(inc.call_count)} in all</span></div>
            <div class="card-body flush">${calls.length ? html`<div class="table-wrap"><table class="table"><thead><tr><th>Call</th><th>Why</th><th>When</th></tr></thead><tbody>
              ${calls.slice(0, 25).map((s) => html`<tr class="clickable" data-testid="call-row" data-call-id="${s.call_id}" data-href="#/calls/${encodeURIComponent(s.call_id)}">
                <td><a class="rowlink mono" href="#/calls/${encodeURIComponent(s.call_id)}" title="${s.call_id}">${shortId(s.call_id)}</a></td>
                <td>${s.policy ? policyName(s.policy) : s.title}${s.outcome ? html` ${outcomeBadge(s.outcome)}` : ""}</td><td>${timeAgo(s.at)}</td></tr>`)}
              </tbody></table></div>${calls.length > 25 ? html`<p class="hint card-body">Showing 25 of the calls in the timeline; export CSV for all of them.</p>` : ""}`
              : emptyState({ title: "No calls listed", text: "This incident's signals name no call (for example a budget threshold). Export it for the full record.", testid: "calls-empty" })}</div></section>
        </div>

        <div id="proof-box"></div>

        <section class="card"><div class="card-head"><h2>Timeline</h2><span class="hint">${steps.length} step${steps.length === 1 ? "" : "s"}: what happened, its root cause, then what was done</span></div>
          <div class="card-body">${tlError ? errorState(tlError, { testid: "timeline-error" }) : steps.length ? html`<ol class="timeline" data-testid="timeline">${steps.map(stepHtml)}</ol>` : html`<ol class="timeline" data-testid="timeline"></ol><p class="hint">Nothing recorded yet.</p>`}</div></section>

        ${canChange() ? html`<section class="card"><div class="card-head"><h2>Add a note</h2></div><div class="card-body">
          <form novalidate id="note-form">${field({ name: "note", label: "Note", rows: 3, required: true, testid: "note-input", placeholder: "What you found, what you did, what comes next" })}
            <div class="form-actions"><button type="submit" class="btn btn-primary" data-testid="note-submit">Add note</button></div></form></div></section>` : ""}`);

      proof.attach(root.querySelector("#proof-box"));
      const noteForm = root.querySelector("#note-form");
      noteForm?.addEventListener("submit", async (e) => {
        e.preventDefault();
        if (!validate(noteForm, { note: [validators.required] })) return;
        try {
          await busy(noteForm.querySelector('[type="submit"]'), () => api.post(`/api/incidents/${encodeURIComponent(id)}/notes`, { note: noteForm.elements.note.value.trim() }));
          toast("Note added", "ok");
          await load(true);
        } catch (err) { if (err?.name !== "AbortError") showApiError(noteForm, err); }
      });
    }

    async function doExport(btn, format) {
      const names = { json: "evidence pack", pdf: "PDF report", csv: "CSV" };
      btn.disabled = true;
      const label = btn.innerHTML;
      btn.innerHTML = '<span class="spinner" aria-hidden="true"></span>';
      try {
        const { blob, filename } = await api.fetchFile(`/api/incidents/${encodeURIComponent(id)}/export`, { format }, `${id}.${format}`, {
          onProgress: (t) => { if (t.progress_total) btn.title = `Building… ${t.progress_done}/${t.progress_total}`; },
        });
        saveBlob(blob, filename);
        toast(`Downloaded the ${names[format]} (${filename})`, "ok");
      } catch (err) {
        if (err?.name !== "AbortError") toast(`Export failed: ${err.message}`, "bad");
      } finally {
        btn.disabled = false;
        btn.innerHTML = label;
      }
    }

    root.addEventListener("click", async (e) => {
      const ex = e.target.closest("[data-export]");
      if (ex) return doExport(ex, ex.dataset.export);
      const a = e.target.closest("[data-action]");
      const act = a?.dataset.action;
      const path = `/api/incidents/${encodeURIComponent(id)}`;
      if (act === "retry") return load();
      if (act === "ack") {
        a.disabled = true;
        try { await api.post(`${path}/ack`, {}); toast("Acknowledged — others can see you are on it.", "ok"); await load(true); } catch (err) { a.disabled = false; if (err?.name !== "AbortError") toast(err.message, "bad"); }
        return;
      }
      if (act === "resolve") {
        const ok = await confirmDialog({ title: "Resolve this incident?", text: "It closes now. If the problem comes back, the incident reopens on its own; you can also reopen it here.", confirmLabel: "Resolve", action: () => api.post(`${path}/resolve`, {}) });
        if (ok) { toast("Resolved", "ok"); await load(true); }
        return;
      }
      if (act === "reopen") {
        const ok = await confirmDialog({ title: "Reopen this incident?", text: "It is open again and needs acknowledging and resolving anew. The timeline and the audit log record who reopened it.", confirmLabel: "Reopen", action: () => api.post(`${path}/reopen`, {}) });
        if (ok) { toast("Reopened", "ok"); await load(true); }
        return;
      }
      if (act === "assign") {
        const ok = await formDialog({
          title: "Assign the incident",
          intro: "Name the person who owns it now. Leave empty to unassign.",
          fields: field({ name: "assignee", label: "Assignee", value: inc.assignee || "", testid: "assignee-input", placeholder: "alice@example.com" }),
          submitLabel: "Save",
          submit: (v) => api.post(`${path}/assign`, { assignee: v.assignee.trim() || null }),
        });
        if (ok) { toast("Assignment saved", "ok"); await load(true); }
        return;
      }
      const row = e.target.closest("tr[data-href]");
      if (row && !e.target.closest("a,button")) ctx.navigate(row.dataset.href);
    });

    let timer = null;
    ctx.on("incident", (ev) => {
      if (ev.id !== id) return;
      clearTimeout(timer);
      timer = setTimeout(() => load(true), 300);
    });
    await load();
    if (inc) proof.load();
    return () => { clearTimeout(timer); proof.stop(); };
  },
};

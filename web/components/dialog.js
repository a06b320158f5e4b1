// Modal dialogs on the native <dialog>: showModal() makes the rest of the page inert, Esc
// closes (unless work is running), Tab is kept inside, and focus returns to the opener.
// Helpers for the common shapes: confirm, reason (kill switch, freezes), and a form.

import { html, render, icon, validate, validators, showApiError, formValues, busy, clearErrors } from "../ui.js";

const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

/**
 * Opens a dialog. `body` is html`` markup. Returns {dlg, close, closed} where `closed`
 * resolves with the value given to close() (undefined on Esc/cancel).
 */
export function openDialog({ title, body, wide = false, danger = false, testid = "dialog" }) {
  const opener = document.activeElement;
  const dlg = document.createElement("dialog");
  dlg.className = `modal${wide ? " wide" : ""}${danger ? " danger" : ""}`;
  dlg.dataset.testid = testid;
  const titleId = `dlg-${Math.random().toString(36).slice(2, 8)}`;
  dlg.setAttribute("aria-labelledby", titleId);
  render(dlg, html`<div class="modal-head"><h2 id="${titleId}">${title}</h2>
    <button type="button" class="icon-btn" data-close aria-label="Close">${icon("close")}</button></div>
    <div class="modal-body">${body}</div>`);
  document.body.appendChild(dlg);

  let resolve;
  const closed = new Promise((r) => { resolve = r; });
  let result;
  const state = { busy: false };
  const close = (value) => { result = value; if (dlg.open) dlg.close(); };

  dlg.addEventListener("cancel", (e) => { if (state.busy) e.preventDefault(); });
  dlg.addEventListener("close", () => {
    dlg.remove();
    if (opener && typeof opener.focus === "function" && document.contains(opener)) opener.focus();
    resolve(result);
  });
  dlg.addEventListener("click", (e) => {
    if (e.target.closest("[data-close]") && !state.busy) close(undefined);
  });
  dlg.addEventListener("keydown", (e) => {
    if (e.key !== "Tab") return;
    const items = Array.from(dlg.querySelectorAll(FOCUSABLE)).filter((el) => el.offsetParent !== null);
    if (!items.length) return;
    const first = items[0], last = items[items.length - 1];
    if (e.shiftKey && document.activeElement === first) { e.preventDefault(); last.focus(); }
    else if (!e.shiftKey && document.activeElement === last) { e.preventDefault(); first.focus(); }
  });
  dlg.showModal();
  const autofocus = dlg.querySelector("[autofocus], .modal-body input, .modal-body textarea, .modal-body select") || dlg.querySelector(".modal-body button");
  if (autofocus) autofocus.focus();
  return { dlg, close, closed, state };
}

/**
 * A dialog around a form: client-side `rules`, then `submit(values, form)`; an ApiError is
 * shown on its field (error.param) or above the form and the dialog stays open. Resolves
 * with submit's result, or undefined when cancelled.
 */
export function formDialog({ title, intro = "", fields, submitLabel = "Save", danger = false, rules = {}, submit, wide = false, testid = "form-dialog", submitTestid = "" }) {
  const body = html`${intro ? html`<p>${intro}</p>` : ""}<form novalidate>
    ${fields}
    <div class="form-actions">
      <button type="button" class="btn" data-close>Cancel</button>
      <button type="submit" class="btn ${danger ? "btn-danger" : "btn-primary"}" ${submitTestid ? html`data-testid="${submitTestid}"` : ""}>${submitLabel}</button>
    </div></form>`;
  const d = openDialog({ title, body, danger, wide, testid });
  const form = d.dlg.querySelector("form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (d.state.busy) return;
    if (!validate(form, rules)) return;
    d.state.busy = true;
    try {
      const out = await busy(form.querySelector('button[type="submit"]'), () => submit(formValues(form), form));
      d.state.busy = false;
      d.close(out === undefined ? true : out);
    } catch (err) {
      d.state.busy = false;
      if (err?.name === "AbortError") return;
      showApiError(form, err);
    }
  });
  return d.closed;
}

/** "Are you sure?" with the work done inside, so an error shows in the dialog. */
export function confirmDialog({ title, text, confirmLabel = "Confirm", danger = false, action }) {
  return formDialog({
    title, intro: text, fields: html``, submitLabel: confirmLabel, danger,
    submit: async () => { if (action) await action(); return true; },
    testid: "confirm-dialog", submitTestid: "confirm-ok",
  });
}

/** Asks for a reason (freezes and unfreezes are audited with it). */
export function reasonDialog({ title, text, confirmLabel, required = true, danger = true, placeholder = "", action }) {
  const id = `reason-${Math.random().toString(36).slice(2, 8)}`;
  const fields = html`<div class="field" data-field="reason">
      <label for="${id}">Reason${required ? "" : html` <span class="muted">(optional)</span>`}</label>
      <textarea class="input" id="${id}" name="reason" rows="3" data-testid="reason-input" aria-describedby="${id}-msg" placeholder="${placeholder}" ${required ? "required" : ""}></textarea>
      <p class="hint">Recorded in the audit log and on the incident timeline.</p>
      <p class="field-error" id="${id}-msg" data-error-for="reason" hidden></p>
    </div>`;
  return formDialog({
    title, intro: text, fields, submitLabel: confirmLabel, danger,
    rules: required ? { reason: [validators.required] } : {},
    submit: async (v) => { await action(v.reason.trim()); return true; },
    testid: "reason-dialog", submitTestid: "reason-confirm",
  });
}

/** Shows information (a secret, a certificate) with a Done button. */
export function infoDialog({ title, body, wide = false, testid = "info-dialog", onMount }) {
  const d = openDialog({ title, wide, testid, body: html`${body}<div class="form-actions"><button type="button" class="btn btn-primary" data-close>Done</button></div>` });
  if (onMount) onMount(d.dlg, d.close);
  return d.closed;
}

export { clearErrors };

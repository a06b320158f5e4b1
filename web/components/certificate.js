// Issuing a signed certificate (POST /api/certificates) for a call, a replay or an
// incident, and showing it: id, subject, the hashes it vouches for, the signature, when it
// was issued, a download of the JSON exactly as stored (GET /api/certificates/{id}) and
// the `agv-server verify` command that checks it offline.

import * as api from "../api.js";
import { html, icon, absTime, copyText, saveBlob, toast, cap, errorState } from "../ui.js";
import { matchBadge } from "./replay-view.js";

/** `subject`: {call_id} | {replay_id} | {incident_id}. Resolves with the certificate. */
export function issueCertificate(subject) {
  return api.post("/api/certificates", subject);
}

function hashes(cert) {
  const out = [];
  const call = (label, c) => {
    if (!c) return;
    out.push([`${label} request`, c.request_sha256]);
    out.push([`${label} response`, c.response_sha256]);
    if (c.content_sha256) out.push([`${label} content`, c.content_sha256]);
  };
  call(cert.replay ? "Original" : "Call", cert.original);
  call("Replay", cert.replay?.call);
  if (cert.incident) out.push(["Incident record", cert.incident.record_sha256]);
  if (cert.chain_head) out.push(["Chain head", cert.chain_head]);
  return out.filter(([, v]) => v);
}

/** The command that checks the certificate offline with this instance's public key. */
export function verifyCommand(cert) {
  const id = cert.certificate_id || "certificate";
  return `agv-server verify ${id}.json --public-key ${cert.public_key || "<public key>"}`;
}

/** The issued certificate as a card body (`data-testid="certificate"`). */
export function certificateHtml(cert) {
  const id = cert.certificate_id;
  const subject = cert.incident
    ? `Incident ${cert.subject_id} · ${cert.incident.call_ids?.length ?? 0} calls`
    : cert.replay ? `Replay ${cert.subject_id} (${cert.replay.mode})` : `Call ${cert.subject_id}`;
  return html`<div class="cert" data-testid="certificate" data-certificate-id="${id}">
    <div class="cert-head">${icon("shield", 22)}<div><strong>Certificate issued</strong>
      <div class="hint">Signed with this instance's Ed25519 key. Anyone holding the public key can check it offline.</div></div></div>
    <dl class="dl cert-facts">
      <dt>Id</dt><dd class="mono" data-testid="certificate-id">${id}</dd>
      <dt>Kind</dt><dd>${cap(cert.kind)}</dd>
      <dt>Subject</dt><dd data-testid="certificate-subject">${subject}</dd>
      ${cert.match_level ? html`<dt>Match level</dt><dd>${matchBadge(cert.match_level)}</dd>` : ""}
      <dt>Issued at</dt><dd>${absTime(cert.issued_at)} <span class="hint mono">${cert.issued_at}</span></dd>
      ${hashes(cert).map(([k, v]) => html`<dt>${k}</dt><dd class="mono hash" title="${v}">${v}</dd>`)}
      <dt>Signature</dt><dd class="mono hash" data-testid="certificate-signature" title="${cert.signature}">${cert.signature}</dd>
      <dt>Public key</dt><dd class="mono hash" title="${cert.public_key}">${cert.public_key}</dd>
    </dl>
    <p class="section-gap"><strong>Check it offline</strong> — save the JSON, then run:</p>
    <pre class="wrap" data-testid="certificate-verify-command">${verifyCommand(cert)}</pre>
    <div class="row section-gap">
      <button type="button" class="btn" data-cert="download" data-testid="certificate-download">${icon("download", 14)} Download JSON</button>
      <button type="button" class="btn" data-cert="copy-command">${icon("copy", 14)} Copy command</button>
      <a class="btn btn-ghost" href="/v1/certificates/${encodeURIComponent(id)}/verify" target="_blank" rel="noopener">Check online</a>
    </div></div>`;
}

/** While issuing, and when issuing failed. */
export function certificateLoading() {
  return html`<div class="cert" data-testid="certificate-loading" aria-busy="true"><span class="spinner" aria-hidden="true"></span> Signing the certificate…</div>`;
}
export function certificateError(err) {
  return errorState(err, { retry: false, testid: "certificate-error" });
}

/** Handles the certificate's buttons inside `el` (download exactly as stored, copy). */
export function wireCertificate(el, cert) {
  el.addEventListener("click", async (e) => {
    const b = e.target.closest("[data-cert]");
    if (!b || !el.contains(b)) return;
    if (b.dataset.cert === "copy-command") { copyText(verifyCommand(cert)); return; }
    if (b.dataset.cert === "download") {
      b.disabled = true;
      try {
        const res = await api.request("GET", `/api/certificates/${encodeURIComponent(cert.certificate_id)}`, { raw: true });
        saveBlob(new Blob([await res.text()], { type: "application/json" }), `${cert.certificate_id}.json`);
      } catch (err) {
        if (err?.name !== "AbortError") toast(`Could not download the certificate: ${err.message}`, "bad");
      } finally { b.disabled = false; }
    }
  });
}

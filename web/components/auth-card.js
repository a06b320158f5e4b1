// The centred card of the public pages (sign-in, first-run setup, invitation).
import { html } from "../ui.js";

export function authCard({ title, sub = "", body }) {
  return html`<div class="auth"><div class="auth-card">
    <div class="auth-brand"><img src="/favicon.svg" alt="" width="26" height="26"><span>agv-server</span></div>
    <h1 data-testid="page-title">${title}</h1>
    ${sub ? html`<p class="sub">${sub}</p>` : ""}
    ${body}
  </div><p class="auth-foot">Self-hosted AI incident console · your data stays on this machine</p></div>`;
}

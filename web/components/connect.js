// "Connect a client in three steps": the help card shown while a tenant has no calls yet
// (kept from the original landing page).
import { html } from "../ui.js";

export function connectCard({ canCreateKeys = true } = {}) {
  const origin = window.location.origin;
  return html`<section class="card" data-testid="connect-card">
    <div class="card-head"><h2>Connect a client in three steps</h2><span class="hint">No calls yet — this is all it takes.</span></div>
    <div class="card-body"><ol class="steps">
      <li><p>Create an API key${canCreateKeys ? html` on the <a href="#/keys">API keys</a> page` : " (ask an admin of this tenant)"}, or on the server:</p>
        <pre><code>TENANT=$(agv-server tenant create "My company")
agv-server key create --tenant "$TENANT" --name my-app</code></pre>
        <p class="hint">The key is shown once. Keep it like a password.</p></li>
      <li><p>Point the official OpenAI SDK at this server — change the base URL, nothing else:</p>
        <pre><code>from openai import OpenAI
client = OpenAI(base_url="${origin}/v1", api_key="agv_…")</code></pre>
        <pre><code>import OpenAI from "openai";
const client = new OpenAI({ baseURL: "${origin}/v1", apiKey: "agv_…" });</code></pre></li>
      <li><p>Check it from a shell:</p>
        <pre><code>curl -H "Authorization: Bearer agv_…" ${origin}/v1/killswitch/status</code></pre></li>
    </ol></div></section>`;
}

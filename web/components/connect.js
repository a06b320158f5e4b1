// "Connect a client in three steps": shown on a tenant's overview while it has no calls.
// Every command on it works as written against this server: the command-line steps (for
// the operator, who runs the server) name the data directory and database the server
// uses (GET /api/operator/setup), create a proxy key in *this* tenant — never another
// tenant — and the check calls an endpoint a proxy key may use. Admin endpoints get their
// own admin key.
import * as api from "../api.js";
import { isOperator } from "../state.js";
import { html } from "../ui.js";

let cliCache = null;
/** How to run agv-server on this server's data, for the operator; null for anyone else. */
export async function loadCli({ signal } = {}) {
  if (!isOperator()) return null;
  if (cliCache) return cliCache;
  try {
    cliCache = (await api.get("/api/operator/setup", null, { signal }))?.cli || null;
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    return null; // the card then shows the console way only
  }
  return cliCache;
}

export function connectCard({ tenant, canCreateKeys = true, cli = null }) {
  const origin = window.location.origin;
  const id = tenant?.id || "ten_…";
  const onServer = cli ? html`<pre><code>${cli.prefix} key create --tenant ${id} --name my-app</code></pre>
        ${cli.database_url_has_password ? html`<p class="hint">Set <code>AGV_DATABASE_URL</code> to the server's database URL first (it holds a password, which the console never shows).</p>` : ""}` : "";
  return html`<section class="card" data-testid="connect-card">
    <div class="card-head"><h2>Connect a client in three steps</h2><span class="hint">No calls yet — this is all it takes.</span></div>
    <div class="card-body"><ol class="steps">
      <li><p>Create a <strong>proxy</strong> key for your app${canCreateKeys ? html` on the <a href="#/keys">API keys</a> page` : " (ask an admin of this tenant)"}${cli ? ", or on the server:" : "."}</p>
        ${onServer}
        <p class="hint">The key (<code>agv_…</code>) is shown once. Keep it like a password.</p></li>
      <li><p>Point the official OpenAI SDK at this server — change the base URL, nothing else:</p>
        <pre><code>from openai import OpenAI
client = OpenAI(base_url="${origin}/v1", api_key="agv_…")</code></pre>
        <pre><code>import OpenAI from "openai";
const client = new OpenAI({ baseURL: "${origin}/v1", apiKey: "agv_…" });</code></pre></li>
      <li><p>Check it from a shell with the key from step 1 — the answer is this tenant's protection summary:</p>
        <pre><code>curl -H "Authorization: Bearer agv_…" ${origin}/v1/status</code></pre></li>
    </ol>
    ${cli ? html`<p class="hint">The kill switch and the other <code>/v1</code> admin endpoints need an <strong>admin</strong> key (a proxy key gets 403 there):</p>
      <pre><code>ADMIN=$(${cli.prefix} key create --tenant ${id} --scope admin --name ops)
curl -H "Authorization: Bearer $ADMIN" ${origin}/v1/killswitch/status</code></pre>` : ""}
    </div></section>`;
}

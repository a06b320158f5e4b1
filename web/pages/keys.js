// #/keys: the tenant's API keys — create (the secret is shown once), freeze and unfreeze
// one key (with a reason), revoke for good.
import * as api from "../api.js";
import { canChange } from "../state.js";
import { html, render, icon, compact, money, timeAgo, loadingState, errorState, emptyState, toast, copyText, field, validators, cap } from "../ui.js";
import { shortId } from "../components/call-search.js";
import { formDialog, reasonDialog, confirmDialog, infoDialog } from "../components/dialog.js";

function statusBadges(k) {
  const out = [];
  if (k.revoked_at) out.push(html`<span class="badge" data-testid="key-revoked">Revoked</span>`);
  else if (k.expires_at && k.expires_at < Date.now()) out.push(html`<span class="badge">Expired</span>`);
  else if (k.frozen) out.push(html`<span class="badge bad" data-testid="key-frozen">Frozen</span>`);
  else out.push(html`<span class="badge ok">Active</span>`);
  return out;
}

export default {
  name: "keys",
  title: "API keys",
  nav: "keys",
  async mount(root, ctx) {
    let keys = [];
    const head = html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">API keys</h1>
        <p class="sub">Proxy keys let your apps call models through this server; admin keys may also change settings through /v1. Freeze a key to stop it at once without deleting it.</p></div>
      ${canChange() ? html`<div class="actions"><button type="button" class="btn btn-primary" data-action="create" data-testid="key-create">${icon("plus", 16)} Create key</button></div>` : ""}</div>`;
    render(root, html`${head}<section class="card"><div class="card-body flush" id="keys-box"></div></section>`);
    const box = root.querySelector("#keys-box");

    async function load(quiet = false) {
      if (!quiet) { ctx.loading(); render(box, loadingState("table")); }
      try {
        const r = await api.get("/api/keys", null, { signal: ctx.signal });
        if (!ctx.alive()) return;
        keys = r.data || [];
        draw();
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        render(box, errorState(err));
      }
      ctx.ready();
    }

    function draw() {
      if (!keys.length) {
        render(box, emptyState({
          title: "No API keys yet",
          text: canChange() ? "Create a key, then point the OpenAI SDK at this server with it. The secret is shown once." : "An admin of this tenant can create keys.",
          action: canChange() ? html`<button type="button" class="btn btn-primary" data-action="create">${icon("plus", 16)} Create your first key</button>` : "",
          iconName: "keys",
        }));
        return;
      }
      const sorted = [...keys].sort((a, b) => (!!a.revoked_at - !!b.revoked_at) || (b.created_at - a.created_at));
      render(box, html`<div class="table-wrap"><table class="table" data-testid="keys-table"><thead><tr>
          <th>Name</th><th>Scope</th><th>Key</th><th>Created</th><th>Last used</th><th class="num">Calls today</th><th class="num">Spend today</th><th>Status</th>${canChange() ? html`<th><span class="sr-only">Actions</span></th>` : ""}</tr></thead><tbody>
        ${sorted.map((k) => html`<tr data-testid="key-row" data-key-id="${k.id}" data-frozen="${String(!!k.frozen)}" data-revoked="${String(!!k.revoked_at)}" class="${k.revoked_at ? "dim" : ""}">
          <td><span class="cell-main">${k.name}</span><div class="cell-sub mono" title="${k.id}">${shortId(k.id)}</div></td>
          <td><span class="badge plain ${k.scope === "admin" ? "accent" : ""}">${cap(k.scope)}</span></td>
          <td class="mono nowrap">${k.prefix}…</td>
          <td>${timeAgo(k.created_at)}</td>
          <td>${timeAgo(k.last_used_at, "never")}</td>
          <td class="num">${compact(k.today?.calls ?? 0)}</td>
          <td class="num">${money(k.today?.spend_usd ?? 0)}</td>
          <td>${statusBadges(k)}</td>
          ${canChange() ? html`<td><div class="row-actions">${k.revoked_at ? "" : html`
            ${k.frozen
              ? html`<button type="button" class="btn btn-sm" data-action="unfreeze" data-testid="key-unfreeze" aria-label="${`Unfreeze ${k.name}`}">Unfreeze</button>`
              : html`<button type="button" class="btn btn-sm btn-danger-soft" data-action="freeze" data-testid="key-freeze" aria-label="${`Freeze ${k.name}`}">Freeze</button>`}
            <button type="button" class="btn btn-sm btn-ghost" data-action="revoke" data-testid="key-revoke" aria-label="${`Revoke ${k.name}`}">Revoke</button>`}</div></td>` : ""}
        </tr>`)}</tbody></table></div>`);
    }

    async function create() {
      const res = await formDialog({
        title: "Create an API key",
        fields: html`${field({ name: "name", label: "Name", required: true, testid: "key-name", placeholder: "support-bot-production", hint: "So you recognise it in logs and incidents." })}
          ${field({ name: "scope", label: "Scope", testid: "key-scope", value: "proxy", options: [{ value: "proxy", label: "Proxy — call models through /v1" }, { value: "admin", label: "Admin — also change settings through /v1" }] })}`,
        submitLabel: "Create key", submitTestid: "key-create-submit",
        rules: { name: [validators.required] },
        submit: (v) => api.post("/api/keys", { name: v.name.trim(), scope: v.scope }),
      });
      if (!res || res === true) return;
      await infoDialog({
        title: "Copy your new key now", testid: "key-secret-dialog",
        body: html`<div class="notice">This is the only time the secret is shown. Store it in your secret manager; if you lose it, revoke the key and create another.</div>
          <div class="secret-box"><code data-testid="key-secret">${res.secret}</code><button type="button" class="btn" data-testid="key-secret-copy" data-copy-secret>${icon("copy", 16)} Copy</button></div>
          <p class="hint section-gap">Name <strong>${res.key?.name}</strong> · scope ${res.key?.scope} · id <span class="mono">${res.key?.id}</span></p>`,
        onMount: (dlg) => dlg.addEventListener("click", (e) => { if (e.target.closest("[data-copy-secret]")) copyText(res.secret); }),
      });
      await load(true);
    }

    root.addEventListener("click", async (e) => {
      const a = e.target.closest("[data-action]");
      if (!a) return;
      const act = a.dataset.action;
      if (act === "retry") return load();
      if (act === "create") return create();
      const row = a.closest("[data-key-id]");
      const key = keys.find((k) => k.id === row?.dataset.keyId);
      if (!key) return;
      if (act === "freeze") {
        const ok = await reasonDialog({
          title: `Freeze “${key.name}”?`,
          text: "Every call with this key is refused (HTTP 423) until it is unfrozen. Other keys keep working.",
          confirmLabel: "Freeze key",
          action: (reason) => api.post("/api/killswitch/key", { key_id: key.id, reason }),
        });
        if (ok) { toast(`Key “${key.name}” frozen`, "ok"); await load(true); }
      } else if (act === "unfreeze") {
        const ok = await reasonDialog({
          title: `Unfreeze “${key.name}”?`, text: "Calls with this key go through again.", confirmLabel: "Unfreeze key", required: false, danger: false,
          action: (reason) => api.del("/api/killswitch/key", reason ? { key_id: key.id, reason } : { key_id: key.id }),
        });
        if (ok) { toast(`Key “${key.name}” unfrozen`, "ok"); await load(true); }
      } else if (act === "revoke") {
        const ok = await confirmDialog({
          title: `Revoke “${key.name}”?`, danger: true, confirmLabel: "Revoke key",
          text: "The key stops working for good; this cannot be undone. Its recorded calls stay as evidence.",
          action: () => api.post(`/api/keys/${encodeURIComponent(key.id)}/revoke`, {}),
        });
        if (ok) { toast(`Key “${key.name}” revoked`, "ok"); await load(true); }
      }
    });

    ctx.on("overview", (ev) => {
      // A freeze from elsewhere (another tab, the CLI) shows without a reload.
      const frozen = new Set(ev.frozen?.keys || []);
      if (!keys.length || !ev.frozen) return;
      if (keys.some((k) => !k.revoked_at && !!k.frozen !== frozen.has(k.id))) load(true);
    });
    await load();
  },
};

// #/settings: your account (password), the theme, and — for owners and operators — the
// people of the tenant (change role, end sessions, disable/enable, delete) and its pending
// invitations (revoke).
import * as api from "../api.js";
import { session, canManagePeople, isOperator, currentTenant } from "../state.js";
import { html, render, icon, timeAgo, absTime, loadingState, errorState, emptyState, toast, field, validate, validators, formValues, showApiError, busy, copyText, cap } from "../ui.js";
import { storedTheme, setTheme } from "../theme.js";
import { formDialog, confirmDialog } from "../components/dialog.js";

const ROLE_OPTIONS = [{ value: "viewer", label: "Viewer — reads only" }, { value: "admin", label: "Admin — every tenant action" }, { value: "owner", label: "Owner — admin plus people" }];

function personRow(p, me) {
  const self = p.id === me.id;
  const name = p.email;
  return html`<tr data-testid="person-row" data-user-id="${p.id}" data-disabled="${String(!!p.disabled_at)}" class="${p.disabled_at ? "dim" : ""}">
    <td><span class="cell-main">${p.email}</span>${self ? html` <span class="badge plain accent">you</span>` : ""}</td>
    <td>${cap(p.role)}</td>
    <td>${p.disabled_at ? html`<span class="badge bad" data-testid="person-disabled" title="${`Disabled since ${absTime(p.disabled_at)}`}">Disabled</span>` : html`<span class="badge ok">Active</span>`}</td>
    <td>${timeAgo(p.created_at)}</td>
    <td>${self ? html`<span class="muted">—</span>` : html`<div class="row-actions">
      ${p.role === "operator" ? "" : html`<button type="button" class="btn btn-sm" data-action="role" data-testid="person-role" aria-label="${`Change the role of ${name}`}">Role…</button>`}
      ${p.disabled_at ? "" : html`<button type="button" class="btn btn-sm btn-ghost" data-action="sessions" data-testid="person-sessions" aria-label="${`End every session of ${name}`}">End sessions</button>`}
      ${p.disabled_at
        ? html`<button type="button" class="btn btn-sm" data-action="enable" data-testid="person-enable" aria-label="${`Enable ${name}`}">Enable</button>`
        : html`<button type="button" class="btn btn-sm btn-danger-soft" data-action="disable" data-testid="person-disable" aria-label="${`Disable ${name}`}">Disable</button>`}
      <button type="button" class="btn btn-sm btn-ghost" data-action="delete" data-testid="person-delete" aria-label="${`Delete ${name}`}">Delete</button></div>`}</td></tr>`;
}

function invitationRow(i) {
  return html`<tr data-testid="invitation-row" data-invitation-id="${i.id}">
    <td><span class="cell-main">${i.email}</span></td><td>${cap(i.role)}</td>
    <td>${timeAgo(i.created_at)}</td><td>${timeAgo(i.expires_at)}</td>
    <td><div class="row-actions"><button type="button" class="btn btn-sm btn-ghost" data-action="revoke" data-testid="invitation-revoke" aria-label="${`Revoke the invitation of ${i.email}`}">Revoke</button></div></td></tr>`;
}

export default {
  name: "settings",
  title: "Settings",
  nav: "settings",
  async mount(root, ctx) {
    const u = session.user;
    const tenant = currentTenant();
    const theme = storedTheme();
    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Settings</h1>
        <p class="sub">Your account and how the console looks${canManagePeople() ? ", and who has access" : ""}.</p></div></div>
      <div class="grid grid-2">
        <section class="card"><div class="card-head"><h2>Your account</h2></div><div class="card-body"><dl class="dl">
          <dt>Email</dt><dd data-testid="settings-email">${u.email}</dd><dt>Role</dt><dd>${cap(u.role)}</dd>
          <dt>Tenant</dt><dd>${isOperator() ? "All tenants (operator)" : tenant?.name || tenant?.id || "—"}</dd></dl>
          <h3 class="section-gap">Theme</h3>
          <div class="segmented section-gap-sm" role="radiogroup" aria-label="Theme">
            ${[["system", "System"], ["light", "Light"], ["dark", "Dark"]].map(([v, l]) => html`<button type="button" role="radio" data-theme-choice="${v}" aria-checked="${theme === v}" aria-pressed="${theme === v}" data-testid="theme-${v}">${l}</button>`)}
          </div></div></section>
        <section class="card"><div class="card-head"><h2>Change password</h2></div><div class="card-body">
          <form novalidate id="pw-form">
            <input type="email" name="username" value="${u.email}" autocomplete="username" hidden tabindex="-1" aria-hidden="true">
            ${field({ name: "current_password", label: "Current password", type: "password", required: true, autocomplete: "current-password", testid: "pw-current" })}
            ${field({ name: "new_password", label: "New password", type: "password", required: true, autocomplete: "new-password", hint: "At least 10 characters. Your other sessions are signed out.", testid: "pw-new" })}
            ${field({ name: "confirm", label: "Repeat the new password", type: "password", required: true, autocomplete: "new-password", testid: "pw-confirm" })}
            <div class="form-actions"><button type="submit" class="btn btn-primary" data-testid="pw-submit">Change password</button></div>
          </form></div></section>
      </div>
      ${canManagePeople() ? html`<section class="card"><div class="card-head"><h2>People</h2><span class="hint">${tenant ? html`in ${tenant.name || tenant.id}` : "on this instance"}</span></div>
        <div class="card-body">
          <form novalidate id="invite-form" class="inline-form">
            ${field({ name: "email", label: "Invite by email", type: "email", required: true, testid: "invite-email-input", placeholder: "colleague@example.com" })}
            ${field({ name: "role", label: "Role", value: "viewer", testid: "invite-role", options: [{ value: "viewer", label: "Viewer — reads only" }, { value: "admin", label: "Admin — every tenant action" }, { value: "owner", label: "Owner — admin plus people" }] })}
            <button type="submit" class="btn btn-primary filter-btn" data-testid="invite-create">Create invitation</button>
          </form>
          <div id="invite-result"></div></div>
        <div class="card-body flush" id="people"></div></section>` : ""}`);

    root.querySelector(".segmented").addEventListener("click", (e) => {
      const b = e.target.closest("[data-theme-choice]");
      if (!b) return;
      setTheme(b.dataset.themeChoice);
    });

    // The header's theme button changes the choice too.
    const syncTheme = () => {
      const t = storedTheme();
      for (const x of root.querySelectorAll("[data-theme-choice]")) {
        x.setAttribute("aria-checked", String(x.dataset.themeChoice === t));
        x.setAttribute("aria-pressed", String(x.dataset.themeChoice === t));
      }
    };
    document.addEventListener("agv:theme", syncTheme);
    const cleanup = () => document.removeEventListener("agv:theme", syncTheme);

    const pw = root.querySelector("#pw-form");
    pw.addEventListener("submit", async (e) => {
      e.preventDefault();
      const same = (v, f) => (v === f.elements.new_password.value ? "" : "The new passwords differ.");
      if (!validate(pw, { current_password: [validators.required], new_password: [validators.required, validators.password], confirm: [validators.required, same] })) return;
      const v = formValues(pw);
      try {
        await busy(pw.querySelector('[type="submit"]'), () => api.post("/api/auth/password", { current_password: v.current_password, new_password: v.new_password }));
        pw.reset();
        toast("Password changed. Your other sessions were signed out.", "ok");
      } catch (err) {
        if (err?.name === "AbortError") return;
        if (!err.param && err.status === 403 && /password/i.test(err.message)) err.param = "current_password";
        showApiError(pw, err);
      }
    });

    if (!canManagePeople()) { ctx.ready(); return cleanup; }

    const people = root.querySelector("#people");
    const inv = root.querySelector("#invite-form");
    if (isOperator() && !tenant) {
      // People belong to a tenant: without one chosen the server would answer 400.
      inv.hidden = true;
      render(people, emptyState({ title: "Choose a tenant first", text: "People belong to a tenant. Open one from the Operator page to see its people and invite new ones.", action: html`<a class="btn" href="#/operator">Go to Operator</a>`, testid: "people-empty" }));
      ctx.ready();
      return cleanup;
    }
    let list = [], invitations = [];
    function drawPeople() {
      const others = list.filter((p) => p.id !== u.id);
      render(people, html`${list.length ? html`<div class="table-wrap"><table class="table" data-testid="people-table"><thead><tr><th>Email</th><th>Role</th><th>Status</th><th>Joined</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>
          ${list.map((p) => personRow(p, u))}</tbody></table></div>` : ""}
        ${others.length ? "" : emptyState({ title: "Nobody else yet", text: "Invite a colleague above: they get a link to choose their password." })}
        <div class="card-body"><h3>Pending invitations</h3>
        ${invitations.length ? html`<div class="table-wrap section-gap-sm"><table class="table" data-testid="invitations-table"><thead><tr><th>Email</th><th>Role</th><th>Invited</th><th>Expires</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>
          ${invitations.map(invitationRow)}</tbody></table></div>`
          : html`<p class="muted section-gap-sm" data-testid="invitations-empty">No pending invitations. An invitation link works for 7 days, once; revoke it here if it went to the wrong person.</p>`}</div>`);
    }
    async function loadPeople(quiet = false) {
      if (!quiet) render(people, loadingState("table"));
      try {
        const r = await api.get("/api/users", null, { signal: ctx.signal });
        if (!ctx.alive()) return;
        list = r.data || [];
        invitations = r.invitations || [];
        drawPeople();
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        if (err?.code === "tenant_required") render(people, emptyState({ title: "Choose a tenant first", text: "People belong to a tenant. Open one from the Operator page to see and invite its people.", action: html`<a class="btn" href="#/operator">Go to Operator</a>` }));
        else render(people, errorState(err));
      }
    }

    async function act(a) {
      const what = a.dataset.action;
      const invRow = a.closest("[data-invitation-id]");
      if (what === "revoke" && invRow) {
        const inv = invitations.find((i) => i.id === invRow.dataset.invitationId);
        if (!inv) return;
        const ok = await confirmDialog({
          title: `Revoke the invitation of ${inv.email}?`, danger: true, confirmLabel: "Revoke invitation",
          text: "Its link stops working at once and says it was revoked. You can invite them again later.",
          action: () => api.post(`/api/invitations/${encodeURIComponent(inv.id)}/revoke`, {}),
        });
        if (ok) { toast(`Invitation of ${inv.email} revoked`, "ok"); await loadPeople(true); }
        return;
      }
      const row = a.closest("[data-user-id]");
      const p = list.find((x) => x.id === row?.dataset.userId);
      if (!p) return;
      const path = `/api/users/${encodeURIComponent(p.id)}`;
      let ok, done;
      if (what === "role") {
        ok = await formDialog({
          title: `Change the role of ${p.email}`,
          intro: "The new role applies from their next click; they stay signed in.",
          fields: field({ name: "role", label: "Role", value: p.role, testid: "person-role-select", options: ROLE_OPTIONS }),
          submitLabel: "Change role", testid: "role-dialog", submitTestid: "role-confirm",
          submit: (v) => api.patch(path, { role: v.role }),
        });
        done = ok && `${p.email} is now ${cap(ok.user?.role || "")}`;
      } else if (what === "sessions") {
        ok = await confirmDialog({
          title: `End every session of ${p.email}?`, confirmLabel: "End sessions",
          text: "Every session of theirs ends at once, in every browser. They can sign in again with their password.",
          action: () => api.del(`${path}/sessions`),
        });
        done = ok && `${p.email} was signed out everywhere`;
      } else if (what === "disable") {
        ok = await confirmDialog({
          title: `Disable ${p.email}?`, danger: true, confirmLabel: "Disable",
          text: "They are signed out at once and cannot sign in until someone enables them again. Their history stays.",
          action: () => api.post(`${path}/disable`, {}),
        });
        done = ok && `${p.email} disabled`;
      } else if (what === "enable") {
        try {
          await busy(a, () => api.post(`${path}/enable`, {}));
          ok = true; done = `${p.email} can sign in again`;
        } catch (err) { if (err?.name !== "AbortError") toast(`Could not enable ${p.email}: ${err.message}`, "bad"); }
      } else if (what === "delete") {
        ok = await confirmDialog({
          title: `Delete ${p.email}?`, danger: true, confirmLabel: "Delete for good",
          text: "Their account and sessions are removed; this cannot be undone. What they did stays in the audit log. To only stop them for now, disable them instead.",
          action: () => api.del(path),
        });
        done = ok && `${p.email} deleted`;
      }
      if (ok) { toast(done, "ok"); await loadPeople(true); }
    }
    people.addEventListener("click", (e) => {
      const a = e.target.closest("[data-action]");
      if (!a) return;
      if (a.dataset.action === "retry") { loadPeople(); return; }
      act(a);
    });

    inv.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (!validate(inv, { email: [validators.required, validators.email] })) return;
      const v = formValues(inv);
      try {
        const r = await busy(inv.querySelector('[type="submit"]'), () => api.post("/api/invitations", { email: v.email.trim(), role: v.role }));
        const url = r.url || `${location.origin}/#/invite?token=${encodeURIComponent(r.token)}`;
        render(root.querySelector("#invite-result"), html`<div class="notice ok section-gap" role="status"><div class="stack">
          <div>Invitation for <strong>${r.invitation?.email || v.email}</strong> as ${cap(r.invitation?.role || v.role)} — valid until ${r.invitation?.expires_at ? timeAgo(r.invitation.expires_at) : "7 days from now"}. Send them this link:</div>
          <div class="secret-box"><code data-testid="invite-url">${url}</code><button type="button" class="btn" data-copy-url data-testid="invite-url-copy">${icon("copy", 16)} Copy</button></div></div></div>`);
        root.querySelector("[data-copy-url]").addEventListener("click", () => copyText(url));
        inv.reset();
        loadPeople();
      } catch (err) { if (err?.name !== "AbortError") showApiError(inv, err); }
    });

    await loadPeople();
    ctx.ready();
    return cleanup;
  },
};

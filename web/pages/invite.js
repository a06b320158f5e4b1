// #/invite?token=…: accept an invitation. Shows who it is for and which tenant, asks for a
// password, creates the user and signs in.
import * as api from "../api.js";
import { setSession } from "../state.js";
import { html, render, field, validate, validators, showApiError, formValues, busy, emptyState, errorState, cap } from "../ui.js";
import { authCard } from "../components/auth-card.js";

export default {
  name: "invite",
  title: "Accept invitation",
  public: true,
  async mount(root, ctx) {
    const token = ctx.query.get("token") || "";
    if (!token) {
      render(root, authCard({ title: "Accept an invitation", body: emptyState({ title: "This link has no invitation token", text: "Open the full link you were sent; it ends in #/invite?token=…", action: html`<a class="btn" href="#/login">Go to sign-in</a>` }) }));
      ctx.ready();
      return;
    }
    render(root, authCard({ title: "Accept an invitation", body: html`<div data-testid="page-loading"><span class="skeleton sk-line"></span><span class="skeleton sk-line short"></span></div>` }));
    let inv;
    try { inv = await api.get(`/api/invitations/${encodeURIComponent(token)}`, null, { auth401: false, signal: ctx.signal }); } catch (err) {
      if (err?.name === "AbortError") return;
      const body = err?.code === "invitation_revoked"
        ? emptyState({ title: "This invitation was revoked", text: `${cap(err.message)}.`, action: html`<a class="btn" href="#/login">Go to sign-in</a>`, testid: "page-error", iconName: "error" })
        : err?.status === 404
        ? emptyState({ title: "This invitation is not valid", text: "It may have expired (invitations last 7 days), been used already, or been mistyped. Ask whoever invited you for a new link.", action: html`<a class="btn" href="#/login">Go to sign-in</a>`, testid: "page-error", iconName: "error" })
        : errorState(err);
      render(root, authCard({ title: "Accept an invitation", body }));
      root.querySelector('[data-action="retry"]')?.addEventListener("click", () => ctx.navigate(location.hash));
      ctx.ready();
      return;
    }
    if (!ctx.alive()) return;
    render(root, authCard({
      title: "Join " + (inv.tenant?.name || "agv-server"),
      sub: "Choose a password to finish creating your account.",
      body: html`<dl class="dl" data-testid="invite-details">
          <dt>Email</dt><dd data-testid="invite-email">${inv.email}</dd>
          <dt>Tenant</dt><dd data-testid="invite-tenant">${inv.tenant?.name || "—"} <span class="muted mono">${inv.tenant?.id || ""}</span></dd>
          <dt>Role</dt><dd>${cap(inv.role)}</dd>
        </dl>
        <form novalidate class="stack">
          <input type="email" name="username" value="${inv.email}" autocomplete="username" hidden tabindex="-1" aria-hidden="true">
          ${field({ name: "password", label: "Password", type: "password", required: true, testid: "invite-password", autocomplete: "new-password", hint: "At least 10 characters." })}
          ${field({ name: "confirm", label: "Repeat the password", type: "password", required: true, testid: "invite-confirm", autocomplete: "new-password" })}
          <button type="submit" class="btn btn-primary btn-block btn-lg" data-testid="invite-submit">Create account and sign in</button>
        </form>`,
    }));
    const form = root.querySelector("form");
    form.elements.password.focus();
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const same = (v, f) => (v === f.elements.password.value ? "" : "The passwords differ.");
      if (!validate(form, { password: [validators.required, validators.password], confirm: [validators.required, same] })) return;
      const v = formValues(form);
      try {
        const body = await busy(form.querySelector('[type="submit"]'), () =>
          api.post("/api/invitations/accept", { token, password: v.password }, { auth401: false }));
        setSession(body);
        // The sign-in answer has no tenant name; /api/auth/me does.
        try { setSession(await api.get("/api/auth/me")); } catch { /* keep what we have */ }
        location.hash = "#/overview";
      } catch (err) { showApiError(form, err); }
    });
    ctx.ready();
  },
};

// #/setup?token=…: the first run. The server prints this link at start; it creates the
// operator account and signs it in.
import * as api from "../api.js";
import { setSession } from "../state.js";
import { html, render, field, validate, validators, showApiError, formValues, busy, emptyState, errorState } from "../ui.js";
import { authCard } from "../components/auth-card.js";

export default {
  name: "setup",
  title: "Set up agv-server",
  public: true,
  async mount(root, ctx) {
    const token = ctx.query.get("token") || "";
    let needed = true;
    try { needed = !!(await api.get("/api/setup", null, { auth401: false, signal: ctx.signal }))?.needed; } catch (err) {
      if (err?.name === "AbortError") return;
      if (err?.status !== 404) {
        render(root, authCard({ title: "Set up agv-server", body: errorState(err) }));
        root.querySelector('[data-action="retry"]').addEventListener("click", () => ctx.navigate(location.hash));
        ctx.ready();
        return;
      }
    }
    if (!ctx.alive()) return;
    if (!needed) {
      render(root, authCard({
        title: "Already set up",
        body: emptyState({ title: "This server has an operator account", text: "Setup runs only once. Sign in with your account instead.", action: html`<a class="btn btn-primary" href="#/login">Go to sign-in</a>` }),
      }));
      ctx.ready();
      return;
    }
    render(root, authCard({
      title: "Create the operator account",
      sub: "The operator runs this instance: tenants, backups, updates and health. You can invite tenant owners afterwards.",
      body: html`<form novalidate>
        ${token ? "" : html`<div class="notice">Open the setup link the server printed when it started (it ends in <code>#/setup?token=…</code>), or paste its token below.</div>`}
        ${token ? html`<input type="hidden" name="token" value="${token}">` : field({ name: "token", label: "Setup token", required: true, testid: "setup-token", attrs: "mono" })}
        ${field({ name: "email", label: "Email", type: "email", required: true, testid: "setup-email", autocomplete: "username" })}
        ${field({ name: "password", label: "Password", type: "password", required: true, testid: "setup-password", autocomplete: "new-password", hint: "At least 10 characters." })}
        <button type="submit" class="btn btn-primary btn-block btn-lg" data-testid="setup-submit">Create account and sign in</button>
      </form>`,
    }));
    const form = root.querySelector("form");
    (token ? form.elements.email : form.elements.token).focus();
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const rules = { email: [validators.required, validators.email], password: [validators.required, validators.password] };
      if (!token) rules.token = [validators.required];
      if (!validate(form, rules)) return;
      const v = formValues(form);
      try {
        const body = await busy(form.querySelector('[type="submit"]'), () =>
          api.post("/api/setup", { token: v.token.trim(), email: v.email.trim(), password: v.password }, { auth401: false }));
        setSession(body);
        // The sign-in answer has no tenant name; /api/auth/me does.
        try { setSession(await api.get("/api/auth/me")); } catch { /* keep what we have */ }
        location.hash = "#/operator";
      } catch (err) {
        if (err?.code === "invalid_setup_token") err.param = token ? null : "token";
        if (err?.code === "setup_done") { err.param = null; err.message = `${err.message} — sign in instead.`; }
        showApiError(form, err);
      }
    });
    ctx.ready();
  },
};

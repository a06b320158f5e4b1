// #/login: email and password, and "Sign in with <provider>" when the server has single
// sign-on (GET /api/auth/methods). A password sign-in makes the server set the session
// cookie and give the CSRF token; a sign-in with the identity provider leaves the console
// for the provider and comes back as #/login?sso=done (signed in: the session is fetched)
// or #/login?sso_error=… (the reason, shown above the form). Goes back to the page that
// needed the sign-in, else home.
import * as api from "../api.js";
import { setSession, session, probablySignedIn, isOperator } from "../state.js";
import { html, render, field, validate, validators, showApiError, formValues, busy, formError, icon, escapeHtml } from "../ui.js";
import { authCard } from "../components/auth-card.js";

export default {
  name: "login",
  title: "Sign in",
  public: true,
  async mount(root, ctx) {
    const ssoError = ctx.query.get("sso_error");
    const ssoDone = ctx.query.get("sso") === "done";
    // A reload must not repeat the outcome of a sign-in that is over.
    if (ssoError || ssoDone) history.replaceState(null, "", "#/login");
    let ssoFailed = null;
    if (ssoDone) {
      // Back from the identity provider, signed in: the cookie is set, fetch who we are.
      try { setSession(await api.get("/api/auth/me", null, { auth401: false })); } catch (err) { ssoFailed = err; }
      if (!ctx.alive()) return;
    }
    // Already signed in? Skip the form.
    if (probablySignedIn() && !session.user && !ssoFailed) {
      try { setSession(await api.get("/api/auth/me", null, { auth401: false })); } catch { /* not signed in */ }
      if (!ctx.alive()) return;
    }
    if (session.user) {
      location.replace(ctx.takeNext() || (isOperator() ? "#/operator" : "#/overview"));
      return;
    }
    render(root, authCard({
      title: "Sign in",
      sub: "Use the account your operator or owner set up for you.",
      body: html`<div class="sso-slot" data-testid="sso-slot" aria-live="polite"><span class="skeleton sk-line" aria-label="Checking the ways to sign in"></span></div>
      <form novalidate id="login-form">
        ${field({ name: "email", label: "Email", type: "email", required: true, testid: "login-email", autocomplete: "username" })}
        ${field({ name: "password", label: "Password", type: "password", required: true, testid: "login-password", autocomplete: "current-password" })}
        <button type="submit" class="btn btn-primary btn-block btn-lg" data-testid="login-submit">Sign in</button>
      </form>`,
    }));
    const form = root.querySelector("form");
    if (ssoError || ssoFailed) {
      formError(form, ssoError
        ? `Signing in with your identity provider did not work: ${ssoError}`
        : `Signing in with your identity provider did not finish: ${ssoFailed.message} Allow cookies for this site, then try again.`);
      form.querySelector(".form-error")?.setAttribute("data-testid", "sso-error");
    }
    form.elements.email.focus();
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (!validate(form, { email: [validators.required, validators.email], password: [validators.required] })) return;
      const v = formValues(form);
      try {
        const body = await busy(form.querySelector('[type="submit"]'), () =>
          api.post("/api/auth/login", { email: v.email.trim(), password: v.password }, { auth401: false }));
        setSession(body);
        // The sign-in answer has no tenant name; /api/auth/me does.
        try { setSession(await api.get("/api/auth/me")); } catch { /* keep what we have */ }
        location.hash = ctx.takeNext() || (isOperator() ? "#/operator" : "#/overview");
      } catch (err) {
        if (err?.code === "invalid_credentials" || err?.status === 401) {
          formError(form, err.message || "The email or the password is wrong.");
          form.elements.password.value = "";
          form.elements.password.focus();
        } else if (err?.status === 429) {
          formError(form, err.message);
        } else showApiError(form, err);
      }
    });
    await showMethods(root.querySelector(".sso-slot"), ctx);
    ctx.ready();
  },
};

/** Fills the slot above the form: the identity provider's button, or nothing. */
async function showMethods(slot, ctx) {
  let methods;
  try {
    methods = await api.get("/api/auth/methods", null, { auth401: false, signal: ctx.signal });
  } catch (err) {
    if (err?.name === "AbortError" || !ctx.alive()) return;
    render(slot, html`<p class="quiet-note" data-testid="sso-unavailable">Could not check whether single sign-on is offered (${err.message}). Sign in with your email and password, or reload the page.</p>`);
    return;
  }
  if (!ctx.alive()) return;
  const sso = methods?.sso;
  if (!sso) {
    render(slot, "");
    slot.hidden = true;
    return;
  }
  render(slot, html`<a class="btn btn-block btn-lg" href="${sso.start}" data-testid="sso-start">${icon("shield")}<span>${sso.label}</span></a>
    <div class="auth-or" role="separator"><span>or with your email and password</span></div>`);
  // The provider's page can take a moment to come: say that something is happening.
  slot.querySelector("a").addEventListener("click", (e) => {
    const a = e.currentTarget;
    a.setAttribute("aria-busy", "true");
    a.setAttribute("aria-disabled", "true");
    a.innerHTML = `<span class="spinner" aria-hidden="true"></span> ${escapeHtml(a.textContent.trim())}`;
  });
}

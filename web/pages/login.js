// #/login: email and password; on success the server sets the session cookie and gives the
// CSRF token. Goes back to the page that needed the sign-in, else home.
import * as api from "../api.js";
import { setSession, session, probablySignedIn, isOperator } from "../state.js";
import { html, render, field, validate, validators, showApiError, formValues, busy, formError } from "../ui.js";
import { authCard } from "../components/auth-card.js";

export default {
  name: "login",
  title: "Sign in",
  public: true,
  async mount(root, ctx) {
    // Already signed in? Skip the form.
    if (probablySignedIn() && !session.user) {
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
      body: html`<form novalidate id="login-form">
        ${field({ name: "email", label: "Email", type: "email", required: true, testid: "login-email", autocomplete: "username" })}
        ${field({ name: "password", label: "Password", type: "password", required: true, testid: "login-password", autocomplete: "current-password" })}
        <button type="submit" class="btn btn-primary btn-block btn-lg" data-testid="login-submit">Sign in</button>
      </form>`,
    }));
    const form = root.querySelector("form");
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
    ctx.ready();
  },
};

// The console's entry point: theme, session, hash router and the shell (navigation,
// header, the operator's "viewing tenant" bar, the live indicator). Each page is a module
// in pages/ exporting {name, title, mount(root, ctx)}; pages talk to the server only
// through api.js. No inline script anywhere: the CSP forbids it.

import * as api from "./api.js";
import { session, setSession, clearSession, probablySignedIn, isOperator, currentTenant, viewingTenant, setViewingTenant, role } from "./state.js";
import { html, render, icon, errorState, refreshTimes, toast, loadingState, emptyState } from "./ui.js";
import * as live from "./components/live.js";
import { applyTheme, toggleTheme } from "./theme.js";

import loginPage from "./pages/login.js";
import setupPage from "./pages/setup.js";
import invitePage from "./pages/invite.js";
import overviewPage from "./pages/overview.js";
import incidentsPage from "./pages/incidents.js";
import incidentPage from "./pages/incident.js";
import callsPage from "./pages/calls.js";
import callPage from "./pages/call.js";
import keysPage from "./pages/keys.js";
import policiesPage from "./pages/policies.js";
import usagePage from "./pages/usage.js";
import alertsPage from "./pages/alerts.js";
import auditPage from "./pages/audit.js";
import settingsPage from "./pages/settings.js";
import operatorPage from "./pages/operator.js";
import enforcementPage from "./pages/enforcement.js";
import tenantPickerPage from "./pages/tenant-picker.js";

const ROUTES = [
  ["/login", loginPage, { public: true }],
  ["/setup", setupPage, { public: true }],
  ["/invite", invitePage, { public: true }],
  ["/overview", overviewPage, { tenant: true, nav: "overview" }],
  ["/incidents", incidentsPage, { tenant: true, nav: "incidents" }],
  ["/incidents/:id", incidentPage, { tenant: true, nav: "incidents" }],
  ["/calls", callsPage, { tenant: true, nav: "calls" }],
  ["/calls/:id", callPage, { tenant: true, nav: "calls" }],
  ["/keys", keysPage, { tenant: true, nav: "keys" }],
  ["/policies", policiesPage, { tenant: true, nav: "policies" }],
  ["/usage", usagePage, { tenant: true, nav: "usage" }],
  ["/alerts", alertsPage, { tenant: true, nav: "alerts" }],
  ["/audit", auditPage, { tenant: true, nav: "audit" }],
  ["/settings", settingsPage, { nav: "settings" }],
  ["/operator", operatorPage, { operator: true, nav: "operator" }],
  ["/enforcement", enforcementPage, { operator: true, nav: "enforcement" }],
];

const NAV = [
  ["overview", "Overview"], ["incidents", "Incidents"], ["calls", "Calls"], ["keys", "API keys"],
  ["policies", "Policies"], ["usage", "Usage & budgets"], ["alerts", "Alerts"], ["audit", "Audit log"],
];

function parseHash() {
  const h = location.hash.replace(/^#/, "") || "/";
  const [pathPart, queryPart = ""] = h.split("?");
  const path = pathPart.replace(/\/+$/, "") || "/";
  return { path, query: new URLSearchParams(queryPart) };
}
function match(path) {
  for (const [pattern, page, opts] of ROUTES) {
    const a = pattern.split("/"), b = path.split("/");
    if (a.length !== b.length) continue;
    const params = {};
    let ok = true;
    for (let i = 0; i < a.length; i++) {
      if (a[i].startsWith(":")) { try { params[a[i].slice(1)] = decodeURIComponent(b[i]); } catch { ok = false; } }
      else if (a[i] !== b[i]) ok = false;
    }
    if (ok) return { page, opts, params };
  }
  return null;
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}
const homeHash = () => (isOperator() && !viewingTenant() ? "#/operator" : "#/overview");

// ---------- shell ----------
function renderNav(active) {
  const nav = document.getElementById("sidebar");
  const tenant = currentTenant();
  const item = (key, label, hash = `#/${key}`) => html`<a class="nav-link" href="${hash}" data-testid="nav-${key}" ${active === key ? html`aria-current="page"` : ""}>${icon(key)}<span>${label}</span>${key === "incidents" ? html`<span class="nav-count" id="nav-incident-count" hidden></span>` : ""}</a>`;
  render(nav, html`
    ${isOperator() ? html`<div class="nav-section"><div class="nav-heading">Instance</div>${item("operator", "Operator")}${item("enforcement", "Enforcement log")}</div>` : ""}
    <div class="nav-section"><div class="nav-heading">${isOperator() ? "Tenant" : "Console"}</div>
      ${tenant?.name || tenant?.id ? html`<div class="nav-tenant" title="${tenant.id || ""}">${tenant.name || tenant.id}</div>` : isOperator() ? html`<div class="nav-tenant">No tenant chosen</div>` : ""}
      ${NAV.map(([k, l]) => item(k, l))}</div>
    <div class="nav-section"><div class="nav-heading">Account</div>${item("settings", "Settings")}</div>`);
  setNavCount(navCount);
}
let navCount = null;
export function setNavCount(n) {
  navCount = n;
  const el = document.getElementById("nav-incident-count");
  if (!el) return;
  el.hidden = !(n > 0);
  el.textContent = n > 99 ? "99+" : String(n ?? "");
  el.title = `${n} open incident${n === 1 ? "" : "s"}`;
}

function renderHeader() {
  const menu = document.getElementById("user-menu");
  const u = session.user;
  menu.hidden = !u;
  if (!u) return;
  document.getElementById("user-email").textContent = u.email;
  document.getElementById("user-role").textContent = u.role + (session.tenant?.name && !isOperator() ? ` · ${session.tenant.name}` : "");
  document.getElementById("user-avatar").textContent = (u.email || "?").charAt(0);
  document.getElementById("brand-link").setAttribute("href", homeHash());

  const bar = document.getElementById("tenant-bar");
  const t = viewingTenant();
  bar.hidden = !t;
  if (t) {
    render(bar, html`<span>Viewing tenant <strong>${t.name || t.id}</strong> <span class="mono">${t.name ? t.id : ""}</span> as operator</span>
      <button type="button" class="btn btn-sm" id="back-to-operator" data-testid="back-to-operator">← Back to operator</button>`);
  }
}

function liveUrl() {
  if (!session.user) return null;
  if (isOperator()) {
    const t = viewingTenant();
    return t ? `/api/events?tenant=${encodeURIComponent(t.id)}` : "/api/events";
  }
  return "/api/events";
}

// ---------- router ----------
let current = null; // {cleanup, controller}
let routeSeq = 0;

function leave() {
  if (!current) return;
  current.controller.abort();
  for (const off of current.offs) off();
  try { current.cleanup?.(); } catch { /* ignore */ }
  current = null;
}

async function ensureSession() {
  if (session.user) return true;
  if (!probablySignedIn()) {
    let needed = false;
    try { needed = !!(await api.get("/api/setup", null, { auth401: false }))?.needed; } catch { needed = false; }
    rememberNext();
    location.replace(needed ? "#/setup" : "#/login");
    return false;
  }
  try {
    const me = await api.get("/api/auth/me");
    setSession(me);
    return true;
  } catch (err) {
    if (err?.status === 401) return false; // the 401 handler already went to #/login
    throw err;
  }
}
function rememberNext() {
  const { path } = parseHash();
  const m = match(path);
  if (m && !m.opts.public) { try { sessionStorage.setItem("agv.next", location.hash); } catch { /* ignore */ } }
}
export function takeNext() {
  try { const n = sessionStorage.getItem("agv.next"); sessionStorage.removeItem("agv.next"); return n; } catch { return null; }
}

async function route() {
  const seq = ++routeSeq;
  const { path, query } = parseHash();
  leave();
  document.body.classList.remove("nav-open");
  document.getElementById("nav-toggle").setAttribute("aria-expanded", "false");
  document.body.dataset.ready = "0";
  const main = document.getElementById("main");

  let m = match(path);
  if (!m && path === "/") {
    if (!session.user && probablySignedIn()) {
      try { await ensureSession(); } catch { /* shown below */ }
      if (seq !== routeSeq) return;
    }
    if (session.user) { location.replace(homeHash()); return; }
    m = match("/overview");
  }
  if (m && m.opts.public) {
    live.disconnect();
    document.body.classList.add("bare");
    document.body.classList.remove("booting");
    return mount(m.page, main, { params: m.params, query, seq });
  }
  document.body.classList.remove("bare");
  try {
    if (!(await ensureSession())) { document.body.classList.remove("booting"); return; }
  } catch (err) {
    if (seq !== routeSeq) return;
    document.body.classList.remove("booting");
    document.body.classList.add("bare");
    document.body.dataset.page = "error";
    render(main, html`<div class="auth"><div class="auth-card">${errorState(err)}</div></div>`);
    main.querySelector('[data-action="retry"]')?.addEventListener("click", () => route());
    document.body.dataset.ready = "1";
    return;
  }
  if (seq !== routeSeq) return;
  document.body.classList.remove("booting");
  renderHeader();
  live.connect(liveUrl());

  if (!m) {
    renderNav(null);
    return mount(notFoundPage, main, { params: {}, query, seq });
  }
  renderNav(m.opts.nav);
  if (m.opts.operator && !isOperator()) return mount(forbiddenPage, main, { params: {}, query, seq });
  if (m.opts.tenant && !currentTenant()) {
    if (isOperator()) return mount(tenantPickerPage, main, { params: {}, query, seq, wanted: m.page });
  }
  return mount(m.page, main, { params: m.params, query, seq });
}

function mount(page, main, { params, query, seq }) {
  const controller = new AbortController();
  const offs = [];
  const pageEl = document.createElement("div");
  pageEl.className = "page";
  main.replaceChildren(pageEl);
  document.body.dataset.page = page.name;
  document.title = `${page.title || page.name} · agv-server`;
  const ctx = {
    params, query,
    signal: controller.signal,
    alive: () => seq === routeSeq && !controller.signal.aborted,
    ready: () => { if (seq === routeSeq) { document.body.dataset.page = page.name; document.body.dataset.ready = "1"; } },
    loading: () => { if (seq === routeSeq) document.body.dataset.ready = "0"; },
    navigate,
    on: (kind, fn) => { const off = live.on(kind, fn); offs.push(off); return off; },
    refreshShell: () => { renderHeader(); renderNav(page.nav ?? null); },
    setNavCount,
    viewTenant: (t, hash) => viewTenant(t, hash),
    backToOperator: () => backToOperator(),
    signOut: () => signOut(),
    takeNext: () => takeNext(),
    home: () => homeHash(),
  };
  current = { controller, offs, cleanup: null };
  const entry = current;
  Promise.resolve()
    .then(() => page.mount(pageEl, ctx))
    .then((cleanup) => { if (typeof cleanup === "function") { if (current === entry) entry.cleanup = cleanup; else cleanup(); } })
    .catch((err) => {
      if (err?.name === "AbortError" || !ctx.alive()) return;
      render(pageEl, html`<div class="card">${errorState(err)}</div>`);
      pageEl.querySelector('[data-action="retry"]')?.addEventListener("click", () => route());
      ctx.ready();
    });
  if (seq > 1 && !page.public) main.focus({ preventScroll: true });
  main.scrollTop = 0;
}

const notFoundPage = {
  name: "not-found", title: "Not found",
  mount(root, ctx) {
    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Page not found</h1></div></div>
      <div class="card">${emptyState({ title: "There is no page at this address", text: "Check the link, or go back to the overview.", action: html`<a class="btn btn-primary" href="${homeHash()}">Go to the console</a>`, iconName: "error" })}</div>`);
    ctx.ready();
  },
};
const forbiddenPage = {
  name: "forbidden", title: "Not allowed",
  mount(root, ctx) {
    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Operators only</h1></div></div>
      <div class="card">${emptyState({ title: "This page is for the instance operator", text: `You are signed in as ${role()}. Your tenant's console has everything you may see.`, action: html`<a class="btn btn-primary" href="#/overview">Go to the overview</a>`, iconName: "error", testid: "page-error" })}</div>`);
    ctx.ready();
  },
};

// ---------- sign-out, operator tenant switching ----------
export async function signOut() {
  try { await api.post("/api/auth/logout", {}); } catch { /* the session may already be gone */ }
  clearSession();
  live.disconnect();
  navCount = null;
  location.hash = "#/login";
}
export function viewTenant(t, hash = "#/overview") {
  setViewingTenant(t);
  live.connect(liveUrl());
  navigate(hash);
}
export function backToOperator() {
  setViewingTenant(null);
  live.connect(liveUrl());
  navigate("#/operator");
}

// ---------- boot ----------
function boot() {
  applyTheme();
  api.setUnauthorizedHandler(() => {
    live.disconnect();
    const { path } = parseHash();
    const m = match(path);
    if (m?.opts.public) return;
    rememberNext();
    toast("Your session has ended. Sign in again.");
    location.hash = "#/login";
  });
  window.addEventListener("hashchange", () => route());
  document.getElementById("theme-toggle").addEventListener("click", () => toggleTheme());
  document.getElementById("signout").addEventListener("click", () => signOut());
  document.getElementById("nav-toggle").addEventListener("click", (e) => {
    const open = !document.body.classList.contains("nav-open");
    document.body.classList.toggle("nav-open", open);
    e.currentTarget.setAttribute("aria-expanded", String(open));
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && document.body.classList.contains("nav-open")) document.body.classList.remove("nav-open");
  });
  document.getElementById("tenant-bar").addEventListener("click", (e) => {
    if (e.target.closest("#back-to-operator")) backToOperator();
  });
  // A rejected promise nobody awaited must not reach the console as an error.
  window.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    const err = e.reason;
    if (err?.name === "AbortError") return;
    if (err?.status === 401) return;
    toast(err?.message || "Something went wrong.", "bad");
  });
  // A field's error message goes away as soon as the person edits the field.
  document.addEventListener("input", (e) => {
    const el = e.target;
    if (!el.name || !el.form || el.getAttribute("aria-invalid") !== "true") return;
    el.removeAttribute("aria-invalid");
    const msg = el.form.querySelector(`[data-error-for="${CSS.escape(el.name)}"]`);
    if (msg) { msg.hidden = true; msg.textContent = ""; }
  });
  // An id shown shortened (call_…4f3a2b1c) copies as the whole id when the selection
  // lies within it.
  document.addEventListener("copy", (e) => {
    const sel = document.getSelection();
    if (!sel || sel.isCollapsed || !e.clipboardData) return;
    const at = (n) => (n?.nodeType === 1 ? n : n?.parentElement)?.closest?.("[data-full-id]");
    const el = at(sel.anchorNode);
    if (!el || at(sel.focusNode) !== el) return;
    e.clipboardData.setData("text/plain", el.dataset.fullId);
    e.preventDefault();
  });
  setInterval(() => refreshTimes(), 30000);
  route();
}

// Keep the shell loading state visible until the first route renders.
render(document.getElementById("main"), loadingState());
boot();

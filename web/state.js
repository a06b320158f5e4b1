// Who is signed in and which tenant the console shows. The API client reads the CSRF token
// and the chosen tenant from here; pages read the role to hide controls a role may not use.
// The operator's chosen tenant lives in sessionStorage (per tab), so a reload keeps it.

const TENANT_KEY = "agv.viewTenant";
const HINT_KEY = "agv.signedIn";

export const session = {
  user: null, // {id, email, role, tenant_id}
  csrf: null,
  tenant: null, // the user's own tenant {id, name}, when the server gives it
};

export function setSession(body) {
  session.user = body?.user ?? null;
  session.csrf = body?.csrf_token ?? null;
  session.tenant = body?.tenant ?? (body?.user?.tenant_id ? { id: body.user.tenant_id, name: null } : null);
  try { localStorage.setItem(HINT_KEY, "1"); } catch { /* storage off: fine */ }
}
export function clearSession() {
  session.user = null;
  session.csrf = null;
  session.tenant = null;
  try { localStorage.removeItem(HINT_KEY); sessionStorage.removeItem(TENANT_KEY); } catch { /* ignore */ }
}
/** True when this browser signed in before (so asking /api/auth/me is worth it). */
export function probablySignedIn() {
  try { return localStorage.getItem(HINT_KEY) === "1"; } catch { return true; }
}

export const role = () => session.user?.role ?? null;
export const isOperator = () => role() === "operator";
/** May change tenant state (kill switch, keys, policies, incidents, alerts, replays). */
export const canChange = () => ["operator", "owner", "admin"].includes(role());
/** May see and invite people. */
export const canManagePeople = () => ["operator", "owner"].includes(role());

/** The tenant an operator chose to look at: {id, name} or null. */
export function viewingTenant() {
  if (!isOperator()) return null;
  try {
    const raw = sessionStorage.getItem(TENANT_KEY);
    return raw ? JSON.parse(raw) : null;
  } catch { return null; }
}
export function setViewingTenant(t) {
  try {
    if (t) sessionStorage.setItem(TENANT_KEY, JSON.stringify({ id: t.id, name: t.name ?? null }));
    else sessionStorage.removeItem(TENANT_KEY);
  } catch { /* ignore */ }
}
/** The tenant whose console is shown: the operator's choice, else the user's own. */
export function currentTenant() {
  return isOperator() ? viewingTenant() : session.tenant;
}

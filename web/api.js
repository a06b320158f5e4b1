// The one client of the console's JSON API (/api/…, docs/console-api.md).
// - sends the session cookie (same origin) and `x-csrf-token` on every non-GET;
// - sends `x-agv-tenant` on tenant endpoints when an operator has chosen a tenant;
// - turns the OpenAI-shaped error {"error":{"message","type","code","param"}} into ApiError;
// - on 401 forgets the session and sends the browser to #/login.
// Pages never call fetch themselves.

import { session, viewingTenant, isOperator, clearSession } from "./state.js";

export class ApiError extends Error {
  constructor(status, body, fallback) {
    const e = body && typeof body === "object" && body.error ? body.error : null;
    super(e?.message || fallback || `The server answered ${status}.`);
    this.name = "ApiError";
    this.status = status;
    this.code = e?.code ?? null;
    this.type = e?.type ?? null;
    this.param = e?.param ?? null;
    this.retryAfter = null;
  }
}

/** Paths that never carry a tenant: sign-in, people's own account, setup, the operator's. */
function tenantFree(path) {
  return /^\/api\/(auth|setup|operator)(\/|$)/.test(path) || /^\/api\/invitations\/[^/]+$/.test(path);
}

let onUnauthorized = () => {};
/** app.js tells the client what to do when the session is gone. */
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

function query(params) {
  if (!params) return "";
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * Sends one request. Options: body (JSON), params (query), tenant (override the header;
 * false: never send it), signal, raw (return the Response), auth401 (false: a 401 is just
 * an error, for sign-in forms).
 */
export async function request(method, path, opts = {}) {
  const { body, params, signal, raw = false, auth401 = true } = opts;
  const url = path + query(params);
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && method !== "HEAD" && session.csrf) headers["x-csrf-token"] = session.csrf;
  let tenant = opts.tenant;
  if (tenant === undefined && isOperator() && !tenantFree(path)) tenant = viewingTenant()?.id;
  if (tenant) headers["x-agv-tenant"] = tenant;

  let res;
  try {
    res = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      signal,
    });
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    const e = new ApiError(0, null, "Could not reach the server. Check that agv-server is running, then retry.");
    e.code = "network_error";
    throw e;
  }
  if (res.status === 401 && auth401) {
    clearSession();
    onUnauthorized();
  }
  if (!res.ok) {
    let parsed = null;
    const type = res.headers.get("content-type") || "";
    try { parsed = type.includes("json") ? await res.json() : { error: { message: (await res.text()).slice(0, 300) || null } }; } catch { parsed = null; }
    const err = new ApiError(res.status, parsed, res.status === 429 ? "Too many requests; wait a moment and retry." : null);
    const ra = res.headers.get("retry-after");
    if (ra) err.retryAfter = Number(ra);
    throw err;
  }
  if (raw) return res;
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  if (type.includes("json")) return res.json();
  return res.text();
}

export const get = (path, params, opts = {}) => request("GET", path, { ...opts, params });
export const post = (path, body, opts = {}) => request("POST", path, { ...opts, body: body ?? {} });
export const put = (path, body, opts = {}) => request("PUT", path, { ...opts, body });
export const patch = (path, body, opts = {}) => request("PATCH", path, { ...opts, body });
export const del = (path, body, opts = {}) => request("DELETE", path, { ...opts, body });

function filenameOf(res, fallback) {
  const cd = res.headers.get("content-disposition") || "";
  const star = /filename\*=UTF-8''([^;]+)/i.exec(cd);
  if (star) { try { return decodeURIComponent(star[1]); } catch { /* fall through */ } }
  const plain = /filename="?([^";]+)"?/i.exec(cd);
  return plain ? plain[1] : fallback;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Fetches a file with the session, CSRF and tenant headers and returns {blob, filename}.
 * An answer 202 with a task (large exports) is polled until the file is ready.
 */
export async function fetchFile(path, params, fallbackName, { onProgress } = {}) {
  const res = await request("GET", path, { params, raw: true });
  if (res.status === 202) {
    const task = await res.json();
    const id = task.id || task.task_id;
    for (let i = 0; i < 600; i++) {
      await sleep(Math.min(500 + i * 250, 3000));
      const t = await get(`/api/tasks/${encodeURIComponent(id)}`);
      if (onProgress) onProgress(t);
      if (t.status === "done") {
        const file = await request("GET", `/api/tasks/${encodeURIComponent(id)}/download`, { raw: true });
        return { blob: await file.blob(), filename: filenameOf(file, t.filename || fallbackName) };
      }
      if (t.status === "failed") throw new ApiError(500, { error: { message: t.error || "The export failed.", code: "task_failed" } });
    }
    throw new ApiError(504, { error: { message: "The export is still running; try again later.", code: "task_timeout" } });
  }
  return { blob: await res.blob(), filename: filenameOf(res, fallbackName) };
}

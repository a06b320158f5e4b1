// Live updates from GET /api/events (server-sent events): one EventSource for the whole
// console, pointed at the tenant being viewed (operators watching a tenant add
// ?tenant=ten_…). Pages subscribe to `overview`, `incident` and `health` events. The
// browser retries a dropped stream by itself, saying where it left off (the server's event
// ids, `Last-Event-ID`), so incident changes made meanwhile still arrive; when it gives up
// (the stream closed), we reconnect with a growing delay and say the same in the link
// (`last_event_id`). The header shows the state.

const listeners = { overview: new Set(), incident: new Set(), health: new Set(), status: new Set() };
let source = null;
let currentUrl = null;
let retryTimer = null;
let retryDelay = 2000;
let downTimer = null;
let status = "off"; // off | connecting | live | down
let lastId = ""; // the id of the latest event of the stream at currentUrl

function setStatus(s) {
  status = s;
  const el = document.getElementById("live-indicator");
  if (el) {
    el.hidden = s === "off";
    el.classList.toggle("is-live", s === "live");
    el.classList.toggle("is-down", s === "down");
    const text = el.querySelector(".live-text");
    if (text) text.textContent = s === "live" ? "Live" : s === "down" ? "Reconnecting…" : "Connecting…";
    el.title = s === "live" ? "Receiving live updates" : "Live updates are reconnecting; pages still load normally";
  }
  for (const fn of listeners.status) fn(s);
}

function dispatch(kind, ev) {
  if (ev.lastEventId) lastId = ev.lastEventId;
  let data;
  try { data = JSON.parse(ev.data); } catch { return; }
  for (const fn of listeners[kind]) {
    try { fn(data); } catch { /* a page's handler must not break the stream */ }
  }
}

function open(url) {
  if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
  if (source) { source.close(); source = null; }
  if (url !== currentUrl) lastId = "";
  currentUrl = url;
  if (!url || typeof EventSource === "undefined") { setStatus("off"); return; }
  setStatus("connecting");
  const resume = lastId ? `${url.includes("?") ? "&" : "?"}last_event_id=${encodeURIComponent(lastId)}` : "";
  const es = new EventSource(url + resume, { withCredentials: true });
  source = es;
  es.addEventListener("open", () => { retryDelay = 2000; clearTimeout(downTimer); downTimer = null; setStatus("live"); });
  for (const kind of ["overview", "incident", "health"]) es.addEventListener(kind, (ev) => dispatch(kind, ev));
  es.addEventListener("error", () => {
    if (source !== es) return;
    if (es.readyState === EventSource.CLOSED) {
      es.close();
      source = null;
      setStatus("down");
      retryTimer = setTimeout(() => open(currentUrl), retryDelay);
      retryDelay = Math.min(retryDelay * 2, 30000);
    } else if (!downTimer) {
      // The browser retries by itself (the server may end a stream now and then): only
      // say "reconnecting" when it takes a while.
      downTimer = setTimeout(() => { downTimer = null; if (source === es && es.readyState !== EventSource.OPEN) setStatus("down"); }, 5000);
    }
  });
}

/** Points the stream at `url` (or stops it with null); a no-op when it is already there. */
export function connect(url) {
  if (url === currentUrl && (source || retryTimer)) return;
  retryDelay = 2000;
  open(url);
}
export function disconnect() { open(null); }
export function liveStatus() { return status; }

/** Subscribes to an event kind; returns the unsubscribe function. */
export function on(kind, fn) {
  listeners[kind].add(fn);
  return () => listeners[kind].delete(fn);
}

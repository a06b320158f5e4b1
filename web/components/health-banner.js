// The operator's health banner: one line at the top of the operator's pages that sums up
// the instance — database, call recorder, job queue, last backup, version (and the disk
// when it fills) — from `status` of GET /api/operator/health, refreshed by the live
// stream's `health` events. Green when all is well; amber or red naming what is wrong and
// what to do, the problems first.
import * as api from "../api.js";
import { html, render, icon, timeAgo, absTime } from "../ui.js";

const ICON = { ok: "shield", warn: "warn", bad: "error" };

function problem(c) {
  const when = c.id === "backup" && c.at ? html` (${timeAgo(c.at)})` : "";
  return html`<span class="hb-item hb-${c.state}" data-testid="health-problem" data-check="${c.id}"><strong>${c.label}: ${c.text}</strong>${when}${c.fix ? html` — ${c.fix}` : ""}</span>`;
}

function fine(c) {
  let text = `${c.label} ${c.text}`;
  if (c.id === "backup") {
    text = c.at ? html`last backup ${timeAgo(c.at)}` : c.next_at ? html`first backup <span title="${absTime(c.next_at)}">${timeAgo(c.next_at)}</span>` : "no backup yet";
  } else if (c.id === "version") {
    text = html`version <span class="mono">${c.text}</span>`;
  }
  return html`<span class="hb-item" data-check="${c.id}">${text}</span>`;
}

/** The banner for a health answer; `err`: it could not be read; neither: loading. */
export function bannerHtml(health, err) {
  if (err) {
    return html`<div class="health-banner bad" role="alert" data-testid="health-banner" data-level="error">${icon("error", 18)}
      <p><strong>Health unknown</strong> · the instance's health could not be read: ${err.message} <button type="button" class="linkbtn" data-action="banner-retry">Retry</button></p></div>`;
  }
  const s = health?.status;
  if (!s) {
    return html`<div class="health-banner loading" data-testid="health-banner" data-level="loading" aria-busy="true"><span class="spinner" aria-hidden="true"></span><p>Checking the instance…</p></div>`;
  }
  const checks = s.checks || [];
  const bad = (c) => c.state === "bad" || c.state === "warn";
  const parts = [...checks.filter(bad).map(problem), ...checks.filter((c) => !bad(c)).map(fine)];
  return html`<div class="health-banner ${s.level}" role="status" data-testid="health-banner" data-level="${s.level}">${icon(ICON[s.level] || "warn", 18)}
    <p><strong class="hb-head" data-testid="health-headline">${s.headline}</strong>${parts.map((p) => html`<span class="hb-sep" aria-hidden="true"> · </span>${p}`)}</p></div>`;
}

/** Draws the banner into `box`, only when it would look different from what is there. */
export function renderBanner(box, health, err) {
  const sig = JSON.stringify([health?.status ?? null, err?.message ?? null]);
  if (box.dataset.sig === sig && box.firstChild) return;
  box.dataset.sig = sig;
  render(box, bannerHtml(health, err));
}

/**
 * Keeps a banner in `box` for a page that does not load the health itself: loads it, then
 * follows the live stream.
 */
export async function mountHealthBanner(box, ctx) {
  const draw = (health, err) => { if (ctx.alive()) renderBanner(box, health, err); };
  const load = async () => {
    draw(null, null);
    try { draw(await api.get("/api/operator/health", null, { signal: ctx.signal }), null); } catch (err) {
      if (err?.name !== "AbortError") draw(null, err);
    }
  };
  box.addEventListener("click", (e) => { if (e.target.closest('[data-action="banner-retry"]')) load(); });
  ctx.on("health", (h) => { if (h?.status) draw(h, null); });
  await load();
}

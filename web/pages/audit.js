// #/audit: who changed what, when and from where — newest first, with "Load more".
// Entries form a hash chain on the server; before/after show what changed.
import * as api from "../api.js";
import { shortId } from "../components/call-search.js";
import { html, render, timeAgo, loadingState, errorState, emptyState, cap } from "../ui.js";

function detail(e) {
  if (!e.before && !e.after) return "";
  return html`<details><summary class="hint">Changes</summary><div class="grid grid-2 section-gap">
    <div><div class="kpi-label">Before</div><pre class="wrap">${e.before ? JSON.stringify(e.before, null, 2) : "—"}</pre></div>
    <div><div class="kpi-label">After</div><pre class="wrap">${e.after ? JSON.stringify(e.after, null, 2) : "—"}</pre></div></div></details>`;
}

/** A person by email (filtering by it), anyone else by kind and shortened id. */
function actorCell(e) {
  if (e.actor_email) return html`<a href="#/audit?actor=${encodeURIComponent(e.actor_email)}" title="${e.actor_id}" data-testid="audit-actor-email">${e.actor_email}</a>`;
  return html`<span class="badge plain">${e.actor_kind}</span> <a class="mono" href="#/audit?actor=${encodeURIComponent(e.actor_id)}" title="${e.actor_id}">${shortId(e.actor_id)}</a>`;
}

export default {
  name: "audit",
  title: "Audit log",
  nav: "audit",
  async mount(root, ctx) {
    const actor = ctx.query.get("actor") || "";
    let entries = [], cursor = null;
    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Audit log</h1>
        <p class="sub">Every change to this tenant — sign-ins, freezes, keys, policies, incidents, exports — in a tamper-evident chain.</p></div></div>
      <section class="card"><div class="card-body"><form class="inline-form" id="audit-filter" role="search">
        <div class="field"><label for="audit-actor">Actor</label><input class="input mono" id="audit-actor" name="actor" value="${actor}" placeholder="name@example.com, usr_… or key_…" data-testid="audit-actor"></div>
        <button type="submit" class="btn filter-btn">Filter</button>${actor ? html`<a class="btn btn-ghost filter-btn" href="#/audit">Clear</a>` : ""}</form></div></section>
      <section class="card"><div class="card-body flush" id="audit-box"></div></section>`);
    const box = root.querySelector("#audit-box");
    root.querySelector("#audit-filter").addEventListener("submit", (e) => {
      e.preventDefault();
      const v = e.target.elements.actor.value.trim();
      ctx.navigate(v ? `#/audit?actor=${encodeURIComponent(v)}` : "#/audit");
    });

    async function load() {
      ctx.loading();
      render(box, loadingState("table"));
      try {
        const r = await api.get("/api/audit", { limit: 50, actor: actor || undefined }, { signal: ctx.signal });
        if (!ctx.alive()) return;
        entries = r.data || [];
        cursor = r.next_cursor || null;
        draw();
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        render(box, errorState(err));
      }
      ctx.ready();
    }
    function draw() {
      if (!entries.length) {
        render(box, emptyState({ title: actor ? "No entries by this actor" : "Nothing recorded yet", text: actor ? "Check the email or id, or clear the filter." : "Changes made in the console, through the API or on the command line appear here." }));
        return;
      }
      render(box, html`<div class="table-wrap"><table class="table" data-testid="audit-table"><thead><tr><th>When</th><th>Action</th><th>Actor</th><th>Target</th><th>From</th></tr></thead><tbody>
        ${entries.map((e) => html`<tr data-testid="audit-row" data-seq="${e.seq}"><td>${timeAgo(e.at)}</td>
          <td><span class="cell-main">${cap(String(e.action).replace(/[._]/g, " "))}</span><div class="cell-sub mono">${e.action}</div>${detail(e)}</td>
          <td>${actorCell(e)}</td>
          ${e.target_email ? html`<td title="${e.target}">${e.target_email}</td>` : html`<td class="mono" title="${e.target}" data-full-id="${e.target}">${shortId(e.target)}</td>`}<td class="mono">${e.source || "—"}</td></tr>`)}</tbody></table></div>
        ${cursor ? html`<div class="more"><button type="button" class="btn" data-action="more" data-testid="audit-more">Load more</button></div>` : html`<p class="hint card-body">The beginning of the log.</p>`}`);
    }
    box.addEventListener("click", async (e) => {
      const a = e.target.closest("[data-action]");
      if (a?.dataset.action === "retry") return load();
      if (a?.dataset.action === "more") {
        a.disabled = true; a.textContent = "Loading…";
        try {
          const r = await api.get("/api/audit", { limit: 50, cursor, actor: actor || undefined }, { signal: ctx.signal });
          entries = entries.concat(r.data || []);
          cursor = r.next_cursor || null;
          draw();
        } catch (err) { if (err?.name !== "AbortError") { a.disabled = false; a.textContent = "Load more"; render(box.querySelector(".more"), errorState(err, { retry: false })); } }
      }
    });
    await load();
  },
};

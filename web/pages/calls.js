// #/calls?q=…: search every recorded call of the tenant (free text and filters), newest
// first; a row opens the call inspector.
import { html, render } from "../ui.js";
import { searchForm, bindChips, callResults } from "../components/call-search.js";

export default {
  name: "calls",
  title: "Calls",
  nav: "calls",
  async mount(root, ctx) {
    const q = (ctx.query.get("q") || "").trim();
    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Calls</h1>
        <p class="sub">Every request through this server is recorded as evidence: search by words in the prompt or answer, and narrow with filters.</p></div></div>
      <section class="card"><div class="card-body">${searchForm(q)}</div></section>
      <section class="card"><div class="card-body flush" id="call-results"></div></section>`);
    const form = root.querySelector("form");
    bindChips(form);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const v = form.elements.q.value.trim();
      ctx.navigate(v ? `#/calls?q=${encodeURIComponent(v)}` : "#/calls");
    });
    if (!q) form.elements.q.focus();
    await callResults(root.querySelector("#call-results"), { q, ctx, prefix: "page", form });
    ctx.ready();
  },
};

// Shown to an operator who opens a tenant page without having chosen a tenant: pick one
// (the console then sends x-agv-tenant and shows "viewing tenant X").
import * as api from "../api.js";
import { html, render, compact, money, loadingState, errorState, emptyState } from "../ui.js";

export default {
  name: "tenant-picker",
  title: "Choose a tenant",
  async mount(root, ctx) {
    const wanted = location.hash || "#/overview";
    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Choose a tenant</h1>
      <p class="sub">This page shows one tenant's console. As the operator, pick the tenant to look at.</p></div></div>
      <section class="card"><div class="card-body flush" id="pick"></div></section>`);
    const box = root.querySelector("#pick");
    let tenants = [];
    async function load() {
      render(box, loadingState("table"));
      try {
        tenants = (await api.get("/api/operator/tenants", null, { signal: ctx.signal })).data || [];
        if (!ctx.alive()) return;
        render(box, tenants.length ? html`<div class="table-wrap"><table class="table"><thead><tr><th>Tenant</th><th class="num">Calls today</th><th class="num">Spend today</th><th class="num">Open incidents</th></tr></thead><tbody>
          ${tenants.map((t) => html`<tr data-testid="tenant-row" data-tenant-id="${t.id}"><td><button type="button" class="linkbtn" data-pick="${t.id}" data-testid="tenant-view">${t.name}</button><div class="cell-sub mono">${t.id}</div></td>
            <td class="num">${compact(t.calls_today)}</td><td class="num">${money(t.spend_today_usd)}</td><td class="num">${compact(t.open_incidents)}</td></tr>`)}</tbody></table></div>`
          : emptyState({ title: "No tenants yet", text: "Create one on the server with: agv-server tenant create \"My company\"" }));
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        render(box, errorState(err));
      }
      ctx.ready();
    }
    box.addEventListener("click", (e) => {
      if (e.target.closest('[data-action="retry"]')) return load();
      const b = e.target.closest("[data-pick]");
      if (b) ctx.viewTenant(tenants.find((t) => t.id === b.dataset.pick), wanted);
    });
    await load();
  },
};

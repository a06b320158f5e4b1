// #/alerts: where incident alerts go (Slack or a signed webhook) — list, create, delete,
// and send a test alert through a route.
import * as api from "../api.js";
import { canChange } from "../state.js";
import { html, render, icon, timeAgo, seconds, loadingState, errorState, emptyState, toast, field, validators, cap, severityBadge, copyText } from "../ui.js";
import { formDialog, confirmDialog, infoDialog } from "../components/dialog.js";

export default {
  name: "alerts",
  title: "Alerts",
  nav: "alerts",
  async mount(root, ctx) {
    let routes = [];
    render(root, html`<div class="page-head"><div class="titles"><h1 data-testid="page-title">Alerts</h1>
        <p class="sub">When an incident opens, escalates or is resolved, these routes hear about it. Alerts are grouped so a burst sends one message.</p></div>
      ${canChange() ? html`<div class="actions"><button type="button" class="btn btn-primary" data-action="create" data-testid="alert-create">${icon("plus", 16)} Add route</button></div>` : ""}</div>
      <section class="card"><div class="card-body flush" id="routes"></div></section>`);
    const box = root.querySelector("#routes");

    async function load(quiet = false) {
      if (!quiet) { ctx.loading(); render(box, loadingState("table")); }
      try {
        const r = await api.get("/api/alerts/routes", null, { signal: ctx.signal });
        if (!ctx.alive()) return;
        routes = r.data || [];
        draw();
      } catch (err) {
        if (err?.name === "AbortError" || !ctx.alive()) return;
        render(box, errorState(err));
      }
      ctx.ready();
    }
    function draw() {
      if (!routes.length) {
        render(box, emptyState({ title: "No alert routes", text: "Add a Slack incoming webhook or your own HTTPS endpoint so the right people hear about incidents without watching this page.", iconName: "alerts",
          action: canChange() ? html`<button type="button" class="btn btn-primary" data-action="create">${icon("plus", 16)} Add a route</button>` : "" }));
        return;
      }
      render(box, html`<div class="table-wrap"><table class="table" data-testid="alerts-table"><thead><tr><th>Name</th><th>Kind</th><th>Target</th><th>From severity</th><th>Grouping</th><th>Created</th>${canChange() ? html`<th><span class="sr-only">Actions</span></th>` : ""}</tr></thead><tbody>
        ${routes.map((r) => html`<tr data-testid="alert-row" data-route-id="${r.id}">
          <td><span class="cell-main">${r.name}</span><div class="cell-sub mono">${r.id}</div></td>
          <td><span class="badge plain">${cap(r.kind)}</span></td><td class="mono">${r.target}</td>
          <td>${severityBadge(r.min_severity)} <span class="muted">and up</span></td>
          <td><span title="Wait before the first message, then at most one repeat per interval">${seconds(r.group_wait_ms / 1000)} · every ${seconds(r.repeat_interval_ms / 1000)}</span></td>
          <td>${timeAgo(r.created_at)}</td>
          ${canChange() ? html`<td><div class="row-actions"><button type="button" class="btn btn-sm" data-action="test" data-testid="alert-test">Send test</button><button type="button" class="btn btn-sm btn-ghost" data-action="delete" data-testid="alert-delete">Delete</button></div></td>` : ""}</tr>`)}
        </tbody></table></div>`);
    }

    async function create() {
      const res = await formDialog({
        title: "Add an alert route",
        fields: html`${field({ name: "kind", label: "Kind", value: "slack", testid: "alert-kind", options: [{ value: "slack", label: "Slack incoming webhook" }, { value: "webhook", label: "Webhook (signed JSON POST)" }, { value: "pagerduty", label: "PagerDuty (Events API v2)" }] })}
          ${field({ name: "url", label: "URL", type: "url", testid: "alert-url", placeholder: "https://hooks.slack.com/services/…", hint: "Stored encrypted; only its host is shown afterwards. PagerDuty: leave empty for PagerDuty's Events API." })}
          ${field({ name: "routing_key", label: "PagerDuty routing key", testid: "alert-routing-key", placeholder: "32 characters", hint: "PagerDuty only: the integration key of an Events API v2 integration. Stored encrypted, never shown again." })}
          ${field({ name: "name", label: "Name", testid: "alert-name", placeholder: "#incidents" })}
          ${field({ name: "min_severity", label: "Alert from severity", value: "medium", options: ["low", "medium", "high", "critical"].map((s) => ({ value: s, label: cap(s) })) })}`,
        submitLabel: "Add route", submitTestid: "alert-create-submit",
        rules: { url: [(u) => (String(u ?? "").trim() ? validators.url(u) : "")] },
        submit: (v) => api.post("/api/alerts/routes", { kind: v.kind, url: v.url.trim() || undefined, routing_key: v.routing_key.trim() || undefined, name: v.name.trim() || undefined, min_severity: v.min_severity }),
      });
      if (!res || res === true) return;
      toast("Route added", "ok");
      if (res.secret) {
        await infoDialog({ title: "Copy the signing secret", body: html`<div class="notice">Your endpoint checks each alert's signature with this secret. It is shown only now.</div>
          <div class="secret-box"><code data-testid="alert-secret">${res.secret}</code><button type="button" class="btn" data-copy-secret>${icon("copy", 16)} Copy</button></div>`,
          onMount: (dlg) => dlg.addEventListener("click", (e) => { if (e.target.closest("[data-copy-secret]")) copyText(res.secret); }) });
      }
      await load(true);
    }

    root.addEventListener("click", async (e) => {
      const a = e.target.closest("[data-action]");
      if (!a) return;
      const act = a.dataset.action;
      if (act === "retry") return load();
      if (act === "create") return create();
      const id = a.closest("[data-route-id]")?.dataset.routeId;
      const route = routes.find((r) => r.id === id);
      if (!route) return;
      if (act === "test") {
        a.disabled = true;
        try { await api.post(`/api/alerts/routes/${encodeURIComponent(id)}/test`, {}); toast(`Test alert queued for “${route.name}”. It arrives within a few seconds.`, "ok"); }
        catch (err) { if (err?.name !== "AbortError") toast(`Test failed: ${err.message}`, "bad"); }
        finally { a.disabled = false; }
      } else if (act === "delete") {
        const ok = await confirmDialog({ title: `Delete “${route.name}”?`, text: "Alerts stop going to this target. Incidents are not affected.", confirmLabel: "Delete route", danger: true,
          action: () => api.del(`/api/alerts/routes/${encodeURIComponent(id)}`) });
        if (ok) { toast("Route deleted", "ok"); await load(true); }
      }
    });
    await load();
  },
};

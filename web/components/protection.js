// The protection badge: Protected / At risk / Traffic stopped.
import { html, icon } from "../ui.js";

const STATES = {
  protected: ["ok", "shield", "Protected"],
  at_risk: ["warn", "warn", "At risk"],
  stopped: ["bad", "stop", "Traffic stopped"],
};
export function protectionBadge(state, testid = "protection-badge") {
  const [cls, ic, label] = STATES[state] || ["", "warn", state || "Unknown"];
  return html`<span class="protection ${cls}" data-testid="${testid}" data-state="${state || "unknown"}">${icon(ic, 20)}<span>${label}</span></span>`;
}

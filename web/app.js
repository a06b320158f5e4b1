// Fills in this server's address and shows whether it is ready. No inline script: the CSP forbids it.
const origin = window.location.origin;
for (const el of document.querySelectorAll(".origin")) el.textContent = origin;

const pill = document.getElementById("status");
const detail = document.getElementById("ready-detail");

async function checkReady() {
  try {
    const res = await fetch("/ready", { headers: { accept: "application/json" } });
    const body = await res.json();
    if (res.ok) {
      pill.textContent = "ready";
      pill.className = "pill pill-ok";
      detail.textContent = `Database: ${body.checks.store.backend}. Job queue: accepting work.`;
    } else {
      pill.textContent = "not ready";
      pill.className = "pill pill-bad";
      const failing = Object.entries(body.checks).filter(([, c]) => !c.ok).map(([name, c]) => `${name}: ${c.error}`);
      detail.textContent = `Not ready — ${failing.join("; ")}`;
    }
  } catch (err) {
    pill.textContent = "unreachable";
    pill.className = "pill pill-bad";
    detail.textContent = `Could not reach the server (${err.message}). Is it still running?`;
  }
}

checkReady();
setInterval(checkReady, 15000);

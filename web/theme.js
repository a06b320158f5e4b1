// Light and dark themes: the system's choice (prefers-color-scheme) unless the person picked
// one, which is kept in localStorage and applied as <html data-theme>.

const KEY = "agv.theme";

export function storedTheme() {
  try { const v = localStorage.getItem(KEY); return v === "light" || v === "dark" ? v : "system"; } catch { return "system"; }
}
export function effectiveTheme() {
  const t = storedTheme();
  if (t !== "system") return t;
  return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}
export function applyTheme() {
  const t = storedTheme();
  if (t === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  const btn = document.getElementById("theme-toggle");
  if (btn) {
    const next = effectiveTheme() === "dark" ? "light" : "dark";
    btn.setAttribute("aria-label", `Switch to the ${next} theme`);
    btn.title = `Switch to the ${next} theme`;
  }
}
export function setTheme(t) {
  try {
    if (t === "system") localStorage.removeItem(KEY);
    else localStorage.setItem(KEY, t);
  } catch { /* storage off: the choice lasts until reload */ document.documentElement.dataset.theme = t; }
  applyTheme();
  document.dispatchEvent(new CustomEvent("agv:theme"));
}
export function toggleTheme() {
  setTheme(effectiveTheme() === "dark" ? "light" : "dark");
}

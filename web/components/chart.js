// Hand-drawn SVG charts (no library): stacked bars for calls and a line for spend.
// Each bucket carries a <title> so hovering (and screen readers) give the exact numbers.

import { html, raw, compact, money, hourLabel, dayLabel } from "../ui.js";

const W = 520, H = 200, PAD_L = 46, PAD_R = 8, PAD_T = 10, PAD_B = 24;

function niceMax(v) {
  if (!(v > 0)) return 1;
  const exp = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= v) return m * exp;
  return 10 * exp;
}
/** Buckets are hours for "24h", days for any other range ("7d", or the usage history's). */
const daily = (range) => range !== "24h";
function label(t, range) { return daily(range) ? dayLabel(t) : hourLabel(t); }
/** An axis label: the hour, the weekday for a week, the date beyond. */
function tickText(t, range, n) {
  if (!daily(range)) return hourLabel(t);
  const [weekday, ...date] = dayLabel(t).split(" ");
  return n > 7 ? date.join(" ") : weekday;
}
function tickEvery(n) { return n > 12 ? Math.ceil(n / 8) : 1; }

function axes(max, fmt) {
  const ticks = [0, 0.5, 1].map((f) => {
    const y = PAD_T + (H - PAD_T - PAD_B) * (1 - f);
    return raw(`<line class="grid-line" x1="${PAD_L}" x2="${W - PAD_R}" y1="${y}" y2="${y}"/>`).s
      + html`<text x="${PAD_L - 6}" y="${y + 3}" text-anchor="end">${fmt(max * f)}</text>`.s;
  });
  return raw(ticks.join(""));
}

/** Stacked bars: passed (calls − errors − blocked), errors, blocked. */
export function callsChart(points, range) {
  const n = points.length || 1;
  const max = niceMax(Math.max(0, ...points.map((p) => p.calls || 0)));
  const innerW = W - PAD_L - PAD_R, innerH = H - PAD_T - PAD_B;
  const slot = innerW / n, bw = Math.max(2, slot * 0.68);
  const every = tickEvery(n);
  const cols = points.map((p, i) => {
    const x = PAD_L + i * slot + (slot - bw) / 2;
    const calls = p.calls || 0, blocked = Math.min(p.blocked || 0, calls), errors = Math.min(p.errors || 0, calls - blocked);
    const ok = Math.max(0, calls - blocked - errors);
    const scale = (v) => (v / max) * innerH;
    let y = PAD_T + innerH;
    const seg = (v, cls) => {
      if (!(v > 0)) return "";
      const h = Math.max(1, scale(v)); y -= h;
      return `<rect class="${cls}" x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${bw.toFixed(1)}" height="${h.toFixed(1)}" rx="1.5"/>`;
    };
    const bars = seg(ok, "bar") + seg(errors, "bar-bad") + seg(blocked, "bar-warn");
    const tip = `${label(p.t, range)}: ${compact(calls)} calls, ${compact(errors)} errors, ${compact(blocked)} blocked`;
    const tick = i % every === 0 ? html`<text x="${(PAD_L + i * slot + slot / 2).toFixed(1)}" y="${H - 6}" text-anchor="middle">${tickText(p.t, range, n)}</text>` : "";
    return html`<g class="col"><title>${tip}</title><rect class="hit" x="${(PAD_L + i * slot).toFixed(1)}" y="${PAD_T}" width="${slot.toFixed(1)}" height="${innerH}"/>${raw(bars)}${tick}</g>`;
  });
  return html`<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="${`Calls per ${daily(range) ? "day" : "hour"}`}">${axes(max, (v) => compact(Math.round(v)))}${cols}</svg>`;
}

/** Line and area for spend in USD; buckets with unknown spend count as 0. */
export function spendChart(points, range) {
  const n = points.length;
  const vals = points.map((p) => Number(p.spend_usd) || 0);
  const max = niceMax(Math.max(0, ...vals));
  const innerW = W - PAD_L - PAD_R, innerH = H - PAD_T - PAD_B;
  const slot = innerW / Math.max(1, n);
  const xy = vals.map((v, i) => [PAD_L + i * slot + slot / 2, PAD_T + innerH * (1 - v / max)]);
  const line = xy.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
  const area = xy.length ? `${line}L${xy[xy.length - 1][0].toFixed(1)},${PAD_T + innerH}L${xy[0][0].toFixed(1)},${PAD_T + innerH}Z` : "";
  const every = tickEvery(n);
  const cols = points.map((p, i) => {
    const tip = `${label(p.t, range)}: ${p.spend_usd === null || p.spend_usd === undefined ? "unknown" : money(p.spend_usd)}`;
    const tick = i % every === 0 ? html`<text x="${xy[i][0].toFixed(1)}" y="${H - 6}" text-anchor="middle">${tickText(p.t, range, n)}</text>` : "";
    return html`<g class="col"><title>${tip}</title><rect class="hit" x="${(PAD_L + i * slot).toFixed(1)}" y="${PAD_T}" width="${slot.toFixed(1)}" height="${innerH}"/><circle class="dot" cx="${xy[i][0].toFixed(1)}" cy="${xy[i][1].toFixed(1)}" r="${n > 12 ? 2 : 3}"/>${tick}</g>`;
  });
  return html`<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="${`Spend per ${daily(range) ? "day" : "hour"}`}">${axes(max, (v) => money(v, { compact: true }))}<path class="area" d="${area}"/><path class="line" d="${line}"/>${cols}</svg>`;
}

// The device page: one EventSource for live updates (no polling loop), the JSON API for the rest.
// No libraries, nothing from the internet. Values are set with textContent; the one place HTML is built from
// data, the model cards, escapes every character of the card before its few Markdown marks become tags.
"use strict";

const COLORS = {
  angry: "#e5484d", disgust: "#7c9a1e", fear: "#8e4ec6", happy: "#f5b700",
  sad: "#3e63dd", surprise: "#12a594", neutral: "#8b8d98", uncertain: "#c8c8cc",
};
const EMOJI = {
  angry: "\u{1F620}", disgust: "\u{1F922}", fear: "\u{1F628}", happy: "\u{1F604}",
  sad: "\u{1F622}", surprise: "\u{1F62E}", neutral: "\u{1F610}", uncertain: "\u2754",
  no_one: "\u{1F464}", paused: "\u23F8",
};
const STATE_NAMES = { no_one: "no one", paused: "paused" };
const DEFAULT_DEVICE = "emotion-edge"; // config's default device_id: the header would read "emotion-edge emotion-edge"
const TIMELINE_S = 600;
const SVGNS = "http://www.w3.org/2000/svg";
// What each inference stage's median is a cost of: the face stages run per analysed frame (face_emotion per face
// found), the voice gate and the speech model once per speech.hop_s of audio (1 s by default).
const STAGES = {
  face_detect: ["face detection", "ms per frame", "frames on which the detector ran (every face.detect_every)"],
  face_track: ["face tracking", "ms per frame", "frames between detections, following the faces already found"],
  face_emotion: ["face emotion", "ms per face", "one classification per face found (one face: per frame)"],
  voice_gate: ["voice gate", "ms per audio second", "deciding whether someone speaks, once per speech.hop_s of audio (1 s by default)"],
  speech_emotion: ["speech emotion", "ms per audio second", "the voice model, once per speech.hop_s of voiced audio (1 s by default)"],
};
const $ = (id) => document.getElementById(id);
let csrf = null;
let windows = []; // {start: ms, end: ms, emotion, confidence}
let historyHours = 24;
let analysisOn = true;
let lastEvent = null; // the newest window, normalised
let lastState = null; // the newest settled state ({emotion, since, people, …})
let lastStatsAt = 0;

async function api(path, options = {}) {
  const headers = Object.assign({ "X-Requested-With": "fetch" }, options.headers || {});
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, options, { headers }));
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function pct(x) { return x == null ? "" : Math.round(x * 100) + " %"; }
function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
  return (s / 86400).toFixed(1) + " days ago";
}
function duration(s) {
  s = Math.round(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return (d ? d + " d " : "") + (d || h ? h + " h " : "") + m + " min " + (d ? "" : (s % 60) + " s");
}
function clock(ms) { return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }); }
function hm(ms) { return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }); }
function nameOf(emotion) { return STATE_NAMES[emotion] || emotion; }
function el(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function modText(m) { return m ? `${EMOJI[m.label] || ""} ${m.label} ${pct(m.confidence)}` : "nothing this window"; }

// ------------------------------------------------------------------ Markdown (model cards)

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
function escapeHtml(s) { return s.replace(/[&<>"']/g, (c) => ESCAPES[c]); }

// Inline marks on text that is already escaped: `code`, **bold**, [label](http(s) URL). Code spans are set aside
// first so that nothing inside them is read as a mark. Any other link (javascript:, relative) stays plain text.
function inline(text) {
  const codes = [];
  text = text.replace(/`([^`]+)`/g, (_, c) => { codes.push(c); return "\u0000" + (codes.length - 1) + "\u0000"; });
  text = text.replace(/\[([^\]]+)\]\((https?:\/\/[^\s()]+)\)/g,
    (_, label, url) => `<a href="${url}" rel="noopener noreferrer" target="_blank">${label}</a>`);
  text = text.replace(/\*\*(.+?)\*\*/g, "<strong>$1</strong>");
  return text.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[Number(i)]}</code>`);
}

function tableRow(line, tag) {
  const cells = line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|");
  return "<tr>" + cells.map((c) => `<${tag}>${inline(c.trim())}</${tag}>`).join("") + "</tr>";
}

// The subset the model cards use: headings, paragraphs, lists (with indented continuation lines), tables, fenced
// code, and the inline marks above. Every character is escaped before any tag is added: a card cannot inject HTML.
function renderMarkdown(source) {
  const lines = escapeHtml(String(source).replace(/\u0000/g, "")).replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let para = [];
  const flush = () => { if (para.length) { out.push("<p>" + inline(para.join(" ")) + "</p>"); para = []; } };
  const ITEM = /^\s*([-*+]|\d+[.)])\s+(.*)$/;
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) { flush(); i++; continue; }
    if (/^\s*```/.test(line)) {
      flush();
      const body = [];
      for (i++; i < lines.length && !/^\s*```/.test(lines[i]); i++) body.push(lines[i]);
      i++;
      out.push("<pre><code>" + body.join("\n") + "</code></pre>");
    } else if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) {
      flush();
      const level = Math.min(6, m[1].length + 2); // a card sits inside the page's own h1 and h2
      out.push(`<h${level}>${inline(m[2])}</h${level}>`);
      i++;
    } else if (line.trim().startsWith("|") && /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/.test(lines[i + 1] || "")) {
      flush();
      const rows = [tableRow(line, "th")];
      for (i += 2; i < lines.length && lines[i].trim().startsWith("|"); i++) rows.push(tableRow(lines[i], "td"));
      out.push("<div class=\"scroll\"><table class=\"md\"><thead>" + rows[0] + "</thead><tbody>" + rows.slice(1).join("") + "</tbody></table></div>");
    } else if ((m = ITEM.exec(line))) {
      flush();
      const ordered = /\d/.test(m[1]);
      const items = [];
      while (i < lines.length && lines[i].trim()) {
        const item = ITEM.exec(lines[i]);
        if (item) items.push(item[2]);
        else if (/^\s/.test(lines[i])) items[items.length - 1] += " " + lines[i].trim();
        else break;
        i++;
      }
      const tag = ordered ? "ol" : "ul";
      out.push(`<${tag}>` + items.map((t) => "<li>" + inline(t) + "</li>").join("") + `</${tag}>`);
    } else {
      para.push(line.trim());
      i++;
    }
  }
  flush();
  return out.join("\n");
}

// ------------------------------------------------------------------ device errors

// Capture errors as a person can act on them; the raw text stays in the cell's tooltip. PortAudio's own words
// ("[Errno -9996] Invalid input device (no default output device)") name neither the microphone nor the fix.
const FRIENDLY = [
  [/-9996|no default (input|output) device|invalid input device/i,
    "No microphone found — check microphone.device; `emotion-edge devices` lists them"],
  [/-9985|device unavailable|busy/i,
    "The microphone is busy or unplugged — close the program that holds it, or check microphone.device"],
  [/-9997|sample rate/i,
    "The microphone cannot record at 16 kHz — pick another in microphone.device; `emotion-edge devices` lists them"],
  [/-9998|number of channels/i,
    "The microphone has no mono input — pick another in microphone.device; `emotion-edge devices` lists them"],
  [/-9999|unanticipated host error/i,
    "The sound system failed — check the microphone's cable, and that no other program holds it"],
  [/no module named .?pyaudio/i, "PyAudio is not installed — scripts/bootstrap.sh installs it"],
];
const FRIENDLY_CAMERA = [
  [/^cannot open/i,
    "The camera cannot be opened — check camera.source (unplugged, busy, or not a camera?); `emotion-edge devices` lists cameras"],
  [/^stopped delivering frames/i,
    "The camera stopped sending frames (unplugged, stream ended, or read error) — trying again"],
];
function friendlyReason(kind, reason) {
  if (!reason) return "";
  for (const [pattern, text] of kind === "camera" ? FRIENDLY_CAMERA : FRIENDLY) if (pattern.test(reason)) return text;
  return reason;
}

// ------------------------------------------------------------------ now: this window and the settled state

// An event from the stream is the MQTT event; a row from /api/events is flat: one shape for the page.
function normalise(ev) {
  if (ev.modalities === undefined) {
    return {
      seq: ev.seq, window_start: ev.window_start, window_end: ev.window_end, emotion: ev.emotion,
      confidence: ev.confidence,
      face: ev.face_label ? { label: ev.face_label, confidence: ev.face_confidence } : null,
      speech: ev.speech_label ? { label: ev.speech_label, confidence: ev.speech_confidence } : null,
    };
  }
  return {
    seq: ev.seq, window_start: ev.window_start, window_end: ev.window_end, emotion: ev.emotion,
    confidence: ev.confidence, face: ev.modalities.face, speech: ev.modalities.speech,
  };
}

function windowSeconds(ev) { return Math.round((Date.parse(ev.window_end) - Date.parse(ev.window_start)) / 100) / 10; }

function showNow(ev) {
  lastEvent = ev;
  document.body.dataset.lastSeq = ev.seq;
  renderNow();
}

function showState(s) {
  if (!s || !s.emotion) return;
  lastState = s;
  renderNow();
}

// The big card: the last window and the settled state side by side, or Paused across both while analysis is off.
function renderNow() {
  const paused = !analysisOn;
  const ev = lastEvent, st = lastState;
  const card = $("now-window").closest(".card");
  card.classList.toggle("is-paused", paused);
  const bar = $("now-bar").firstElementChild;
  if (paused) {
    $("now-emoji").textContent = EMOJI.paused;
    $("now-label").textContent = "Paused";
    $("now-confidence").textContent = "";
    bar.style.width = "0";
    $("now-when").textContent = "Analysis is paused: nothing is seen or heard until it is resumed.";
    $("now-window-len").textContent = "";
  } else if (ev) {
    $("now-emoji").textContent = EMOJI[ev.emotion] || EMOJI.uncertain;
    $("now-label").textContent = ev.emotion;
    $("now-confidence").textContent = pct(ev.confidence);
    bar.style.width = Math.round((ev.confidence || 0) * 100) + "%";
    bar.style.background = COLORS[ev.emotion] || COLORS.uncertain;
    $("now-when").textContent = `${clock(Date.parse(ev.window_start))}–${clock(Date.parse(ev.window_end))} · ${ago(ev.window_end)} · seq ${ev.seq}`;
    $("now-window-len").textContent = `(the last ${windowSeconds(ev)} s)`;
  } else {
    $("now-label").textContent = "waiting…";
    $("now-when").textContent = "waiting for the first window";
  }
  $("now-face").textContent = paused ? "–" : ev ? modText(ev.face) : "–";
  $("now-speech").textContent = paused ? "–" : ev ? modText(ev.speech) : "–";
  if (st) {
    $("state-emoji").textContent = EMOJI[st.emotion] || "";
    $("state-label").textContent = nameOf(st.emotion);
    $("now-state").textContent = st.since ? `since ${clock(Date.parse(st.since))} (${ago(st.since)})` : "";
    $("people").textContent = paused || st.emotion === "paused" ? "– (paused)" : String(st.people ?? 0);
  }
  $("now-why").textContent = paused ? "" : why(ev, st);
}

function why(ev, st) {
  if (!ev || !st) return "";
  if (st.emotion === "no_one") return "Settled: no one — no face seen and no voice heard for a while; the first window with someone in it sets the state at once.";
  if (st.emotion === "paused") return "The settled state still says paused: the next windows set it.";
  if (ev.emotion === st.emotion) return "";
  const n = afterWindows ? `${afterWindows} windows` : "enough windows";
  return `This window says ${ev.emotion}; the settled state stays ${nameOf(st.emotion)} until ${n} in a row say the same.`;
}

// fusion.state_after_windows as the device uses it now (the config's value, or one set from Home Assistant or the API)
let afterWindows = null;
function showSettings(settings) {
  if (!settings || !settings.state_after_windows) return;
  afterWindows = settings.state_after_windows;
  $("after-n").textContent = `${afterWindows} now`;
}

// ------------------------------------------------------------------ charts

// One tooltip for both charts: a bar's data-tip shown next to the pointer (hover, or a tap on a phone).
function tipFollow(svg) {
  const tip = $("chart-tip");
  const show = (e) => {
    const target = e.target.closest ? e.target.closest("[data-tip]") : null;
    if (!target) { tip.hidden = true; return; }
    tip.textContent = target.dataset.tip;
    tip.hidden = false;
    const x = Math.min(e.clientX + 12, innerWidth - tip.offsetWidth - 4);
    tip.style.left = Math.max(4, x) + "px";
    tip.style.top = Math.min(e.clientY + 14, innerHeight - tip.offsetHeight - 4) + "px";
  };
  svg.addEventListener("mousemove", show);
  svg.addEventListener("click", show);
  svg.addEventListener("mouseleave", () => { tip.hidden = true; });
}
// A fixed tooltip belongs to where the pointer was: gone when the page moves under it.
for (const what of ["scroll", "resize"]) addEventListener(what, () => { $("chart-tip").hidden = true; }, { passive: true });

// Axis labels in HTML beside the stretched SVG (text inside a preserveAspectRatio="none" SVG would be stretched).
function labels(box, items, vertical) {
  box.replaceChildren();
  for (const [frac, text] of items) {
    const s = document.createElement("span");
    s.textContent = text;
    if (vertical) s.style.top = (1 - frac) * 100 + "%";
    else {
      s.style.left = frac * 100 + "%";
      s.className = frac <= 0.02 ? "first" : frac >= 0.98 ? "last" : "";
    }
    box.appendChild(s);
  }
}

function addWindow(ev) {
  const w = { start: Date.parse(ev.window_start), end: Date.parse(ev.window_end), emotion: ev.emotion, confidence: ev.confidence, seq: ev.seq };
  if (windows.length && windows[windows.length - 1].start >= w.start) return; // a duplicate (at-least-once)
  windows.push(w);
  drawTimeline();
}

function drawTimeline() {
  const svg = $("timeline");
  const now = Math.max(Date.now(), windows.length ? windows[windows.length - 1].end : 0);
  const from = now - TIMELINE_S * 1000;
  windows = windows.filter((w) => w.end > from);
  svg.replaceChildren();
  for (let i = 1; i < 4; i++) el("line", { x1: 0, x2: 600, y1: i * 30, y2: i * 30, stroke: "currentColor", "stroke-opacity": 0.08 }, svg);
  for (const w of windows) {
    const x = ((w.start - from) / (TIMELINE_S * 1000)) * 600;
    const width = Math.max(1, ((w.end - w.start) / (TIMELINE_S * 1000)) * 600 - 0.3);
    const h = Math.max(4, (w.confidence || 0) * 120);
    el("rect", { x: x.toFixed(2), y: (120 - h).toFixed(2), width: width.toFixed(2), height: h.toFixed(2),
      fill: COLORS[w.emotion] || COLORS.uncertain, class: "window", "data-emotion": w.emotion,
      "data-tip": `${clock(w.start)}–${clock(w.end)} · ${w.emotion} · confidence ${pct(w.confidence)}` }, svg);
  }
  labels($("timeline-x"), [0, 0.25, 0.5, 0.75, 1].map((f) => [f, f === 1 ? "now" : hm(from + f * TIMELINE_S * 1000)]), false);
  $("timeline-count").textContent = windows.length + " windows";
  if (lastEvent) renderNow(); // keeps "… s ago" current
}

function drawLegend() {
  const legend = $("legend");
  for (const [name, color] of Object.entries(COLORS)) {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color;
    item.append(swatch, `${EMOJI[name]} ${name}`);
    legend.appendChild(item);
  }
}

let historyData = null;

async function loadHistory() {
  historyData = await api("/api/history?hours=" + historyHours);
  drawHistory();
}

// A new event counts in its hour at once; an event in an hour the chart does not have yet reloads it (once an hour).
function countInHistory(ev) {
  if (!historyData || !historyData.enabled) return;
  const t = Date.parse(ev.window_start);
  const hour = Math.floor(t / 3600000) * 3600000;
  const last = Date.parse(historyData.since) + (historyHours - 1) * 3600000;
  if (hour > last) { loadHistory(); return; }
  const iso = new Date(hour).toISOString().slice(0, 13) + ":00Z";
  let slot = historyData.hours.find((h) => h.hour === iso);
  if (!slot) { slot = { hour: iso, counts: {} }; historyData.hours.push(slot); }
  slot.counts[ev.emotion] = (slot.counts[ev.emotion] || 0) + 1;
  drawHistory();
}

// A round top for the count axis, at least the busiest hour, whose half is a whole number too (the middle label).
function niceMax(n) {
  if (n <= 2) return 2;
  const p = 10 ** Math.floor(Math.log10(n));
  return [1, 2, 4, 6, 8, 10].map((k) => k * p).find((v) => v >= n);
}

function share(n, total) { return total ? Math.round((n / total) * 100) + " %" : "0 %"; }

function drawHistory() {
  const data = historyData;
  const svg = $("history");
  svg.replaceChildren();
  const start = Date.parse(data.since);
  const byHour = new Map(data.hours.map((h) => [Date.parse(h.hour), h.counts]));
  const totals = {};
  let most = 0;
  for (const counts of byHour.values()) {
    let sum = 0;
    for (const [k, n] of Object.entries(counts)) { totals[k] = (totals[k] || 0) + n; sum += n; }
    most = Math.max(most, sum);
  }
  const top = niceMax(most);
  const slot = 600 / historyHours;
  const secs = lastEvent ? windowSeconds(lastEvent) : null;
  let drawn = 0;
  for (let i = 0; i < historyHours; i++) {
    const t = start + i * 3600 * 1000;
    const counts = byHour.get(t);
    if (!counts) continue;
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    if (!total) continue;
    const when = new Date(t).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" }) + "–" + hm(t + 3600000);
    const parts = Object.keys(COLORS).filter((k) => counts[k]).map((k) => `${k} ${counts[k]} (${share(counts[k], total)})`);
    const tip = `${when} · ${total} windows${secs ? ` (about ${Math.round((total * secs) / 60)} min)` : ""}: ${parts.join(", ")}`;
    let y = 140;
    for (const name of Object.keys(COLORS)) {
      const n = counts[name] || 0;
      if (!n) continue;
      const h = (n / top) * 140;
      y -= h;
      el("rect", { x: (i * slot).toFixed(2), y: y.toFixed(2), width: Math.max(0.5, slot - 0.6).toFixed(2),
        height: Math.max(0.5, h).toFixed(2), fill: COLORS[name], class: "hour", "data-tip": tip }, svg);
    }
    drawn++;
  }
  labels($("history-y"), [[1, String(top)], [0.5, String(top / 2)], [0, "0"]], true);
  const ticks = historyHours === 24 ? [0, 6, 12, 18, 24] : [0, 24, 48, 72, 96, 120, 144, 168];
  labels($("history-axis"), ticks.map((i) => {
    const t = new Date(start + i * 3600 * 1000);
    const text = i === historyHours ? "now" : historyHours === 24 ? hm(t) : t.toLocaleDateString([], { weekday: "short", day: "numeric" });
    return [i / historyHours, text];
  }), false);
  const all = Object.values(totals).reduce((a, b) => a + b, 0);
  $("history-note").textContent = !data.enabled ? "The history is switched off (history.enabled: false)."
    : drawn ? `${drawn} hour(s) with events · ${all} windows in all · bar height = windows in that hour`
      : "No events in this period yet.";
  const box = $("history-totals");
  box.replaceChildren();
  for (const name of Object.keys(COLORS)) {
    if (!totals[name]) continue;
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[name];
    item.dataset.emotion = name;
    item.append(swatch, `${name} ${totals[name]} (${share(totals[name], all)})`);
    box.appendChild(item);
  }
  svg.dataset.hours = drawn;
}

// ------------------------------------------------------------------ health

function stateCell(td, state, since, reason, raw) {
  td.replaceChildren();
  const s = document.createElement("span");
  s.className = "state-" + state;
  s.textContent = state;
  td.appendChild(s);
  if (since) td.append(" since " + new Date(since).toLocaleString() + " (" + ago(since) + ")");
  if (reason) {
    const r = document.createElement("div");
    r.className = "fine reason";
    // `a command` as code: built from text nodes and elements, never parsed as HTML
    reason.split("`").forEach((part, i) => {
      if (i % 2) { const c = document.createElement("code"); c.textContent = part; r.appendChild(c); } else r.append(part);
    });
    if (raw && raw !== reason) r.title = "the device said: " + raw;
    td.appendChild(r);
  }
}

function costs(inf) {
  const box = $("inference");
  box.replaceChildren();
  const names = Object.keys(inf);
  if (!names.length) { box.textContent = "no inference yet"; return; }
  for (const name of names) {
    const [label, unit, what] = STAGES[name] || [name.replace(/_/g, " "), "ms", ""];
    const line = document.createElement("div");
    line.dataset.stage = name;
    line.title = what;
    line.textContent = `${label} ${inf[name].toFixed(1)} ${unit}`;
    box.appendChild(line);
  }
}

function showHealth(h) {
  const tbody = $("sources");
  tbody.replaceChildren();
  const names = Object.keys(h.sources);
  if (!names.length) { const tr = tbody.insertRow(); tr.insertCell().textContent = "no camera or microphone configured"; }
  for (const name of names) {
    const src = h.sources[name];
    const tr = tbody.insertRow();
    tr.id = "src-" + src.kind;
    tr.dataset.state = src.state;
    const th = document.createElement("th");
    th.textContent = src.kind === "camera" ? "camera" : "microphone";
    th.title = name;
    tr.appendChild(th);
    const paused = !h.controls.analysis || h.controls[src.kind] === false;
    const offline = src.state === "offline";
    stateCell(tr.insertCell(), paused && src.state !== "ended" ? "paused" : src.state, src.since,
      offline ? friendlyReason(src.kind, src.reason) : "", offline ? src.reason : "");
  }
  const mq = h.stats.mqtt;  // with mqtt.hosts: the node in use, or the one being tried
  stateCell($("broker-state"), h.broker.state, h.broker.since,
    h.broker.state === "off" ? "not connected to a broker in this run" : mq && mq.broker ? mq.broker : "");
  const st = h.stats;
  $("uptime").textContent = duration(st.uptime_s) + (h.replay ? " (replay)" : "");
  costs(st.inference_ms || {});
  const d = st.drops;
  $("drops").textContent = `frames replaced ${d.frames_replaced} · audio overwritten ${d.audio_samples_overwritten} · late ${d.late_predictions} · outbox dropped ${d.outbox_dropped} · not stored ${d.outbox_write_failed}`;
  $("outbox").textContent = `${st.queue_depth.outbox} waiting for the broker`;
  $("events").textContent = `${st.events} this run, last seq ${st.last_seq}, ${st.events_published} published`;
  const hs = st.history;
  $("history-stats").textContent = hs ? `${hs.written} kept this run · purged ${hs.purged_age} by age, ${hs.purged_size} by size · not kept ${hs.dropped + hs.write_failed}` : "off";
  showControls(h.controls);
  document.body.dataset.health = JSON.stringify(Object.fromEntries(names.map((n) => [h.sources[n].kind, h.sources[n].state])));
}

// The stream pushes health every 10 s (at once when a state changes); a new window also refreshes it, at most every
// 2 s, so the counters beside the Now card do not lag it.
function refreshHealth() {
  if (Date.now() - lastStatsAt < 2000) return;
  lastStatsAt = Date.now();
  api("/api/stats").then(showHealth).catch(() => {});
}

function showControls(c) {
  const changed = analysisOn !== c.analysis;
  analysisOn = c.analysis;
  $("analysis-state").textContent = c.analysis ? "running" : "paused";
  const b = $("pause");
  b.disabled = false;
  b.textContent = c.analysis ? "Pause analysis" : "Resume analysis";
  b.classList.toggle("paused", !c.analysis);
  if (changed) renderNow();
}

// ------------------------------------------------------------------ models

async function loadModels() {
  const models = await api("/api/models");
  const box = $("models");
  box.replaceChildren();
  for (const [name, m] of Object.entries(models)) {
    const d = document.createElement("details");
    const s = document.createElement("summary");
    s.textContent = `${name.replace(/_/g, " ")} ${m.version}`;
    const body = document.createElement("div");
    body.className = "model-card";
    if (m.card) body.innerHTML = renderMarkdown(m.card); // escaped first: see renderMarkdown
    else body.textContent = "(no model card)";
    d.append(s, body);
    box.appendChild(d);
  }
}

// ------------------------------------------------------------------ start

function connect() {
  const es = new EventSource("/api/stream");
  es.onopen = () => { const l = $("live"); l.textContent = "live"; l.className = "pill on"; };
  es.onerror = () => { const l = $("live"); l.textContent = "reconnecting…"; l.className = "pill off"; };
  es.addEventListener("event", (m) => {
    const ev = normalise(JSON.parse(m.data));
    showNow(ev);
    addWindow(ev);
    countInHistory(ev);
    refreshHealth();
  });
  es.addEventListener("state", (m) => showState(JSON.parse(m.data)));
  es.addEventListener("health", (m) => showHealth(JSON.parse(m.data)));
}

function showDevice(id) {
  // The default device_id is the product's own name: "emotion-edge emotion-edge" says nothing twice.
  const named = id && id !== DEFAULT_DEVICE;
  $("device").textContent = named ? id : "";
  $("device").hidden = !named;
  document.title = named ? `${id} · emotion-edge` : "emotion-edge";
}

async function main() {
  drawLegend();
  labels($("timeline-y"), [[1, "100 %"], [0.5, "50 %"], [0, "0 %"]], true);
  tipFollow($("timeline"));
  tipFollow($("history"));
  const session = await api("/api/session");
  csrf = session.csrf;
  showDevice(session.device_id);
  connect();
  const since = new Date(Date.now() - TIMELINE_S * 1000).toISOString();
  const recent = await api("/api/events?since=" + encodeURIComponent(since) + "&limit=1000");
  recent.map(normalise).forEach(addWindow);
  if (recent.length) showNow(normalise(recent[recent.length - 1]));
  const st = await api("/api/state");
  showSettings(st.settings);
  showControls(st.controls);
  showState(st.state);
  if (st.last_event && (!recent.length || st.last_event.seq > recent[recent.length - 1].seq)) {
    const e = st.last_event;
    showNow({ ...e, face: e.modalities.face, speech: e.modalities.speech });
  }
  lastStatsAt = Date.now();
  showHealth(await api("/api/stats"));
  loadModels();
  loadHistory();
  $("h24").onclick = () => { historyHours = 24; $("h24").className = "on"; $("h7d").className = ""; loadHistory(); };
  $("h7d").onclick = () => { historyHours = 168; $("h7d").className = "on"; $("h24").className = ""; loadHistory(); };
  $("pause").onclick = async () => {
    $("pause").disabled = true;
    const r = await api("/api/controls", {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ analysis: !analysisOn }),
    });
    showControls(r.controls);
  };
  // The timeline scrolls with the clock between events (a redraw of what is here: the data arrives on the stream).
  setInterval(drawTimeline, 5000);
}

main().catch((e) => { if (e.message !== "logged out") { $("live").textContent = "error: " + e.message; } });

// The device page: one EventSource for live updates (no polling loop), the JSON API for the rest.
// No libraries, nothing from the internet; every value is set with textContent (never parsed as HTML).
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
const TIMELINE_S = 600;
const SVGNS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let csrf = null;
let windows = []; // {start: ms, end: ms, emotion, confidence}
let historyHours = 24;
let analysisOn = true;

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
function el(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}
function modText(m) { return m ? `${EMOJI[m.label] || ""} ${m.label} ${pct(m.confidence)}` : "nothing this window"; }

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

function showNow(ev) {
  $("now-emoji").textContent = EMOJI[ev.emotion] || EMOJI.uncertain;
  $("now-label").textContent = ev.emotion;
  $("now-confidence").textContent = pct(ev.confidence);
  const bar = $("now-bar").firstElementChild;
  bar.style.width = Math.round((ev.confidence || 0) * 100) + "%";
  bar.style.background = COLORS[ev.emotion] || COLORS.uncertain;
  $("now-face").textContent = modText(ev.face);
  $("now-speech").textContent = modText(ev.speech);
  $("now-when").textContent = "window " + new Date(ev.window_start).toLocaleTimeString() + " (seq " + ev.seq + ")";
  document.body.dataset.lastSeq = ev.seq;
}

function addWindow(ev) {
  const w = { start: Date.parse(ev.window_start), end: Date.parse(ev.window_end), emotion: ev.emotion, confidence: ev.confidence };
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
    const h = Math.max(4, (w.confidence || 0) * 116);
    const r = el("rect", { x: x.toFixed(2), y: (120 - h).toFixed(2), width: width.toFixed(2), height: h.toFixed(2),
      fill: COLORS[w.emotion] || COLORS.uncertain, class: "window", "data-emotion": w.emotion }, svg);
    el("title", {}, r).textContent = `${new Date(w.start).toLocaleTimeString()} ${w.emotion} ${pct(w.confidence)}`;
  }
  $("timeline-count").textContent = windows.length + " windows";
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

function drawHistory() {
  const data = historyData;
  const svg = $("history");
  svg.replaceChildren();
  const start = Date.parse(data.since);
  const byHour = new Map(data.hours.map((h) => [Date.parse(h.hour), h.counts]));
  const slot = 600 / historyHours;
  let drawn = 0;
  for (let i = 0; i < historyHours; i++) {
    const t = start + i * 3600 * 1000;
    const counts = byHour.get(t);
    if (!counts) continue;
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    let y = 140;
    for (const name of Object.keys(COLORS)) {
      const n = counts[name] || 0;
      if (!n) continue;
      const h = (n / total) * 140;
      y -= h;
      const r = el("rect", { x: (i * slot).toFixed(2), y: y.toFixed(2), width: Math.max(0.5, slot - 0.6).toFixed(2),
        height: h.toFixed(2), fill: COLORS[name], class: "hour" }, svg);
      el("title", {}, r).textContent = `${new Date(t).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" })}: ${name} ${Math.round((n / total) * 100)} % of ${total}`;
    }
    drawn++;
  }
  const axis = $("history-axis");
  axis.replaceChildren();
  const ticks = historyHours === 24 ? [0, 6, 12, 18, 23] : [0, 24, 48, 72, 96, 120, 144, 167];
  for (const i of ticks) {
    const s = document.createElement("span");
    const t = new Date(start + i * 3600 * 1000);
    s.textContent = historyHours === 24 ? t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : t.toLocaleDateString([], { weekday: "short" });
    axis.appendChild(s);
  }
  $("history-note").textContent = !data.enabled ? "The history is switched off (history.enabled: false)."
    : drawn ? `${drawn} hour(s) with events` : "No events in this period yet.";
  svg.dataset.hours = drawn;
}

function stateCell(td, state, since, reason) {
  td.replaceChildren();
  const s = document.createElement("span");
  s.className = "state-" + state;
  s.textContent = state;
  td.appendChild(s);
  if (since) td.append(" since " + new Date(since).toLocaleString() + " (" + ago(since) + ")");
  if (reason) { const r = document.createElement("div"); r.className = "fine"; r.textContent = reason; td.appendChild(r); }
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
    stateCell(tr.insertCell(), paused && src.state !== "ended" ? "paused" : src.state, src.since, src.state === "offline" ? src.reason : "");
  }
  stateCell($("broker-state"), h.broker.state, h.broker.since, h.broker.state === "off" ? "not connected to a broker in this run" : "");
  const st = h.stats;
  $("uptime").textContent = duration(st.uptime_s) + (h.replay ? " (replay)" : "");
  const inf = st.inference_ms || {};
  $("inference").textContent = Object.keys(inf).length ? Object.entries(inf).map(([k, v]) => `${k.replace("_", " ")} ${v.toFixed(1)} ms`).join(" · ") : "no inference yet";
  const d = st.drops;
  $("drops").textContent = `frames replaced ${d.frames_replaced} · audio overwritten ${d.audio_samples_overwritten} · late ${d.late_predictions} · outbox dropped ${d.outbox_dropped} · not stored ${d.outbox_write_failed}`;
  $("outbox").textContent = `${st.queue_depth.outbox} waiting for the broker`;
  $("events").textContent = `${st.events} this run, last seq ${st.last_seq}, ${st.events_published} published`;
  const hs = st.history;
  $("history-stats").textContent = hs ? `${hs.written} kept this run · purged ${hs.purged_age} by age, ${hs.purged_size} by size · not kept ${hs.dropped + hs.write_failed}` : "off";
  showControls(h.controls);
  document.body.dataset.health = JSON.stringify(Object.fromEntries(names.map((n) => [h.sources[n].kind, h.sources[n].state])));
}

function showControls(c) {
  analysisOn = c.analysis;
  $("analysis-state").textContent = c.analysis ? "running" : "paused";
  const b = $("pause");
  b.disabled = false;
  b.textContent = c.analysis ? "Pause analysis" : "Resume analysis";
  b.classList.toggle("paused", !c.analysis);
}

async function loadModels() {
  const models = await api("/api/models");
  const box = $("models");
  box.replaceChildren();
  for (const [name, m] of Object.entries(models)) {
    const d = document.createElement("details");
    const s = document.createElement("summary");
    s.textContent = `${name.replace("_", " ")} ${m.version}`;
    const pre = document.createElement("pre");
    pre.textContent = m.card || "(no model card)";
    d.append(s, pre);
    box.appendChild(d);
  }
}

function showState(s) {
  if (!s || !s.emotion) return;
  $("now-state").textContent = `state: ${EMOJI[s.emotion] || ""} ${s.emotion} since ${new Date(s.since).toLocaleTimeString()}`;
}

function connect() {
  const es = new EventSource("/api/stream");
  es.onopen = () => { const l = $("live"); l.textContent = "live"; l.className = "pill on"; };
  es.onerror = () => { const l = $("live"); l.textContent = "reconnecting…"; l.className = "pill off"; };
  es.addEventListener("event", (m) => {
    const ev = normalise(JSON.parse(m.data));
    showNow(ev);
    addWindow(ev);
    countInHistory(ev);
  });
  es.addEventListener("state", (m) => showState(JSON.parse(m.data)));
  es.addEventListener("health", (m) => showHealth(JSON.parse(m.data)));
}

async function main() {
  drawLegend();
  const session = await api("/api/session");
  csrf = session.csrf;
  $("device").textContent = session.device_id;
  document.title = "emotion-edge · " + session.device_id;
  connect();
  const since = new Date(Date.now() - TIMELINE_S * 1000).toISOString();
  const recent = await api("/api/events?since=" + encodeURIComponent(since) + "&limit=1000");
  recent.map(normalise).forEach(addWindow);
  if (recent.length) showNow(normalise(recent[recent.length - 1]));
  const st = await api("/api/state");
  showState(st.state);
  if (st.last_event && (!recent.length || st.last_event.seq > recent[recent.length - 1].seq)) {
    const e = st.last_event;
    showNow({ ...e, face: e.modalities.face, speech: e.modalities.speech });
  }
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

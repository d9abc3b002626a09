// The emostore page: a live emotion timeline from the microphone (and camera) over /stream, and the
// timeline of an uploaded recording from POST /timeline. Plain JavaScript, no build step, nothing fetched
// from elsewhere.
"use strict";

// The same colours as the PNG plots of `emostore predict --timeline`.
const COLORS = {
  neutral: "#9e9e9e", joy: "#f2c12e", happy: "#f2c12e", happiness: "#f2c12e", surprise: "#ff8c1a",
  anger: "#d62728", angry: "#d62728", sadness: "#1f77b4", sad: "#1f77b4", disgust: "#2ca02c", fear: "#9467bd",
  boredom: "#8c564b", excited: "#e377c2", frustrated: "#7f3c8d",
};
const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
  "#17becf"];
const RATE = 16000;
const FRAME_EVERY_MS = 200;
const $ = (id) => document.getElementById(id);
let palette = {};
let server = null;

function colorOf(label) {
  return palette[label] || COLORS[(label || "").toLowerCase()] || "#555";
}

async function loadServer() {
  const res = await fetch("/health");
  server = await res.json();
  const labels = server.labels || [];
  let other = 0;
  for (const label of labels) palette[label] = COLORS[label.toLowerCase()] || TAB10[other++ % TAB10.length];
  $("legend").replaceChildren(...labels.map((label) => {
    const span = document.createElement("span");
    span.textContent = label;
    span.style.setProperty("--c", colorOf(label));
    return span;
  }));
  $("model").textContent = `${server.head} head on ${server.feature_sets.join(", ")}`;
  const visual = server.feature_sets.some((f) => f.startsWith("visual/"));
  $("camera").disabled = !visual;
  $("camera").parentElement.title = visual ? "" : "this checkpoint has no visual feature set";
}

// ----- drawing ---------------------------------------------------------------------------------
function drawTimeline(container, segments, duration) {
  const span = Math.max(duration, 1);
  const nodes = [];
  for (const s of segments) {
    const div = document.createElement("div");
    div.className = "segment" + (s.type === "partial" ? " partial" : "");
    div.style.left = `${(100 * s.start) / span}%`;
    div.style.width = `${(100 * (s.end - s.start)) / span}%`;
    div.style.background = colorOf(s.label);
    div.dataset.label = s.label || "";
    const p = s.probabilities && s.label ? ` ${(100 * s.probabilities[s.label]).toFixed(0)}%` : "";
    div.title = `${s.start.toFixed(2)}–${s.end.toFixed(2)} s: ${s.label || s.error || "?"}${p}` +
      (s.text ? `\n“${s.text}”` : "");
    nodes.push(div);
  }
  const step = span > 300 ? 60 : span > 60 ? 10 : 5;
  for (let t = 0; t <= span; t += step) {
    const tick = document.createElement("span");
    tick.className = "tick";
    tick.style.left = `${(100 * t) / span}%`;
    tick.textContent = `${t}s`;
    nodes.push(tick);
  }
  container.replaceChildren(...nodes);
}

function showProbabilities(result) {
  $("latest-label").textContent = result.label ? `${result.label} (${result.start.toFixed(1)}–${result.end.toFixed(1)} s)` : "";
  const rows = Object.entries(result.probabilities || {}).map(([label, p]) => {
    const row = document.createElement("div");
    row.className = "prob";
    row.style.setProperty("--c", colorOf(label));
    const name = document.createElement("span");
    name.textContent = label;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    const value = document.createElement("span");
    value.textContent = p.toFixed(2);
    row.append(name, bar, value);
    return row;
  });
  $("latest-probabilities").replaceChildren(...rows);
}

// ----- live ------------------------------------------------------------------------------------
const live = { ws: null, ctx: null, media: null, sent: 0, segments: [], partial: null, timer: null };

function liveDuration() {
  return Math.max(30, live.sent / RATE, ...live.segments.map((s) => s.end));
}

function redrawLive() {
  const shown = live.partial ? [...live.segments, live.partial] : live.segments;
  drawTimeline($("live-timeline"), shown, liveDuration());
}

function onServerMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === "segment") {
    live.segments.push(msg);
    live.partial = null;
    showProbabilities(msg);
  } else if (msg.type === "partial") {
    live.partial = msg;
    showProbabilities(msg);
  } else if (msg.type === "error") {
    $("live-status").textContent = `server: ${msg.message}`;
  } else if (msg.type === "done") {
    $("live-status").textContent = `done: ${msg.segments} segments`;
  }
  redrawLive();
}

async function startLive() {
  $("start").disabled = true;
  const camera = $("camera").checked;
  live.segments = [];
  live.partial = null;
  live.sent = 0;
  try {
    live.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      video: camera ? { width: 320, height: 240 } : false,
    });
  } catch (err) {
    $("live-status").textContent = `no microphone: ${err.message}`;
    $("start").disabled = false;
    return;
  }
  live.ctx = new AudioContext({ sampleRate: RATE });
  await live.ctx.audioWorklet.addModule("/static/pcm-worklet.js");
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/stream`);
  live.ws = ws;
  ws.binaryType = "arraybuffer";
  ws.onmessage = onServerMessage;
  ws.onclose = (e) => {
    if (e.code !== 1000) $("live-status").textContent = `closed: ${e.code} ${e.reason}`;
    stopMedia();
  };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  const rate = live.ctx.sampleRate;
  ws.send(JSON.stringify({ sample_rate: rate, encoding: "pcm_s16le", channels: 1, partial_every_s: 2 }));
  const source = live.ctx.createMediaStreamSource(live.media);
  const writer = new AudioWorkletNode(live.ctx, "pcm-writer");
  writer.port.onmessage = (e) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    ws.send(e.data);
    live.sent += (e.data.byteLength / 2) * (RATE / rate);
  };
  const mute = live.ctx.createGain();
  mute.gain.value = 0;
  source.connect(writer).connect(mute).connect(live.ctx.destination);
  if (camera) startFrames(ws);
  live.timer = setInterval(redrawLive, 500);
  $("stop").disabled = false;
  $("live-status").textContent = "listening";
}

function startFrames(ws) {
  const video = $("preview");
  video.hidden = false;
  video.srcObject = live.media;
  video.play();
  const canvas = document.createElement("canvas");
  live.frames = setInterval(() => {
    if (!video.videoWidth || ws.readyState !== WebSocket.OPEN) return;
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    const jpeg = canvas.toDataURL("image/jpeg", 0.8).split(",")[1];
    ws.send(JSON.stringify({ type: "frame", t: live.sent / RATE, jpeg }));
  }, FRAME_EVERY_MS);
}

function stopMedia() {
  clearInterval(live.timer);
  clearInterval(live.frames);
  if (live.media) live.media.getTracks().forEach((t) => t.stop());
  if (live.ctx && live.ctx.state !== "closed") live.ctx.close();
  live.media = null;
  $("preview").hidden = true;
  $("start").disabled = false;
  $("stop").disabled = true;
  redrawLive();
}

function stopLive() {
  $("stop").disabled = true;
  $("live-status").textContent = "finishing…";
  if (live.ws && live.ws.readyState === WebSocket.OPEN) live.ws.send(JSON.stringify({ type: "end" }));
  if (live.media) live.media.getTracks().forEach((t) => t.stop());
}

// ----- a recording -----------------------------------------------------------------------------
async function uploadFile(event) {
  event.preventDefault();
  const file = $("file-input").files[0];
  if (!file) return;
  const body = new FormData();
  body.append("file", file, file.name);
  const transcript = $("transcript-input").files[0];
  if (transcript) body.append("transcript", await transcript.text());
  $("file-status").textContent = `segmenting ${file.name}…`;
  const res = await fetch("/timeline", { method: "POST", body });
  const out = await res.json();
  if (!res.ok) {
    $("file-status").textContent = `error: ${out.detail}`;
    return;
  }
  const segments = out.segments;
  drawTimeline($("file-timeline"), segments, out.summary.duration_s);
  $("file-status").textContent = `${file.name}: ${segments.length} segments, ${out.summary.speech_s.toFixed(1)} s ` +
    `of speech in ${out.summary.duration_s.toFixed(1)} s`;
  const rows = Object.entries(out.summary.per_emotion || {}).map(([label, v]) => {
    const tr = document.createElement("tr");
    for (const text of [label, `${v.seconds.toFixed(1)} s`, `${(100 * v.share).toFixed(0)}%`, `${v.segments} segment${v.segments === 1 ? "" : "s"}`]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tr.firstChild.style.color = colorOf(label);
    return tr;
  });
  $("file-summary").replaceChildren(...rows);
  const last = segments.filter((s) => s.probabilities).at(-1);
  if (last && !live.segments.length) showProbabilities(last);
}

$("start").addEventListener("click", startLive);
$("stop").addEventListener("click", stopLive);
$("upload").addEventListener("submit", uploadFile);
loadServer();
redrawLive();

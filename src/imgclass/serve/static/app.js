// The imgclass page: choose or drop an image, see the top-k classes as bars, toggle the heatmap.
// Plain DOM code, no build step and nothing fetched from other sites.
"use strict";

const TOP_K = 5;
const $ = (id) => document.getElementById(id);
let current = null;     // the chosen File
let model = null;       // GET /v1/model
let overlayUrl = null;
let previewUrl = null;
let requestId = 0;
let overlayFor = null;  // the File the overlay was computed for

function apiKey() { return sessionStorage.getItem("imgclass-api-key") || ""; }

function headers() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

// "94%", "<1%" for tiny non-zero probabilities
function pct(p) {
  if (p > 0 && p < 0.005) return "<1%";
  return Math.round(p * 100) + "%";
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return `${resp.status} ${body.error.code}: ${body.error.message}`;
  } catch (e) { /* not JSON */ }
  return `${resp.status} ${resp.statusText}`;
}

function needKey(message) {
  $("key-box").hidden = false;
  setStatus(message || "This server needs an API key.", true);
  $("api-key").focus();
}

async function loadModel() {
  const resp = await fetch("/v1/model", { headers: headers() });
  if (resp.status === 401) { needKey("Enter the API key to use this server."); return; }
  if (!resp.ok) { setStatus(await errorText(resp), true); return; }
  model = await resp.json();
  $("model-name").textContent = `${model.method} · ${model.task} · ${model.n_classes} classes`;
  const info = $("model-info");
  info.textContent = "";
  const rows = [
    ["method", model.method], ["task", model.task], ["classes", model.classes.join(", ")],
    ["input size", Array.isArray(model.input_size) ? model.input_size.join("×") : (model.input_size ?? "as decoded")],
  ];
  if (model.thresholds) rows.push(["thresholds", Object.entries(model.thresholds).map(([c, t]) => `${c} ${t.toFixed(3)}`).join(", ")]);
  if (model.threshold !== undefined) rows.push(["threshold", `${model.positive} ≥ ${model.threshold.toFixed(3)}`]);
  if (model.taxonomy) rows.push(["taxonomy", `${Object.keys(model.taxonomy).length} nodes`]);
  if (model.metrics && model.metrics.val) {
    rows.push(["validation", Object.entries(model.metrics.val).filter(([, v]) => typeof v === "number")
      .slice(0, 4).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ")]);
  }
  rows.push(["explain", model.explain.methods.join(", ")], ["imgclass", model.version]);
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    info.append(dt, dd);
  }
  const camName = model.explain.default === "occlusion" ? "Occlusion heatmap" : "Grad-CAM overlay";
  $("cam-label").textContent = camName;
  $("cam-toggle").disabled = !current;
}

function showPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  $("view").hidden = false;
  $("drop-hint").hidden = true;
  $("overlay").hidden = true;
}

function render(result) {
  const decided = new Set((result.labels || []).map((l) => l.label));
  $("summary").textContent = result.top.map((t) => `${t.label} ${pct(t.probability)}`).join(" · ");
  let decision = "";
  if (result.nodes && result.nodes.length) {
    decision = "path: " + result.nodes.map((n) => `${n.node} ${pct(n.probability)}`).join(" › ");
  } else if (result.task === "multilabel") {
    decision = "labels above their thresholds: " + (result.labels || []).map((l) => l.label).join(", ");
  } else if (result.label !== null && result.label !== undefined) {
    decision = `decision: ${result.label}`;
    if (result.task === "binary" && result.threshold !== undefined) {
      decision += ` (${result.positive} threshold ${result.threshold.toFixed(3)})`;
    }
  }
  if (result.note) decision += ` — ${result.note}`;
  $("decision").textContent = decision;
  const bars = $("bars");
  bars.textContent = "";
  for (const t of result.top) {
    const li = document.createElement("li");
    li.className = "bar" + (decided.has(t.label) ? " decided" : "");
    li.dataset.label = t.label;
    li.dataset.probability = String(t.probability);
    const name = document.createElement("span"); name.className = "name"; name.textContent = t.label; name.title = t.label;
    const track = document.createElement("span"); track.className = "track";
    const fill = document.createElement("span"); fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${Math.max(0, Math.min(1, t.probability)) * 100}%`;
    track.append(fill);
    const p = document.createElement("span"); p.className = "pct"; p.textContent = pct(t.probability);
    if (result.thresholds && result.thresholds[t.label] !== undefined) {
      const thr = document.createElement("span"); thr.className = "thr";
      thr.textContent = ` ≥${Math.round(result.thresholds[t.label] * 100)}%`;
      p.append(thr);
    }
    li.append(name, track, p);
    bars.append(li);
  }
}

async function predict(file) {
  const id = ++requestId;
  setStatus(`Classifying ${file.name}…`);
  $("summary").textContent = ""; $("decision").textContent = ""; $("bars").textContent = "";
  const form = new FormData();
  form.append("file", file, file.name);
  const resp = await fetch(`/v1/predict?top_k=${TOP_K}`, { method: "POST", body: form, headers: headers() });
  if (id !== requestId) return;  // a newer image was chosen meanwhile
  if (resp.status === 401) { needKey("Wrong or missing API key."); return; }
  if (!resp.ok) { setStatus(await errorText(resp), true); return; }
  const result = await resp.json();
  render(result);
  setStatus(`${file.name}: done`);
  document.body.dataset.state = "predicted";
}

async function explain() {
  const toggle = $("cam-toggle");
  if (!toggle.checked || !current) { $("overlay").hidden = true; return; }
  const id = requestId;
  $("cam-status").textContent = "computing heatmap…";
  const form = new FormData();
  form.append("file", current, current.name);
  const resp = await fetch("/v1/explain", { method: "POST", body: form, headers: headers() });
  if (id !== requestId) return;
  if (!resp.ok) { $("cam-status").textContent = await errorText(resp); return; }
  const blob = await resp.blob();
  if (overlayUrl) URL.revokeObjectURL(overlayUrl);
  overlayUrl = URL.createObjectURL(blob);
  overlayFor = current;
  const ov = $("overlay");
  ov.onload = () => { document.body.dataset.overlay = "shown"; };
  ov.src = overlayUrl;
  ov.hidden = !toggle.checked;
  const target = decodeURIComponent(resp.headers.get("X-Explain-Target") || "");
  const prob = parseFloat(resp.headers.get("X-Explain-Probability") || "NaN");
  $("cam-status").textContent = `${resp.headers.get("X-Explain-Method") || ""} for ${target}` +
    (isNaN(prob) ? "" : ` (${pct(prob)})`);
}

async function choose(file) {
  if (!file) return;
  current = file;
  overlayFor = null;
  document.body.dataset.state = "busy";
  delete document.body.dataset.overlay;
  showPreview(file);
  $("cam-toggle").disabled = !model;
  await predict(file);
  if ($("cam-toggle").checked) await explain();
}

function setup() {
  const drop = $("drop"), input = $("file");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  input.addEventListener("change", () => choose(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
  });
  $("cam-toggle").addEventListener("change", () => {
    const ov = $("overlay");
    if (!$("cam-toggle").checked) { ov.hidden = true; delete document.body.dataset.overlay; return; }
    if (overlayFor === current && ov.getAttribute("src")) { ov.hidden = false; document.body.dataset.overlay = "shown"; return; }
    explain();
  });
  $("key-save").addEventListener("click", () => {
    sessionStorage.setItem("imgclass-api-key", $("api-key").value.trim());
    setStatus("Key set.");
    loadModel().then(() => { if (current) choose(current); });
  });
  $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") $("key-save").click(); });
  fetch("/healthz").then((r) => r.json()).then((h) => { if (h.auth_required) $("key-box").hidden = false; })
    .catch(() => setStatus("The server does not answer.", true));
  loadModel().catch((e) => setStatus(String(e), true));
}

document.addEventListener("DOMContentLoaded", setup);

// preimage explorer: the page's logic (no framework, no build step, nothing fetched from elsewhere).
"use strict";
const $ = (id) => document.getElementById(id);
const COLOURS = ["#2f6fdb", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#5c940d", "#e67700"];
let uploadId = null, source = null, runId = null, energies = [], layersOf = {};

async function api(path, options) {
  const res = await fetch(path, options);
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error((body && body.detail) || `${res.status} ${res.statusText}`);
  return body;
}
function option(select, value, text) {
  const o = document.createElement("option"); o.value = value; o.textContent = text ?? value; select.append(o); return o;
}
function say(text, isError) { $("message").textContent = text; $("message").style.color = isError ? "#b42318" : ""; }

async function init() {
  const info = await api("/api/info");
  for (const s of info.samples) option($("sample"), "sample:" + s, s);
  const shallow = document.createElement("optgroup"); shallow.label = "representations";
  for (const r of info.representations) option(shallow, "rep:" + r, r.toUpperCase());
  const nets = document.createElement("optgroup"); nets.label = "networks";
  for (const m of info.models) option(nets, "model:" + m, m);
  $("kind").append(shallow, nets);
  option($("param"), "", "default for Φ");
  for (const p of info.params) option($("param"), p, p === "pixel" ? "pixels (the paper's)" : p);
  $("param").value = "";
  kindChanged();
  $("kind").addEventListener("change", kindChanged);
  $("layer").addEventListener("change", layerChanged);
  $("image-file").addEventListener("change", upload);
  $("start").addEventListener("click", start);
  $("cancel").addEventListener("click", cancel);
  await gallery();
}

async function upload() {
  const file = $("image-file").files[0];
  if (!file) return;
  $("upload-status").textContent = "uploading…";
  const form = new FormData(); form.append("file", file);
  try {
    const res = await api("/api/images", { method: "POST", body: form });
    uploadId = res.id;
    const o = [...$("sample").options].find((x) => x.value === "upload") || option($("sample"), "upload", "");
    o.textContent = `uploaded: ${file.name}`; $("sample").value = "upload";
    $("upload-status").textContent = `${file.name}: ${res.width}×${res.height} pixels`;
  } catch (e) { uploadId = null; $("upload-status").textContent = e.message; }
}

async function kindChanged() {
  const [kind, name] = $("kind").value.split(/:(.*)/s);
  const isModel = kind === "model";
  $("layer-row").hidden = !isModel; $("colour-row").hidden = isModel;
  $("layer-info").textContent = "";
  if (!isModel) return;
  $("layer").innerHTML = ""; $("layer-info").textContent = "loading the model's layers…";
  try {
    layersOf[name] = layersOf[name] || (await api(`/api/models/${encodeURIComponent(name)}/layers`)).layers;
    for (const l of layersOf[name]) {
      const rf = l.rf_size ? `, field ${Math.round(l.rf_size[0])}px` : "";
      option($("layer"), l.name, `${l.name} (${l.type}, ${l.channels} ch${rf})`);
    }
    layerChanged();
  } catch (e) { $("layer-info").textContent = e.message; }
}

function layerChanged() {
  const name = $("kind").value.split(/:(.*)/s)[1];
  const l = (layersOf[name] || []).find((x) => x.name === $("layer").value);
  if (!l) return;
  const rf = l.rf_size ? `receptive field ${l.rf_size.map(Math.round).join("×")} px, stride ${l.rf_stride.map(Math.round).join("×")}`
                       : "receptive field unknown";
  $("layer-info").textContent = `output ${l.output_shape.join("×")}; ${rf}; depth ${(100 * l.depth).toFixed(0)}%`;
}

function spec() {
  const s = { restarts: +$("restarts").value || 1, iterations: +$("iterations").value || 1,
              persistent: $("persistent").checked, max_side: +$("max-side").value || 128 };
  if ($("param").value) s.param = $("param").value;
  const src = $("sample").value;
  if (src === "upload") s.upload = uploadId; else s.sample = src.slice("sample:".length);
  const [kind, name] = $("kind").value.split(/:(.*)/s);
  if (kind === "model") { s.model = name; s.layer = $("layer").value; }
  else { s.representation = name; s.colour = $("colour").checked; }
  const text = $("lambdas").value.trim();
  if (text) s.lambda_tv = text.split(/[,\s]+/).filter(Boolean).map(Number);
  if ($("neighbourhood").value) s.neighbourhood = +$("neighbourhood").value;
  if ($("channels").value.trim()) s.channels = $("channels").value.trim();
  return s;
}

async function start() {
  say("");
  // Forget the previous run at once (before the request, which may take a while on a busy server):
  // its results, frame and events must never pass for the new run's.
  if (source) { source.close(); source = null; }
  runId = null; energies = []; drawEnergy(); $("progress-text").textContent = "";
  $("results").innerHTML = ""; $("downloads").innerHTML = ""; $("live-frame").removeAttribute("src");
  let res;
  try {
    res = await api("/api/runs", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(spec()) });
  } catch (e) { say(e.message, true); return; }
  runId = res.id;
  $("start").disabled = true; $("cancel").disabled = false;
  say(`run ${runId} queued`);
  watch(runId);
}

function watch(id) {
  if (source) source.close();
  source = new EventSource(`/api/runs/${id}/events`);
  source.addEventListener("status", (e) => say(`run ${id}: ${JSON.parse(e.data).status}`));
  source.addEventListener("progress", (e) => progress(JSON.parse(e.data)));
  const end = (e) => { source.close(); source = null; finished(id, e.type, JSON.parse(e.data)); };
  for (const type of ["done", "failed", "cancelled", "interrupted"]) source.addEventListener(type, end);
}

function progress(p) {
  $("live-frame").src = p.frame;
  $("live-frame").dataset.frames = String(1 + (+$("live-frame").dataset.frames || 0));
  energies.push(p);
  const best = p.energy[0].map((_, k) => Math.min(...p.energy.map((row) => row[k])));
  $("progress-text").textContent = `iteration ${p.iteration}/${p.iterations} · E = ${best.map((v) => v.toPrecision(3)).join(", ")}`;
  drawEnergy();
}

function drawEnergy() {
  const c = $("energy"), g = c.getContext("2d"), pad = 44;
  g.clearRect(0, 0, c.width, c.height);
  if (!energies.length) return;
  const k = energies[0].lambda_tv.length, total = energies[0].iterations;
  const series = [...Array(k).keys()].map((j) => energies.map((p) => [p.iteration, Math.log10(Math.max(1e-12, Math.min(...p.energy.map((r) => r[j]))))]));
  const ys = series.flat().map((v) => v[1]);
  const lo = Math.min(...ys), hi = Math.max(...ys) + 1e-9;
  const x = (i) => pad + (c.width - pad - 8) * i / total, y = (v) => 8 + (c.height - pad - 8) * (hi - v) / (hi - lo);
  g.strokeStyle = "#d9dee7"; g.strokeRect(pad, 8, c.width - pad - 8, c.height - pad - 8);
  g.fillStyle = "#667085"; g.font = "11px system-ui";
  g.fillText((10 ** hi).toPrecision(2), 0, 16); g.fillText((10 ** lo).toPrecision(2), 0, c.height - pad);
  g.fillText(`${total} iterations`, c.width - 90, c.height - 10);
  series.forEach((s, j) => {
    g.strokeStyle = COLOURS[j % COLOURS.length]; g.lineWidth = 2; g.beginPath();
    s.forEach(([i, v], n) => (n ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v)))); g.stroke();
    g.fillStyle = g.strokeStyle; g.fillText(`λV=${energies[0].lambda_tv[j]}`, pad + 6 + 70 * j, c.height - 10);
  });
}

function figure(src, caption) {
  const f = document.createElement("figure"), img = document.createElement("img"), cap = document.createElement("figcaption");
  img.src = src; img.alt = caption; cap.textContent = caption; f.append(img, cap); return f;
}

async function finished(id, status, data) {
  $("start").disabled = false; $("cancel").disabled = true;
  if (status !== "done") { say(`run ${id} ${status}: ${data.message || ""}`, true); gallery(); return; }
  showRun(id, data.summary, data.files);
  say(`run ${id} done in ${data.summary.seconds.toFixed(1)} s; best relative code error ${(100 * data.summary.best_error).toFixed(1)}%`);
  gallery();
}

function showRun(id, summary, files) {
  const base = `/api/runs/${id}/files/`, box = $("results");
  const inputs = document.createElement("div"), recons = document.createElement("div");
  inputs.className = "inputs"; recons.className = "recons";
  recons.style.gridTemplateColumns = `repeat(${summary.lambda_tv.length}, auto)`;  // rows: restarts, columns: λ_V
  box.replaceChildren(inputs, recons);
  if (files.includes("original.png")) inputs.append(figure(base + "original.png", "original"));
  if (files.includes("code.png")) inputs.append(figure(base + "code.png", `${summary.rep ? summary.rep.toUpperCase() : "code"} picture`));
  for (const t of summary.tiles) {
    const f = figure(base + t.file, `λV=${t.lambda_tv} r${t.restart}: ${(100 * t.error).toFixed(1)}%`);
    f.className = "reconstruction"; recons.append(f);
  }
  $("downloads").innerHTML = `<a id="download-json" href="${base}result.json" download="result.json">result.json</a> · ` +
    `<a id="download-zip" href="/api/runs/${id}/download">all files (zip)</a> · <a href="${base}summary.png" target="_blank">summary.png</a>`;
}

async function cancel() {
  if (runId) await api(`/api/runs/${runId}/cancel`, { method: "POST" }).catch((e) => say(e.message, true));
}

async function gallery() {
  const { runs } = await api("/api/runs?limit=24");
  const g = $("gallery"); g.innerHTML = "";
  for (const r of runs) {
    const a = document.createElement("a"); a.href = "#"; a.dataset.run = r.id;
    const what = r.spec.model ? `${r.spec.model} ${r.spec.layer}` : r.spec.representation;
    const err = r.summary ? ` · ${(100 * r.summary.best_error).toFixed(1)}%` : "";
    if (r.files.includes("summary.png")) { const img = document.createElement("img"); img.src = `/api/runs/${r.id}/files/summary.png`; img.alt = ""; a.append(img); }
    const t = document.createElement("div"); t.className = `status-${r.status}`;
    t.textContent = `${what} · ${r.status}${err} · ${new Date(r.created * 1000).toLocaleString()}`;
    a.append(t);
    a.addEventListener("click", (e) => { e.preventDefault(); if (r.status === "done") showRun(r.id, r.summary, r.files); else if (r.status === "queued" || r.status === "running") watch(r.id); });
    g.append(a);
  }
}

init().catch((e) => say(e.message, true));

// The page of biomed-serve: plain JavaScript, no build step, nothing from another host.
// Every call goes to this service's own API; the token lives in this closure only (never stored).
// Heat maps and logos are drawn on <canvas> from the JSON answers (the page's CSP is default-src 'self').
"use strict";

(() => {
  const state = { token: "", models: [], imageFile: null, image: null, records: [], chosen: 0 };
  const $ = (id) => document.getElementById(id);
  const RAMP = [[0.50, 0.00, 0.15], [0.89, 0.10, 0.11], [0.99, 0.55, 0.24], [1.00, 0.93, 0.35]];  // as biomed/occlusion.py
  const BASE_COLOURS = { A: "#109648", C: "#255c99", G: "#f7b32b", T: "#d62839" };

  class ApiError extends Error {
    constructor(detail, status) { super(detail); this.status = status; }
  }

  // ---- the API -------------------------------------------------------------------------------------------
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
    let response;
    try {
      response = await fetch(path, { ...options, headers, cache: "no-store", credentials: "omit" });
    } catch (err) {
      throw new ApiError(`the service could not be reached (${err.message})`, 0);
    }
    if (!response.ok) {
      let detail = `HTTP ${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && typeof body.detail === "string") detail = body.detail;
      } catch (_) { /* not JSON: keep the status line */ }
      throw new ApiError(detail, response.status);
    }
    return response;
  }

  function postJson(path, body) {
    return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }

  // ---- small helpers ---------------------------------------------------------------------------------------
  function show(el, on = true) { el.hidden = !on; }
  function fail(el, err) { el.textContent = err.message || String(err); el.dataset.status = err.status ?? ""; show(el); }
  function clear(el) { el.textContent = ""; show(el, false); }
  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }
  function row(...cells) {
    const tr = document.createElement("tr");
    cells.forEach((c) => tr.appendChild(c));
    return tr;
  }
  function fixed(value, digits = 4) { return typeof value === "number" ? value.toFixed(digits) : String(value); }
  function describe(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "object") {
      return Object.entries(value).map(([k, v]) => `${k} ${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`).join(", ");
    }
    return String(value);
  }
  async function busy(el, work) {
    show(el);
    try { return await work(); } finally { show(el, false); }
  }
  function ramp(v) {
    const position = v * (RAMP.length - 1);
    const low = Math.min(Math.floor(position), RAMP.length - 2);
    const t = position - low;
    return RAMP[low].map((c, i) => Math.round(255 * (c * (1 - t) + RAMP[low + 1][i] * t)));
  }
  function dropTarget(zone, onFile) {
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) onFile(e.dataTransfer.files[0]);
    });
  }

  // ---- models ----------------------------------------------------------------------------------------------
  async function loadModels() {
    const error = $("models-error");
    clear(error);
    try {
      const body = await (await api("/models")).json();
      state.models = body.models || [];
    } catch (err) {
      state.models = [];
      fail(error, err);
    }
    renderModels();
  }

  function fillSelect(select, models, first) {
    const keep = select.value;
    select.replaceChildren(new Option(first, ""));
    models.forEach((m) => select.appendChild(new Option(`${m.name}:${m.version}`, `${m.name}:${m.version}`)));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }

  function imageModel() {
    const chosen = $("image-model").value;
    return state.models.find((m) => m.kind === "image" && (!chosen || `${m.name}:${m.version}` === chosen));
  }

  function fillLabels() {
    const select = $("image-label");
    const keep = select.value;
    select.replaceChildren(new Option("the predicted label", ""));
    const model = imageModel();
    (model ? model.labels : []).forEach((label) => select.appendChild(new Option(label, label)));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }

  function renderModels() {
    fillSelect($("image-model"), state.models.filter((m) => m.kind === "image"), "first image model");
    fillSelect($("dna-model"), state.models.filter((m) => m.kind === "dna"), "first DNA model");
    fillLabels();
    const list = $("models-list");
    list.replaceChildren();
    state.models.forEach((m) => {
      const card = document.createElement("article");
      card.className = "card";
      const title = document.createElement("h3");
      title.textContent = `${m.name}:${m.version} (${m.kind})`;
      card.appendChild(title);
      const dl = document.createElement("dl");
      const metrics = m.metrics || {};
      const entries = [
        ["intended use", m.intended_use],
        ["labels", (m.labels || []).join(", ") + (m.output && m.output.activation === "none"
          ? ` (regression values${m.output.units ? `, units ${m.output.units.join(", ")}` : ""})`
          : m.multilabel ? " (multi-label, sigmoid)" : " (softmax)")],
        ["architecture", m.architecture],
        ["input", describe(m.input)],
        ["preprocessing", describe(m.preprocess)],
        ["held-out AUROC (macro)", fixed(metrics.auroc_macro, 3)],
        ["held-out accuracy", fixed(metrics.accuracy, 3)],
        ["held-out examples", metrics.n],
        ["baseline AUROC (macro)", m.baseline ? fixed(m.baseline.auroc_macro, 3) : "—"],
        ["export", describe(m.export && { variant: m.export.variant, opset: m.export.opset,
          parity_max_abs_diff: m.export.parity_max_abs_diff })],
        ["provider", m.provider],
        ["sha256", m.sha256],
      ];
      if (m.source) {  // an imported model: where it came from, what it was described as, what the import checked
        entries.push(["imported from", `${m.source.file} (${m.source.format}, sha256 ${String(m.source.sha256).slice(0, 12)}…)`],
          ["description", (m.description && m.description.description) || describe(m.description && m.description.output)],
          ["import checks", describe(m.checks && { checker: m.checks.checker, max_abs_diff: m.checks.max_abs_diff,
            rtol: m.checks.rtol, atol: m.checks.atol, batch: m.checks.batch })]);
      }
      entries.forEach(([k, v]) => {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = v === undefined || v === null ? "—" : String(v);
        dl.append(dt, dd);
      });
      card.appendChild(dl);
      list.appendChild(card);
    });
  }

  // ---- image -----------------------------------------------------------------------------------------------
  async function explainImage(file) {
    state.imageFile = file;
    const error = $("image-error");
    clear(error);
    const form = new FormData();
    form.append("file", file, file.name || "upload");
    if ($("image-model").value) form.append("model", $("image-model").value);
    if ($("image-label").value) form.append("label", $("image-label").value);
    form.append("image", "true");
    try {
      const body = await busy($("image-busy"), async () => (await api("/explain_image", { method: "POST", body: form })).json());
      await renderImage(body, file.name || "upload");
    } catch (err) {
      show($("image-result"), false);
      fail(error, err);
    }
  }

  async function renderImage(body, name) {
    const bytes = Uint8Array.from(atob(body.image_png), (c) => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
    state.image = { bitmap, heat: heatLayer(body.map) };
    $("image-predicted").textContent = body.predicted;
    $("image-explained").textContent = body.label;
    $("image-frame").textContent = String(body.frame);
    $("image-file-name").textContent = name;
    $("image-map-note").textContent = `occlusion: ${body.map.patches} patches of ${body.map.patch} px (stride `
      + `${body.map.stride}) on the ${body.map.rows}×${body.map.columns} model input; largest drop ${fixed(body.map.max)}`;
    const probabilities = $("image-probabilities").tBodies[0];
    probabilities.replaceChildren();
    Object.entries(body.probabilities || body.values).sort((a, b) => b[1] - a[1]).forEach(([label, p]) => {
      const tr = row(cell(label), cell(fixed(p), "number"));
      if (label === body.predicted) tr.className = "top";
      probabilities.appendChild(tr);
    });
    const header = $("image-header").tBodies[0];
    header.replaceChildren();
    Object.entries(body.input).forEach(([key, value]) => header.appendChild(row(cell(key.replaceAll("_", " ")), cell(describe(value)))));
    show($("image-result"));
    redraw();
  }

  function heatLayer(map) {
    const canvas = document.createElement("canvas");
    canvas.width = map.columns;
    canvas.height = map.rows;
    const ctx = canvas.getContext("2d");
    const pixels = ctx.createImageData(map.columns, map.rows);
    const peak = Math.max(map.max, 1e-9);
    let lit = 0;
    map.values.forEach((values, y) => values.forEach((value, x) => {
      const v = Math.min(Math.max(value / peak, 0), 1);
      const [r, g, b] = ramp(v);
      const i = 4 * (y * map.columns + x);
      pixels.data[i] = r; pixels.data[i + 1] = g; pixels.data[i + 2] = b; pixels.data[i + 3] = Math.round(255 * v);
      if (v > 0) lit += 1;
    }));
    ctx.putImageData(pixels, 0, 0);
    return { canvas, lit };
  }

  function redraw() {
    if (!state.image) return;
    const { bitmap, heat } = state.image;
    const canvas = $("image-canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    ctx.globalAlpha = Number($("image-opacity").value) / 100;
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(heat.canvas, 0, 0, bitmap.width, bitmap.height);
    ctx.globalAlpha = 1;
    canvas.dataset.heatPixels = String(heat.lit);
    canvas.dataset.opacity = $("image-opacity").value;
  }

  // ---- DNA -------------------------------------------------------------------------------------------------
  function parseDna(text) {
    const trimmed = text.trim();
    if (!trimmed.startsWith(">")) return { fasta: false, records: [{ id: "sequence", sequence: trimmed.replace(/\s+/g, "") }] };
    const records = [];
    trimmed.split(/\r?\n/).forEach((line) => {
      if (line.startsWith(">")) records.push({ id: line.slice(1).trim().split(/\s+/)[0] || `record ${records.length + 1}`, sequence: "" });
      else if (records.length) records[records.length - 1].sequence += line.trim();
    });
    return { fasta: true, records };
  }

  async function runDna() {
    const error = $("dna-error");
    clear(error);
    const text = $("dna-text").value;
    if (!text.trim()) {
      fail(error, new ApiError("paste a sequence or FASTA records, or drop a FASTA file", 0));
      return;
    }
    const parsed = parseDna(text);
    const rc = $("dna-rc").checked;
    const model = $("dna-model").value;
    try {
      const body = await busy($("dna-busy"), async () => {
        if (parsed.fasta) {
          const form = new FormData();
          form.append("file", new Blob([text], { type: "text/plain" }), "sequences.fa");
          form.append("reverse_complement", rc ? "true" : "false");
          if (model) form.append("model", model);
          return (await api("/predict_fasta", { method: "POST", body: form })).json();
        }
        const request = { sequences: parsed.records, reverse_complement: rc };
        if (model) request.model = model;
        return (await postJson("/predict_dna", request)).json();
      });
      state.records = parsed.records;
      renderPredictions(body);
      await explainDna(0);
    } catch (err) {
      show($("dna-result"), false);
      fail(error, err);
    }
  }

  function renderPredictions(body) {
    const key = body.predictions.length && body.predictions[0].values ? "values" : "probabilities";  // regression: values
    const tasks = body.predictions.length ? Object.keys(body.predictions[0][key]) : [];
    const table = $("dna-predictions");
    table.tHead.replaceChildren(row(...["sequence", "length", ...tasks].map((t) => {
      const th = document.createElement("th");
      th.textContent = t;
      return th;
    })));
    const tbody = table.tBodies[0];
    tbody.replaceChildren();
    body.predictions.forEach((p, index) => {
      const tr = row(cell(p.id), cell(String(p.length), "number"), ...tasks.map((t) => cell(fixed(p[key][t]), "number")));
      tr.className = "sequence";
      tr.dataset.index = String(index);
      tr.addEventListener("click", () => explainDna(index));
      tbody.appendChild(tr);
      (p.windows || []).forEach((w) => {
        const wr = row(cell(`  window ${w.start}–${w.end}`), cell(String(w.end - w.start), "number"),
          ...tasks.map((t) => cell(fixed(w[key][t]), "number")));
        wr.className = "window";
        tbody.appendChild(wr);
      });
    });
    show($("dna-result"));
  }

  async function explainDna(index) {
    const record = state.records[index];
    const error = $("dna-explain-error");
    clear(error);
    if (!record) return;
    state.chosen = index;
    document.querySelectorAll("#dna-predictions tr.sequence").forEach((tr) => tr.classList.toggle("chosen", tr.dataset.index === String(index)));
    $("dna-explained").textContent = record.id;
    const request = { sequence: record.sequence, reverse_complement: $("dna-rc").checked };
    if ($("dna-model").value) request.model = $("dna-model").value;
    try {
      const result = await busy($("dna-busy"), async () => (await postJson("/explain_dna", request)).json());
      $("dna-explained").textContent = `${record.id} for ${result.task} (${result.value === undefined ? `p = ${fixed(result.probability)}` : `value ${fixed(result.value)}`})`;
      drawTrack(record.sequence.toUpperCase(), result);
    } catch (err) {
      const canvas = $("dna-track");
      canvas.dataset.positions = "0";
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      fail(error, err);
    }
  }

  function drawLetter(ctx, letter, x, y, width, height, up) {
    if (height < 0.5) return;
    ctx.save();
    ctx.font = "bold 100px ui-monospace, monospace";
    const metrics = ctx.measureText(letter);
    const ascent = metrics.actualBoundingBoxAscent || 72;
    ctx.fillStyle = BASE_COLOURS[letter] || "#777";
    ctx.translate(x, y);
    ctx.scale(width / metrics.width, (up ? 1 : -1) * height / ascent);
    ctx.fillText(letter, 0, 0);
    ctx.restore();
  }

  function drawTrack(sequence, result) {
    const n = sequence.length;
    const step = Math.max(2, Math.min(16, Math.floor(1100 / n)));
    const left = 48;
    const canvas = $("dna-track");
    canvas.width = left + n * step + 8;
    canvas.height = 240;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#5f6368";
    const importance = result.importance;
    const top = Math.max(...importance, 1e-9);
    const barTop = 8, barHeight = 80;
    ctx.fillText("importance", 2, barTop + 10);
    ctx.fillStyle = "#4c72b0";
    importance.forEach((v, i) => {
      const h = (v / top) * barHeight;
      ctx.fillRect(left + i * step, barTop + barHeight - h, Math.max(1, step - 1), h);
    });
    const effects = result.scores.map((s) => -(s[0] + s[1] + s[2] + s[3]) / 3);
    const largest = Math.max(...effects.map(Math.abs), 1e-9);
    const axis = 170, half = 60;
    ctx.fillStyle = "#5f6368";
    ctx.fillText("logo", 2, axis - half + 10);
    ctx.strokeStyle = "#999";
    ctx.beginPath();
    ctx.moveTo(left, axis + 0.5);
    ctx.lineTo(left + n * step, axis + 0.5);
    ctx.stroke();
    for (let i = 0; i < n; i += 1) {
      const h = (Math.abs(effects[i]) / largest) * half;
      drawLetter(ctx, sequence[i], left + i * step, axis, step, h, effects[i] >= 0);
    }
    ctx.fillStyle = "#5f6368";
    const tick = Math.max(1, Math.ceil(n / 10 / 10) * 10);
    for (let i = 0; i < n; i += tick) ctx.fillText(String(i), left + i * step, 236);
    canvas.dataset.positions = String(n);
    canvas.dataset.maxImportance = String(top);
  }

  // ---- wiring ----------------------------------------------------------------------------------------------
  function start() {
    $("token").addEventListener("input", (e) => { state.token = e.target.value.trim(); });
    $("token").addEventListener("change", loadModels);
    $("image-file").addEventListener("change", (e) => { if (e.target.files.length) explainImage(e.target.files[0]); });
    dropTarget($("image-drop"), explainImage);
    $("image-model").addEventListener("change", () => { fillLabels(); if (state.imageFile) explainImage(state.imageFile); });
    $("image-label").addEventListener("change", () => { if (state.imageFile) explainImage(state.imageFile); });
    $("image-opacity").addEventListener("input", redraw);
    $("dna-file").addEventListener("change", async (e) => {
      if (e.target.files.length) { $("dna-text").value = await e.target.files[0].text(); runDna(); }
    });
    dropTarget($("dna-drop"), async (file) => { $("dna-text").value = await file.text(); runDna(); });
    $("dna-run").addEventListener("click", runDna);
    $("models-refresh").addEventListener("click", loadModels);
    loadModels();
  }

  start();
})();

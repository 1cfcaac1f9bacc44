// scanedge live viewer: follows the runtime's results over a WebSocket and draws the newest slice of the
// selected series with its findings drawn from the label mask (outline as vector paths, fill as
// nearest-neighbour pixels), so both stay crisp at any zoom. When a series has been compared with its prior
// study, its lesions are drawn in the colours of their change class instead (new, enlarging, ...), with a
// legend, the prior's date and source, and the lesion load's trend. A model's image-level scores (a classifier
// served beside the segmentation model, or a segmentation model's own score head) are shown per model: this
// slice's classes against their thresholds, the series' score and its trend over the slices as they came.
// When a model gives its own saliency map (a RESULT's `saliency` frame), it is drawn as a heat map under the
// slice's findings, behind a switch, with a legend naming the model, head and class; never without a frame.
// A model's further mask heads (its `mask:<label>` frames) are drawn over the findings as dashed outlines in the
// colours their frames' entries give, each head behind a switch of its own named by its label and classes.
// No framework, no build step. Every text
// that came over the wire is inserted as text (textContent, fillText), never as markup.

const PALETTE = [null, [255, 40, 40], [40, 200, 90], [40, 130, 255], [255, 200, 0], [200, 70, 255], [0, 220, 220]];
const $ = (id) => document.getElementById(id);

const CHANGE_KEY = 100; // overlay keys above this are change codes (key - CHANGE_KEY), below it mask labels
const MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];

const state = {
  changeClasses: [], // [{name, code, colour}] from the viewer's hello: the shared change colours

  series: new Map(), // uid -> {uid, tag, slices: Map(key -> meta), latest, scores: Map(model -> Map(key -> meta))}
  selected: null, // uid painted; null until the first slice arrives (then the first series)
  pinned: null, // key of an earlier slice being looked at, or null: live
  current: null, // {meta, base, fill, outline}
  paintMs: [],
  zoom: 1,
  pan: [0, 0],
  socket: null,
  heard: 0, // when the socket last carried anything
  runtime: null, // id of the runtime whose results are shown
};

// --- connection ------------------------------------------------------------------------------------

const STALE_AFTER_MS = 6000; // the server sends its feed status every 2 s: silence this long means a dead socket

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  state.socket = ws;
  state.heard = now();
  ws.onopen = () => setStatus("connecting", "waiting for the runtime");
  ws.onclose = () => {
    if (state.socket !== ws) return;
    setStatus("closed", "disconnected, retrying");
    setTimeout(connect, 1000);
  };
  ws.onmessage = (event) => {
    if (state.socket !== ws) return;
    state.heard = now();
    if (typeof event.data === "string") onText(JSON.parse(event.data));
    else onSlice(event.data);
  };
}

// A socket that stays open but carries nothing (a frozen proxy, a suspended laptop) is dropped and reopened.
setInterval(() => {
  const ws = state.socket;
  if (!ws || ws.readyState !== WebSocket.OPEN || now() - state.heard < STALE_AFTER_MS) return;
  setStatus("stale", "no news from the viewer, reconnecting");
  state.socket = null;
  ws.close();
  connect();
}, 1000);

// The runtime connected, went away, or is another one than before (restarted): the badge says which, and a
// new runtime is followed from its first slice, whatever series it publishes.
function onFeed(feed) {
  if (feed.runtime && state.runtime && feed.runtime !== state.runtime) {
    state.selected = null;
    state.pinned = null;
    $("pinned").hidden = true;
  }
  if (feed.runtime) state.runtime = feed.runtime;
  document.body.dataset.runtime = state.runtime || "";
  if (feed.connected) setStatus("live", "live");
  else setStatus("stale", "stale: runtime gone, waiting for it");
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(message));
}

function setStatus(kind, text) {
  const el = $("connection");
  el.dataset.state = kind;
  el.textContent = text;
}

// --- what the runtime published --------------------------------------------------------------------

function onText(message) {
  if (message.type === "feed") {
    onFeed(message);
    return;
  }
  if (message.type === "hello") {
    if (Array.isArray(message.change_classes)) state.changeClasses = message.change_classes;
    onFeed(message.feed);
    for (const s of message.series) {
      for (const meta of s.slices) remember({ ...meta, update: false }); // in arrival order: the last is the newest
      for (const meta of s.scores || []) remember(meta);
    }
    if (state.selected) send({ type: "select", series: state.selected });
  } else if (message.type === "slices") {
    for (const meta of message.items) remember(meta);
  }
  renderSeries();
  renderLoad();
  renderChange();
  renderScores();
  renderStrip();
}

function seriesOf(uid) {
  let s = state.series.get(uid);
  if (!s) {
    s = { uid, tag: `Scanner ${state.series.size + 1}`, slices: new Map(), latest: null, scores: new Map() };
    state.series.set(uid, s);
  }
  return s;
}

// A model's scores, kept per series, model and slice place: a classifier's RESULTs (no pixels) and the
// scores of a segmentation model that has a score head alike. A series-score update (the DICOM node's final
// series score, docs/protocol.md section 9) keeps the slice's own scores held there and takes its series
// scores; a description older than the one held (a slice looked at again) never replaces it.
function rememberScores(s, meta) {
  if (!(meta.scores && meta.scores.length) && !(meta.series_scores && meta.series_scores.length)) return;
  let held = s.scores.get(meta.model);
  if (!held) s.scores.set(meta.model, (held = new Map()));
  const old = held.get(meta.key);
  if (old && meta.pinned && old.seq > meta.seq) return;
  if (old && meta.scores_update) {
    held.set(meta.key, { ...old, seq: meta.seq, series_scores: meta.series_scores, update: true, scores_update: true });
  } else held.set(meta.key, meta);
}

// A change update (docs/protocol.md section 9: the comparison with the prior ended after the slice came) for a
// slice already described: the slice takes its change where it stands, and the series' newest description its
// status, counts and load (keeping that slice's own counts), so the panel and trend follow the comparison.
function rememberUpdate(s, meta) {
  if (!s.slices.has(meta.key)) return;
  s.slices.set(meta.key, meta);
  if (!s.latest || s.latest.key === meta.key) s.latest = meta;
  else {
    const own = s.latest.change ? s.latest.change.slice_counts : null;
    s.latest = { ...s.latest, change: meta.change ? { ...meta.change, slice_counts: own } : s.latest.change };
  }
}

function remember(meta) {
  const s = seriesOf(meta.series);
  if (meta.update && meta.type === "slice") {
    rememberUpdate(s, meta);
    return;
  }
  rememberScores(s, meta);
  if (meta.type === "scores") {
    if (state.selected === null) {
      state.selected = meta.series;
      send({ type: "select", series: meta.series });
    }
    return; // no pixels, no strip cell: the slice drawn there is the segmentation's
  }
  s.slices.set(meta.key, meta);
  if (!meta.pinned || !s.latest) s.latest = meta; // an earlier slice looked at again is not the series' newest
  if (state.selected === null) {
    state.selected = meta.series; // the first scanner seen stays on screen until another is chosen
    send({ type: "select", series: meta.series });
  }
}

const now = () => performance.timeOrigin + performance.now();
window.scanedgeTimings = []; // per painted slice: epoch ms at each step, for measuring publish-to-paint

function onSlice(buffer) {
  const arrived = now();
  const view = new DataView(buffer);
  const headLength = view.getUint32(0, true);
  const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, headLength)));
  const pixels = meta.rows * meta.cols;
  const imageBytes = pixels * (meta.channels || 0);
  const image = new Uint8Array(buffer, 4 + headLength, imageBytes);
  const mask = new Uint8Array(buffer, 4 + headLength + imageBytes, pixels);
  const codes = meta.change_frame ? new Uint8Array(buffer, 4 + headLength + imageBytes + pixels, pixels) : null;
  const salAt = 4 + headLength + imageBytes + pixels + (codes ? pixels : 0);
  const saliency = meta.saliency && buffer.byteLength >= salAt + pixels ? new Uint8Array(buffer, salAt, pixels) : null;
  remember(meta);
  state.current = { meta, base: baseCanvas(meta, image), fill: fillCanvas(meta, mask, labelColour), outline: outlinePath(meta, mask) };
  if (saliency) state.current.heat = heatCanvas(meta, saliency);
  state.current.heads = headLayers(meta, buffer, salAt + (saliency ? pixels : 0));
  if (codes) {
    const keys = overlayKeys(mask, codes);
    Object.assign(state.current, { changeFill: fillCanvas(meta, keys, keyColour), changeOutline: outlinePath(meta, keys) });
  }
  draw();
  renderSeries();
  renderLoad();
  renderChange();
  renderScores();
  renderSaliency();
  renderHeads();
  renderStrip();
  renderSlice(meta);
  const drawn = now();
  // the frame holding this drawing is painted after this frame's callbacks: time it just after that
  requestAnimationFrame(() =>
    setTimeout(() => {
      const painted = now();
      const latency = meta.pinned || meta.update || !meta.replied_at ? null : painted - meta.replied_at * 1000;
      window.scanedgeTimings.push({ seq: meta.seq, replied: meta.replied_at * 1000, viewer: meta.received_at * 1000, arrived, drawn, painted });
      if (window.scanedgeTimings.length > 500) window.scanedgeTimings.shift();
      if (latency !== null) {
        state.paintMs.push(latency);
        if (state.paintMs.length > 500) state.paintMs.shift();
        $("paint-ms").textContent = `${latency.toFixed(1)} ms`;
        const sorted = [...state.paintMs].sort((a, b) => a - b);
        const pct = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
        const p50 = $("paint-p50");
        p50.textContent = `${pct(0.5).toFixed(1)} / ${pct(0.9).toFixed(1)} ms (n=${sorted.length})`;
        p50.dataset.p50 = pct(0.5).toFixed(2);
      }
      document.body.dataset.painted = String(meta.seq);
      document.body.dataset.paintedLesionPixels = String(meta.lesion_pixels);
      document.body.dataset.paintedIndex = String(meta.index ?? "");
      document.body.dataset.paintedSeries = meta.series;
      send({ type: "painted", seq: meta.seq, latency_ms: latency });
    }, 0),
  );
}

// --- turning frames into drawable things -------------------------------------------------------------

function baseCanvas(meta, image) {
  const canvas = document.createElement("canvas");
  canvas.width = meta.cols;
  canvas.height = meta.rows;
  const ctx = canvas.getContext("2d");
  const rgba = ctx.createImageData(meta.cols, meta.rows);
  const out = rgba.data;
  const n = meta.rows * meta.cols;
  if (meta.channels === 1) {
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      const v = image[i];
      out[j] = v;
      out[j + 1] = v;
      out[j + 2] = v;
      out[j + 3] = 255;
    }
  } else if (meta.channels === 3) {
    for (let i = 0, j = 0, k = 0; i < n; i++, j += 4, k += 3) {
      out[j] = image[k];
      out[j + 1] = image[k + 1];
      out[j + 2] = image[k + 2];
      out[j + 3] = 255;
    }
  }
  ctx.putImageData(rgba, 0, 0);
  return canvas;
}

// The heat map's colours, low to high (dark blue, cyan, green, yellow, red), as a 256-entry table; values below
// HEAT_FLOOR stay untinted and the opacity grows with the value, so the slice stays readable under the map.
const HEAT_STOPS = [[0, [20, 40, 160]], [0.35, [0, 190, 230]], [0.6, [60, 220, 60]], [0.8, [255, 220, 0]], [1, [255, 30, 20]]];
const HEAT_FLOOR = 0.25;
const HEAT_ALPHA = [0.2, 0.65]; // opacity just above the floor, and at the map's maximum
const HEAT_LUT = Array.from({ length: 256 }, (_, i) => {
  const v = i / 255;
  const k = HEAT_STOPS.findIndex(([at]) => at >= v);
  if (k <= 0) return HEAT_STOPS[0][1];
  const [a, ca] = HEAT_STOPS[k - 1];
  const [b, cb] = HEAT_STOPS[k];
  const t = (v - a) / (b - a);
  return ca.map((c, j) => Math.round(c + t * (cb[j] - c)));
});

function heatCanvas(meta, values) {
  const canvas = document.createElement("canvas");
  canvas.width = meta.cols;
  canvas.height = meta.rows;
  const ctx = canvas.getContext("2d");
  const rgba = ctx.createImageData(meta.cols, meta.rows);
  const out = rgba.data;
  const floor = Math.round(HEAT_FLOOR * 255);
  for (let i = 0, j = 0; i < values.length; i++, j += 4) {
    const v = values[i];
    if (v < floor) continue;
    const colour = HEAT_LUT[v];
    out[j] = colour[0];
    out[j + 1] = colour[1];
    out[j + 2] = colour[2];
    out[j + 3] = Math.round(255 * (HEAT_ALPHA[0] + ((HEAT_ALPHA[1] - HEAT_ALPHA[0]) * (v - floor)) / (255 - floor)));
  }
  ctx.putImageData(rgba, 0, 0);
  return canvas;
}

// What each pixel is drawn as: its mask label, or, where the change frame gives a known class, that class
// (CHANGE_KEY + code). Lesion pixels without a class (too small to classify) keep their label's colour.
function overlayKeys(mask, codes) {
  const keys = new Uint8Array(mask.length);
  for (let i = 0; i < mask.length; i++) {
    const code = codes[i];
    keys[i] = code && changeColour(code) ? CHANGE_KEY + code : mask[i];
  }
  return keys;
}

function changeColour(code) {
  const known = state.changeClasses.find((c) => c.code === code);
  return known ? known.colour : null;
}

function labelColour(label) {
  return PALETTE[label] || (label ? PALETTE[1] : null);
}

function keyColour(key) {
  return key > CHANGE_KEY ? changeColour(key - CHANGE_KEY) || PALETTE[1] : labelColour(key);
}

function fillCanvas(meta, keys, colourOf) {
  const canvas = document.createElement("canvas");
  canvas.width = meta.cols;
  canvas.height = meta.rows;
  const ctx = canvas.getContext("2d");
  const rgba = ctx.createImageData(meta.cols, meta.rows);
  const out = rgba.data;
  const colours = new Map();
  for (let i = 0, j = 0; i < keys.length; i++, j += 4) {
    if (!keys[i]) continue;
    let colour = colours.get(keys[i]);
    if (colour === undefined) colours.set(keys[i], (colour = colourOf(keys[i])));
    if (colour) {
      out[j] = colour[0];
      out[j + 1] = colour[1];
      out[j + 2] = colour[2];
      out[j + 3] = 255;
    }
  }
  ctx.putImageData(rgba, 0, 0);
  return canvas;
}

// Edges between a labelled pixel and a differently labelled neighbour, per label (or change class), as one
// path each: drawn in image coordinates and stroked at a fixed screen width, they stay sharp at any zoom.
function outlinePath(meta, mask) {
  const rows = meta.rows;
  const cols = meta.cols;
  const paths = new Map();
  const at = (r, c) => (r < 0 || c < 0 || r >= rows || c >= cols ? 0 : mask[r * cols + c]);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = mask[r * cols + c];
      if (!v) continue;
      let path = paths.get(v);
      if (!path) {
        path = new Path2D();
        paths.set(v, path);
      }
      if (at(r - 1, c) !== v) { path.moveTo(c, r); path.lineTo(c + 1, r); }
      if (at(r + 1, c) !== v) { path.moveTo(c, r + 1); path.lineTo(c + 1, r + 1); }
      if (at(r, c - 1) !== v) { path.moveTo(c, r); path.lineTo(c, r + 1); }
      if (at(r, c + 1) !== v) { path.moveTo(c + 1, r); path.lineTo(c + 1, r + 1); }
    }
  }
  return paths;
}

// --- drawing -------------------------------------------------------------------------------------------

function draw() {
  const canvas = $("view");
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, width, height);
  const cur = state.current;
  if (!cur) return;
  const { rows, cols } = cur.meta;
  const scale = Math.min(width / cols, height / rows) * state.zoom;
  const x0 = (width - cols * scale) / 2 + state.pan[0] * dpr;
  const y0 = (height - rows * scale) / 2 + state.pan[1] * dpr;
  ctx.setTransform(scale, 0, 0, scale, x0, y0);
  window.scanedgeView = { scale, x0, y0 }; // where image pixel (c, r) lands on the canvas: x0 + c * scale, ...
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(cur.base, 0, 0);
  const heat = Boolean(cur.heat) && $("show-saliency").checked;
  document.body.dataset.saliency = cur.heat ? (heat ? "on" : "off") : "none";
  if (heat) ctx.drawImage(cur.heat, 0, 0); // smoothed: the map is coarser than the slice
  const byChange = Boolean(cur.changeFill) && $("show-change").checked;
  document.body.dataset.overlay = byChange ? "change" : "labels";
  if ($("show-fill").checked) {
    ctx.imageSmoothingEnabled = false; // label pixels stay square, not blurred, when zoomed
    ctx.globalAlpha = Number($("opacity").value);
    ctx.drawImage(byChange ? cur.changeFill : cur.fill, 0, 0);
    ctx.globalAlpha = 1;
  }
  if ($("show-outline").checked) {
    ctx.lineWidth = (1.5 * dpr) / scale;
    const colourOf = byChange ? keyColour : labelColour;
    for (const [key, path] of byChange ? cur.changeOutline : cur.outline) {
      const colour = colourOf(key);
      ctx.strokeStyle = `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})`;
      ctx.stroke(path);
    }
  }
  drawHeads(ctx, dpr, scale);
}

// --- the panels ---------------------------------------------------------------------------------------

function renderSeries() {
  const list = $("series-list");
  if (!state.series.size) return;
  list.replaceChildren(
    ...[...state.series.values()].map((s) => {
      const li = document.createElement("li");
      li.dataset.uid = s.uid;
      li.className = s.uid === state.selected ? "selected" : "";
      const load = s.latest && s.latest.series_load;
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = s.tag;
      const uid = document.createElement("span");
      uid.className = "uid";
      uid.textContent = s.uid;
      uid.title = s.uid;
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = load ? `${load.lesions} les.` : "";
      li.append(tag, uid, count);
      li.onclick = () => select(s.uid);
      return li;
    }),
  );
}

function select(uid) {
  state.selected = uid;
  state.pinned = null;
  $("pinned").hidden = true;
  send({ type: "select", series: uid });
  renderSeries();
  renderLoad();
  renderChange();
  renderScores();
  renderStrip();
}

function renderLoad() {
  const s = state.series.get(state.selected);
  const load = s && s.latest && s.latest.series_load;
  $("lesion-count").textContent = load ? String(load.lesions) : "-";
  const volume = $("lesion-volume");
  volume.textContent = load && load.volume_mm3 !== null ? load.volume_mm3.toFixed(1) : "-";
  volume.dataset.volume = load && load.volume_mm3 !== null ? String(load.volume_mm3) : "";
  $("lesion-largest").textContent = load && load.volume_mm3 !== null ? load.largest_mm3.toFixed(1) : "-";
  $("slice-count").textContent = load ? String(load.slices) : s ? String(s.slices.size) : "-";
  if (s && s.latest) $("model-name").textContent = `model ${s.latest.model}`;
}

// --- the series against its prior -----------------------------------------------------------------------

function readableDate(yyyymmdd) {
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(yyyymmdd || "");
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 12) return yyyymmdd || "an unknown date";
  return `${Number(m[3])} ${MONTHS[Number(m[2]) - 1]} ${m[1]}`;
}

function statusText(change) {
  const prior = change.prior_date ? ` of ${readableDate(change.prior_date)}` : "";
  switch (change.status) {
    case "searching":
      return "searching for a prior study…";
    case "registering":
      return `aligning the prior study${prior}…`;
    case "compared":
      return `compared with ${readableDate(change.prior_date)}`;
    case "withheld":
      return `change withheld: ${change.reason || "registration not good enough"}`;
    case "no_prior":
      return `no prior: ${change.reason || "none found"}`;
    default:
      return String(change.status);
  }
}

function renderChange() {
  const s = state.series.get(state.selected);
  const change = s && s.latest && s.latest.change;
  const panel = $("change");
  panel.hidden = !change;
  if (!change) return;
  const status = $("change-status");
  status.dataset.status = change.status;
  status.textContent = statusText(change);
  // where the prior came from; a withheld comparison also says which prior it was
  const prior = $("change-prior");
  const which = change.status === "withheld" && change.prior_date ? `prior of ${readableDate(change.prior_date)} ` : "";
  prior.hidden = !change.source;
  prior.textContent = change.source ? `${which}from ${change.source}` : "";
  const cur = state.current && state.current.meta.series === s.uid ? state.current.meta.change : null;
  const slice = cur && cur.slice_counts;
  const legend = $("change-legend");
  legend.hidden = !change.counts;
  legend.replaceChildren(
    ...state.changeClasses.map((c) => {
      const row = document.createElement("tr");
      row.dataset.class = c.name;
      const swatch = document.createElement("td");
      const dot = document.createElement("span");
      dot.className = "swatch";
      dot.style.background = `rgb(${c.colour[0]}, ${c.colour[1]}, ${c.colour[2]})`;
      swatch.append(dot);
      const name = document.createElement("td");
      name.textContent = c.name;
      const series = document.createElement("td");
      series.className = "series";
      series.textContent = change.counts ? String(change.counts[c.name] ?? 0) : "-";
      const here = document.createElement("td");
      here.className = "slice";
      here.textContent = slice && c.code !== null ? String(slice[c.name] ?? 0) : "-";
      row.append(swatch, name, series, here);
      return row;
    }),
  );
  $("change-legend-head").hidden = !change.counts;
  renderTrend(s, change);
}

// The series' current lesion load as its slices arrived, against the prior's load (dashed).
function renderTrend(s, change) {
  const points = [...s.slices.values()]
    .filter((m) => m.change && m.change.current_load_mm3 !== null && m.change.current_load_mm3 !== undefined)
    .sort((a, b) => a.seq - b.seq)
    .map((m) => m.change.current_load_mm3);
  const priorLoad = change.prior_load_mm3 ?? null;
  const canvas = $("trend");
  canvas.dataset.points = String(points.length);
  canvas.dataset.series = JSON.stringify(points);
  canvas.dataset.last = points.length ? String(points[points.length - 1]) : "";
  canvas.dataset.prior = priorLoad === null ? "" : String(priorLoad);
  const top = Math.max(1, ...points, priorLoad ?? 0) * 1.1;
  plotTrend(canvas, { line: points, top, scale: `${top.toFixed(0)} mm³`, reference: priorLoad, referenceLabel: "prior" });
  const current = change.current_load_mm3;
  const percent = change.load_change_percent;
  let text = current === null || current === undefined ? "-" : `${current.toFixed(1)} mm³ now`;
  if (priorLoad !== null) text += ` · prior ${priorLoad.toFixed(1)} mm³`;
  if (percent !== null && percent !== undefined) text += ` · ${percent >= 0 ? "+" : ""}${percent.toFixed(1)} %`;
  const load = $("load-change");
  load.textContent = text;
  load.dataset.percent = percent === null || percent === undefined ? "" : String(percent);
}

// --- a model's own saliency map -------------------------------------------------------------------------

// The legend of the painted slice's saliency map (whose it is: model, score head, class) and why a map was not
// drawn; hidden when the slice has neither. Every name in it came over the wire and is inserted as text.
function renderSaliency() {
  const meta = state.current && state.current.meta;
  const info = meta && meta.saliency;
  const refused = meta && meta.saliency_refused;
  $("saliency").hidden = !info && !refused;
  const legend = $("saliency-legend");
  legend.hidden = !info;
  $("saliency-scale").hidden = !info;
  $("saliency-switch").hidden = !info;
  if (info) {
    const what = info.of ? `for ${info.of}${info.top ? `, class ${info.top}` : ""}` : "for its score";
    legend.textContent = `The model's own saliency map ${what} (${info.model}): where it looked, not a segmentation.`;
    legend.dataset.of = info.of;
    legend.dataset.model = info.model;
  }
  const why = $("saliency-refused");
  why.hidden = !refused;
  why.textContent = refused ? `saliency map not shown: ${refused}` : "";
}

// --- a model's further mask heads ------------------------------------------------------------------------

const HEAD_DASH = [4, 3]; // screen pixels on and off along a head's outline: dashed, unlike the findings' solid line
const headsOff = new Set(); // labels of the heads switched off: a switch holds for the next slices too

// The painted slice's further mask heads (meta.heads, in frame order), each with its outlines per label value;
// a head with no labelled pixel came without a plane and has none. Planes follow the saliency map in the message.
function headLayers(meta, buffer, at) {
  const pixels = meta.rows * meta.cols;
  const layers = [];
  for (const head of meta.heads || []) {
    let outline = null;
    if (head.pixels > 0 && buffer.byteLength >= at + pixels) {
      outline = outlinePath(meta, new Uint8Array(buffer, at, pixels));
      at += pixels;
    }
    layers.push({ head, outline });
  }
  return layers;
}

// A head's colour for label value k: its frame entry's class colour, else the page's own palette.
function headColour(head, k) {
  const c = head.classes && head.classes[k];
  return c && Array.isArray(c.colour) ? c.colour : labelColour(k);
}

function headClassNames(head) {
  return (head.classes || []).slice(1).map((c) => c.name);
}

function drawHeads(ctx, dpr, scale) {
  const layers = (state.current && state.current.heads) || [];
  let drawn = 0;
  ctx.lineWidth = (1.5 * dpr) / scale;
  ctx.setLineDash(HEAD_DASH.map((v) => (v * dpr) / scale));
  for (const { head, outline } of layers) {
    if (!outline || headsOff.has(head.label)) continue;
    for (const [k, path] of outline) {
      const colour = headColour(head, k);
      ctx.strokeStyle = `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})`;
      ctx.stroke(path);
    }
    drawn += 1;
  }
  ctx.setLineDash([]);
  document.body.dataset.heads = String(drawn);
}

// One switch per head of the painted slice, named by its label and class names (as text), a dashed swatch per
// class in its colour; why a head mask was refused, when one was.
function renderHeads() {
  const meta = state.current && state.current.meta;
  const layers = (state.current && state.current.heads) || [];
  const refused = (meta && meta.heads_refused) || [];
  $("heads").hidden = !layers.length && !refused.length;
  $("head-switches").replaceChildren(
    ...layers.map(({ head }) => {
      const label = document.createElement("label");
      label.className = "head-switch";
      label.dataset.head = head.label;
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = !headsOff.has(head.label);
      box.addEventListener("input", () => {
        if (box.checked) headsOff.delete(head.label);
        else headsOff.add(head.label);
        draw();
      });
      const name = document.createElement("span");
      name.className = "head-name";
      const classes = headClassNames(head);
      name.textContent = ` ${head.label}${classes.length ? `: ${classes.join(", ")}` : ""}`;
      label.append(box, name);
      (head.classes || []).slice(1).forEach((c, i) => {
        const swatch = document.createElement("span");
        swatch.className = "head-swatch";
        const colour = headColour(head, i + 1);
        swatch.style.borderColor = `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})`;
        swatch.title = c.name;
        label.append(swatch);
      });
      if (!head.pixels) label.append(document.createTextNode(" (nothing on this slice)"));
      return label;
    }),
  );
  const why = $("heads-refused");
  why.hidden = !refused.length;
  why.textContent = refused.length ? `not shown: ${refused.join("; ")}` : "";
}

// --- a model's image-level scores -----------------------------------------------------------------------

const MAX_SCORE_ROWS = 8; // classes listed per head (the most probable first); the trend follows the top one

const pct = (v) => (v === null || v === undefined ? "-" : `${(100 * v).toFixed(1)} %`);

function line(className, text) {
  const p = document.createElement("p");
  p.className = className;
  p.textContent = text;
  return p;
}

// "lesion 83.0 % ≥ 41.0 % → present": the class, its probability, its threshold, the decision.
function classLine(kind, c, value) {
  const p = document.createElement("p");
  p.className = kind;
  p.dataset.class = c.name;
  p.dataset.decision = String(c.decision);
  p.dataset.value = value === null || value === undefined ? "" : String(value);
  const name = document.createElement("span");
  name.textContent = `${c.name} ${pct(value)} `;
  const rule = document.createElement("span");
  rule.className = "what";
  rule.textContent = `${c.decision ? "≥" : "<"} ${pct(c.threshold)} → `;
  const decision = document.createElement("span");
  decision.className = "decision";
  decision.textContent = c.decision ? "present" : "absent";
  p.append(name, rule, decision);
  return p;
}

function renderScores() {
  const s = state.series.get(state.selected);
  const panel = $("scores");
  const models = s ? [...s.scores.entries()] : [];
  panel.hidden = !models.length;
  if (!models.length) return;
  const shown = state.current && state.current.meta.series === s.uid ? state.current.meta.key : null;
  $("score-models").replaceChildren(
    ...models.map(([model, held]) => {
      const metas = [...held.values()].sort((a, b) => a.seq - b.seq);
      const latest = metas[metas.length - 1];
      const here = (shown !== null && held.get(shown)) || latest; // the painted slice's, else the newest
      const box = document.createElement("div");
      box.className = "score-model";
      box.dataset.model = model;
      const title = document.createElement("h3");
      title.textContent = model;
      box.append(title);
      const where = here.position_mm !== null && here.position_mm !== undefined ? `z ${here.position_mm.toFixed(1)} mm` : `#${here.index}`;
      box.append(line("what", `${here === latest && here.key !== shown ? "newest slice" : "this slice"} (${where})`));
      for (const head of here.scores || []) {
        const classes = [...head.classes].sort((a, b) => b.probability - a.probability).slice(0, MAX_SCORE_ROWS);
        for (const c of classes) box.append(classLine("slice-score", c, c.probability));
        if (head.operating_point) box.append(line("what", `operating point ${head.operating_point}`));
      }
      for (const head of latest.series_scores || []) {
        const run = head.series_model; // a 3-D series model: final once it ran on the complete series
        const final = run && run.status === "done";
        let how = `${head.aggregation} over ${head.slices} slice(s)`;
        if (final) how = `final: 3-D series model on ${run.slices} slice(s)`;
        else if (run) how = `provisional ${how}; series model ${run.status}${run.code ? ` ${run.code}` : ""}`;
        const label = line("what", `series (${how})`);
        if (run) label.dataset.seriesModel = run.status;
        box.append(label);
        const classes = [...head.classes].sort((a, b) => b.score - a.score).slice(0, MAX_SCORE_ROWS);
        for (const c of classes) {
          const row = classLine("series-score", c, c.score);
          if (!final) row.lastChild.textContent += ` (on ${c.slices_positive} slice(s))`;
          box.append(row);
        }
      }
      box.append(scoreTrend(metas));
      return box;
    }),
  );
}

// The series score of the first head's leading class as the slices arrived (solid), each slice's own
// probability (dots) and the threshold (dashed).
function scoreTrend(metas) {
  const canvas = document.createElement("canvas");
  canvas.className = "score-trend";
  const first = metas[metas.length - 1].series_scores?.[0];
  const lead = first && [...first.classes].sort((a, b) => b.score - a.score)[0];
  const seriesPoints = [];
  const slicePoints = [];
  for (const m of metas) {
    const sc = lead && m.series_scores?.[0]?.classes.find((c) => c.name === lead.name);
    const sl = lead && m.scores?.[0]?.classes.find((c) => c.name === lead.name);
    seriesPoints.push(sc ? sc.score : null);
    slicePoints.push(sl ? sl.probability : null);
  }
  canvas.dataset.class = lead ? lead.name : "";
  canvas.dataset.points = String(seriesPoints.filter((v) => v !== null).length);
  canvas.dataset.series = JSON.stringify(seriesPoints);
  canvas.dataset.slices = JSON.stringify(slicePoints);
  canvas.title = lead ? `${lead.name}: series score (line) and each slice's probability (dots) as the slices arrived; dashed: threshold` : "";
  const reference = lead ? lead.threshold : null;
  requestAnimationFrame(() => plotTrend(canvas, { line: seriesPoints, dots: slicePoints, top: 1, reference }));
  return canvas;
}

// One trend plot, sized to its box at the device's pixel ratio, values from 0 (bottom) to `top`: `line` as a
// red polyline and `dots` as dots, point i of n at the i-th of n even steps (null values skipped); `reference`
// a dashed horizontal line (with `referenceLabel` at its right end); `scale` a label above the plot. The load
// trend (against the prior) and each model's score trend (against its threshold) are both drawn by it.
function plotTrend(canvas, { line, dots = [], top, scale = "", reference = null, referenceLabel = "" }) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const pad = 4 * dpr;
  const head = scale ? 14 * dpr : pad; // room for the scale's label above the plot
  const n = Math.max(line.length, dots.length);
  const x = (i) => pad + (n > 1 ? (i / (n - 1)) * (width - 2 * pad) : 0);
  const y = (v) => height - pad - (v / top) * (height - pad - head);
  ctx.font = `${10 * dpr}px system-ui, sans-serif`;
  ctx.fillStyle = "#8a94a3";
  if (scale) ctx.fillText(scale, pad, pad + 9 * dpr);
  if (reference !== null && reference !== undefined) {
    ctx.strokeStyle = "#8a94a3";
    ctx.setLineDash([4 * dpr, 3 * dpr]);
    ctx.lineWidth = dpr;
    ctx.beginPath();
    ctx.moveTo(pad, y(reference));
    ctx.lineTo(width - pad, y(reference));
    ctx.stroke();
    ctx.setLineDash([]);
    if (referenceLabel) ctx.fillText(referenceLabel, width - pad - 26 * dpr, y(reference) - 3 * dpr);
  }
  ctx.fillStyle = "#d8dde4";
  dots.forEach((v, i) => {
    if (v === null) return;
    ctx.beginPath();
    ctx.arc(x(i), y(v), 1.6 * dpr, 0, 2 * Math.PI);
    ctx.fill();
  });
  ctx.strokeStyle = "#ff3b30";
  ctx.lineWidth = 1.5 * dpr;
  ctx.beginPath();
  let started = false;
  line.forEach((v, i) => {
    if (v === null) return;
    if (started) ctx.lineTo(x(i), y(v));
    else ctx.moveTo(x(i), y(v));
    started = true;
  });
  ctx.stroke();
}

function renderSlice(meta) {
  const where = meta.position_mm !== null ? `z ${meta.position_mm.toFixed(1)} mm` : `#${meta.index}`;
  $("slice-label").textContent = `${where}${meta.index !== null ? ` (image ${meta.index})` : ""}`;
  $("slice-findings").textContent = meta.findings.map((f) => `${f.name} ${f.pixels} px / ${f.components}`).join(", ") || "-";
  $("runtime-ms").textContent = `${meta.timings_ms.total.toFixed(1)} ms (model ${meta.timings_ms.infer.toFixed(1)})`;
}

function order(a, b) {
  const pa = a.position_mm ?? a.index ?? 0;
  const pb = b.position_mm ?? b.index ?? 0;
  return pa - pb;
}

const NOTABLE = ["new", "enlarging", "merged", "split", "shrinking", "stable"]; // the order a strip mark picks

function sliceChange(meta) {
  const counts = meta.change && meta.change.status === "compared" ? meta.change.slice_counts : null;
  const name = counts && NOTABLE.find((n) => counts[n] > 0);
  return name ? state.changeClasses.find((c) => c.name === name) || null : null;
}

function renderStrip() {
  const strip = $("strip");
  const s = state.series.get(state.selected);
  if (!s) return;
  const metas = [...s.slices.values()].sort(order);
  const most = Math.max(1, ...metas.map((m) => m.lesion_pixels));
  const currentKey = state.current && state.current.meta.series === s.uid ? state.current.meta.key : null;
  strip.replaceChildren(
    ...metas.map((m) => {
      const cell = document.createElement("div");
      cell.className = m.key === currentKey ? "cell current" : "cell";
      cell.dataset.key = m.key;
      cell.title = `${m.position_mm !== null ? `z ${m.position_mm.toFixed(1)} mm` : `#${m.index}`}: ${m.lesion_pixels} lesion px`;
      if (m.lesion_pixels > 0) {
        const mark = document.createElement("div");
        mark.className = "mark";
        mark.style.height = `${20 + 80 * Math.sqrt(m.lesion_pixels / most)}%`;
        const change = sliceChange(m);
        if (change) {
          // compared with the prior: the mark takes the colour of the slice's most notable change
          cell.dataset.change = change.name;
          cell.title += `, ${change.name}`;
          mark.style.background = `rgb(${change.colour[0]}, ${change.colour[1]}, ${change.colour[2]})`;
        }
        cell.append(mark);
      }
      cell.onclick = () => {
        state.pinned = m.key;
        $("pinned").hidden = false;
        send({ type: "pin", series: s.uid, key: m.key });
      };
      return cell;
    }),
  );
}

// --- controls -----------------------------------------------------------------------------------------

function controls() {
  for (const id of ["show-outline", "show-fill", "show-change", "show-saliency", "opacity"]) $(id).addEventListener("input", draw);
  const bar = $("saliency-bar"); // the heat map's colours, low to high, as the legend's bar
  bar.style.background = `linear-gradient(to right, ${HEAT_LUT.filter((_, i) => i % 32 === 0 || i === 255)
    .map((c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`)
    .join(", ")})`;
  $("zoom").addEventListener("input", () => {
    state.zoom = Number($("zoom").value);
    draw();
  });
  $("follow").onclick = () => {
    state.pinned = null;
    $("pinned").hidden = true;
    send({ type: "pin", series: null, key: null });
  };
  const canvas = $("view");
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    state.zoom = Math.min(8, Math.max(1, state.zoom * (event.deltaY < 0 ? 1.15 : 1 / 1.15)));
    $("zoom").value = String(state.zoom);
    draw();
  });
  let drag = null;
  canvas.addEventListener("pointerdown", (event) => {
    drag = [event.clientX - state.pan[0], event.clientY - state.pan[1]];
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drag) return;
    state.pan = [event.clientX - drag[0], event.clientY - drag[1]];
    draw();
  });
  canvas.addEventListener("pointerup", () => (drag = null));
  canvas.addEventListener("dblclick", () => {
    state.zoom = 1;
    state.pan = [0, 0];
    $("zoom").value = "1";
    draw();
  });
  window.addEventListener("resize", () => {
    draw();
    renderChange();
    renderScores();
  });
}

controls();
connect();

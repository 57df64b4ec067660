// The bertserve console: one page per served task, talking to the server's own HTTP API (same origin).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGES = ["encode", "search", "classify", "ner", "summarize", "generate", "status"];
const state = {
  lang: localStorage.getItem("bertserve-lang") || ((navigator.language || "en").startsWith("zh") ? "zh" : "en"),
  key: sessionStorage.getItem("bertserve-key"),  // kept for this browser session only
  controller: null, status: null, served: new Set(["encode", "status"]),
  samples: [], lastMetrics: null,
};

function t(key) { return (I18N[state.lang] || I18N.en)[key] || I18N.en[key] || key; }
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v;
    else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function applyLanguage() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((n) => { n.textContent = t(n.dataset.i18n); });
  $("lang").value = state.lang;
  renderTabs();
}

// ---- talking to the server ----------------------------------------------------------------------
class ApiError extends Error {}

function showError(message) { const box = $("error"); box.textContent = message; box.hidden = !message; }

async function api(path, body, { quiet = false, stream = false } = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  let controller = null;
  if (!quiet) {
    showError("");
    controller = state.controller = new AbortController();
    $("busy").hidden = false;
  }
  try {
    const response = await fetch(path, { method: body === undefined ? "GET" : "POST", headers,
      body: body === undefined ? undefined : JSON.stringify(body), signal: controller ? controller.signal : undefined });
    if (response.status === 401 && await askKey()) return api(path, body, { quiet, stream });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { const err = (await response.json()).error; if (err && err.message) message = `${response.status}: ${err.message}`; }
      catch (_) { /* not JSON: keep the status line */ }
      throw new ApiError(message);
    }
    if (stream) return response;
    const type = response.headers.get("content-type") || "";
    return type.includes("json") ? response.json() : response.text();
  } catch (e) {
    if (!quiet) showError(e.name === "AbortError" ? t("cancelled") : e.message);
    throw e;
  } finally {
    if (!quiet && !stream && state.controller === controller) { $("busy").hidden = true; state.controller = null; }
  }
}
function done() { $("busy").hidden = true; state.controller = null; }

function askKey() {
  return new Promise((resolve) => {
    const dialog = $("key-dialog");
    $("key-input").value = "";
    dialog.onclose = () => {
      const key = $("key-input").value.trim();
      if (key) { state.key = key; sessionStorage.setItem("bertserve-key", key); }
      resolve(Boolean(key));
    };
    dialog.showModal();
  });
}

// ---- navigation ---------------------------------------------------------------------------------
function renderTabs() {
  const nav = $("tabs");
  nav.replaceChildren();
  const current = location.hash.slice(1) || "encode";
  for (const page of PAGES) {
    if (!state.served.has(page)) continue;
    const b = el("button", { type: "button", role: "tab", id: `tab-${page}`, "aria-controls": `page-${page}`,
      "aria-selected": String(page === current), text: t(page) });
    b.onclick = () => { location.hash = page; };
    nav.append(b);
  }
  nav.onkeydown = (e) => {  // arrow keys move between tabs, as a tab list should
    const tabs = [...nav.querySelectorAll("button")];
    const i = tabs.indexOf(document.activeElement);
    if (i < 0 || !["ArrowLeft", "ArrowRight"].includes(e.key)) return;
    const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
    next.focus(); next.click();
  };
}
function showPage() {
  let page = location.hash.slice(1) || "encode";
  if (!state.served.has(page)) page = "encode";
  for (const p of PAGES) $(`page-${p}`).hidden = p !== page;
  document.querySelectorAll("#tabs button").forEach((b) => b.setAttribute("aria-selected", String(b.id === `tab-${page}`)));
  if (page === "search") refreshCollections().catch(() => {});
}

function servedPages(status) {
  const served = new Set(["encode", "status"]);
  const engines = status.engines || {};
  const names = Object.keys(engines).concat(Object.values(engines).map((e) => (e && e.kind) || ""));
  const has = (word) => names.some((n) => n.toLowerCase().includes(word));
  if (has("collection")) served.add("search");
  if (has("classif")) served.add("classify");
  if (has("ner") || has("entit") || has("tag")) served.add("ner");
  if (has("summar") || has("keyword")) served.add("summarize");
  if (has("generat") || has("complet")) served.add("generate");
  return served;
}

// ---- encode -------------------------------------------------------------------------------------
function lines(id) { return $(id).value.split("\n").map((s) => s.trim()).filter(Boolean); }

function cosineMatrix(vectors) {
  const unit = vectors.map((v) => { const n = Math.hypot(...v) || 1; return v.map((x) => x / n); });
  return unit.map((a) => unit.map((b) => a.reduce((s, x, i) => s + x * b[i], 0)));
}
function heatColor(x) {  // -1..1 -> white..blue
  const v = Math.max(0, Math.min(1, (x + 1) / 2));
  const light = Math.round(255 - v * v * 170);
  return `rgb(${light}, ${Math.round(light + (255 - light) * 0.25)}, 255)`;
}

async function runEncode() {
  const texts = lines("encode-texts");
  if (!texts.length) return showError(t("texts") + ": 0");
  const body = { texts, show_tokens: true };
  const pooling = $("encode-pooling").value;
  if (pooling) body.pooling = pooling;
  let result, tokens = null;
  try { result = await api("/encode", body); tokens = result.tokens; }
  catch (e) {
    if (!(e instanceof ApiError) || !/show.tokens/i.test(e.message)) return;
    delete body.show_tokens;
    try { result = await api("/encode", body); } catch (_) { return; }
  }
  const sims = cosineMatrix(result.result);
  const table = el("table", { class: "heatmap", id: "heatmap" });
  const head = el("tr", {}, el("th", {}, ""));
  texts.forEach((_, j) => head.append(el("th", {}, `#${j + 1}`)));
  table.append(head);
  sims.forEach((row, i) => {
    const tr = el("tr", {}, el("th", { class: "rowhead", title: texts[i] }, `#${i + 1} ${texts[i].slice(0, 40)}`));
    row.forEach((x, j) => tr.append(el("td", { class: "cell", "data-i": i, "data-j": j, "data-value": x.toFixed(6),
      style: `background:${heatColor(x)}` }, x.toFixed(3))));
    table.append(tr);
  });
  const out = $("encode-result");
  out.replaceChildren(el("h3", {}, `${t("similarity")} (${result.result[0].length}-d)`), table);
  out.append(el("h3", {}, t("tokens")));
  if (tokens) {
    tokens.forEach((toks, i) => out.append(el("div", { class: "tokens" }, `#${i + 1} `,
      ...toks.map((tok) => el("span", { class: "tok" }, tok)))));
  } else out.append(el("p", { class: "hint" }, t("tokens_off")));
}

// ---- search -------------------------------------------------------------------------------------
function parseJson(id) {
  const text = $(id).value.trim();
  if (!text) return undefined;
  try { return JSON.parse(text); } catch (_) { throw new ApiError(`${id.replace(/^search-/, "")} ${t("bad_json")}`); }
}
async function refreshCollections() {
  const list = await api("/collections", undefined, { quiet: true });
  const select = $("search-collection");
  const keep = select.value;
  select.replaceChildren(...list.collections.map((c) => el("option", { value: c.name }, `${c.name} (${c.count})`)));
  if (keep && list.collections.some((c) => c.name === keep)) select.value = keep;
  if (!list.collections.length) $("search-result").replaceChildren(el("p", { class: "hint" }, t("no_collections")));
}
async function runSearch() {
  const name = $("search-collection").value;
  let filter;
  try { filter = parseJson("search-filter"); } catch (e) { return showError(e.message); }
  const body = { query: $("search-query").value, k: Number($("search-k").value) || 5 };
  if (filter) body.filter = filter;
  const result = await api(`/collections/${encodeURIComponent(name)}/search`, body);
  const hits = result.hits || [];
  if (!hits.length) return $("search-result").replaceChildren(el("p", {}, t("no_hits")));
  const table = el("table", { id: "search-hits" }, el("tr", {}, el("th", {}, t("id")), el("th", {}, t("score")),
    el("th", {}, t("text")), el("th", {}, t("metadata"))));
  for (const h of hits) {
    table.append(el("tr", {}, el("td", {}, h.id), el("td", {}, h.score.toFixed(4)), el("td", {}, h.text || ""),
      el("td", {}, h.metadata ? JSON.stringify(h.metadata) : "")));
  }
  $("search-result").replaceChildren(table);
}
async function addTexts() {
  const name = $("search-collection").value, texts = lines("search-add-texts");
  let meta;
  try { meta = parseJson("search-add-meta"); } catch (e) { return showError(e.message); }
  const body = { texts };
  if (meta) body.metadata = texts.map(() => meta);
  const result = await api(`/collections/${encodeURIComponent(name)}/add`, body);
  $("search-add-result").textContent = `${t("added")}: ${result.count}`;
  await refreshCollections();
}
async function createCollection() {
  const name = $("search-new").value.trim();
  await api("/collections", { name });
  await refreshCollections();
  $("search-collection").value = name;
}

// ---- classify, entities, summaries --------------------------------------------------------------
async function runClassify() {
  const texts = lines("classify-texts");
  const result = await api("/classify", { texts });
  const out = $("classify-result");
  out.replaceChildren();
  result.results.forEach((r, i) => {
    const block = el("div", { class: "classified" }, el("h3", {}, `${texts[i]} → ${r.label}`));
    for (const [label, p] of Object.entries(r.probabilities).sort((a, b) => b[1] - a[1])) {
      block.append(el("div", { class: "barrow" }, el("span", {}, label),
        el("div", {}, el("div", { class: "bar", style: `width:${(p * 100).toFixed(1)}%` })), el("span", {}, p.toFixed(3))));
    }
    out.append(block);
  });
}

function highlight(text, spans, render) {  // spans: [{start, end, ...}] sorted, non-overlapping
  const out = el("p", { class: "highlighted" });
  let at = 0;
  for (const s of [...spans].sort((a, b) => a.start - b.start)) {
    if (s.start < at) continue;
    out.append(text.slice(at, s.start), render(s, text.slice(s.start, s.end)));
    at = s.end;
  }
  out.append(text.slice(at));
  return out;
}
function firstList(body) {
  if (Array.isArray(body)) return body;
  for (const v of Object.values(body)) if (Array.isArray(v)) return v;
  return [];
}
async function runNer() {
  const text = $("ner-text").value;
  const body = await api("/ner", { texts: [text] });
  let entities = firstList(body);
  if (entities.length && Array.isArray(entities[0])) entities = entities[0];
  const out = $("ner-result");
  if (!entities.length) return out.replaceChildren(el("p", {}, t("no_entities")));
  out.replaceChildren(highlight(text, entities, (s, span) => el("span", {
    class: `ent ent-${["PER", "LOC", "ORG"].includes(s.label) ? s.label : "other"}`, title: `${s.label} ${(s.score ?? 1).toFixed(3)}` },
    span, el("small", {}, s.label))));
}
async function runSummarize() {
  const text = $("summarize-text").value;
  const n = Number($("summarize-n").value) || 3;
  const summary = await api("/summarize", { text, num_sentences: n });
  const sentences = (summary.sentences || firstList(summary)).filter((s) => s && s.start !== undefined);
  const out = $("summarize-result");
  out.replaceChildren(highlight(text, sentences, (s, span) => el("mark", { class: "chosen", title: `${(s.score ?? 0).toFixed(3)}` }, span)));
  if (state.served.has("summarize")) {
    try {
      const kw = await api("/keywords", { text, top_n: 8 });
      const words = firstList(kw);
      out.append(el("h3", {}, t("keywords")), el("p", {}, ...words.map((w) => el("span", { class: "tok" },
        `${w.keyword || w.text || w.word || w[0]} ${((w.score ?? w[1]) || 0).toFixed(2)}`))));
    } catch (_) { /* the error is shown already */ }
  }
}

// ---- generate (streamed) ------------------------------------------------------------------------
async function runGenerate() {
  const out = $("generate-result");
  out.textContent = "";
  const body = { prompt: $("generate-prompt").value, max_tokens: Number($("generate-max").value) || 64,
    temperature: Number($("generate-temp").value), stream: true };
  const gen = [...Object.entries(state.status.engines || {})].find(([k, e]) => /generat|complet/.test(k + (e.kind || "")));
  if (gen && gen[1].name) body.model = gen[1].name;
  let response;
  try { response = await api("/v1/completions", body, { stream: true }); } catch (_) { done(); return; }
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done: finished } = await reader.read();
      if (finished) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new ApiError(chunk.error.message);
          out.textContent += (chunk.choices && chunk.choices[0] && chunk.choices[0].text) || "";
        }
      }
    }
  } catch (e) { showError(e.name === "AbortError" ? t("cancelled") : e.message); }
  finally { done(); }
}

// ---- status -------------------------------------------------------------------------------------
function parseMetrics(text) {
  const rows = [];
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    (m[3] || "").replace(/(\w+)="([^"]*)"/g, (_, k, v) => { labels[k] = v; });
    rows.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return rows;
}
function summed(rows, name) { return rows.filter((r) => r.name === name).reduce((s, r) => s + r.value, 0); }
function buckets(rows) {  // request latency histogram, all endpoints: le -> cumulative count
  const out = new Map();
  for (const r of rows) if (r.name === "bertserve_request_seconds_bucket") out.set(r.labels.le, (out.get(r.labels.le) || 0) + r.value);
  return out;
}
function percentile(deltas, q) {  // deltas: [[upper bound, cumulative count]] sorted by bound
  const total = deltas.length ? deltas[deltas.length - 1][1] : 0;
  if (!total) return null;
  for (const [bound, count] of deltas) if (count >= q * total) return bound === Infinity ? null : bound * 1000;
  return null;
}
function drawChart(svg, series, colors) {
  const w = 600, h = 160, pad = 28;
  const all = series.flat().filter((v) => v !== null);
  const top = Math.max(1e-9, ...all) * 1.1;
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 4); label.setAttribute("y", 14); label.setAttribute("font-size", 11); label.textContent = top.toPrecision(3);
  svg.append(label);
  series.forEach((values, s) => {
    const pts = values.map((v, i) => v === null ? null : `${pad + (i * (w - pad - 4)) / Math.max(1, values.length - 1)},${h - 6 - (v / top) * (h - 20)}`).filter(Boolean);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" ")); line.setAttribute("fill", "none");
    line.setAttribute("stroke", colors[s]); line.setAttribute("stroke-width", 2);
    svg.append(line);
  });
}
function card(k, v) { return el("div", { class: "card" }, el("div", { class: "k" }, k), el("div", { class: "v" }, v)); }

async function pollStatus() {
  let status, metricsText;
  try {
    status = await api("/status", undefined, { quiet: true });
    metricsText = await api("/metrics", undefined, { quiet: true });
  } catch (e) {
    if (e instanceof ApiError && /^401/.test(e.message) && !state.key) await askKey();
    return;
  }
  state.status = status;
  const served = servedPages(status);
  if ([...served].join() !== [...state.served].join()) { state.served = served; renderTabs(); showPage(); }
  $("model-badge").textContent = `${status.model_name} · ${status.backend || ""} · ${status.dim}-d`;
  const errors = Object.values(status.errors || {}).reduce((a, b) => a + b, 0);
  $("status-cards").replaceChildren(card(t("model"), status.model_name), card(t("backend"), status.backend || "–"),
    card(t("dim"), status.dim), card(t("uptime"), `${Math.round(status.uptime_s)} s`),
    card(t("requests"), status.num_request), card(t("errors"), errors), card(t("queue"), status.queue_depth));
  const engines = el("table", {}, el("tr", {}, el("th", {}, t("engines")), el("th", {}, t("requests")),
    el("th", {}, t("errors")), el("th", {}, "tokens/s")));
  for (const [name, e] of Object.entries(status.engines || {})) {
    const s = e.statistic || {};
    engines.append(el("tr", {}, el("td", {}, `${name} (${e.name || e.kind || ""})`), el("td", {}, s.requests ?? 0),
      el("td", {}, s.errors ?? 0), el("td", {}, (s.tokens_per_second ?? 0).toFixed(1))));
  }
  $("status-engines").replaceChildren(engines);
  // charts from the server's own counters: deltas between two polls
  const rows = parseMetrics(metricsText), now = performance.now();
  const sample = { time: now, tokens: summed(rows, "bertserve_tokens_total"), buckets: buckets(rows) };
  const last = state.lastMetrics;
  if (last) {
    const dt = (now - last.time) / 1000;
    const deltas = [...sample.buckets.entries()].map(([le, c]) => [le === "+Inf" ? Infinity : Number(le), c - (last.buckets.get(le) || 0)])
      .sort((a, b) => a[0] - b[0]);
    state.samples.push({ tps: (sample.tokens - last.tokens) / dt, p50: percentile(deltas, 0.5), p90: percentile(deltas, 0.9),
      p99: percentile(deltas, 0.99) });
    state.samples = state.samples.slice(-60);
    drawChart($("chart-tps"), [state.samples.map((s) => s.tps)], ["#2f6fdf"]);
    drawChart($("chart-latency"), [state.samples.map((s) => s.p50), state.samples.map((s) => s.p90), state.samples.map((s) => s.p99)],
      ["#2f9d57", "#d08a1a", "#b3261e"]);
  }
  state.lastMetrics = sample;
}

// ---- wiring -------------------------------------------------------------------------------------
function guard(fn) { return () => fn().catch(() => {}); }  // errors are shown by api()
window.addEventListener("hashchange", showPage);
$("lang").onchange = () => { state.lang = $("lang").value; localStorage.setItem("bertserve-lang", state.lang); applyLanguage(); showPage(); };
$("cancel").onclick = () => { if (state.controller) state.controller.abort(); };
$("encode-run").onclick = guard(runEncode);
$("search-run").onclick = guard(runSearch);
$("search-refresh").onclick = guard(refreshCollections);
$("search-add").onclick = guard(addTexts);
$("search-create").onclick = guard(createCollection);
$("classify-run").onclick = guard(runClassify);
$("ner-run").onclick = guard(runNer);
$("summarize-run").onclick = guard(runSummarize);
$("generate-run").onclick = guard(runGenerate);

(async function start() {
  applyLanguage();
  await pollStatus();
  if (state.status && Array.isArray(state.status.request_options) && state.status.request_options.includes("pooling")) {
    for (const p of state.status.poolings || []) $("encode-pooling").append(el("option", { value: p }, p));
  } else {
    $("encode-pooling").parentElement.querySelector("label[for=encode-pooling]").hidden = true;
    $("encode-pooling").hidden = true;
  }
  showPage();
  setInterval(pollStatus, 2000);
})();

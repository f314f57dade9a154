// influcoder explorer: plain JS over the JSON API (/api/info, /api/attribute, /api/filter, /api/export).
"use strict";

const $ = (sel) => document.querySelector(sel);
let info = null;
let filterTimer = null;
let filterSeq = 0;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

async function getJSON(url) {
  const r = await fetch(url);
  let body;
  try { body = await r.json(); } catch (e) { body = { error: r.statusText }; }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function setStatus(msg, isError) {
  const s = $("#status");
  s.textContent = msg || "";
  s.classList.toggle("error", !!isError);
}

function oodBadge(ood, sim) {
  const title = sim === null || sim === undefined ? "no OOD reference" : `nearest training example: cosine ${sim.toFixed(3)}`;
  if (ood === true) return el("span", { class: "badge ood", title }, "OOD");
  if (ood === false) return el("span", { class: "badge ind", title }, "in distribution");
  return el("span", { class: "badge unknown", title }, "OOD unknown");
}

function preview(text, n) {
  const t = (text || "").replace(/\s+/g, " ").trim();
  return t.length > n ? t.slice(0, n) + "…" : t;
}

// ------------------------------------------------------------------ trust
function trustText(t) {
  if (t.per_anchor === null || t.per_anchor === undefined) return `${t.word}: ${t.line}`;
  return `${t.word}: held-out per-anchor Spearman ${t.per_anchor.toFixed(3)} vs ${t.baseline_per_anchor.toFixed(3)} ` +
    `for the ${t.baseline} baseline`;
}

function showTrust(node, t) {
  node.className = node.id === "verdict" ? `verdict ${t.level}` : `trust ${t.level}`;
  node.setAttribute("data-level", t.level);
  node.textContent = node.id === "verdict" ? `Scores: ${trustText(t)}. Next: ${t.next || ""}` : `Scores: ${trustText(t)}`;
  node.title = t.line;
  node.hidden = false;
}

// ------------------------------------------------------------------ attribution
async function search(params) {
  const k = parseInt($("#k").value, 10) || 10;
  const qs = new URLSearchParams({ k: String(k) });
  if (params.query_id !== undefined) qs.set("query_id", params.query_id);
  else qs.set("text", params.text);
  setStatus("searching…");
  $("#results").replaceChildren();
  $("#query-info").replaceChildren();
  let res;
  try {
    res = await getJSON(`/api/attribute?${qs}`);
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  $("#q").value = res.query.text;
  const url = new URL(location.href);
  url.search = new URLSearchParams({ q: res.query.text }).toString();
  history.replaceState(null, "", url);
  renderResults(res);
}

function renderResults(res) {
  const qi = $("#query-info");
  const parts = [
    el("span", {}, res.query.id ? `query ${res.query.id} · ` : "free-text query · "),
    oodBadge(res.query.ood, res.query.nn_similarity),
  ];
  if (res.teacher) parts.push(el("span", { class: "teacher" }, ` · teacher ranks among ${res.teacher.n_labelled} labelled examples`));
  qi.replaceChildren(...parts);
  showTrust($("#results-trust"), res.trust);
  const ol = $("#results");
  ol.replaceChildren();
  for (const r of res.results) {
    const head = el("div", { class: "head" },
      el("span", { class: "rank" }, `#${r.rank}`),
      el("span", { class: "score", title: "encoder score (cosine)" }, r.score.toFixed(4)),
      el("span", { class: "pid" }, r.id),
      oodBadge(r.ood, r.nn_similarity),
      r.teacher_rank !== undefined
        ? el("span", { class: "teacher", title: "rank of this example by the teacher's label for this query" },
             r.teacher_rank === null ? "teacher: not labelled" : `teacher #${r.teacher_rank}`)
        : null,
    );
    const details = el("details", {},
      el("summary", {}, preview(r.prompt === null ? "(text not available)" : `${r.prompt} → ${r.response}`, 160)),
      el("div", { class: "label" }, "prompt"), el("pre", { class: "prompt" }, r.prompt ?? ""),
      el("div", { class: "label" }, "response"), el("pre", { class: "response" }, r.response ?? ""),
    );
    ol.append(el("li", { class: "result", "data-id": r.id, "data-rank": String(r.rank), "data-score": String(r.score) },
      head, details));
  }
  setStatus(`${res.results.length} of ${res.n_pool} pool examples` + (res.notes.length ? ` · ${res.notes.join(" · ")}` : ""));
}

// ------------------------------------------------------------------ filter
function drawHistogram(h, threshold) {
  const svg = $("#hist");
  const W = svg.width.baseVal.value, H = svg.height.baseVal.value, pad = 18;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const maxc = Math.max(1, ...h.counts);
  const span = h.max - h.min || 1;
  const x = (v) => pad + (W - 2 * pad) * (v - h.min) / span;
  h.counts.forEach((c, i) => {
    const r = document.createElementNS(ns, "rect");
    const x0 = x(h.edges[i]), x1 = x(h.edges[i + 1]);
    const bh = (H - 2 * pad) * c / maxc;
    r.setAttribute("x", x0); r.setAttribute("width", Math.max(1, x1 - x0 - 1));
    r.setAttribute("y", H - pad - bh); r.setAttribute("height", bh);
    r.setAttribute("class", "bar" + (h.edges[i] >= threshold ? " go" : ""));
    const t = document.createElementNS(ns, "title");
    t.textContent = `${c} examples with score in [${h.edges[i].toFixed(3)}, ${h.edges[i + 1].toFixed(3)}]`;
    r.append(t);
    svg.append(r);
  });
  const cut = document.createElementNS(ns, "line");
  cut.setAttribute("class", "cut");
  cut.setAttribute("x1", x(threshold)); cut.setAttribute("x2", x(threshold));
  cut.setAttribute("y1", pad / 2); cut.setAttribute("y2", H - pad);
  svg.append(cut);
  for (const [v, anchor] of [[h.min, "start"], [h.max, "end"]]) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x(v)); t.setAttribute("y", H - 4); t.setAttribute("text-anchor", anchor);
    t.textContent = v.toFixed(3);
    svg.append(t);
  }
}

function onThreshold() {
  const slider = $("#threshold");
  const t = slider.value;
  $("#threshold-value").textContent = Number(t).toFixed(4);
  drawHistogram(info.histogram, Number(t));
  $("#export").href = `/api/export?threshold=${encodeURIComponent(t)}`;
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => updateCount(t), 120);
}

async function updateCount(t) {
  const seq = ++filterSeq;
  try {
    const res = await getJSON(`/api/filter?threshold=${encodeURIComponent(t)}&ids=false`);
    if (seq !== filterSeq) return; // a newer request is on its way
    const c = $("#count");
    c.textContent = `${res.n_selected} of ${res.n_pool} examples would go (aggregate ${res.aggregate} score > ${Number(t).toFixed(4)}); ${res.n_kept} kept`;
    c.setAttribute("data-threshold", t);
    c.setAttribute("data-selected", String(res.n_selected));
  } catch (e) {
    $("#count").textContent = e.message;
  }
}

function setupFilter() {
  const h = info.histogram;
  if (!h) return;
  $("#filter").hidden = false;
  $("#filter-help").textContent =
    `Each pool example's encoder score averaged (${info.aggregate}) over the run's ${info.queries.length} queries. ` +
    "Move the slider: examples above the threshold would be removed.";
  const slider = $("#threshold");
  const step = (h.max - h.min) / 1000 || 1e-6;
  slider.min = String(h.min - step);
  slider.max = String(h.max);
  slider.step = String(step);
  slider.value = String(h.p90);
  slider.addEventListener("input", onThreshold);
  onThreshold();
}

// ------------------------------------------------------------------ start
async function init() {
  try {
    info = await getJSON("/api/info");
  } catch (e) {
    setStatus(`cannot reach the server: ${e.message}`, true);
    return;
  }
  $("#source").textContent = `${info.kind} ${info.root} · ${info.n_pool} pool examples · encoder ${info.encoder}`;
  const rl = $("#report-link");
  rl.replaceChildren(info.report ? el("a", { href: info.report, id: "report" }, "fidelity report") :
    el("span", { class: "muted" }, "no fidelity report in this folder"));
  if (info.report_figure) rl.append(" · ", el("a", { href: info.report_figure, id: "report-figure" }, "figure"));
  showTrust($("#verdict"), info.trust);
  showTrust($("#filter-trust"), info.trust);
  $("#k").max = String(info.max_k);
  const ul = $("#queries");
  ul.replaceChildren();
  if (!info.queries.length) ul.append(el("li", { class: "muted" }, "none (serve a run folder, or pass --queries)"));
  for (const q of info.queries) {
    const b = el("button", { type: "button", title: q.text, "data-query-id": q.id }, `${q.id}: ${preview(q.text, 60)}`);
    b.addEventListener("click", () => search({ query_id: q.id }));
    ul.append(el("li", {}, b));
  }
  $("#notes").textContent = info.notes.join(" · ");
  $("#search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    search({ text: $("#q").value });
  });
  setupFilter();
  const params = new URLSearchParams(location.search);
  if (params.has("q")) search({ text: params.get("q") });
  else if (params.has("query_id")) search({ query_id: params.get("query_id") });
  document.body.setAttribute("data-ready", "1");
}

init();

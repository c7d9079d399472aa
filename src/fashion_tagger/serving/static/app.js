// The page: pick or drop photos, POST them to /v1/predict, render each one's path and attributes.
"use strict";

const $ = (sel) => document.querySelector(sel);
const drop = $("#drop");
const input = $("#file");
const results = $("#results");
const errorBox = $("#error");
let maxImages = 16;

const pct = (s) => `${(s * 100).toFixed(s >= 0.995 || s < 0.01 ? 0 : 1)}%`;

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/model");
    if (!r.ok) throw new Error((await r.json()).detail || r.statusText);
    const m = await r.json();
    const levels = m.taxonomy.levels.join(" › ");
    $("#model").innerHTML = "";
    const parts = [
      ["model", m.model_id],
      ["backbone", m.backbone.name],
      ["backend", m.backend],
      ["levels", levels],
    ];
    for (const [k, v] of parts) {
      const span = document.createElement("span");
      span.className = "kv";
      span.innerHTML = `<b></b><i></i>`;
      span.querySelector("b").textContent = k;
      span.querySelector("i").textContent = v;
      $("#model").appendChild(span);
    }
  } catch (e) {
    $("#model").textContent = `model unavailable: ${e.message}`;
  }
}

function newCard(file) {
  const card = $("#card").content.firstElementChild.cloneNode(true);
  card.querySelector("img").src = URL.createObjectURL(file);
  card.querySelector("img").alt = file.name;
  card.querySelector(".file").textContent = file.name;
  card.querySelector(".path").innerHTML = '<li class="skeleton"></li><li class="skeleton"></li>';
  results.prepend(card);
  return card;
}

function render(card, p) {
  const path = card.querySelector(".path");
  path.innerHTML = "";
  for (const step of p.path) {
    const li = document.createElement("li");
    li.className = "step";
    li.dataset.level = step.level;
    li.innerHTML = '<span class="level"></span><span class="label"></span><span class="score"></span><span class="bar"><span></span></span>';
    li.querySelector(".level").textContent = step.level;
    li.querySelector(".label").textContent = step.label;
    li.querySelector(".score").textContent = pct(step.score);
    li.querySelector(".bar span").style.width = `${Math.max(2, step.score * 100)}%`;
    path.appendChild(li);
  }
  card.dataset.path = p.path.map((s) => s.label).join(" > ");
  const chips = card.querySelector(".chips");
  chips.innerHTML = "";
  for (const a of p.attributes) {
    const [group, value] = a.name.includes("=") ? a.name.split(/=(.*)/s) : ["", a.name];
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.title = `${a.name}: ${pct(a.score)}`;
    chip.innerHTML = "<small></small><span></span><em></em>";
    chip.querySelector("small").textContent = group;
    chip.querySelector("span").textContent = value;
    chip.querySelector("em").textContent = pct(a.score);
    chips.appendChild(chip);
  }
  if (!p.attributes.length) chips.innerHTML = '<span class="none">no attribute above its threshold</span>';
  const topk = card.querySelector(".topk ol");
  topk.innerHTML = "";
  for (const t of p.top_k) {
    const li = document.createElement("li");
    li.innerHTML = "<span></span><em></em>";
    li.querySelector("span").textContent = t.path.join(" › ");
    li.querySelector("em").textContent = pct(t.score);
    topk.appendChild(li);
  }
  card.dataset.state = "done";
}

async function classify(files) {
  showError("");
  files = Array.from(files).filter((f) => f.type.startsWith("image/") || !f.type);
  if (!files.length) return showError("Pick image files (JPEG, PNG, WebP…).");
  for (let i = 0; i < files.length; i += maxImages) {
    const chunk = files.slice(i, i + maxImages);
    const cards = chunk.map(newCard);
    const body = new FormData();
    chunk.forEach((f) => body.append("files", f, f.name));
    try {
      const r = await fetch("/v1/predict", { method: "POST", body });
      const data = await r.json();
      if (!r.ok) throw new Error(typeof data.detail === "string" ? data.detail : r.statusText);
      data.predictions.forEach((p, j) => render(cards[j], p));
    } catch (e) {
      cards.forEach((c) => { c.dataset.state = "error"; c.querySelector(".path").innerHTML = ""; });
      showError(e.message);
    }
  }
}

input.addEventListener("change", () => { classify(input.files); input.value = ""; });
for (const ev of ["dragenter", "dragover"]) {
  drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const ev of ["dragleave", "drop"]) {
  drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (e) => classify(e.dataTransfer.files));
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => { e.preventDefault(); if (e.target !== drop) classify(e.dataTransfer.files); });
async function loadLimits() {
  try {
    const r = await fetch("/healthz");
    if (r.ok) maxImages = (await r.json()).max_images || maxImages;
  } catch (e) { /* keep the default */ }
  $("#max-images").textContent = maxImages;
}

loadLimits();
loadModel();

// The page of `transferlab serve`: send dropped or chosen images to /predict and /explain and show
// the answers. Plain browser APIs only (fetch, FormData, object URLs): nothing is loaded from elsewhere.
"use strict";

const $ = (selector) => document.querySelector(selector);
let meta = null;

function percent(p) {
  return (100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1) + "%";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error || response.statusText;
  } catch (_) {
    return response.status + " " + response.statusText;
  }
}

async function loadMetadata() {
  const response = await fetch("/metadata");
  if (!response.ok) {
    $("#run-summary").textContent = "cannot read the run's metadata: " + (await errorText(response));
    return;
  }
  meta = await response.json();
  $("#run-name").textContent = meta.run;
  const score = meta.score && meta.score.accuracy != null
    ? `${meta.score.split} accuracy ${(100 * meta.score.accuracy).toFixed(1)}% on ${meta.score.images} images`
    : "no held-out score recorded";
  $("#run-summary").textContent =
    `${meta.backbone} · ${meta.strategy} · ${meta.classes.length} classes · ${score} · ${meta.engine}`;
  const classes = $("#classes");
  for (const name of meta.classes.slice(0, 60)) {
    const chip = document.createElement("span");
    chip.textContent = name;
    classes.appendChild(chip);
  }
  if (meta.classes.length > 60) {
    const more = document.createElement("span");
    more.textContent = `+${meta.classes.length - 60} more`;
    classes.appendChild(more);
  }
  const select = $("#top-k");
  for (let k = 1; k <= Math.min(10, meta.classes.length); k++) {
    const option = document.createElement("option");
    option.value = option.textContent = k;
    select.appendChild(option);
  }
  select.value = Math.min(5, meta.classes.length);
}

function showBars(card, prediction) {
  // An image of no class the run knows: said first, its closest classes still shown.
  card.querySelector(".top1").textContent = prediction.unknown
    ? `unknown (distance ${prediction.unknown_score.toFixed(3)}); closest: ${prediction.top[0].class}`
    : prediction.top[0].class;
  const bars = card.querySelector(".bars");
  for (const entry of prediction.top) {
    const row = document.createElement("li");
    row.innerHTML = '<span class="label"></span><span class="track"><span class="fill"></span></span>' +
      '<span class="value"></span>';
    row.querySelector(".label").textContent = entry.class;
    row.querySelector(".label").title = entry.class;
    row.querySelector(".fill").style.width = (100 * entry.probability).toFixed(2) + "%";
    row.querySelector(".value").textContent = percent(entry.probability);
    bars.appendChild(row);
  }
}

async function explain(card, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await fetch("/explain", { method: "POST", body: form });
  if (!response.ok) {
    card.querySelector(".error").textContent = "Grad-CAM: " + (await errorText(response));
    card.querySelector(".cam").hidden = true;
    return;
  }
  const layer = decodeURIComponent(response.headers.get("X-Layer") || "");
  const heatmap = card.querySelector(".heatmap");
  heatmap.src = URL.createObjectURL(await response.blob());
  card.querySelector(".cam-caption").textContent =
    `Grad-CAM for ${decodeURIComponent(response.headers.get("X-Class") || "")} (${layer})`;
}

function newCard(file) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".photo").src = URL.createObjectURL(file);
  card.querySelector(".name").textContent = file.name;
  card.querySelector(".cam").hidden = !$("#gradcam").checked;
  $("#results").prepend(card);
  return card;
}

async function classify(files) {
  const images = Array.from(files).filter((f) => f.size > 0);
  if (!images.length) return;
  const limit = meta ? meta.limits.max_files : 16;
  const status = $("#status");
  status.classList.remove("bad");
  status.textContent = `classifying ${images.length} image(s)…`;
  let failed = 0;
  for (let start = 0; start < images.length; start += limit) {
    const chunk = images.slice(start, start + limit);
    const cards = chunk.map(newCard);
    const form = new FormData();
    for (const file of chunk) form.append("file", file, file.name);
    form.append("top_k", $("#top-k").value || "5");
    form.append("tta", $("#tta").checked ? "true" : "false");
    const response = await fetch("/predict", { method: "POST", body: form });
    if (!response.ok) {
      const message = await errorText(response);
      cards.forEach((card) => {
        card.querySelector(".error").textContent = message;
        card.querySelector(".cam").hidden = true;
      });
      failed += chunk.length;
      continue;
    }
    const answer = await response.json();
    answer.predictions.forEach((prediction, k) => showBars(cards[k], prediction));
    if ($("#gradcam").checked) {
      await Promise.all(chunk.map((file, k) => explain(cards[k], file)));
    }
  }
  status.textContent = failed ? `${failed} of ${images.length} image(s) failed` : `done: ${images.length} image(s)`;
  status.classList.toggle("bad", failed > 0);
}

function setUp() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (event) => classify(event.target.files));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classify(event.dataTransfer.files);
  });
  loadMetadata();
}

document.addEventListener("DOMContentLoaded", setUp);

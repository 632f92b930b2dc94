// The search page: text search, "more like this" on click, search by a dropped image.
// Plain DOM calls against the JSON API; nothing to build.
"use strict";

const $ = (id) => document.getElementById(id);
const results = $("results"), status = $("status"), queryImage = $("query-image");

function say(text, isError = false) {
  status.textContent = text;
  status.className = isError ? "error" : "";
}

async function getJSON(response) {
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function tile(hit) {
  const fig = document.createElement("figure");
  fig.className = "tile";
  fig.dataset.id = hit.id;
  const img = document.createElement("img");
  img.src = hit.image;
  img.alt = hit.caption || hit.key;
  img.loading = "lazy";
  img.title = "more like this";
  img.addEventListener("click", () => similar(hit.id));
  const cap = document.createElement("figcaption");
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `#${hit.rank} ${hit.score.toFixed(3)}`;
  const link = document.createElement("a");
  link.href = hit.url || `${hit.image}?size=0`;
  link.target = "_blank";
  link.rel = "noopener";
  link.textContent = hit.key;
  cap.append(score, " ", link);
  if (hit.caption) cap.append(document.createElement("br"), hit.caption);
  fig.append(img, cap);
  return fig;
}

function show(body, label) {
  results.replaceChildren(...body.results.map(tile));
  say(`${body.results.length} results for ${label} in ${body.took_ms} ms`);
}

function showQueryImage(src, text) {
  queryImage.hidden = false;
  const img = document.createElement("img");
  img.src = src;
  queryImage.replaceChildren(img, text);
}

const k = () => $("k").value || 24;

async function search(q) {
  queryImage.hidden = true;
  say("searching…");
  try {
    const r = await fetch(`/api/search?q=${encodeURIComponent(q)}&k=${k()}`);
    show(await getJSON(r), `"${q}"`);
  } catch (err) { say(err.message, true); }
}

async function similar(id) {
  say("finding similar images…");
  try {
    const body = await getJSON(await fetch(`/api/similar?id=${id}&k=${k()}`));
    showQueryImage(body.query_image.image, `more like ${body.query_image.key} (by DINOv2)`);
    show(body, `image ${id}`);
    window.scrollTo(0, 0);
  } catch (err) { say(err.message, true); }
}

async function searchFile(file) {
  say("searching by image…");
  const form = new FormData();
  form.append("image", file);
  try {
    const body = await getJSON(await fetch(`/api/search_image?k=${k()}`,
                                           { method: "POST", body: form }));
    showQueryImage(URL.createObjectURL(file), `more like ${file.name} (by DINOv2)`);
    show(body, file.name);
  } catch (err) { say(err.message, true); }
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  search($("query").value);
});
$("file").addEventListener("change", (e) => e.target.files[0] && searchFile(e.target.files[0]));
const drop = $("drop");
for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) searchFile(e.dataTransfer.files[0]);
});

fetch("/api/info").then(getJSON).then((info) => {
  $("serving").textContent = `run ${info.run} · index ${info.index} · ${info.n_images} images ` +
    `(${info.kind})` + (info.similar ? "" : " · similar-image search off (no DINOv2 vectors)");
  $("k").max = info.max_k;
}).catch((err) => say(err.message, true));

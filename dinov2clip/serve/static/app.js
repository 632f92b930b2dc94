// The search page: text search, "more like this" on click, search by a dropped image.
// Plain DOM calls against the JSON API; nothing to build. The URL holds what is shown
// (/?q=TEXT or /?similar=ID), so a search can be shared and Back runs the one before.
"use strict";

const $ = (id) => document.getElementById(id);
const results = $("results"), status = $("status"), queryImage = $("query-image");
const HINT = "Describe a photo and press Enter, click a result for more like it, " +
  "or drop a photo to find similar ones.";

function say(text, kind = "") {  // kind: "", "error" or "hint"
  status.textContent = text;
  status.className = kind;
}

async function getJSON(response) {
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// Only the latest request's answer is shown: Back pressed twice quickly must not end on
// whichever answer happened to arrive last.
let latest = 0;
const STALE = new Error("stale");

async function fetchLatest(url, init) {
  const mine = ++latest;
  const body = await getJSON(await fetch(url, init));
  if (mine !== latest) throw STALE;
  return body;
}

function failed(err) {
  if (err !== STALE) say(err.message, "error");
}

// A new history entry for what is about to be shown; none when it is already the URL.
function remember(params) {
  const url = params ? `/?${new URLSearchParams(params)}` : "/";
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
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

async function search(q, push = true) {
  if (push && q.trim()) remember({ q: q.trim() });  // an empty query is only an error
  queryImage.hidden = true;
  say("searching…");
  try {
    show(await fetchLatest(`/api/search?q=${encodeURIComponent(q)}&k=${k()}`), `"${q}"`);
  } catch (err) { failed(err); }
}

async function similar(id, push = true) {
  $("query").value = "";  // the text no longer describes what is shown
  if (push) remember({ similar: id });
  say("finding similar images…");
  try {
    const body = await fetchLatest(`/api/similar?id=${encodeURIComponent(id)}&k=${k()}`);
    showQueryImage(body.query_image.image, `more like ${body.query_image.key} (by DINOv2)`);
    show(body, `image ${id}`);
    window.scrollTo(0, 0);
  } catch (err) { failed(err); }
}

async function searchFile(file) {
  $("query").value = "";
  remember(null);  // an upload has no URL: the page's own, not the last search's
  say("searching by image…");
  const form = new FormData();
  form.append("image", file);
  try {
    const body = await fetchLatest(`/api/search_image?k=${k()}`, { method: "POST", body: form });
    showQueryImage(URL.createObjectURL(file), `more like ${file.name} (by DINOv2)`);
    show(body, file.name);
  } catch (err) { failed(err); }
}

// What the URL names: on load (a shared link) and on Back or Forward.
function showURL() {
  const params = new URLSearchParams(location.search);
  const q = params.get("q"), id = params.get("similar");
  if (q) {
    $("query").value = q;
    search(q, false);
  } else if (id) {
    similar(id, false);
  } else {
    latest++;  // an answer still on its way is not shown over the empty page
    $("query").value = "";
    queryImage.hidden = true;
    results.replaceChildren();
    say(HINT, "hint");
  }
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

window.addEventListener("popstate", showURL);
showURL();

fetch("/api/info").then(getJSON).then((info) => {
  $("serving").textContent = `run ${info.run} · index ${info.index} · ${info.n_images} images ` +
    `(${info.kind})` + (info.similar ? "" : " · similar-image search off (no DINOv2 vectors)");
  $("k").max = info.max_k;
}).catch((err) => say(err.message, "error"));

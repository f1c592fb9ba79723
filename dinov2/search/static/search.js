"use strict";
// The archive search page: one image in (chosen or dropped), the k nearest indexed images out.
// The query preview is shown only once the server has read the image, so a file that is not an
// image gives a red error and no broken picture.
let chosen = null;
const drop = document.getElementById("drop");
const fileInput = document.getElementById("file");
const kInput = document.getElementById("k");
const statusLine = document.getElementById("status");
const query = document.getElementById("query");
const grid = document.getElementById("grid");

function setStatus(text, isError) {
  statusLine.className = isError ? "error" : "";
  statusLine.textContent = text;
}

async function readIndex() {
  try {
    const response = await fetch("/api/health");
    const health = await response.json();
    document.getElementById("info").textContent = health.count + " indexed images, " + health.nbits + "-bit codes.";
    kInput.max = String(Math.min(1000, health.count));
    kInput.value = String(Math.min(10, health.count));
  } catch (err) {
    setStatus("Error: the index cannot be reached (" + err.message + ")", true);
  }
}

function choose(file) {
  chosen = file;
  search();
}

async function search() {
  if (!chosen) { setStatus("Choose an image first.", false); return; }
  setStatus("Searching...", false);
  const form = new FormData();
  form.append("file", chosen);
  try {
    const response = await fetch("/api/search/upload?k=" + encodeURIComponent(kInput.value), {method: "POST", body: form});
    let answer = {};
    try { answer = await response.json(); } catch (err) { answer = {error: response.statusText}; }
    if (!response.ok) throw new Error(answer.error || response.statusText);
    show(answer);
  } catch (err) {
    query.replaceChildren();
    grid.replaceChildren();
    setStatus("Error: " + err.message, true);
  }
}

function tile(result) {
  const box = document.createElement("div");
  box.className = "tile";
  box.dataset.id = result.id;
  box.dataset.distance = result.distance;
  const img = document.createElement("img");
  img.src = "/images/" + result.id;
  img.alt = result.path;
  const text = document.createElement("div");
  text.textContent = "#" + result.rank + "  d=" + result.distance + "  " + result.labels.join(", ");
  const path = document.createElement("div");
  path.textContent = result.path;
  box.append(img, text, path);
  return box;
}

function show(answer) {
  const preview = document.createElement("img");
  preview.src = URL.createObjectURL(chosen);
  preview.alt = chosen.name;
  query.replaceChildren("Query: ", preview);
  setStatus(answer.k + " nearest of the archive (" + answer.nbits + " bits)", false);
  grid.replaceChildren(...answer.results.map(tile));
}

fileInput.addEventListener("change", () => { if (fileInput.files.length) choose(fileInput.files[0]); });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
});
document.getElementById("form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
readIndex();

// The upload page: for each photo, ask the API for a presigned POST into the pipeline's
// input prefix, upload straight to S3, then poll the API for the record the event path
// writes. No build step, no libraries. A photo never goes to POST /classify: its body is
// limited to 4 MiB, and Lambda refuses a request over 6 MB before the function sees it.
"use strict";

const POLL_MS = 700;
const WAIT_MS = 120000;

const list = document.getElementById("results");
const drop = document.getElementById("drop");
const input = document.getElementById("files");

input.addEventListener("change", () => { handle(input.files); input.value = ""; });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  handle(e.dataTransfer.files);
});

function handle(files) {
  for (const file of files) process(file, card(file));
}

function card(file) {
  const li = document.createElement("li");
  li.className = "item pending";
  li.dataset.name = file.name;
  const img = document.createElement("img");
  img.alt = "";
  img.addEventListener("error", () => {  // not a picture after all
    const none = document.createElement("div");
    none.className = "thumb";
    none.textContent = "no preview";
    img.replaceWith(none);
  });
  if (file.type.startsWith("image/")) img.src = URL.createObjectURL(file);
  const body = document.createElement("div");
  body.innerHTML = '<div class="name"></div><div class="state"></div><ol class="labels"></ol>';
  body.querySelector(".name").textContent = file.name;
  li.append(img, body);
  list.append(li);
  return li;
}

function say(li, text) { li.querySelector(".state").textContent = text; }

function fail(li, text) {
  li.className = "item rejected";
  say(li, text);
}

async function process(file, li) {
  try {
    say(li, "asking for an upload address…");
    const grant = await api("uploads", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ filename: file.name, content_type: file.type }),
    });
    if (file.size > grant.max_bytes) {
      return fail(li, `${file.name} is ${file.size.toLocaleString()} bytes; the limit is ` +
                      `${grant.max_bytes.toLocaleString()}`);
    }
    say(li, "uploading…");
    const form = new FormData();
    for (const [name, value] of Object.entries(grant.fields)) form.append(name, value);
    form.append("file", file);
    const upload = await fetch(grant.url, { method: "POST", body: form });
    if (!upload.ok) {
      return fail(li, `the bucket refused the upload (HTTP ${upload.status})`);
    }
    say(li, "uploaded; waiting for its record…");
    show(li, await record(grant.image));
  } catch (e) {
    fail(li, e.message);
  }
}

async function api(path, options) {
  const response = await fetch(path, options);
  const doc = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(doc.error || `the API answered HTTP ${response.status}`);
  return doc;
}

async function record(image) {
  const deadline = Date.now() + WAIT_MS;
  while (Date.now() < deadline) {
    // 200 with status "pending" until the record is written (no 404s in the console)
    const doc = await api(`results?image=${encodeURIComponent(image)}`);
    if (doc.status !== "pending") return doc;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  throw new Error(`no record after ${WAIT_MS / 1000} s: is the pipeline running?`);
}

function show(li, rec) {
  li.dataset.image = rec.image;
  if (rec.status === "rejected") return fail(li, `rejected: ${rec.error}`);
  if (rec.status !== "classified") return fail(li, `${rec.status}: the object was deleted`);
  li.className = "item classified";
  say(li, `${rec.width}×${rec.height} ${rec.format} · ${rec.model}`);
  const labels = li.querySelector(".labels");
  for (const top of rec.top_k.slice(0, 3)) {
    const row = document.createElement("li");
    const pct = (top.score * 100).toFixed(1);
    row.innerHTML = '<span class="bar"></span><span class="label"></span><span class="score"></span>';
    row.querySelector(".bar").style.width = `${pct}%`;
    row.querySelector(".label").textContent = top.label;
    row.querySelector(".score").textContent = `${pct} %`;
    labels.append(row);
  }
}

/* imgpipe report: draws header, charts, filters and the grid from window.IMGPIPE_REPORT
   (data.js). No network, no libraries. Text goes in through textContent only. */
(function () {
  "use strict";
  var data = window.IMGPIPE_REPORT;
  var SLICE = 120;  // cards added at a time, as the end of the grid comes into view
  var STATUS = 1, THUMB = 2, TOP = 3, ERROR = 4, OTHER = 5;  // OTHER: the compared model's top 3

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function pct(score) { return (score * 100).toFixed(1) + "%"; }
  function byId(id) { return document.getElementById(id); }

  if (!data) {
    byId("grid").appendChild(el("p", "", "data.js is missing or unreadable: write the report again with imgpipe report."));
    return;
  }
  var labels = data.labels;
  var items = data.items;

  // ---- header
  byId("source").textContent = data.source + "  ·  model " + data.model;
  var facts = [["images", items.length]];
  Object.keys(data.counts).sort().forEach(function (s) { facts.push([s, data.counts[s]]); });
  facts.push(["model", data.model]);
  if (data.model_b) {
    facts.push(["compared with", data.model_b]);
    facts.push(["top-1 agreement", data.both ? data.agree + " of " + data.both + " (" + pct(data.agree / data.both) + ")" : "no image classified by both"]);
  }
  if (data.first) facts.push(["processed", data.first.replace("T", " ").slice(0, 19) + " → " + data.last.replace("T", " ").slice(0, 19) + " UTC"]);
  var t = data.timings || {};
  if (t.decode_ms !== undefined) facts.push(["median fetch / decode / inference", t.fetch_ms + " / " + t.decode_ms + " / " + t.inference_ms + " ms"]);
  if (t.event_to_record_ms !== undefined) facts.push(["median upload → record", (t.event_to_record_ms / 1000).toFixed(2) + " s"]);
  facts.push(["report written", data.generated_at.replace("T", " ").replace("Z", " UTC")]);
  facts.forEach(function (f) {
    var box = el("div");
    box.appendChild(el("dt", "", f[0]));
    box.appendChild(el("dd", "fact-" + f[0].replace(/[^a-z]+/g, "-"), f[1]));
    byId("facts").appendChild(box);
  });

  // ---- charts
  var perLabel = {};
  var bins = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
  items.forEach(function (it) {
    if (it[STATUS] !== "classified" || !it[TOP].length) return;
    var first = it[TOP][0];
    perLabel[first[0]] = (perLabel[first[0]] || 0) + 1;
    bins[Math.min(9, Math.floor(first[1] * 10))] += 1;
  });
  var ranked = Object.keys(perLabel).map(Number).sort(function (a, b) {
    return perLabel[b] - perLabel[a] || labels[a].localeCompare(labels[b]);
  });
  var most = ranked.length ? perLabel[ranked[0]] : 1;
  ranked.slice(0, 15).forEach(function (li) {
    var row = el("div", "row");
    row.setAttribute("role", "listitem");
    row.dataset.label = String(li);
    row.appendChild(el("span", "name", labels[li]));
    var track = el("div", "track"), fill = el("div", "fill");
    fill.style.width = (100 * perLabel[li] / most) + "%";
    track.appendChild(fill);
    row.appendChild(track);
    row.appendChild(el("span", "num", perLabel[li]));
    row.addEventListener("click", function () { byId("label-filter").value = String(li); apply(); });
    byId("label-chart").appendChild(row);
  });
  if (!ranked.length) byId("label-chart").appendChild(el("p", "muted", "no classified images"));
  var tallest = Math.max.apply(null, bins) || 1;
  bins.forEach(function (n, i) {
    var col = el("div", "col");
    col.setAttribute("role", "listitem");
    col.title = (i / 10).toFixed(1) + "–" + ((i + 1) / 10).toFixed(1) + ": " + n + " image(s)";
    col.appendChild(el("span", "num", n || ""));
    var fill = el("div", "fill");
    fill.style.height = (100 * n / tallest) + "%";
    col.appendChild(fill);
    col.appendChild(el("span", "tick", (i / 10).toFixed(1)));
    byId("score-chart").appendChild(col);
  });

  // ---- filters
  Object.keys(data.counts).sort().forEach(function (s) {
    byId("status-filter").appendChild(el("option", "", s + " (" + data.counts[s] + ")")).value = s;
  });
  function differs(it) {
    var b = it[OTHER];
    return it[STATUS] === "classified" && b && b.length && it[TOP].length && b[0][0] !== it[TOP][0][0];
  }
  if (data.model_b) {
    byId("status-filter").appendChild(el("option", "", "top-1 differs from " + data.model_b + " (" + items.filter(differs).length + ")")).value = "differs";
  }
  ranked.forEach(function (li) {
    byId("label-filter").appendChild(el("option", "", labels[li] + " (" + perLabel[li] + ")")).value = String(li);
  });

  // ---- grid, drawn in slices
  var shown = [], drawn = 0;
  var grid = byId("grid"), more = byId("more");

  function card(it) {
    var c = el("article", "card " + it[STATUS]);
    var pic = el("div", "pic");
    if (it[THUMB]) {
      var img = el("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = it[0];
      img.src = it[THUMB];
      pic.appendChild(img);
    } else {
      pic.appendChild(el("span", "none", it[STATUS] === "classified" ? "no thumbnail" : "not a picture"));
    }
    c.appendChild(pic);
    var body = el("div", "body");
    body.appendChild(el("div", "key", it[0]));
    if (it[STATUS] === "classified") {
      var scores = el("div", "scores");
      it[TOP].forEach(function (ls, i) {
        var row = el("div", "row");
        row.appendChild(el("span", "label" + (i === 0 ? " first" : ""), labels[ls[0]]));
        row.appendChild(el("span", "val", pct(ls[1])));
        var track = el("div", "track"), fill = el("div", "fill");
        fill.style.width = Math.max(0.5, ls[1] * 100) + "%";
        track.appendChild(fill);
        row.appendChild(track);
        scores.appendChild(row);
      });
      body.appendChild(scores);
      if (data.model_b) {
        var b = it[OTHER];
        var line = el("div", "other" + (b && b.length && it[TOP].length && b[0][0] !== it[TOP][0][0] ? " differs" : ""));
        line.appendChild(el("span", "who", data.model_b + ": "));
        line.appendChild(el("span", "", b && b.length ? b.map(function (ls) { return labels[ls[0]] + " " + pct(ls[1]); }).join(" · ") : "no result"));
        body.appendChild(line);
      }
    } else {
      body.appendChild(el("div", "status", it[STATUS]));
      body.appendChild(el("div", "error", it[ERROR] || (it[STATUS] === "gone" ? "deleted before it was read" : "")));
    }
    c.appendChild(body);
    return c;
  }

  function drawMore() {
    var end = Math.min(shown.length, drawn + SLICE);
    var frag = document.createDocumentFragment();
    for (; drawn < end; drawn++) frag.appendChild(card(shown[drawn]));
    grid.appendChild(frag);
    more.textContent = drawn < shown.length ? "showing " + drawn + " of " + shown.length + " — scroll for more" : "";
    // The observer speaks only when the end comes into view; a short slice leaves it there.
    if (drawn < shown.length && more.getBoundingClientRect().top < window.innerHeight + 600) {
      window.requestAnimationFrame(drawMore);
    }
  }

  function apply() {
    var status = byId("status-filter").value;
    var label = byId("label-filter").value;
    var name = byId("name-filter").value.toLowerCase();
    shown = items.filter(function (it) {
      if (status === "differs") { if (!differs(it)) return false; }
      else if (status && it[STATUS] !== status) return false;
      if (label !== "" && !(it[TOP].length && String(it[TOP][0][0]) === label)) return false;
      if (name && it[0].toLowerCase().indexOf(name) < 0) return false;
      return true;
    });
    grid.textContent = "";
    drawn = 0;
    byId("shown").textContent = shown.length + " of " + items.length + " image(s)";
    drawMore();
  }

  ["status-filter", "label-filter"].forEach(function (id) { byId(id).addEventListener("change", apply); });
  byId("name-filter").addEventListener("input", apply);
  if ("IntersectionObserver" in window) {
    new IntersectionObserver(function (entries) {
      if (entries.some(function (e) { return e.isIntersecting; }) && drawn < shown.length) drawMore();
    }, { rootMargin: "600px" }).observe(more);
  }
  more.addEventListener("click", drawMore);
  apply();
  document.body.dataset.ready = "1";
})();

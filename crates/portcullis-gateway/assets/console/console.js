// Portcullis operations console: live decisions over SSE and the
// client-side filter. Plain JavaScript, no build step, no inline code.
(function () {
  "use strict";
  var MAX_ROWS = 500;

  function rowText(tr) {
    return (tr.textContent || "").toLowerCase();
  }

  function applyFilter(input, tbody) {
    var q = input.value.trim().toLowerCase();
    var rows = tbody.querySelectorAll('tr[data-testid="decision-row"]');
    for (var i = 0; i < rows.length; i++) {
      var hide = q !== "" && rowText(rows[i]).indexOf(q) < 0;
      rows[i].classList.toggle("hidden-row", hide);
    }
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    tr.appendChild(td);
  }

  function decisionRow(d) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-testid", "decision-row");
    tr.setAttribute("data-identity", d.identity || "");
    tr.setAttribute("data-method", d.method || "");
    tr.setAttribute("data-tool", d.tool || "");
    tr.setAttribute("data-decision", d.decision || "");
    var t = typeof d.time === "number" ? new Date(d.time).toISOString() : String(d.time || "");
    cell(tr, t);
    cell(tr, d.identity || "");
    cell(tr, d.method || "");
    cell(tr, d.tool || "");
    cell(tr, d.decision || "", "d-" + (d.decision || ""));
    cell(tr, d.policy || "");
    cell(tr, String(d.latency_us == null ? "" : d.latency_us), "num");
    return tr;
  }

  function live() {
    var tbody = document.getElementById("decision-rows");
    var input = document.getElementById("decision-filter");
    var state = document.getElementById("live-state");
    if (!tbody || !input) { return; }
    input.addEventListener("input", function () { applyFilter(input, tbody); });
    if (typeof EventSource === "undefined") { return; }
    var es = new EventSource("/console/events");
    es.addEventListener("open", function () {
      if (state) { state.textContent = " (live)"; state.setAttribute("data-state", "open"); }
    });
    es.addEventListener("error", function () {
      if (state) { state.textContent = " (reconnecting)"; state.setAttribute("data-state", "error"); }
    });
    es.addEventListener("decision", function (ev) {
      var d;
      try { d = JSON.parse(ev.data); } catch (e) { return; }
      var tr = decisionRow(d);
      var q = input.value.trim().toLowerCase();
      if (q !== "" && rowText(tr).indexOf(q) < 0) { tr.classList.add("hidden-row"); }
      tbody.insertBefore(tr, tbody.firstChild);
      var none = document.getElementById("no-decisions");
      if (none) { none.parentNode.removeChild(none); }
      while (tbody.children.length > MAX_ROWS) { tbody.removeChild(tbody.lastChild); }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", live);
  } else {
    live();
  }
})();

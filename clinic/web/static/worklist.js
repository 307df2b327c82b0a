// Radiology worklist: refreshes the table from /api/radiology/worklist without reloading the page.
// Builds rows with textContent only (no HTML from data), mirrors radiology/worklist.html.
(function () {
  "use strict";
  const table = document.getElementById("worklist");
  if (!table) return;
  const body = table.tBodies[0];
  const seconds = Number(table.dataset.refreshSeconds || "5");

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function minutes(value) {
    const m = Math.floor(value);
    if (m < 60) return m + " min";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  function utc(iso) {
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + " UTC";
  }

  function pct(p) { return Math.round(p * 100) + "%"; }

  function findingsCell(findings) {
    const td = el("td", "findings");
    if (!findings.length) { td.appendChild(el("span", "muted", "—")); return td; }
    const reads = new Map();
    for (const f of findings) {
      if (!reads.has(f.read_id)) reads.set(f.read_id, []);
      reads.get(f.read_id).push(f);
    }
    for (const group of reads.values()) {
      const first = group[0];
      const read = el("div", "read");
      const model = el("div", "read-model");
      model.appendChild(el("span", "model", first.model_name));
      model.appendChild(document.createTextNode(" "));
      model.appendChild(el("span", "version", "v" + first.model_version));
      read.appendChild(model);
      for (const f of group) {
        const line = el("div", "finding " + (f.positive ? "pos" : "neg"));
        line.appendChild(el("span", "flabel", f.label));
        line.appendChild(el("span", "score", pct(f.probability)));
        line.appendChild(el("span", "thr", "thr " + pct(f.threshold)));
        read.appendChild(line);
      }
      if (first.disclaimer) read.appendChild(el("div", "disclaimer", first.disclaimer));
      td.appendChild(read);
    }
    return td;
  }

  function rowFor(r) {
    const tr = el("tr", "wl-row prio-row-" + r.priority.toLowerCase());
    tr.dataset.href = r.url;
    tr.dataset.studyId = String(r.study_id);
    let td = el("td");
    td.appendChild(el("span", "badge prio prio-" + r.priority.toLowerCase(), r.priority));
    td.appendChild(el("div", "reason", r.priority_reason));
    tr.appendChild(td);
    td = el("td", "num", minutes(r.waiting_minutes));
    td.appendChild(el("div", "sub", utc(r.arrived_at)));
    tr.appendChild(td);
    td = el("td");
    const link = el("a", "patient", personName(r.patient_name) || "(no name)");
    link.href = r.url;
    td.appendChild(link);
    td.appendChild(el("div", "sub", "ID " + r.patient_identifier));
    tr.appendChild(td);
    tr.appendChild(el("td", "mono", r.accession_number || "—"));
    td = el("td", null, (r.modality + " " + r.body_part).trim());
    td.appendChild(el("div", "sub", r.description));
    tr.appendChild(td);
    td = el("td");
    td.appendChild(el("span", "status status-" + r.status.replace(/ /g, "-").toLowerCase(), r.status));
    tr.appendChild(td);
    tr.appendChild(findingsCell(r.findings));
    return tr;
  }

  function renderCounts(rows) {
    const box = document.getElementById("counts");
    if (!box) return;
    box.replaceChildren();
    for (const name of ["STAT", "URGENT", "ROUTINE"]) {
      const n = rows.filter((r) => r.priority === name).length;
      box.appendChild(el("span", "badge prio prio-" + name.toLowerCase(), name + " " + n));
    }
  }

  function countsFromTable() {
    const rows = [];
    for (const tr of body.rows) {
      const badge = tr.querySelector(".prio");
      if (badge) rows.push({ priority: badge.textContent.trim() });
    }
    renderCounts(rows);
  }

  async function refresh() {
    try {
      const response = await fetch("/api/radiology/worklist", { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) { window.location.href = "/login?next=/radiology"; return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      const rows = data.rows.map(rowFor);
      if (!rows.length) {
        const tr = el("tr", "empty");
        const td = el("td", null, "No studies.");
        td.colSpan = 7;
        tr.appendChild(td);
        rows.push(tr);
      }
      body.replaceChildren(...rows);
      renderCounts(data.rows);
      const stamp = new Date(data.generated_at).toISOString().substring(11, 19);
      document.getElementById("updated").textContent = "updated " + stamp + " UTC";
    } catch (err) {
      document.getElementById("updated").textContent = "refresh failed (" + err.message + "), retrying";
    }
  }

  body.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    const tr = event.target.closest("tr[data-href]");
    if (tr) window.location.href = tr.dataset.href;
  });

  countsFromTable();
  window.setInterval(refresh, seconds * 1000);
})();

// A DICOM/HL7 person name FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX for people (as display_name in
// clinic/patients/service.py): "KIM^JISOO" -> "KIM, JISOO".
function personName(pn) {
  return (pn || "").split("=").map(function (group) {
    const p = group.split("^").map(function (x) { return x.trim(); }).concat(["", "", "", "", ""]);
    const rest = [p[3], p[1], p[2]].filter(Boolean).join(" ");
    let name = [p[0], rest].filter(Boolean).join(", ");
    if (p[4]) name = name ? name + " " + p[4] : p[4];
    return name;
  }).filter(Boolean).join(" = ");
}

// Study viewer: the rendered DICOM image with window/level, and an AI heatmap overlay.
// The server renders (PS3.3 C.11 pipeline); this script only chooses the window and the overlay.
(function () {
  "use strict";
  const configNode = document.getElementById("viewer-config");
  if (!configNode) return;
  const cfg = JSON.parse(configNode.textContent);
  const image = document.getElementById("dicom-image");
  const overlay = document.getElementById("heatmap-overlay");
  const toggle = document.getElementById("overlay-toggle");
  const opacity = document.getElementById("overlay-opacity");
  const wcInput = document.getElementById("wc");
  const wwInput = document.getElementById("ww");
  const presetsBox = document.getElementById("presets");
  const loading = document.getElementById("loading");
  const wlReadout = document.getElementById("wl-readout");
  const overlayReadout = document.getElementById("overlay-readout");

  // ---- window/level -------------------------------------------------------------------------
  const presets = [];
  if (cfg.defaultWindow) presets.push({ name: "DICOM", window: cfg.defaultWindow });
  if (cfg.autoWindow) presets.push({ name: "Auto", window: cfg.autoWindow });
  if ((cfg.modality || "").split(", ").includes("CT")) {
    presets.push({ name: "Lung", window: { center: -600, width: 1500 } });
    presets.push({ name: "Mediastinum", window: { center: 40, width: 400 } });
    presets.push({ name: "Abdomen", window: { center: 40, width: 350 } });
    presets.push({ name: "Bone", window: { center: 400, width: 1800 } });
    presets.push({ name: "Brain", window: { center: 40, width: 80 } });
  } else if (cfg.autoWindow) {
    const a = cfg.autoWindow;
    presets.push({ name: "High contrast", window: { center: a.center, width: Math.max(1, a.width * 0.6) } });
    presets.push({ name: "Low contrast", window: { center: a.center, width: a.width * 1.6 } });
  }

  let current = null; // null: the file's own VOI (server decides)
  let currentName = presets.length ? presets[0].name : "DICOM";
  const dragScale = ((cfg.autoWindow || cfg.defaultWindow || { width: 1000 }).width) / 400;

  function maxSize() {
    const vp = document.getElementById("viewport");
    const px = Math.max(vp.clientWidth, vp.clientHeight) * (window.devicePixelRatio || 1);
    return Math.max(256, Math.min(2048, Math.ceil(px / 256) * 256));
  }
  const size = maxSize();

  function imageUrl(win) {
    const params = new URLSearchParams({ max_size: String(size) });
    if (win) {
      params.set("window_center", String(Math.round(win.center * 100) / 100));
      params.set("window_width", String(Math.max(1, Math.round(win.width * 100) / 100)));
    }
    return "/api/imaging/instances/" + cfg.instanceId + "/rendered?" + params.toString();
  }

  function showWindow(win, name) {
    const shown = win || cfg.defaultWindow;
    if (shown) {
      wcInput.value = String(Math.round(shown.center));
      wwInput.value = String(Math.round(shown.width));
      wlReadout.textContent = "W " + Math.round(shown.width) + "  L " + Math.round(shown.center) + (name ? "  (" + name + ")" : "");
    } else {
      wlReadout.textContent = "VOI from file";
    }
    for (const button of presetsBox.querySelectorAll("button")) {
      button.classList.toggle("active", button.dataset.name === name);
    }
  }

  // One request per window change (responses are no-store, so the image comes in as a blob);
  // while one is in flight only the latest requested window is kept.
  let inFlight = false;
  let queued = null;
  let objectUrl = null;
  async function load(win, name) {
    current = win;
    currentName = name || "";
    showWindow(win, currentName);
    if (inFlight) { queued = { win: win }; return; }
    inFlight = true;
    loading.textContent = "loading…";
    loading.hidden = false;
    try {
      const response = await fetch(imageUrl(win), { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) { window.location.href = "/login?next=" + encodeURIComponent(location.pathname); return; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const url = URL.createObjectURL(await response.blob());
      image.src = url;
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = url;
      loading.hidden = true;
    } catch (err) {
      loading.textContent = "image failed to load (" + err.message + ")";
    } finally {
      inFlight = false;
      if (queued !== null) { const q = queued; queued = null; load(q.win, currentName); }
    }
  }

  for (const preset of presets) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "btn";
    button.textContent = preset.name;
    button.dataset.name = preset.name;
    button.addEventListener("click", () => load(preset.name === "DICOM" ? null : preset.window, preset.name));
    presetsBox.appendChild(button);
  }

  document.getElementById("wl-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const center = Number(wcInput.value);
    const width = Number(wwInput.value);
    if (!Number.isFinite(center) || !Number.isFinite(width) || width < 1) return;
    load({ center: center, width: width }, "manual");
  });

  // drag on the image: horizontal changes the width, vertical the level (centre)
  const stage = document.getElementById("stage");
  let drag = null;
  if (stage) {
    stage.addEventListener("pointerdown", (event) => {
      const base = current || cfg.defaultWindow || cfg.autoWindow;
      if (!base) return;
      drag = { x: event.clientX, y: event.clientY, base: { center: base.center, width: base.width } };
      stage.setPointerCapture(event.pointerId);
    });
    stage.addEventListener("pointermove", (event) => {
      if (!drag) return;
      const width = Math.max(1, drag.base.width + (event.clientX - drag.x) * dragScale);
      const center = drag.base.center + (event.clientY - drag.y) * dragScale;
      load({ center: center, width: width }, "manual");
    });
    const end = () => { drag = null; };
    stage.addEventListener("pointerup", end);
    stage.addEventListener("pointercancel", end);
  }

  // ---- heatmap overlay ----------------------------------------------------------------------
  const choices = Array.from(document.querySelectorAll(".heatmap-choice"));

  function applyOverlayVisibility() {
    const on = toggle.checked && choices.some((c) => c.checked);
    overlay.hidden = !on;
    const chosen = choices.find((c) => c.checked);
    overlayReadout.textContent = chosen
      ? "Heatmap: " + chosen.dataset.label + " " + Math.round(Number(chosen.dataset.probability) * 100) + "%" + (on ? "" : " (hidden)")
      : "";
  }

  function choose(choice) {
    choice.checked = true;
    overlay.src = choice.dataset.url;
    applyOverlayVisibility();
  }

  for (const choice of choices) choice.addEventListener("change", () => choose(choice));
  toggle.addEventListener("change", applyOverlayVisibility);
  opacity.addEventListener("input", () => { overlay.style.opacity = String(Number(opacity.value) / 100); });
  overlay.style.opacity = String(Number(opacity.value) / 100);

  if (choices.length) {
    // The most probable positive finding first; else the most probable finding.
    const ranked = choices.slice().sort((a, b) => {
      const pa = a.dataset.positive === "true" ? 1 : 0;
      const pb = b.dataset.positive === "true" ? 1 : 0;
      return pb - pa || Number(b.dataset.probability) - Number(a.dataset.probability);
    });
    choose(ranked[0]);
  } else {
    toggle.checked = false;
    toggle.disabled = true;
    opacity.disabled = true;
  }

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.type !== "checkbox" && event.target.type !== "radio") return;
    if (event.key === "h" || event.key === "H") {
      if (toggle.disabled) return;
      toggle.checked = !toggle.checked;
      applyOverlayVisibility();
    } else if (event.key === "r" || event.key === "R") {
      load(null, "DICOM");
    }
  });

  if (cfg.instanceId) load(null, presets.length && presets[0].name === "DICOM" ? "DICOM" : "");
})();

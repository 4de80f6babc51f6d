// Landmark editor: numbered points over an image, drag or select-then-click to move one, zoom on
// C2–C4, undo, and a rectangle mode. Plain JS, no build step, no network: Streamlit components v2
// calls the default export on every script run with the latest `data`.
//
// SVG user space == the image file's pixel frame (pixel i's centre at coordinate i; the image is
// drawn from -0.5 to W-0.5), so the coordinates sent back need no conversion.
const STATE = new WeakMap();
const NS = "http://www.w3.org/2000/svg";
const VERT_COLOURS = { C2: "#4fc3f7", C3: "#81c784", C4: "#ffb74d" };

function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function html(tag, attrs, parent, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function build(parent) {
  const root = html("div", { class: "le-root" }, parent);
  const bar = html("div", { class: "le-bar" }, root);
  const zoom = html("button", { type: "button", "data-action": "zoom", title: "Zoom on C2–C4 / whole image" }, bar, "Zoom C2–C4");
  const undo = html("button", { type: "button", "data-action": "undo", title: "Undo the last change of this image" }, bar, "↶ Undo");
  const nums = html("div", { class: "le-nums" }, bar);
  const msg = html("div", { class: "le-msg" }, root);
  const svg = el("svg", { class: "le-svg", "data-testid": "landmark-editor-svg" }, root);
  const img = el("image", { x: -0.5, y: -0.5, preserveAspectRatio: "none" }, svg);
  const lines = el("g", { fill: "none", "stroke-width": 1.5, "vector-effect": "non-scaling-stroke" }, svg);
  const rect = el("rect", { fill: "rgba(79,195,247,0.15)", stroke: "#4fc3f7", "stroke-width": 2,
                            "vector-effect": "non-scaling-stroke", visibility: "hidden", "data-testid": "roi-rect" }, svg);
  const pts = el("g", {}, svg);
  return { root, bar, zoom, undo, nums, msg, svg, img, lines, rect, pts, circles: [], numButtons: [],
           zoomed: false, selected: null, drag: null, points: [], data: null, rev: null, rectBox: null };
}

function toFrame(s, evt) {
  const p = s.svg.createSVGPoint();
  p.x = evt.clientX; p.y = evt.clientY;
  const m = s.svg.getScreenCTM();
  return m ? p.matrixTransform(m.inverse()) : { x: 0, y: 0 };
}

function viewBox(s) {
  const d = s.data;
  if (s.zoomed && d.zoom_box) {
    const [x0, y0, x1, y1] = d.zoom_box;
    return [x0, y0, x1 - x0, y1 - y0];
  }
  return [-0.5, -0.5, d.width, d.height];
}

function layout(s) {
  const d = s.data;
  const vb = viewBox(s);
  s.svg.setAttribute("viewBox", vb.join(" "));
  const cssW = s.svg.clientWidth || 600;
  const cssH = d.height_px || 640;
  s.svg.style.height = cssH + "px";
  const scale = Math.min(cssW / vb[2], cssH / vb[3]);  // screen px per frame px ("meet")
  s.svg.setAttribute("data-scale", String(scale));
  s.unit = 1 / scale;
  s.zoom.textContent = s.zoomed ? "Whole image" : "Zoom C2–C4";
  s.zoom.classList.toggle("le-on", s.zoomed);
  s.zoom.disabled = !d.zoom_box;
  drawPoints(s);
}

function drawOutlines(s) {
  const d = s.data;
  while (s.lines.firstChild) s.lines.removeChild(s.lines.firstChild);
  for (const [vert, idx] of Object.entries(d.outlines || {})) {
    const coords = idx.map((i) => s.points[i]).filter((p) => p && p[0] !== null && p[1] !== null);
    if (coords.length < 2) continue;
    el("polyline", { points: coords.map((p) => p.join(",")).join(" "), stroke: VERT_COLOURS[vert] || "#fff",
                     "stroke-width": 1.5, "vector-effect": "non-scaling-stroke", opacity: 0.9 }, s.lines);
  }
}

function drawPoints(s) {
  const u = s.unit || 1;
  s.circles.forEach((g, i) => {
    const p = s.points[i];
    const ok = p && p[0] !== null && p[1] !== null;
    g.setAttribute("visibility", ok ? "visible" : "hidden");
    if (!ok) return;
    const c = g.firstChild, t = g.lastChild;
    c.setAttribute("cx", p[0]); c.setAttribute("cy", p[1]); c.setAttribute("r", 5.5 * u);
    c.setAttribute("stroke-width", (s.selected === i ? 2.5 : 1.2) * u);
    t.setAttribute("x", p[0] + 7 * u); t.setAttribute("y", p[1] - 5 * u);
    t.setAttribute("font-size", 11 * u); t.setAttribute("stroke-width", 2.5 * u);
    g.classList.toggle("le-sel", s.selected === i);
  });
  s.numButtons.forEach((b, i) => b.classList.toggle("le-on", s.selected === i));
  drawOutlines(s);
  if (s.rectBox) {
    const [x0, y0, x1, y1] = s.rectBox;
    s.rect.setAttribute("x", Math.min(x0, x1)); s.rect.setAttribute("y", Math.min(y0, y1));
    s.rect.setAttribute("width", Math.abs(x1 - x0)); s.rect.setAttribute("height", Math.abs(y1 - y0));
    s.rect.setAttribute("visibility", "visible");
  } else {
    s.rect.setAttribute("visibility", "hidden");
  }
  s.svg.classList.toggle("le-placing", s.selected !== null || s.data.mode === "rect");
}

function say(s) {
  const d = s.data;
  if (d.mode === "rect") {
    s.msg.textContent = s.rectBox ? "Drag the box to move it, or drag outside it to draw a new one."
                                  : "Drag on the image to draw the box.";
  } else if (s.selected !== null) {
    s.msg.textContent = `Selected ${s.selected + 1} ${d.names[s.selected]} — click on the image to place it, or drag any point.`;
  } else {
    s.msg.textContent = "Drag a point to move it, or pick a number and click where it belongs.";
  }
}

function ensurePoints(s) {
  const n = (s.data.names || []).length;
  if (s.circles.length === n) return;
  while (s.pts.firstChild) s.pts.removeChild(s.pts.firstChild);
  while (s.nums.firstChild) s.nums.removeChild(s.nums.firstChild);
  s.circles = []; s.numButtons = [];
  for (let i = 0; i < n; i++) {
    const g = el("g", { class: "le-pt", "data-index": i, "data-testid": `landmark-${i + 1}` }, s.pts);
    el("circle", { fill: s.data.colours ? s.data.colours[i] : "#4fc3f7", stroke: "#000", "fill-opacity": 0.85 }, g);
    const title = el("title", {}, g);
    title.textContent = `${i + 1} ${s.data.names[i]}: ${(s.data.meanings || [])[i] || ""}`;
    const t = el("text", { fill: "#fff" }, g);  // last child: drawPoints() finds it as g.lastChild
    t.textContent = String(i + 1);
    s.circles.push(g);
    const b = html("button", { type: "button", "data-num": i + 1, title: `${i + 1} ${s.data.names[i]}` }, s.nums, String(i + 1));
    b.addEventListener("click", () => { s.selected = s.selected === i ? null : i; drawPoints(s); say(s); });
    s.numButtons.push(b);
  }
}

function wire(s, api) {
  s.api = api;
  s.zoom.addEventListener("click", () => { s.zoomed = !s.zoomed; layout(s); });
  s.undo.addEventListener("click", () => s.api.setTriggerValue("undo", Date.now()));
  s.svg.addEventListener("pointerdown", (evt) => {
    if (evt.button !== 0) return;
    const d = s.data;
    const f = toFrame(s, evt);
    if (d.mode === "rect") {
      const b = s.rectBox;
      const inside = b && f.x >= Math.min(b[0], b[2]) && f.x <= Math.max(b[0], b[2]) &&
                     f.y >= Math.min(b[1], b[3]) && f.y <= Math.max(b[1], b[3]);
      if (inside && !evt.shiftKey) {  // drag the box itself: move it, keep its size
        s.drag = { kind: "move", sx: f.x, sy: f.y, box: b.slice(), moved: false };
      } else {                        // outside (or with Shift): draw a new box
        s.drag = { kind: "rect", x0: f.x, y0: f.y };
        s.rectBox = [f.x, f.y, f.x, f.y];
      }
    } else {
      const g = evt.target.closest ? evt.target.closest(".le-pt") : null;
      if (g) {
        const i = Number(g.getAttribute("data-index"));
        s.drag = { kind: "point", index: i, sx: evt.clientX, sy: evt.clientY, moved: false };
      } else if (s.selected !== null) {
        const i = s.selected;
        s.points[i] = [f.x, f.y];
        s.selected = null;
        drawPoints(s); say(s);
        send(s, i);
        return;
      } else {
        return;
      }
    }
    s.svg.setPointerCapture(evt.pointerId);
    evt.preventDefault();
  });
  s.svg.addEventListener("pointermove", (evt) => {
    if (!s.drag) return;
    const f = toFrame(s, evt);
    if (s.drag.kind === "rect") {
      s.rectBox = [s.drag.x0, s.drag.y0, f.x, f.y];
    } else if (s.drag.kind === "move") {
      s.rectBox = moved(s, s.drag.box, f.x - s.drag.sx, f.y - s.drag.sy);
      s.drag.moved = true;
    } else {
      if (Math.hypot(evt.clientX - s.drag.sx, evt.clientY - s.drag.sy) < 2 && !s.drag.moved) return;
      s.drag.moved = true;
      s.points[s.drag.index] = [f.x, f.y];
    }
    drawPoints(s);
  });
  const end = (evt) => {
    if (!s.drag) return;
    const drag = s.drag;
    s.drag = null;
    try { s.svg.releasePointerCapture(evt.pointerId); } catch (e) { /* already released */ }
    if (drag.kind === "move") {
      if (drag.moved) {
        const box = s.rectBox.map((v) => Math.round(v));
        s.rectBox = box;
        drawPoints(s);
        s.api.setTriggerValue("rect", { x0: box[0], y0: box[1], x1: box[2], y1: box[3], moved: true, nonce: Date.now() });
      }
    } else if (drag.kind === "rect") {
      const d = s.data;
      const [ax, ay, bx, by] = s.rectBox;
      const clip = (v, hi) => Math.max(0, Math.min(hi, v));
      const box = [clip(Math.min(ax, bx), d.width), clip(Math.min(ay, by), d.height),
                   clip(Math.max(ax, bx), d.width), clip(Math.max(ay, by), d.height)].map((v) => Math.round(v));
      s.rectBox = box;
      drawPoints(s);
      if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) {
        s.api.setTriggerValue("rect", { x0: box[0], y0: box[1], x1: box[2], y1: box[3], nonce: Date.now() });
      }
    } else if (drag.moved) {
      send(s, drag.index);
    } else {
      s.selected = s.selected === drag.index ? null : drag.index;
      drawPoints(s); say(s);
    }
  };
  s.svg.addEventListener("pointerup", end);
  s.svg.addEventListener("pointercancel", end);
  if (window.ResizeObserver) {
    s.resize = new ResizeObserver(() => { if (s.data) layout(s); });
    s.resize.observe(s.svg);
  }
}

// The box moved by (dx, dy), its size kept; its centre stays on the image (the box may run past an
// edge, as a found ROI near the image border does).
function moved(s, box, dx, dy) {
  const [x0, y0, x1, y1] = box;
  const cx = Math.max(0, Math.min(s.data.width, (x0 + x1) / 2 + dx));
  const cy = Math.max(0, Math.min(s.data.height, (y0 + y1) / 2 + dy));
  const hw = Math.abs(x1 - x0) / 2, hh = Math.abs(y1 - y0) / 2;
  return [cx - hw, cy - hh, cx + hw, cy + hh];
}

function send(s, i) {
  const p = s.points[i];
  const r = (v) => Math.round(v * 100) / 100;
  s.api.setTriggerValue("edit", { index: i, x: r(p[0]), y: r(p[1]), nonce: `${Date.now()}-${Math.random()}` });
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let s = STATE.get(parentElement);
  if (s && !parentElement.contains(s.root)) s = null;  // the host was cleared: build again
  if (!s) {
    s = build(parentElement);
    STATE.set(parentElement, s);
    wire(s, { setTriggerValue });
    if (data && data.zoom_default) s.zoomed = true;
  }
  s.api.setTriggerValue = setTriggerValue;
  const first = s.data === null;
  s.data = data || {};
  if (s.img.getAttribute("href") !== s.data.image) s.img.setAttribute("href", s.data.image || "");
  s.img.setAttribute("width", s.data.width); s.img.setAttribute("height", s.data.height);
  if (!s.drag && (first || s.rev !== s.data.revision)) {
    s.points = (s.data.points || []).map((p) => (p ? [p[0], p[1]] : null));
    s.rev = s.data.revision;
    if (s.data.mode === "rect") s.rectBox = s.data.rect || null;
  }
  ensurePoints(s);
  s.undo.style.display = s.data.mode === "rect" ? "none" : "";
  s.zoom.style.display = s.data.mode === "rect" ? "none" : "";
  s.nums.style.display = s.data.mode === "rect" ? "none" : "";
  s.undo.disabled = !s.data.can_undo;
  layout(s);
  say(s);
}

// The service page: calls the /v1 API with the key typed above (kept in localStorage) and shows results.
// Text from the server is set with textContent only, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const keyInput = $("key");
keyInput.value = localStorage.getItem("imgsim-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("imgsim-key", keyInput.value.trim()));

function headers() {
  const k = keyInput.value.trim();
  return k ? { "X-API-Key": k } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res.status === 204 ? null : res.json();
}

function status(text) { $("status").textContent = text; }

async function thumb(img, id) {
  // <img src> cannot send the key: fetch the thumbnail and show it from a blob URL.
  try {
    const res = await fetch(`/v1/images/${id}/thumbnail?size=256`, { headers: headers() });
    if (res.ok) img.src = URL.createObjectURL(await res.blob());
  } catch (e) { /* leave the box empty */ }
}

function card(item, why, cls) {
  const d = document.createElement("div");
  d.className = "card " + (cls || "");
  d.dataset.id = item.id;
  const img = document.createElement("img");
  img.alt = item.path;
  thumb(img, item.id);
  const name = document.createElement("div");
  name.textContent = `#${item.id} ${item.path.split("/").pop()}`;
  const w = document.createElement("div");
  w.className = "why";
  w.textContent = why;
  d.append(img, name, w);
  return d;
}

function block(title, items, make) {
  const h = document.createElement("h3");
  h.textContent = `${title} (${items.length})`;
  const c = document.createElement("div");
  c.className = "cards";
  items.forEach((it) => c.append(make(it)));
  return [h, c];
}

let chosen = null;
function choose(file) {
  chosen = file;
  $("check").disabled = $("add").disabled = !file;
  status(file ? `chosen: ${file.name}` : "");
}
$("file").addEventListener("change", (e) => choose(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
});

function form(extra) {
  const f = new FormData();
  f.append("file", chosen, chosen.name);
  for (const [k, v] of Object.entries(extra || {})) f.append(k, v);
  return f;
}

async function run(store) {
  const out = $("result");
  out.replaceChildren();
  status(store ? "adding..." : "checking...");
  try {
    const r = await api(store ? "/v1/images" : "/v1/check", { method: "POST", body: form() });
    const s = await api("/v1/search/upload", { method: "POST", body: form({ k: "8" }) });
    const head = document.createElement("p");
    head.id = "summary";
    head.textContent = store
      ? `${r.created ? "Added" : "Already stored"} as #${r.image.id}: ${r.duplicates.length} duplicate(s), ${r.similar.length} look-alike(s).`
      : `${r.duplicates.length} duplicate(s), ${r.similar.length} look-alike(s) already stored.`;
    out.append(head,
      ...block("Duplicates", r.duplicates, (n) => card(n, n.description, "dup")),
      ...block("Look-alikes", r.similar, (n) => card(n, n.description)),
      ...block("Similar images", s.hits, (h) => card(h, `score ${h.score.toFixed(3)}`)));
    status("");
  } catch (e) {
    status(e.message);
  }
}
$("check").addEventListener("click", () => run(false));
$("add").addEventListener("click", () => run(true));

const textform = $("textform");
if (textform) {
  textform.addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = $("textresult");
    out.replaceChildren();
    try {
      const r = await api("/v1/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                          body: JSON.stringify({ text: $("text").value, k: 12 }) });
      r.hits.forEach((h) => out.append(card(h, `score ${h.score.toFixed(3)}`)));
    } catch (err) { status(err.message); }
  });
}

let offset = 0;
const PAGE = 10;
async function groups() {
  const list = $("grouplist");
  list.replaceChildren();
  try {
    const r = await api(`/v1/duplicates?offset=${offset}&limit=${PAGE}`);
    $("groupinfo").textContent = r.total
      ? `groups ${offset + 1}-${Math.min(offset + PAGE, r.total)} of ${r.total}` : "no groups";
    r.groups.forEach((g) => {
      const d = document.createElement("div");
      d.className = "group";
      const h = document.createElement("div");
      h.textContent = `${g.tier === "duplicate" ? "Duplicates" : "Look-alikes"}: ${g.members.length} pictures`;
      const c = document.createElement("div");
      c.className = "cards";
      g.members.forEach((m) => c.append(card(m, m.description, m.tier === "duplicate" ? "dup" : "")));
      d.append(h, c);
      list.append(d);
    });
    $("prev").disabled = offset === 0;
    $("next").disabled = offset + PAGE >= r.total;
  } catch (e) { status(e.message); }
}
$("groups").addEventListener("click", () => { offset = 0; groups(); });
$("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); groups(); });
$("next").addEventListener("click", () => { offset += PAGE; groups(); });

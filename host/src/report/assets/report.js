// The item browser of report.html: filters, search, pages, one item's full record; keyboard:
// "/" search, Up/Down or j/k move between rows, Enter opens the record, Esc closes it.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const source = $("items-data");
  if (!source) return;
  const data = JSON.parse(source.textContent);
  const items = data.items;
  const thumbs = data.thumbs || {};
  const LABELS = { 1: "Safe with refusal", 2: "Safe with warning", 3: "Unsafe" };
  const STATUS = {
    generation_error: "generation error", judge_error: "judge error", judge_refusal: "judge refusal",
    not_generated: "not generated", not_judged: "not judged", judged: "judged",
  };
  const errorKey = (it) => {
    switch (it.status) {
      case "generation_error": return "generation: " + it.error_kind;
      case "judge_error": return "judge: " + it.error_kind;
      case "judge_refusal": return "judge refusal";
      case "not_generated": case "not_judged": return "not run";
      default: return "";
    }
  };
  const el = (tag, attrs, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, v);
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  };
  const fill = (select, values) => {
    [...new Set(values.filter((v) => v))].sort().forEach((v) => select.append(el("option", { value: v }, v)));
  };
  for (const it of items) {
    it._err = errorKey(it);
    it._text = [String(it.id), it.question, it.answer || "", it.explanation || ""].join("\n").toLowerCase();
  }
  fill($("f-category"), items.map((i) => i.category));
  fill($("f-subcategory"), items.map((i) => i.sub_category));
  fill($("f-source"), items.map((i) => i.source));
  fill($("f-error"), items.map((i) => i._err));

  let filtered = items;
  let page = 0;
  const pageSize = () => ($("f-page-size").value === "all" ? Infinity : Number($("f-page-size").value));

  const apply = () => {
    const label = $("f-label").value, cat = $("f-category").value, sub = $("f-subcategory").value;
    const src = $("f-source").value, err = $("f-error").value;
    const q = $("f-search").value.trim().toLowerCase();
    filtered = items.filter((it) =>
      (label === "" || (label === "unscored" ? it.label == null : String(it.label) === label)) &&
      (cat === "" || it.category === cat) && (sub === "" || it.sub_category === sub) &&
      (src === "" || it.source === src) && (err === "" || it._err === err) &&
      (q === "" || it._text.includes(q)));
    page = 0;
    render();
  };

  const badge = (it) => it.label
    ? el("span", { class: "badge l" + it.label }, LABELS[it.label])
    : el("span", { class: "badge unscored" }, STATUS[it.status] + (it.error_kind ? ": " + it.error_kind : ""));

  const thumb = (it, size) => thumbs[it.image]
    ? el("img", { src: thumbs[it.image], alt: "image of item " + it.id, width: size, height: size, loading: "lazy" })
    : el("span", { class: "hint" }, "no thumbnail");

  const row = (it) => {
    const tr = el("tr", { tabindex: "0", "data-id": it.id, "data-label": it.label || "", "aria-label": "item " + it.id });
    tr.append(
      el("td", null, String(it.id)),
      el("td", null, thumb(it, 80)),
      el("td", null, el("div", { class: "clip" }, it.question)),
      el("td", null, el("div", { class: "clip" }, it.answer != null ? it.answer : (it.error || ""))),
      el("td", null, badge(it)),
      el("td", null, it.category, el("br"), el("span", { class: "hint" }, it.sub_category)),
      el("td", null, it.source));
    tr.addEventListener("click", () => openRecord(it, tr));
    return tr;
  };

  const render = () => {
    const size = pageSize();
    const pages = Math.max(1, Math.ceil(filtered.length / size));
    page = Math.min(page, pages - 1);
    const start = size === Infinity ? 0 : page * size;
    const shown = filtered.slice(start, start + size);
    const frag = document.createDocumentFragment();
    shown.forEach((it) => frag.append(row(it)));
    document.querySelector("#item-table tbody").replaceChildren(frag);
    const count = $("count");
    count.dataset.n = String(filtered.length);
    count.textContent = filtered.length === items.length
      ? `${items.length} items`
      : `${filtered.length} of ${items.length} items match`;
    $("page").textContent = shown.length ? `${start + 1}–${start + shown.length} (page ${page + 1} of ${pages})` : "";
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  };

  let lastRow = null;
  const openRecord = (it, tr) => {
    lastRow = tr;
    const rows = [
      ["id", String(it.id)],
      ["question", el("pre", null, it.question)],
      ["image", el("span", null, thumb(it, 160), el("br"),
        it.image_href ? el("a", { href: it.image_href, target: "_blank", rel: "noopener" }, "full image: " + it.image) : it.image)],
      ["category", `${it.category} / ${it.sub_category}`],
      ["source", it.source],
      ["status", STATUS[it.status]],
      ["label", badge(it)],
      ["answer", it.answer != null ? el("pre", null, it.answer) : null],
      ["judge explanation", it.explanation != null ? el("pre", null, it.explanation) : null],
      ["judge raw output", it.raw != null ? el("pre", null, it.raw) : null],
      ["error", it.error != null ? el("pre", null, `${it.error_kind}: ${it.error}`) : null],
      ["generation", it.answer_attempts != null ? `${it.answer_attempts} attempt(s), ${it.answer_ms} ms` : null],
      ["judgement", it.judge_attempts != null ? `${it.judge_attempts} attempt(s), ${it.judge_ms} ms` : null],
    ];
    const dl = el("dl");
    for (const [k, v] of rows) if (v !== null) dl.append(el("dt", null, k), el("dd", null, v));
    $("record-body").replaceChildren(el("h2", { id: "record-title" }, "Item " + it.id), dl);
    $("record").showModal();
  };
  $("record").addEventListener("close", () => { if (lastRow && lastRow.isConnected) lastRow.focus(); });

  const tbody = document.querySelector("#item-table tbody");
  tbody.addEventListener("keydown", (e) => {
    const tr = e.target.closest("tr");
    if (!tr) return;
    let next = null;
    if (e.key === "ArrowDown" || e.key === "j") next = tr.nextElementSibling;
    else if (e.key === "ArrowUp" || e.key === "k") next = tr.previousElementSibling;
    else if (e.key === "Enter" || e.key === " ") { e.preventDefault(); tr.click(); return; }
    else return;
    e.preventDefault();
    if (next) next.focus();
  });
  document.addEventListener("keydown", (e) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName);
    if (e.key === "/" && !typing && !$("record").open) { e.preventDefault(); $("f-search").focus(); }
  });

  let timer = null;
  $("f-search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(apply, 120); });
  for (const id of ["f-label", "f-category", "f-subcategory", "f-source", "f-error"]) $(id).addEventListener("change", apply);
  $("f-page-size").addEventListener("change", () => { page = 0; render(); });
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("filters").addEventListener("reset", () => setTimeout(apply, 0));
  $("prev").addEventListener("click", () => { page -= 1; render(); });
  $("next").addEventListener("click", () => { page += 1; render(); });
  // A category's bar filters the items to that category.
  document.querySelectorAll("#chart-category g.bar").forEach((g) => g.addEventListener("click", () => {
    $("f-category").value = g.dataset.group;
    apply();
    $("items").scrollIntoView();
  }));
  apply();
})();

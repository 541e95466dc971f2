// Review page: the key image with one SVG box per finding, the grounded report beside it,
// edits (each one a new report version on the server), Locate / Identify, sign.
"use strict";

(() => {
  const { t, api, el, toast, fmtTime } = Medrega;
  const SVG = "http://www.w3.org/2000/svg";
  const ABNORMAL_COLOURS = ["#ff4d4f", "#ffa928", "#ff5fd2", "#c28bff", "#ff8a3d", "#ffe14d"];
  const NORMAL_COLOURS = ["#36c5f0", "#2ee6c5", "#7bd66f", "#5aa9ff", "#9ad0ff", "#61e2a3", "#b3e86b", "#7fd1e8"];
  const ACTIVE_STATES = new Set(["receiving", "stable", "drafting"]);
  const PENDING_DELIVERY = new Set(["pending", "in_flight", "retrying"]);

  let detail = JSON.parse(document.getElementById("study-data").textContent);
  const studyId = detail.study.id;
  const state = {
    images: [],          // [{sop, frame, rows, columns, series}] of the current series, in order
    index: 0,            // position in images
    preset: "default",
    view: null,          // SVG viewBox [x, y, w, h]
    hidden: new Set(),   // finding ordinals hidden by their toggle
    showBoxes: true,
    showNormal: true,
    amending: false,   // a signed report opened for correction
    hover: new Set(),    // ordinals highlighted by hovering a sentence or a box
    selected: null,      // ordinal selected by a click
    adjusting: null,     // {ordinal, box} while dragging corners
    identify: false,
    toolBoxes: [],       // Locate / Identify answers drawn dashed
    busy: false,
  };

  const stage = document.getElementById("stage");
  const imageEl = document.getElementById("frame-image");
  const boxesLayer = document.getElementById("boxes");
  const toolLayer = document.getElementById("tool-layer");
  imageEl.addEventListener("load", () => {
    const viewer = document.getElementById("viewer");
    viewer.classList.remove("loading");
    viewer.dataset.loaded = imageEl.getAttribute("href");
  });
  imageEl.addEventListener("error", () => {
    document.getElementById("viewer").classList.remove("loading");
    toast(t("error"), "error");
  });

  // ---------------------------------------------------------------- helpers
  const report = () => detail.report;
  const findings = () => (report() ? report().findings : []);
  const finding = (ordinal) => findings().find((f) => f.ordinal === ordinal);
  const current = () => state.images[state.index];

  function colour(f) {
    const abnormal = findings().filter((x) => x.finding_code);
    const normal = findings().filter((x) => !x.finding_code);
    if (f.finding_code) return ABNORMAL_COLOURS[abnormal.indexOf(f) % ABNORMAL_COLOURS.length];
    return NORMAL_COLOURS[normal.indexOf(f) % NORMAL_COLOURS.length];
  }

  // The vocabulary's wording ("Right pleural effusion", "Left lung: normal"), as in the SR.
  function findingName(f) {
    return Medrega.lang === "zh" ? f.label_zh : f.label_en;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function toImage(event) {
    const point = stage.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    const p = point.matrixTransform(document.getElementById("viewport").getScreenCTM().inverse());
    const img = current();
    return { x: Math.min(Math.max(p.x, 0), img.columns), y: Math.min(Math.max(p.y, 0), img.rows) };
  }

  function message(text, kind) {
    const box = document.getElementById("tool-msg");
    box.textContent = text || "";
    box.className = "tool-msg" + (text ? "" : " hidden") + (kind ? " " + kind : "");
  }

  // ---------------------------------------------------------------- images
  function buildImages() {
    const list = [];
    detail.series.forEach((series, s) => {
      series.images.forEach((image) => {
        for (let frame = 1; frame <= image.frames; frame++) {
          list.push({ sop: image.sop_instance_uid, frame, rows: image.rows, columns: image.columns, series: s,
                      modality: series.modality });
        }
      });
    });
    return list;
  }

  function keyImageIndex(all) {
    const grounded = findings().filter((f) => f.sop_instance_uid && f.box);
    const key = grounded.find((f) => f.finding_code && f.review !== "rejected") || grounded[0];
    if (key) {
      const i = all.findIndex((im) => im.sop === key.sop_instance_uid && im.frame === (key.frame || 1));
      if (i >= 0) return i;
    }
    return Math.floor(all.length / 2);
  }

  let allImages = [];
  function seriesImages(seriesIndex) {
    return allImages.filter((im) => im.series === seriesIndex);
  }

  function showImage(globalImage, keepView) {
    const list = seriesImages(globalImage.series);
    state.images = list;
    state.index = list.findIndex((im) => im.sop === globalImage.sop && im.frame === globalImage.frame);
    const img = current();
    const url = `/api/v1/images/${encodeURIComponent(img.sop)}/frames/${img.frame}?preset=${state.preset}`;
    const viewer = document.getElementById("viewer");
    if (imageEl.getAttribute("href") !== url) {
      viewer.classList.add("loading");
      delete viewer.dataset.loaded;
    }
    imageEl.setAttribute("href", url);
    imageEl.setAttribute("width", img.columns);
    imageEl.setAttribute("height", img.rows);
    if (!keepView || !state.view) fit();
    const slider = document.getElementById("slice");
    slider.max = String(list.length);
    slider.value = String(state.index + 1);
    document.getElementById("slicebar").classList.toggle("hidden", list.length <= 1);
    document.getElementById("slice-label").textContent = `${state.index + 1} / ${list.length}`;
    preload(list, state.index);
    drawBoxes();
    drawTools();
    info();
  }

  function preload(list, index) {
    for (const d of [1, -1, 2, -2]) {
      const im = list[index + d];
      if (im) new Image().src = `/api/v1/images/${encodeURIComponent(im.sop)}/frames/${im.frame}?preset=${state.preset}`;
    }
  }

  function goSlice(delta) {
    const next = Math.min(Math.max(state.index + delta, 0), state.images.length - 1);
    if (next !== state.index) showImage(state.images[next], true);
  }

  function info() {
    const img = current();
    const onThis = findings().filter((f) => f.sop_instance_uid === img.sop && (f.frame || 1) === img.frame);
    const zoom = state.view ? Math.round((img.columns / state.view[2]) * 100) : 100;
    document.getElementById("viewer-info").textContent =
      `${img.modality || ""}  ${img.columns}×${img.rows}  ${zoom}%` + (onThis.length ? `  · ${t("key_image")}` : "");
  }

  // ---------------------------------------------------------------- zoom / pan
  function setView(view) {
    state.view = view;
    stage.setAttribute("viewBox", view.join(" "));
    info();
  }

  function fit() {
    const img = current();
    setView([0, 0, img.columns, img.rows]);
  }

  function zoom(factor, centre) {
    const [x, y, w, h] = state.view;
    const c = centre || { x: x + w / 2, y: y + h / 2 };
    const nw = Math.min(Math.max(w / factor, current().columns / 20), current().columns * 4);
    const nh = (h * nw) / w;
    setView([c.x - ((c.x - x) * nw) / w, c.y - ((c.y - y) * nh) / h, nw, nh]);
  }

  // ---------------------------------------------------------------- boxes
  function drawBoxes() {
    boxesLayer.replaceChildren();
    const img = current();
    if (!img) return;
    let adjustingGroup = null;
    for (const f of findings()) {
      if (!f.box || f.sop_instance_uid !== img.sop || (f.frame || 1) !== img.frame) continue;
      const adjusting = state.adjusting && state.adjusting.ordinal === f.ordinal;
      const box = adjusting ? state.adjusting.box : f.box;
      const visible = state.showBoxes && !state.hidden.has(f.ordinal) && (f.finding_code || state.showNormal);
      if (!visible && !adjusting) continue;
      const classes = ["fbox", f.finding_code ? "abnormal" : "normal", "rv-" + f.review];
      if (state.hover.has(f.ordinal) || state.selected === f.ordinal || adjusting) classes.push("hl");
      if (state.hover.size && !state.hover.has(f.ordinal)) classes.push("dim");
      const g = svg("g", { class: classes.join(" "), "data-ordinal": f.ordinal });
      g.style.setProperty("--c", colour(f));
      const stroke = Math.max(img.columns, img.rows) / 400;
      g.append(svg("rect", { x: box.x1, y: box.y1, width: box.x2 - box.x1, height: box.y2 - box.y1,
                             "stroke-width": stroke }));
      // Normal regions are context: their names show only when pointed at (CSS, on .hl), so
      // the abnormal findings stay readable on a busy image.
      const label = svg("text", { x: box.x1 + stroke * 2, y: box.y1 - stroke * 3,
                                  "font-size": Math.max(img.columns, img.rows) / 55 });
      label.textContent = `${f.ordinal + 1} ${findingName(f)}`;
      g.append(label);
      if (adjusting) {
        for (const [cx, cy, corner] of [[box.x1, box.y1, "nw"], [box.x2, box.y1, "ne"], [box.x2, box.y2, "se"], [box.x1, box.y2, "sw"]]) {
          g.append(svg("circle", { cx, cy, r: stroke * 5, class: "handle", "data-corner": corner }));
        }
      }
      g.addEventListener("mouseenter", () => hover([f.ordinal]));
      g.addEventListener("mouseleave", () => hover([]));
      g.addEventListener("click", (e) => { e.stopPropagation(); select(f.ordinal, false); });
      boxesLayer.append(g);
      if (adjusting) adjustingGroup = g;
    }
    // The box being adjusted goes on top, so no neighbouring box hides its corner handles.
    if (adjustingGroup) boxesLayer.append(adjustingGroup);
  }

  function drawTools() {
    toolLayer.replaceChildren();
    const img = current();
    for (const tb of state.toolBoxes) {
      if (tb.sop !== img.sop || tb.frame !== img.frame) continue;
      const stroke = Math.max(img.columns, img.rows) / 350;
      const g = svg("g", { class: "toolbox" + (tb.pending ? " pending" : "") });
      g.append(svg("rect", { x: tb.box.x1, y: tb.box.y1, width: tb.box.x2 - tb.box.x1,
                             height: tb.box.y2 - tb.box.y1, "stroke-width": stroke }));
      if (tb.label) {
        // Inside the box's top-left corner: finding labels sit above their boxes, and a label
        // under this box would land on the next box's label.
        const size = Math.max(img.columns, img.rows) / 45;
        const text = svg("text", { x: tb.box.x1 + stroke * 2, y: tb.box.y1 + size * 1.1,
                                   "font-size": size });
        text.textContent = tb.label;
        g.append(text);
      }
      toolLayer.append(g);
    }
  }

  // Hover restyles the boxes in place: rebuilding them would replace the element under the
  // pointer, and the browser then drops the next press (a corner handle could not be grabbed).
  function restyleBoxes() {
    boxesLayer.querySelectorAll("g.fbox").forEach((g) => {
      const ordinal = Number(g.dataset.ordinal);
      const adjusting = state.adjusting && state.adjusting.ordinal === ordinal;
      g.classList.toggle("hl", state.hover.has(ordinal) || state.selected === ordinal || adjusting);
      g.classList.toggle("dim", state.hover.size > 0 && !state.hover.has(ordinal));
    });
  }

  function hover(ordinals) {
    state.hover = new Set(ordinals);
    restyleBoxes();
    document.querySelectorAll(".sentence").forEach((s) => {
      const mine = JSON.parse(s.dataset.ordinals || "[]");
      s.classList.toggle("hl", mine.some((o) => state.hover.has(o)));
    });
    document.querySelectorAll("#findings li").forEach((li) => {
      li.classList.toggle("hl", state.hover.has(Number(li.dataset.ordinal)));
    });
  }

  function select(ordinal, jump) {
    state.selected = state.selected === ordinal && !jump ? null : ordinal;
    const f = finding(ordinal);
    if (jump && f && f.sop_instance_uid) {
      const target = allImages.find((im) => im.sop === f.sop_instance_uid && im.frame === (f.frame || 1));
      if (target && target !== current()) showImage(target, false);
    }
    drawBoxes();
    document.querySelectorAll("#findings li").forEach((li) => {
      li.classList.toggle("selected", Number(li.dataset.ordinal) === state.selected);
    });
  }

  // ---------------------------------------------------------------- report
  // A signed report is read-only until the radiologist chooses to amend it (a correction).
  function editable() {
    const r = report();
    return Boolean(detail.permissions.edit && r && (!r.final || state.amending));
  }

  function renderReport() {
    const r = report();
    document.getElementById("report-body").classList.toggle("hidden", !r);
    document.getElementById("no-report").classList.toggle("hidden", !!r);
    const lang = Medrega.lang;
    const other = lang === "zh" ? "en" : "zh";
    const canEdit = editable();
    document.querySelectorAll(".add-sentence").forEach((b) => b.classList.toggle("hidden", !canEdit));
    for (const section of ["findings", "impression"]) {
      const box = document.getElementById("sec-" + section);
      box.replaceChildren();
      if (!r) continue;
      for (const s of r.sentences.filter((x) => x.section === section)) {
        const dots = s.finding_ordinals.map((o) => {
          const f = finding(o);
          const dot = el("span", { class: "dot", title: f ? findingName(f) : "" });
          if (f) dot.style.background = colour(f);
          return dot;
        });
        const text = s[lang] || s[other] || "";
        const node = el("div", {
          class: "sentence" + (s.excluded ? " excluded" : "") + (s.finding_ordinals.length ? " grounded" : ""),
          dataset: { index: String(s.index), ordinals: JSON.stringify(s.finding_ordinals) },
          tabindex: "0",
        },
          el("span", { class: "dots" }, ...dots),
          el("span", { class: "stext", text }),
          s.stale === lang ? el("span", { class: "stale", text: t("other_lang_stale") }) : null,
          canEdit ? el("span", { class: "sactions" },
            el("button", { type: "button", class: "icon", title: t("edit"), text: "✎",
                           onclick: (e) => { e.stopPropagation(); editSentence(node, s); } }),
            el("button", { type: "button", class: "icon", title: t("delete"), text: "×",
                           onclick: (e) => { e.stopPropagation(); saveEdits([{ op: "delete_sentence", index: s.index }]); } }),
          ) : null,
        );
        node.addEventListener("mouseenter", () => hover(s.finding_ordinals));
        node.addEventListener("mouseleave", () => hover([]));
        node.addEventListener("click", () => { if (s.finding_ordinals.length) select(s.finding_ordinals[0], true); });
        box.append(node);
      }
    }
    renderFindings();
  }

  function editSentence(node, s) {
    const lang = Medrega.lang;
    const area = el("textarea", { class: "sedit", maxlength: "2000", rows: "3" });
    area.value = s[lang] || "";
    const save = el("button", { type: "button", class: "btn btn-primary small", text: t("save"),
      onclick: (e) => { e.stopPropagation(); saveEdits([{ op: "edit_sentence", index: s.index, [lang]: area.value }]); } });
    const cancel = el("button", { type: "button", class: "btn btn-ghost small", text: t("cancel"),
      onclick: (e) => { e.stopPropagation(); renderReport(); } });
    node.replaceChildren(area, el("div", { class: "sedit-actions" }, save, cancel));
    node.classList.add("editing");
    area.addEventListener("click", (e) => e.stopPropagation());
    area.focus();
  }

  function addSentence(section) {
    const box = document.getElementById("sec-" + section);
    const lang = Medrega.lang;
    const area = el("textarea", { class: "sedit", maxlength: "2000", rows: "2" });
    const node = el("div", { class: "sentence editing" }, area,
      el("div", { class: "sedit-actions" },
        el("button", { type: "button", class: "btn btn-primary small", text: t("save"),
          onclick: () => saveEdits([{ op: "add_sentence", section, [lang]: area.value }]) }),
        el("button", { type: "button", class: "btn btn-ghost small", text: t("cancel"), onclick: renderReport })));
    box.append(node);
    area.focus();
  }

  function relabelOptions(f) {
    const domain = report().domain;
    const options = [el("option", { value: "", text: t("normal") })];
    for (const info of vocab.findings) {
      if (!info.regions.includes(f.region_code)) continue;
      if (domain && !info.domains.includes(domain)) continue;
      const option = el("option", { value: info.code, text: Medrega.lang === "zh" ? info.zh : info.en });
      if (info.code === f.finding_code) option.selected = true;
      options.push(option);
    }
    return options;
  }

  function renderFindings() {
    const list = document.getElementById("findings");
    list.replaceChildren();
    const canEdit = editable();
    for (const f of findings()) {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour(f);
      const toggle = el("input", { type: "checkbox", title: t("boxes"), class: "ftoggle" });
      toggle.checked = !state.hidden.has(f.ordinal);
      toggle.addEventListener("change", () => {
        if (toggle.checked) state.hidden.delete(f.ordinal); else state.hidden.add(f.ordinal);
        drawBoxes();
      });
      const meta = [];
      if (f.probability !== null && f.probability !== undefined) meta.push(`${Math.round(f.probability * 100)}%`);
      if (f.size_mm) meta.push(`${Math.round(f.size_mm)} mm`);
      const slice = allImages.filter((im) => im.series === (allImages.find((x) => x.sop === f.sop_instance_uid) || {}).series);
      if (slice.length > 1) {
        const pos = slice.findIndex((im) => im.sop === f.sop_instance_uid && im.frame === (f.frame || 1));
        if (pos >= 0) meta.push(`${t("slice")} ${pos + 1}`);
      }
      const actions = [];
      if (canEdit) {
        if (f.review === "rejected") {
          actions.push(el("button", { type: "button", class: "btn small", text: t("undo"),
            onclick: () => saveEdits([{ op: "review", ordinal: f.ordinal, review: "proposed" }]) }));
        } else {
          if (f.review === "proposed") {
            actions.push(el("button", { type: "button", class: "btn small ok", text: t("accept"),
              onclick: () => saveEdits([{ op: "review", ordinal: f.ordinal, review: "accepted" }]) }));
          }
          actions.push(el("button", { type: "button", class: "btn small danger", text: t("reject"),
            onclick: () => saveEdits([{ op: "review", ordinal: f.ordinal, review: "rejected" }]) }));
          if (f.box) {
            actions.push(el("button", { type: "button", class: "btn small", text: t("adjust"),
              onclick: () => startAdjust(f) }));
          }
          if (vocab) {
            const menu = el("select", { class: "relabel", title: t("relabel") }, ...relabelOptions(f));
            menu.addEventListener("change", () => saveEdits([{ op: "relabel", ordinal: f.ordinal,
              region_code: f.region_code, finding_code: menu.value || null }]));
            actions.push(menu);
          }
        }
      }
      const li = el("li", { class: `finding rv-${f.review}` + (f.critical ? " critical" : ""),
                            dataset: { ordinal: String(f.ordinal) } },
        el("div", { class: "frow" }, toggle, swatch,
          el("span", { class: "fnum", text: String(f.ordinal + 1) }),
          el("span", { class: "fname", text: findingName(f) }),
          f.critical ? el("span", { class: "badge badge-critical", text: t("critical") }) : null,
          el("span", { class: "fmeta muted", text: meta.join(" · ") }),
          el("span", { class: "pill rv rv-" + f.review, text: t("rv_" + f.review) })),
        actions.length ? el("div", { class: "factions" }, ...actions) : null);
      li.addEventListener("mouseenter", () => hover([f.ordinal]));
      li.addEventListener("mouseleave", () => hover([]));
      li.addEventListener("click", (e) => { if (!e.target.closest("button, select, input")) select(f.ordinal, true); });
      list.append(li);
    }
  }

  function renderMeta() {
    const r = report();
    const s = detail.study;
    const status = document.getElementById("study-status");
    status.className = "pill st-" + s.status;
    status.textContent = t("st_" + s.status);
    document.getElementById("study-critical").classList.toggle("hidden", !s.critical);
    document.getElementById("study-new-images").classList.toggle("hidden", !s.new_images_after_signoff);
    const ack = document.getElementById("ack-new-images");
    ack.classList.toggle("hidden", !(s.new_images_after_signoff && detail.permissions.edit));
    ack.onclick = () => acknowledgeNewImages();
    document.getElementById("study-conflicts").classList.toggle("hidden", !s.conflicting_instances);
    const banner = document.getElementById("banner");
    const final = r && r.final;
    banner.className = "banner " + (final ? "banner-final" : "banner-draft");
    banner.firstElementChild.textContent = final ? t("signed_banner") : t("ai_banner");
    // Both languages of the warning stay visible whatever the UI language is.
    banner.querySelector(".banner-alt").textContent = final ? "" :
      (Medrega.lang === "zh" ? "AI draft — not for diagnostic use until signed" : "AI 草稿——签发前不得用于诊断");
    const domain = r ? (Medrega.lang === "zh" ? r.domain_zh : r.domain_en) || r.domain : "";
    document.getElementById("report-title").textContent = domain || "";
    document.getElementById("report-version").textContent = r
      ? `${t("version")} ${r.version} · ${r.status}` + (r.author ? ` · ${r.author.full_name}` : ` · ${r.model_name || ""} ${r.model_version || ""}`)
      : (detail.job && detail.job.reason ? `${t("reason")}: ${detail.job.reason}` : "");
    const note = document.getElementById("job-note");
    const noted = r && detail.job && detail.job.state === "done" && detail.job.reason;
    note.textContent = noted ? `${t("draft_note")}: ${detail.job.reason}` : "";
    note.classList.toggle("hidden", !noted);
    if (!r && detail.job && detail.job.state === "failed" && detail.permissions.retry) {
      // The draft failed (model server down for too long, an unusable answer…): an admin can
      // queue it again once the cause is fixed.
      document.getElementById("report-version").append(" ", el("button", {
        type: "button", class: "btn small", id: "retry-draft", text: t("retry_draft"),
        onclick: () => retryDraft(detail.job.id) }));
    }
    const sign = document.getElementById("sign-btn");
    sign.classList.toggle("hidden", !detail.permissions.sign);
    const corrected = detail.versions.some((v) => v.status === "signed" || v.status === "corrected");
    sign.textContent = corrected ? t("sign_correction") : t("sign");
    document.getElementById("amend-btn").classList.toggle("hidden", !(final && detail.permissions.edit) || state.amending);
    document.getElementById("signed-by").textContent = final && r.signed_by
      ? `${t("signed_by")} ${r.signed_by.full_name} · ${fmtTime(r.signed_at)}` : "";
    renderDeliveries();
    const versions = document.getElementById("versions");
    versions.replaceChildren(...detail.versions.map((v) =>
      el("li", { text: `v${v.version} ${v.status} · ${v.author || "AI"} · ${fmtTime(v.created_at)}` })));
  }

  const DELIVERY_KINDS = {
    sr: "SR → PACS", gsps: "GSPS (boxes) → PACS", kos: "KOS (key images) → PACS", hl7: "ORU → RIS",
    fhir: "FHIR DiagnosticReport → EHR",
  };

  function renderDeliveries() {
    const body = document.getElementById("deliveries");
    body.replaceChildren(...detail.deliveries.map((d) => el("tr", {},
      el("td", { class: "mono", text: `v${d.report_version}` }),
      el("td", { text: DELIVERY_KINDS[d.kind] || d.kind }),
      el("td", {}, el("span", { class: "pill dl-" + d.state, text: d.state })),
      el("td", { class: "muted small", text: d.ack_code || (d.attempts ? `${d.attempts}×` : ""), title: d.last_error || "" }),
      el("td", {}, detail.permissions.retry && d.state === "failed"
        ? el("button", { type: "button", class: "btn small", text: t("retry"), onclick: () => retry(d.id) }) : null),
    )));
  }

  function renderAll() {
    renderMeta();
    renderReport();
    drawBoxes();
    if (allImages.length) info();
  }

  // ---------------------------------------------------------------- server calls
  async function saveEdits(operations) {
    if (state.busy || !report()) return;
    state.busy = true;
    try {
      detail = await api("POST", `/api/v1/studies/${studyId}/report/edits`,
                         { base_version: report().version, operations });
      state.adjusting = null;
      message("");
      renderAll();
      toast(`${t("saved")} · ${t("version")} ${report().version}`);
    } catch (err) {
      if (err.status === 409) { await reload(); toast(t("conflict"), "error"); }
      else toast(`${t("error")}: ${err.message}`, "error");
    } finally {
      state.busy = false;
    }
  }

  async function reload() {
    detail = await api("GET", `/api/v1/studies/${studyId}`);
    const before = current();
    allImages = buildImages();
    if (allImages.length && (!before || !allImages.some((im) => im.sop === before.sop))) {
      showImage(allImages[keyImageIndex(allImages)], false);
    }
    renderAll();
  }

  async function retryDraft(id) {
    try {
      await api("POST", `/api/v1/admin/draft-jobs/${id}/retry`);
      await reload();
    } catch (err) {
      toast(`${t("error")}: ${err.message}`, "error");
    }
  }

  async function acknowledgeNewImages() {
    try {
      await api("POST", `/api/v1/studies/${detail.study.id}/new-images/acknowledge`);
      await reload();
    } catch (err) {
      toast(`${t("error")}: ${err.message}`, "error");
    }
  }

  async function retry(id) {
    try {
      await api("POST", `/api/v1/admin/deliveries/${id}/retry`);
      await reload();
    } catch (err) {
      toast(`${t("error")}: ${err.message}`, "error");
    }
  }

  function startAdjust(f) {
    select(f.ordinal, true);
    state.adjusting = { ordinal: f.ordinal, box: { ...f.box } };
    drawBoxes();
    const box = document.getElementById("tool-msg");
    box.replaceChildren(
      el("span", { text: `${f.ordinal + 1} ${findingName(f)}` }),
      el("button", { type: "button", class: "btn btn-primary small", text: t("save_box"), onclick: () => {
        const b = state.adjusting.box;
        saveEdits([{ op: "adjust_box", ordinal: f.ordinal, box: { x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 },
                     sop_instance_uid: f.sop_instance_uid, frame: f.frame || 1 }]);
      } }),
      el("button", { type: "button", class: "btn btn-ghost small", text: t("cancel"), onclick: () => {
        state.adjusting = null; message(""); drawBoxes();
      } }));
    box.className = "tool-msg";
  }

  async function locate(query) {
    const img = current();
    message(`${t("locate")}: ${query} …`, "pending");
    try {
      const answer = await api("POST", `/api/v1/studies/${studyId}/locate`,
                               { sop_instance_uid: img.sop, frame: img.frame, query });
      if (!answer.boxes.length) {
        message(answer.region_code ? t("not_found") : `${t("not_found")} (${query})`, "warn");
        return;
      }
      const name = Medrega.lang === "zh" ? answer.name_zh : answer.name_en;
      const p = answer.probability !== null ? ` ${Math.round(answer.probability * 100)}%` : "";
      state.toolBoxes = answer.boxes.map((box) => ({ sop: img.sop, frame: img.frame, box, label: `${name}${p}` }));
      drawTools();
      message(`${t("locate")}: ${name}${p}`, "ok");
    } catch (err) {
      message(err.status === 503 ? t("busy") : `${t("no_answer")} ${err.status === 422 ? "" : err.message}`, "warn");
    }
  }

  async function identify(box) {
    const img = current();
    const pending = { sop: img.sop, frame: img.frame, box, label: "…", pending: true };
    state.toolBoxes = [pending];
    drawTools();
    message(`${t("identify")} …`, "pending");
    try {
      const answer = await api("POST", `/api/v1/studies/${studyId}/identify`,
                               { sop_instance_uid: img.sop, frame: img.frame, box });
      const name = (Medrega.lang === "zh" ? answer.name_zh : answer.name_en) || t("no_answer");
      const p = answer.probability !== null ? ` ${Math.round(answer.probability * 100)}%` : "";
      pending.label = `${name}${p}`;
      pending.pending = false;
      drawTools();
      message(`${t("identify")}: ${name}${p}`, "ok");
    } catch (err) {
      state.toolBoxes = [];
      drawTools();
      message(err.status === 503 ? t("busy") : t("no_answer"), "warn");
    }
  }

  // ---------------------------------------------------------------- pointer interaction
  let drag = null;
  stage.addEventListener("pointerdown", (event) => {
    if (!current() || event.button !== 0) return;
    const handle = event.target.closest(".handle");
    const p = toImage(event);
    if (handle && state.adjusting) {
      drag = { kind: "corner", corner: handle.dataset.corner };
    } else if (state.identify) {
      drag = { kind: "draw", start: p };
    } else {
      drag = { kind: "pan", x: event.clientX, y: event.clientY, view: [...state.view] };
    }
    stage.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  stage.addEventListener("pointermove", (event) => {
    if (!drag) return;
    if (drag.kind === "pan") {
      const ctm = stage.getScreenCTM();
      const [x, y, w, h] = drag.view;
      setView([x - (event.clientX - drag.x) / ctm.a, y - (event.clientY - drag.y) / ctm.d, w, h]);
    } else if (drag.kind === "corner") {
      const p = toImage(event);
      const b = state.adjusting.box;
      if (drag.corner.includes("w")) b.x1 = Math.min(p.x, b.x2 - 2); else b.x2 = Math.max(p.x, b.x1 + 2);
      if (drag.corner.includes("n")) b.y1 = Math.min(p.y, b.y2 - 2); else b.y2 = Math.max(p.y, b.y1 + 2);
      drawBoxes();
    } else if (drag.kind === "draw") {
      const p = toImage(event);
      const s = drag.start;
      drag.box = { x1: Math.min(s.x, p.x), y1: Math.min(s.y, p.y), x2: Math.max(s.x, p.x), y2: Math.max(s.y, p.y) };
      state.toolBoxes = [{ sop: current().sop, frame: current().frame, box: drag.box, pending: true }];
      drawTools();
    }
  });
  stage.addEventListener("pointerup", () => {
    if (drag && drag.kind === "draw" && drag.box && drag.box.x2 - drag.box.x1 > 3 && drag.box.y2 - drag.box.y1 > 3) {
      identify(drag.box);
    }
    drag = null;
  });
  document.getElementById("viewer").addEventListener("wheel", (event) => {
    if (!current()) return;
    event.preventDefault();
    if (state.images.length > 1 && !event.ctrlKey && !event.shiftKey) {
      goSlice(event.deltaY > 0 ? 1 : -1);
    } else {
      zoom(event.deltaY < 0 ? 1.15 : 1 / 1.15, toImage(event));
    }
  }, { passive: false });
  document.getElementById("viewer").addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "PageDown") { goSlice(1); event.preventDefault(); }
    if (event.key === "ArrowUp" || event.key === "PageUp") { goSlice(-1); event.preventDefault(); }
    if (event.key === "Escape") { state.identify = false; state.adjusting = null; state.toolBoxes = []; syncIdentify(); drawBoxes(); drawTools(); message(""); }
  });
  stage.addEventListener("click", () => { if (!state.identify && !state.adjusting && state.selected !== null) select(state.selected, false); });

  // ---------------------------------------------------------------- toolbar
  document.getElementById("zoom-in").addEventListener("click", () => zoom(1.25));
  document.getElementById("zoom-out").addEventListener("click", () => zoom(1 / 1.25));
  document.getElementById("zoom-fit").addEventListener("click", fit);
  document.getElementById("toggle-boxes").addEventListener("change", (e) => { state.showBoxes = e.target.checked; drawBoxes(); });
  document.getElementById("slice").addEventListener("input", (e) => {
    const target = state.images[Number(e.target.value) - 1];
    if (target) showImage(target, true);
  });
  const presetSelect = document.getElementById("preset");
  presetSelect.addEventListener("change", () => { state.preset = presetSelect.value; showImage(current(), true); });
  function syncIdentify() {
    const b = document.getElementById("identify-btn");
    b.classList.toggle("on", state.identify);
    b.setAttribute("aria-pressed", String(state.identify));
    document.getElementById("viewer").classList.toggle("drawing", state.identify);
  }
  document.getElementById("identify-btn").addEventListener("click", () => {
    state.identify = !state.identify;
    syncIdentify();
    message(state.identify ? t("identify_hint") : "");
  });
  document.getElementById("locate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = document.getElementById("locate-query").value.trim();
    if (query && current()) locate(query);
  });
  document.getElementById("toggle-normal").addEventListener("change", (e) => { state.showNormal = e.target.checked; drawBoxes(); });
  document.getElementById("amend-btn").addEventListener("click", () => { state.amending = true; renderAll(); });
  document.querySelectorAll(".add-sentence").forEach((b) => b.addEventListener("click", () => addSentence(b.dataset.section)));

  const dialog = document.getElementById("sign-dialog");
  document.getElementById("sign-btn").addEventListener("click", () => {
    const unreviewed = findings().filter((f) => f.review === "proposed").length;
    document.getElementById("sign-unreviewed").textContent = unreviewed ? `${unreviewed} ${t("unreviewed_note")}` : "";
    dialog.showModal();
  });
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "confirm" || !report()) return;
    try {
      detail = await api("POST", `/api/v1/studies/${studyId}/report/sign`,
                         { base_version: report().version, confirm: true });
      state.amending = false;
      renderAll();
      toast(t("signed_banner"));
      pollDeliveries();
    } catch (err) {
      if (err.status === 409) { await reload(); toast(t("conflict"), "error"); }
      else toast(`${t("error")}: ${err.message}`, "error");
    }
  });

  // ---------------------------------------------------------------- live status
  let polling = null;
  function pollDeliveries() {
    clearTimeout(polling);
    const waiting = ACTIVE_STATES.has(detail.study.state) || detail.deliveries.some((d) => PENDING_DELIVERY.has(d.state));
    if (!waiting) return;
    polling = setTimeout(async () => {
      try {
        const status = await api("GET", `/api/v1/studies/${studyId}/status`);
        const version = report() ? report().version : null;
        if (status.report_version !== version) {
          await reload();
        } else {
          detail.deliveries = status.deliveries;
          detail.study.state = status.state;
          detail.study.status = status.status;
          renderMeta();
        }
      } catch (err) { /* transient: try again on the next tick */ }
      pollDeliveries();
    }, 3000);
  }

  // ---------------------------------------------------------------- start
  let vocab = null;
  api("GET", "/api/v1/vocabulary").then((v) => {
    vocab = v;
    const domain = report() && report().domain;
    const names = document.getElementById("region-names");
    for (const r of v.regions) {
      if (domain && !r.domains.includes(domain)) continue;
      names.append(el("option", { value: r.en }), el("option", { value: r.zh }));
    }
    renderFindings();
  }).catch(() => {});

  for (const p of detail.presets) {
    presetSelect.append(el("option", { value: p.code, text: Medrega.lang === "zh" ? p.zh : p.en }));
  }
  Medrega.onLang(() => {
    [...presetSelect.options].forEach((o, i) => { o.textContent = Medrega.lang === "zh" ? detail.presets[i].zh : detail.presets[i].en; });
    renderAll();
    drawTools();
  });

  allImages = buildImages();
  if (allImages.length) {
    showImage(allImages[keyImageIndex(allImages)], false);
  } else {
    document.getElementById("viewer").classList.add("empty");
  }
  renderAll();
  pollDeliveries();
  document.getElementById("viewer").focus();
})();

// Worklist: re-render rows from the JSON API every few seconds (live status), keep filters.
"use strict";

(() => {
  const { t, api, el, fmtTime, personName, dicomDate } = Medrega;
  const body = document.getElementById("worklist-body");
  const pager = document.getElementById("pager");
  const form = document.getElementById("filters");
  const POLL_MS = 5000;
  let page = Number(pager.dataset.page) || 1;
  let lastData = null;

  function query() {
    const params = new URLSearchParams();
    for (const name of ["q", "status", "modality"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    params.set("page", String(page));
    return params;
  }

  function row(s) {
    const exam = (Medrega.lang === "zh" ? s.domain_zh : s.domain_en) || s.study_description || "";
    const tr = el("tr", {
      class: "row" + (s.critical ? " critical" : ""),
      dataset: { studyId: String(s.id), href: "/studies/" + s.id },
    },
      el("td", { class: "c-prio" }, s.critical ? el("span", { class: "badge badge-critical", text: t("critical") }) : null),
      el("td", { class: "c-patient" },
        el("a", { href: "/studies/" + s.id, text: personName(s.patient_name) || "—" }),
        el("span", { class: "muted small", text: " " + [s.patient_sex, dicomDate(s.patient_birth_date)].filter(Boolean).join(" ") })),
      el("td", { class: "mono", text: s.patient_id || "" }),
      el("td", { class: "mono", text: s.accession_number || "" }),
      el("td", { text: s.modalities.join("/") }),
      el("td", { text: exam }),
      el("td", { class: "mono", text: fmtTime(s.received_at) }),
      el("td", {},
        el("span", { class: "pill st-" + s.status, text: t("st_" + s.status) }),
        s.new_images_after_signoff ? el("span", { class: "badge badge-warn", text: t("new_images_after_signoff") }) : null,
        s.conflicting_instances ? el("span", { class: "badge badge-warn", text: t("conflicting_instances") }) : null,
        s.delivery ? el("span", { class: "deliv deliv-" + s.delivery, title: s.delivery }) : null),
    );
    return tr;
  }

  function render(data) {
    lastData = data;
    const rows = data.items.map(row);
    if (!rows.length) {
      rows.push(el("tr", { class: "empty" }, el("td", { colspan: "8", text: t("no_studies") })));
    }
    body.replaceChildren(...rows);
    document.getElementById("count").textContent = String(data.total);
    const pages = Math.max(1, Math.ceil(data.total / data.page_size));
    document.getElementById("page-info").textContent = `${data.page} / ${pages}`;
    document.getElementById("prev").disabled = data.page <= 1;
    document.getElementById("next").disabled = data.page >= pages;
    document.getElementById("live-time").textContent = fmtTime(new Date().toISOString()).slice(11);
  }

  async function refresh() {
    const live = document.getElementById("live");
    try {
      const data = await api("GET", "/api/v1/worklist?" + query().toString());
      live.classList.remove("down");
      render(data);
    } catch (err) {
      live.classList.add("down");
    }
  }

  body.addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-href]");
    if (tr && !event.target.closest("a")) window.location.href = tr.dataset.href;
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    page = 1;
    history.replaceState(null, "", "/worklist?" + query().toString());
    refresh();
  });
  for (const name of ["status", "modality"]) {
    form.elements[name].addEventListener("change", () => form.requestSubmit());
  }
  document.getElementById("prev").addEventListener("click", () => { page = Math.max(1, page - 1); refresh(); });
  document.getElementById("next").addEventListener("click", () => { page += 1; refresh(); });
  Medrega.onLang(() => { if (lastData) render(lastData); });

  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
})();

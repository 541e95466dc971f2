// Shared by every page: labels (EN / 中文), the language toggle, JSON calls with the CSRF token,
// and a small status toast. Data is only ever written with textContent, never as HTML.
"use strict";

const Medrega = (() => {
  const labels = JSON.parse(document.getElementById("labels").textContent);
  let lang = document.body.dataset.lang === "zh" ? "zh" : "en";
  const listeners = [];

  function t(key) {
    return (labels[lang] && labels[lang][key]) || key;
  }

  function applyLabels(root) {
    (root || document).querySelectorAll("[data-i18n]").forEach((el) => {
      el.textContent = t(el.dataset.i18n);
    });
    (root || document).querySelectorAll("[data-i18n-placeholder]").forEach((el) => {
      el.placeholder = t(el.dataset.i18nPlaceholder);
    });
  }

  function setLang(next) {
    lang = next === "zh" ? "zh" : "en";
    // Read by the server for the next page it renders; not a secret, so not HttpOnly.
    document.cookie = "medrega_lang=" + lang + "; path=/; max-age=31536000; samesite=lax";
    document.body.dataset.lang = lang;
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-set-lang]").forEach((b) => {
      b.classList.toggle("on", b.dataset.setLang === lang);
    });
    applyLabels();
    listeners.forEach((fn) => fn(lang));
  }

  document.querySelectorAll("[data-set-lang]").forEach((b) => {
    b.addEventListener("click", () => setLang(b.dataset.setLang));
  });

  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : JSON.stringify(detail));
      this.status = status;
      this.detail = detail;
    }
  }

  async function api(method, url, body) {
    const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (method !== "GET") {
      options.headers["X-CSRF-Token"] = document.body.dataset.csrf || "";
    }
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    if (response.status === 401) {
      window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new ApiError(401, "signed out");
    }
    const data = (response.headers.get("content-type") || "").includes("json") ? await response.json() : null;
    if (!response.ok) {
      throw new ApiError(response.status, data && data.detail ? data.detail : response.statusText);
    }
    return data;
  }

  let toastTimer = null;
  function toast(message, kind) {
    const el = document.getElementById("toast");
    el.textContent = message;
    el.className = "toast show " + (kind || "");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.className = "toast"; }, kind === "error" ? 6000 : 2500);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
  }

  // DICOM PN: "Family^Given=表意^名" → "Family Given 表意名" (ideographic parts join tight).
  function personName(dicomName) {
    // Several names (DICOM's "\\" between values) are shown joined with "; ".
    return (dicomName || "").split("\\").map((name) => name.split("=")
      .map((g, i) => (i === 0 ? g.replace(/\^+/g, " ") : g.replace(/\^+/g, "")).trim())
      .filter(Boolean)
      .join(" ")).filter(Boolean).join("; ");
  }

  function dicomDate(value) {
    return /^\d{8}$/.test(value || "") ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6)}` : value || "";
  }

  return {
    t, api, toast, el, fmtTime, personName, dicomDate, applyLabels, setLang, ApiError,
    get lang() { return lang; },
    onLang(fn) { listeners.push(fn); },
  };
})();

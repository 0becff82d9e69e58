/* Shared by the pages: the JSON API with the session's CSRF token, messages, field errors. */
"use strict";
(() => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const messagesEl = document.getElementById("messages");
  const messages = messagesEl ? JSON.parse(messagesEl.textContent) : {};

  /** A catalogue message with {name} placeholders filled in (as text, never as HTML). */
  function msg(key, values = {}) {
    const text = messages[key] || key;
    return text.replace(/\{(\w+)\}/g, (all, name) => (name in values ? String(values[name]) : all));
  }

  /** fetch() for /api: JSON in and out, the CSRF header, cookies of this origin only. */
  async function api(method, url, body) {
    const headers = { Accept: "application/json" };
    if (meta) headers["X-CSRF-Token"] = meta.content;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method, headers, credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      return { status: 0, ok: false, data: null };
    }
    let data = null;
    if (response.status !== 204) {
      try { data = await response.json(); } catch (e) { data = null; }
    }
    return { status: response.status, ok: response.ok, data };
  }

  /** The message for a failed call, in the reader's language where we have one. */
  function failure(result) {
    if (result.status === 0) return msg("network");
    if (result.status === 401) return msg("signed_out");
    const message = (result.data && result.data.error && result.data.error.message) || "";
    return msg("error", { status: result.status, message });
  }

  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach((el) => { el.hidden = true; el.textContent = ""; });
    form.querySelectorAll('[aria-invalid="true"]').forEach((el) => el.removeAttribute("aria-invalid"));
  }

  /** Shows a failed call next to the field it names (a 422's error.field), else under the form. */
  function showError(form, result) {
    const field = result.data && result.data.error && result.data.error.field;
    let slot = field ? form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) : null;
    if (slot && result.status === 422) {
      const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
      const fold = slot.closest("details");
      if (fold) fold.open = true; // a field of the rules fieldset, folded away
      if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
      slot.textContent = result.data.error.message;
    } else {
      slot = form.querySelector('[data-error-for=""]');
      slot.textContent = failure(result);
    }
    slot.hidden = false;
  }

  function setResult(el, text, kind) {
    if (!el) return;
    el.textContent = text;
    el.classList.remove("ok", "bad");
    if (kind) el.classList.add(kind);
    el.hidden = !text;
  }

  /** Fetches this page again and swaps in the element with the given id: one renderer per list. */
  async function refresh(id) {
    const response = await fetch(location.pathname + location.search, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (response.redirected || !response.ok) { location.reload(); return; }
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById(id);
    if (fresh) document.getElementById(id).replaceWith(document.adoptNode(fresh));
  }

  async function busy(button, work) {
    if (button) button.disabled = true;
    try { return await work(); } finally { if (button) button.disabled = false; }
  }

  window.sharekey = { api, msg, failure, clearErrors, showError, setResult, refresh, busy };
})();

/* /tokens: create (the token shown once, with a copy button) and revoke through /api/tokens. */
"use strict";
(() => {
  const { api, msg, failure, clearErrors, showError, refresh, busy } = window.sharekey;
  const form = document.getElementById("create-token");
  const box = document.getElementById("new-token");
  const valueEl = document.getElementById("new-token-value");

  // The form as POST /api/tokens takes it: an empty limit is left out (no such limit); numbers
  // and lists are sent as they are typed, for the API's rules to refuse by name.
  const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);
  const body = (f) => {
    const out = { label: f.label.value };
    if (f.models.value.trim()) out.models = list(f.models.value);
    if (f.allowed_ips.value.trim()) out.allowed_ips = list(f.allowed_ips.value);
    if (f.expires_at.value) out.expires_at = new Date(f.expires_at.value).toISOString();
    for (const name of ["daily_requests", "requests_per_minute"]) {
      const text = f[name].value.trim();
      if (text) out[name] = /^\d+$/.test(text) ? Number(text) : text;
    }
    if (f.daily_budget_usd.value.trim()) out.daily_budget_usd = f.daily_budget_usd.value.trim();
    return out;
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearErrors(form);
    busy(event.submitter, async () => {
      const result = await api("POST", "/api/tokens", body(form.elements));
      if (!result.ok) { showError(form, result); return; }
      valueEl.textContent = result.data.token;
      box.hidden = false;
      form.reset();
      await refresh("token-list");
    });
  });

  box.querySelector('[data-action="copy"]').addEventListener("click", async (event) => {
    const button = event.currentTarget;
    const text = valueEl.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents(valueEl);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      document.execCommand("copy");
    }
    const label = button.textContent;
    button.textContent = msg("copied");
    setTimeout(() => { button.textContent = label; }, 1500);
  });

  document.addEventListener("click", (event) => {
    const button = event.target.closest('#token-list [data-action="revoke"]');
    if (!button) return;
    const row = button.closest("[data-token-id]");
    if (!window.confirm(msg("confirm_revoke", { name: row.dataset.name }))) return;
    busy(button, async () => {
      const result = await api("DELETE", `/api/tokens?id=${encodeURIComponent(row.dataset.tokenId)}`);
      if (!result.ok && result.status !== 404) { window.alert(failure(result)); return; }
      await refresh("token-list");
    });
  });
})();

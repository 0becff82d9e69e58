/* /tokens: create (the token shown once, with a copy button) and revoke through /api/tokens. */
"use strict";
(() => {
  const { api, msg, failure, clearErrors, showError, refresh, busy } = window.sharekey;
  const form = document.getElementById("create-token");
  const box = document.getElementById("new-token");
  const valueEl = document.getElementById("new-token-value");

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearErrors(form);
    busy(event.submitter, async () => {
      const result = await api("POST", "/api/tokens", { label: form.elements.label.value });
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

/* /keys: add (after an optional live test), import many, edit, pause/resume and delete through /api/shared-keys. */
"use strict";
(() => {
  const { api, msg, failure, clearErrors, showError, setResult, refresh, busy } = window.sharekey;
  const addForm = document.getElementById("add-key");
  let lastTest = null; // {base_url, api_key, text}: shown with the key it was run for once added

  const list = (value) => value.split(/[,，\n]/).map((s) => s.trim()).filter(Boolean);
  const value = (form, name) => form.elements[name].value;

  function limit(raw) {
    const text = raw.trim();
    if (text === "") return undefined;
    const n = Number(text);
    return Number.isInteger(n) ? n : text; // not a whole number: the API names the field
  }

  function dollars(text) {
    const n = Number(text);
    return Number.isFinite(n) ? n : text; // not a number: the API names the field
  }

  /** "gemini-2.5-pro=50, m=N" as {model: N}; anything else goes as typed, for the API to name the field. */
  function perModel(text) {
    const limits = {};
    for (const entry of list(text)) {
      const pair = entry.match(/^(.+?)\s*[=:：]\s*(\S+)$/);
      if (!pair) return text;
      limits[pair[1]] = limit(pair[2]);
    }
    return limits;
  }

  /** The rules fieldset, as /api/shared-keys takes it: a cap left empty is null (no such cap). */
  function rules(form) {
    const cap = (name) => { const n = limit(value(form, name)); return n === undefined ? null : n; };
    return {
      rpm_limit: cap("rpm_limit"),
      tpm_limit: cap("tpm_limit"),
      max_concurrent: cap("max_concurrent"),
      model_daily_limits: perModel(value(form, "model_daily_limits")),
      min_trust_level: Number(value(form, "min_trust_level")),
      allowed_users: list(value(form, "allowed_users")),
      allowed_features: list(value(form, "allowed_features")),
    };
  }

  /** Equal as JSON, an object's keys in any order. */
  const canon = (v) => JSON.stringify(v && typeof v === "object" && !Array.isArray(v) ? Object.entries(v).sort() : v);

  /** Every field of the add form, as /api/shared-keys takes them. */
  function newKey(form) {
    const body = {
      name: value(form, "name"),
      base_url: value(form, "base_url").trim(),
      api_key: value(form, "api_key").trim(),
      available_models: list(value(form, "available_models")),
      tags: list(value(form, "tags")),
      api_format: value(form, "api_format"),
    };
    const daily = limit(value(form, "daily_limit"));
    if (daily !== undefined) body.daily_limit = daily;
    const budget = value(form, "daily_budget_usd").trim();
    if (budget) body.daily_budget_usd = dollars(budget);
    const description = value(form, "description").trim();
    if (description) body.description = description;
    return Object.assign(body, rules(form));
  }

  /** Only what changed in an edit form (a partial update); the key only when typed again. */
  function changes(form) {
    const original = JSON.parse(form.dataset.original);
    const body = {};
    const name = value(form, "name");
    if (name.trim() !== original.name) body.name = name;
    const base = value(form, "base_url").trim();
    if (base !== original.base_url) body.base_url = base;
    const format = value(form, "api_format");
    if (format !== original.api_format) body.api_format = format; // tested live again
    const key = value(form, "api_key").trim();
    if (key) body.api_key = key;
    const models = list(value(form, "available_models"));
    if (models.join("\n") !== original.available_models.join("\n")) body.available_models = models;
    const daily = limit(value(form, "daily_limit"));
    if (daily !== undefined && daily !== original.daily_limit) body.daily_limit = daily;
    const budget = value(form, "daily_budget_usd").trim();
    if (budget !== (original.daily_budget_usd || "")) body.daily_budget_usd = budget ? dollars(budget) : null;
    const description = value(form, "description").trim();
    if (description !== (original.description || "")) body.description = description || null;
    const tags = list(value(form, "tags"));
    if (tags.join("\n") !== original.tags.join("\n")) body.tags = tags;
    for (const [name, now] of Object.entries(rules(form))) {
      if (canon(now) !== canon(original.rules[name])) body[name] = now;
    }
    return body;
  }

  function testText(result) {
    if (result.ok) {
      const models = result.models && result.models.length ? result.models.slice(0, 6).join(", ") : "—";
      return msg("test_ok", { ms: result.latency_ms, models });
    }
    return msg("test_failed", { error: result.error || "" });
  }

  addForm.querySelector('[data-action="test"]').addEventListener("click", (event) => {
    const output = addForm.querySelector("[data-result]");
    clearErrors(addForm);
    const body = newKey(addForm);
    const test = { base_url: body.base_url, api_key: body.api_key, api_format: body.api_format };
    if (body.available_models.length) test.model = body.available_models[0];
    setResult(output, msg("testing"));
    busy(event.currentTarget, async () => {
      const result = await api("POST", "/api/shared-keys/test", test);
      if (!result.ok) { setResult(output, ""); showError(addForm, result); return; }
      const text = testText(result.data);
      setResult(output, text, result.data.ok ? "ok" : "bad");
      lastTest = result.data.ok ? { ...test, text } : null;
    });
  });

  addForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const output = addForm.querySelector("[data-result]");
    clearErrors(addForm);
    const body = newKey(addForm);
    setResult(output, msg("testing"));
    busy(event.submitter, async () => {
      const result = await api("POST", "/api/shared-keys", body);
      if (!result.ok) { setResult(output, ""); showError(addForm, result); return; }
      const tested = lastTest && lastTest.base_url === body.base_url && lastTest.api_key === body.api_key
        && lastTest.api_format === body.api_format;
      const text = tested ? lastTest.text : msg("added");
      lastTest = null;
      addForm.reset();
      setResult(output, msg("added"), "ok");
      await refresh("key-list");
      const item = document.querySelector(`[data-key-id="${CSS.escape(result.data.id)}"] [data-test-result]`);
      setResult(item, text, "ok");
    });
  });

  // Many keys at once: POST /api/shared-keys/import, then each key's mask, outcome and reason.
  const importForm = document.getElementById("import-many");
  importForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const output = importForm.querySelector("[data-result]");
    const results = importForm.querySelector("[data-import-results]");
    clearErrors(importForm);
    results.replaceChildren();
    results.hidden = true;
    const keys = value(importForm, "keys").split("\n").map((s) => s.trim()).filter((s) => s && !s.startsWith("#"));
    const body = {
      base_url: value(importForm, "base_url").trim(),
      api_format: value(importForm, "api_format"),
      available_models: list(value(importForm, "available_models")),
      keys,
    };
    const daily = limit(value(importForm, "daily_limit"));
    if (daily !== undefined) body.daily_limit = daily;
    setResult(output, msg("testing"));
    busy(event.submitter, async () => {
      const result = await api("POST", "/api/shared-keys/import", body);
      if (!result.ok) { setResult(output, ""); showError(importForm, result); return; }
      for (const r of result.data.results) {
        const item = document.createElement("li");
        item.dataset.status = r.status;
        item.className = `import-${r.status}`;
        item.textContent = msg(`import_${r.status}`, { hint: r.hint, error: r.error || "" });
        results.append(item);
      }
      results.hidden = false;
      setResult(output, msg("imported", result.data), result.data.added ? "ok" : "bad");
      if (result.data.added) {
        importForm.elements.keys.value = ""; // the keys are stored: nothing to keep on the page
        await refresh("key-list");
      }
    });
  });

  // The list is replaced after every change, so its controls are handled from the document.
  document.addEventListener("click", (event) => {
    const button = event.target.closest("#key-list [data-action]");
    if (!button) return;
    const item = button.closest("[data-key-id]");
    const id = item.dataset.keyId;
    const output = item.querySelector(".actions [data-result]");
    if (button.dataset.action === "toggle") {
      const resume = item.dataset.active !== "true";
      setResult(output, resume ? msg("testing") : msg("saving"));
      busy(button, async () => {
        const result = await api("PUT", "/api/shared-keys", { id, is_active: resume });
        if (!result.ok) { setResult(output, failure(result), "bad"); return; }
        await refresh("key-list");
      });
    } else if (button.dataset.action === "delete") {
      if (!window.confirm(msg("confirm_delete", { name: item.dataset.name }))) return;
      busy(button, async () => {
        const result = await api("DELETE", `/api/shared-keys?id=${encodeURIComponent(id)}`);
        if (!result.ok && result.status !== 404) { setResult(output, failure(result), "bad"); return; }
        await refresh("key-list");
      });
    }
  });

  // How the donor appears on the thanks board: PUT /api/me, then the section is rendered again.
  document.addEventListener("click", (event) => {
    const button = event.target.closest('#on-board [data-action="anonymous"]');
    if (!button) return;
    const output = document.querySelector("#on-board [data-result]");
    setResult(output, msg("saving"));
    busy(button, async () => {
      const result = await api("PUT", "/api/me", { anonymous: button.dataset.anonymous === "true" });
      if (!result.ok) { setResult(output, failure(result), "bad"); return; }
      await refresh("on-board");
      setResult(document.querySelector("#on-board [data-result]"), msg("saved"), "ok");
    });
  });

  document.addEventListener("submit", (event) => {
    const form = event.target.closest("#key-list form[data-edit]");
    if (!form) return;
    event.preventDefault();
    const item = form.closest("[data-key-id]");
    const output = form.querySelector("[data-result]");
    clearErrors(form);
    const body = changes(form);
    if (Object.keys(body).length === 0) { setResult(output, msg("saved"), "ok"); return; }
    setResult(output, body.api_key || body.api_format ? msg("testing") : msg("saving"));
    busy(event.submitter, async () => {
      const result = await api("PUT", "/api/shared-keys", { id: item.dataset.keyId, ...body });
      if (!result.ok) { setResult(output, ""); showError(form, result); return; }
      await refresh("key-list");
      const fresh = document.querySelector(`[data-key-id="${CSS.escape(item.dataset.keyId)}"] [data-test-result]`);
      setResult(fresh, msg("saved"), "ok");
    });
  });
})();

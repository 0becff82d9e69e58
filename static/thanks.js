/* The thanks pages, live: polls the board's JSON every few seconds; when it changed, updates the
   totals in place and swaps in the page's fresh `#live` part (rows, charts, now serving), rendered
   by the server like the page itself. Without this script the page is simply not live. */
"use strict";
(() => {
  const page = document.querySelector("[data-board-api]");
  if (!page) return;
  const url = page.dataset.boardApi;
  const every = Math.max(1, Number(page.dataset.pollSeconds) || 5) * 1000;
  const note = page.querySelector("[data-live-note]");
  const format = new Intl.NumberFormat(document.documentElement.lang || undefined);
  let last = null;
  let timer = null;
  let running = false;

  if (note) note.hidden = false;

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(poll, every);
  }

  /** The totals in place; true when one of them changed. */
  function totals(board) {
    let changed = false;
    for (const el of document.querySelectorAll("[data-total]")) {
      const value = board.totals[el.dataset.total];
      if (typeof value !== "number") continue;
      const text = format.format(value);
      if (el.textContent !== text) { el.textContent = text; changed = true; }
    }
    return changed;
  }

  /** The page again, for its `#live` part: one renderer, the server's. */
  async function swap() {
    const response = await fetch(location.pathname + location.search, {
      credentials: "same-origin", headers: { Accept: "text/html" },
    });
    if (!response.ok || response.redirected) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById("live");
    const current = document.getElementById("live");
    if (fresh && current) current.replaceWith(document.adoptNode(fresh));
  }

  async function poll() {
    if (running) return;
    if (document.hidden) { schedule(); return; }
    running = true;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (response.ok) {
        const text = await response.text();
        // The first answer is compared with the page as rendered, later ones with the last answer.
        if (text !== last && (totals(JSON.parse(text)) || last !== null)) await swap();
        last = text;
      }
    } catch (e) {
      /* offline for a moment: the next poll tries again */
    } finally {
      running = false;
      schedule();
    }
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
  poll();
})();

"""Browsers and donors, in three wings over one page frame.

    frame.py    what every HTML page shares: layout context, language, the signed-in header, CSRF
    i18n.py     the message catalogue (data in messages.toml) and the reader's language
    pages.py    the donor's own pages (`/keys`, `/tokens`) and the language switch
    signin/     who the browser is: the provider table and its one flow, sessions, one-time links
    board/      the public thanks board: its snapshot, cache, charts, pages and JSON
    api/        the JSON `/api` routes of donors and admins
    health.py   `/healthz`, `/readyz`, `/metrics` (scrape.py reads the cluster's gauges)

The frame, the catalogue and `signin.sessions` import no route module (a contract in
pyproject.toml); the routes build on them. Pages that show API data borrow the API's readers
(`/keys` lists keys as `GET /api/shared-keys` does; the board's `PUT /api/me` uses its owner check).
"""

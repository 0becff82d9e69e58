"""Browsers and donors, in three wings over one page frame.

    frame.py    what every HTML page shares: layout context, language, the signed-in header, CSRF
    pages.py    the donor's own pages (`/keys`, `/tokens`) and the language switch
    signin/     who the browser is: providers, sessions, one-time links
    board/      the public thanks board: its snapshot, cache, charts and pages
    api/        the JSON `/api` routes of donors and admins
    health.py   `/healthz`, `/readyz`, `/metrics` (scrape.py reads the gauges)

The wings use the frame and `signin.sessions`; none imports another wing's routes.
"""

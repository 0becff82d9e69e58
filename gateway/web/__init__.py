"""Browsers and donors: sessions, OAuth, `/api`, pages, the thanks board and its charts, i18n, health routes."""

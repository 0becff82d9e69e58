"""The public thanks board: the snapshot built from one query, its per-process cache, the inline
SVG charts, and the pages and JSON that show it."""

"""sharekey: a community shared-key gateway. The README's "Code map" says what lives where."""

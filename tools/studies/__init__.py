"""One-off studies: each answers one question of a result page (docs/results) and keeps its command."""

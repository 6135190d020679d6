"""Figures of the docs that combine several results (e.g. the Fig. 4-style comparison of mattes)."""

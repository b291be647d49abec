"""The front doors: each parses its wire format into the core request model and renders deltas."""

"""Anthropic Messages: wire models (protocol), rendering (serving), routes (router)."""

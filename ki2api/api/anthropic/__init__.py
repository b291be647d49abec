"""Anthropic Messages: wire models (protocol), rendering (render), opening the answer (serving),
routes (router); server tools and token counting beside them."""

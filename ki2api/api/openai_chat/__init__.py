"""OpenAI Chat Completions: wire models (protocol), rendering (serving), routes (router)."""

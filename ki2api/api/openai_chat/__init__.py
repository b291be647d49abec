"""OpenAI Chat Completions: wire models (protocol), rendering (render), opening the answer
(serving), routes (router)."""

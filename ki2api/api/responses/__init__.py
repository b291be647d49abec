"""OpenAI Responses (stateless): wire models (protocol), rendering (serving), routes (router)."""

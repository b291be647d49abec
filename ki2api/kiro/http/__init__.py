"""Talking HTTP to Kiro: the connection transport, the chat call with its timeouts, and the MCP
web-search call."""

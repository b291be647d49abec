"""Ki2API: OpenAI- and Anthropic-compatible gateway to the Claude models behind a Kiro account."""

__version__ = "0.1.0"

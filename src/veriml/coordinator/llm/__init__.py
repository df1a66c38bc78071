"""The OpenAI-compatible LLM API: completions, their checks and errors (docs/llm.md)."""

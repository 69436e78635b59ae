"""The OpenAI-compatible gateway: chat/completions endpoints, tool-call rendering and LLM-call spans."""

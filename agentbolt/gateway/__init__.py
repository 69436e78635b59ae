"""The OpenAI-compatible gateway: chat/completions endpoints, tool-call rendering and LLM-call spans.

One call, module by module: ``routes.py`` (the ``/v1`` routes) → ``attribution.py`` (which attempt it belongs
to) → ``serving_chat.py`` / ``serving_completion.py`` (validate with ``validation.py``, render the prompt ids,
and later build the response) → ``gateway.py`` (admission, limits, generation on a ``backend.py`` /
``upstream.py`` backend) → ``llm_spans.py`` (one span per choice) → ``recorder.py`` (batched writes).
``call.py`` holds the call's data, ``text.py`` token ids ⇄ text, ``tools.py`` the tool-call format,
``fidelity.py`` the token-fidelity check, ``reports.py`` the ``/api`` fidelity and stats reports.
"""

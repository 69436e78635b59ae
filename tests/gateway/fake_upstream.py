"""A fake OpenAI-compatible inference server for the upstream tests and the gateway benchmark.

A bare asyncio HTTP/1.1 server (keep-alive, Content-Length bodies only): it answers in a few microseconds,
so a benchmark through it measures the gateway, not the fake. It answers

- ``POST /v1/completions`` like vLLM with ``return_token_ids`` (``mode="vllm"``: ``token_ids``, logprobs
  with ``"token_id:<id>"`` token names) or like a generic server (``mode="generic"``: text only, with
  logprobs named by ``token_texts`` when given);
- ``POST /v1/chat/completions`` with the same reply as an assistant message (the benchmark's direct calls);
- ``GET /v1/models``.

Every request body is kept in ``requests`` (tests inspect what the backend sent). ``fail_status`` makes
every call answer that status with an OpenAI-style error, ``delay_s`` delays every answer.

Run on a thread (tests)::

    with FakeUpstream(name="a", reply_ids=[...], reply_text="...") as fake:
        fake.url  # http://127.0.0.1:PORT/v1

or as its own process (benchmarks)::

    python -m tests.gateway.fake_upstream --port 8001 --reply-ids 1,2,3 --reply-text hi
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from agentbolt.server.background import free_port

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 500: "Internal Server Error"}


@dataclass
class FakeUpstream:
    """A fake vLLM-style server with a fixed reply. Mutable: tests flip ``fail_status`` or ``mode`` live."""

    name: str = "fake"
    reply_ids: list[int] = field(default_factory=lambda: [9906, 2])
    reply_text: str = "Hello<|im_end|>"
    chat_text: str | None = None  # the chat endpoint's message content (default reply_text)
    mode: str = "vllm"  # "vllm": token ids in the answer; "generic": text only
    token_texts: list[str] | None = None  # generic mode: logprobs.tokens to send (None: no logprobs)
    usage_completion_tokens: int | None = None  # default len(reply_ids)
    model_version_header: int | None = None
    fail_status: int | None = None
    fail_message: str = "the fake upstream was told to fail"
    delay_s: float = 0.0
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = self.port or free_port(self.host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.last_query = ""  # the query string of the request being answered

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # --- answers ---------------------------------------------------------------------------------------

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The /v1/completions answer to ``body``."""
        n = len(self.reply_ids)
        choice: dict[str, Any] = {"index": 0, "text": self.reply_text, "finish_reason": "stop", "stop_reason": None}
        want_logprobs = body.get("logprobs") is not None
        if self.mode == "vllm":
            choice["token_ids"] = self.reply_ids
            choice["prompt_token_ids"] = body.get("prompt")
            if want_logprobs:
                k = int(body["logprobs"])
                names = [f"token_id:{i}" for i in self.reply_ids]
                values = [-0.25 * (j + 1) for j in range(n)]
                top = [
                    {names[j]: values[j], **{f"token_id:{1000 + a}": values[j] - 1 - a for a in range(k)}}
                    for j in range(n)
                ]
                choice["logprobs"] = {"tokens": names, "token_logprobs": values, "top_logprobs": top, "text_offset": []}
        elif want_logprobs and self.token_texts is not None:
            values = [-0.5 * (j + 1) for j in range(len(self.token_texts))]
            choice["logprobs"] = {"tokens": self.token_texts, "token_logprobs": values}
        completion_tokens = self.usage_completion_tokens if self.usage_completion_tokens is not None else n
        prompt = body.get("prompt")
        prompt_tokens = len(prompt) if isinstance(prompt, list) else 1
        return {
            "id": f"cmpl-{self.name}",
            "object": "text_completion",
            "created": 0,
            "model": body.get("model", "fake"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The /v1/chat/completions answer (the benchmark's direct baseline)."""
        n = len(self.reply_ids)
        return {
            "id": f"chatcmpl-{self.name}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.chat_text or self.reply_text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n},
        }

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
        extra: list[tuple[str, str]] = []
        if self.model_version_header is not None:
            extra.append(("X-Agentbolt-Model-Version", str(self.model_version_header)))
        if method == "GET" and path == "/v1/models":
            return 200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode(), extra
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return 404, _error(f"no route {method} {path}"), extra
        parsed = json.loads(body) if body else {}
        self.requests.append(parsed)
        if self.fail_status is not None:
            return self.fail_status, _error(self.fail_message), extra
        answer = self.completion(parsed) if path == "/v1/completions" else self.chat_completion(parsed)
        return 200, json.dumps(answer).encode(), extra

    # --- HTTP/1.1 ----------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                self.headers_seen.append(headers)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                route, _, self.last_query = path.partition("?")
                status, payload, extra = self._answer(method, route, body)
                out = [
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
                    "Content-Type: application/json",
                    f"Content-Length: {len(payload)}",
                ]
                out += [f"{k}: {v}" for k, v in extra]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + payload)
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def serve(self) -> None:
        """Serve until :meth:`stop` (or the process ends)."""
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stopping.wait()
        self._server.close()
        for writer in list(self._writers):  # a stopped server drops its keep-alive connections too
            writer.close()
        await self._server.wait_closed()

    def start(self) -> FakeUpstream:
        """Serve on a background thread with its own event loop."""
        self._thread = threading.Thread(target=asyncio.run, args=(self.serve(),), name=f"fake-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the fake upstream on port {self.port} did not start")
        return self

    def stop(self) -> None:
        """Stop serving and close the port and every open connection."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake vLLM-style upstream with a fixed reply.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reply-ids", default="9906,2", help="comma-separated token ids of the reply")
    parser.add_argument("--reply-text", default="Hello<|im_end|>")
    parser.add_argument("--chat-text", default=None, help="chat endpoint's reply (default --reply-text)")
    parser.add_argument("--mode", choices=["vllm", "generic"], default="vllm")
    args = parser.parse_args()
    fake = FakeUpstream(
        reply_ids=[int(i) for i in args.reply_ids.split(",")],
        reply_text=args.reply_text,
        chat_text=args.chat_text,
        mode=args.mode,
        host=args.host,
        port=args.port,
    )
    fake.requests = _Discard()  # a long benchmark run must not grow memory
    fake.headers_seen = _Discard()
    try:
        import uvloop
    except ImportError:
        asyncio.run(fake.serve())
    else:
        uvloop.run(fake.serve())


class _Discard(list[Any]):
    def append(self, item: Any) -> None:
        pass


if __name__ == "__main__":
    main()

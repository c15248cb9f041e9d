"""A real OpenAI-compatible HTTP server on loopback, for tests.

It speaks the two REST endpoints this project calls through the official
``openai`` client, ``POST /v1/chat/completions`` and ``POST /v1/embeddings``,
with the JSON shapes that client parses. Every request is recorded (path, JSON
body, Authorization header) so a test can assert that the server was called
and how. Answers are deterministic:

- chat: a description derived from the emotion label quoted in the prompt
  (``emotion 'joy'``), or whatever ``chat_reply`` returns;
- embeddings: a hash-seeded vector of ``embedding_dim`` floats per input,
  reproducible with :func:`loopback_embedding`.

Errors on demand: :meth:`OpenAILoopback.fail_next` makes the next requests
answer with an HTTP error (401, 500, ...); ``api_key`` makes every request
with another bearer token answer 401.

    with OpenAILoopback(api_key="k") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k")
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "OpenAILoopback",
    "RecordedRequest",
    "closed_port_url",
    "default_chat_reply",
    "loopback_embedding",
]

_LABEL_RE = re.compile(r"emotion '([^']+)'")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    body: Any  # parsed JSON, or None when the body was not JSON
    authorization: str | None


def default_chat_reply(label: str | None, body: dict) -> str:
    """The server's chat answer: a fixed sentence built from the label in the prompt."""
    if label is None:
        return "No emotion label was found in the prompt."
    return f"Loopback description of {label}: a line that shows {label} in conversation."


def loopback_embedding(model: str, text: str, dim: int) -> list[float]:
    """The vector the server returns for ``text`` under ``model`` (hash-seeded, deterministic).

    Values are rounded through float32 so that they survive both the JSON
    float and the base64 float32 encodings unchanged.
    """
    seed = int.from_bytes(hashlib.sha256(f"{model}\x00{text}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    raw = [rng.uniform(-1.0, 1.0) for _ in range(dim)]
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *raw)))


def closed_port_url() -> str:
    """A ``http://127.0.0.1:<port>/v1`` URL where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class OpenAILoopback:
    """OpenAI-compatible HTTP server on 127.0.0.1 with a free port; a context manager.

    Args:
        api_key: when set, requests whose ``Authorization`` is not ``Bearer <api_key>``
            get 401 like the real API.
        embedding_dim: length of every embedding vector.
        chat_reply: ``(label or None, request body) -> content`` for chat answers.
        reverse_embeddings: list embedding items in reverse index order (clients
            must order by ``index``, as the API does not promise input order).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        embedding_dim: int = 16,
        chat_reply: Callable[[str | None, dict], str] = default_chat_reply,
        reverse_embeddings: bool = False,
    ) -> None:
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim!r}")
        self.api_key = api_key
        self.embedding_dim = embedding_dim
        self.chat_reply = chat_reply
        self.reverse_embeddings = reverse_embeddings
        self._requests: list[RecordedRequest] = []
        self._failures: deque[tuple[int, str]] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------

    def start(self) -> OpenAILoopback:
        """Bind a free loopback port and serve in a background thread."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-loopback", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAILoopback:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # inspection and control -----------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("OpenAILoopback is not running; use `with OpenAILoopback() as server:`")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """The URL to give the ``openai`` client as ``base_url``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """The recorded requests whose path is ``path`` (e.g. ``/v1/chat/completions``)."""
        return [r for r in self.requests if r.path == path]

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    def fail_next(self, status: int, count: int = 1, message: str = "injected failure") -> None:
        """Answer the next ``count`` requests with HTTP ``status`` and an OpenAI error body."""
        with self._lock:
            self._failures.extend([(status, message)] * count)

    # request handling (called from server threads) ---------------------------------

    def _record(self, request: RecordedRequest) -> tuple[int, str] | None:
        with self._lock:
            self._requests.append(request)
            return self._failures.popleft() if self._failures else None

    def _chat_completion(self, body: dict) -> dict:
        model = body.get("model")
        messages = body.get("messages") or []
        prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        match = _LABEL_RE.search(prompt)
        content = self.chat_reply(match.group(1) if match else None, body)
        prompt_tokens = len(prompt.split())
        completion_tokens = len(content.split())
        return {
            "id": f"chatcmpl-loopback-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _embeddings(self, body: dict) -> tuple[int, dict]:
        model = body.get("model")
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            return 400, _error_body("'input' must be a string or a non-empty list of strings", "invalid_request_error")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = loopback_embedding(str(model), text, self.embedding_dim)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii") if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        if self.reverse_embeddings:
            data.reverse()
        tokens = sum(len(t.split()) for t in inputs)
        return 200, {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _error_body(message: str, error_type: str, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def _make_handler(owner: OpenAILoopback) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "openai-loopback/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # keep test output clean

        def _send(self, status: int, payload: dict) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                body = None
            path = self.path.split("?", 1)[0]
            auth = self.headers.get("Authorization")
            failure = owner._record(RecordedRequest("POST", path, body, auth))
            if failure is not None:
                status, message = failure
                self._send(status, _error_body(message, "server_error" if status >= 500 else "invalid_request_error"))
                return
            if owner.api_key is not None and auth != f"Bearer {owner.api_key}":
                self._send(401, _error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
                return
            if not isinstance(body, dict):
                self._send(400, _error_body("request body must be a JSON object", "invalid_request_error"))
                return
            if path == "/v1/chat/completions":
                self._send(200, owner._chat_completion(body))
            elif path == "/v1/embeddings":
                self._send(*owner._embeddings(body))
            else:
                self._send(404, _error_body(f"unknown path {path}", "invalid_request_error"))

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            owner._record(RecordedRequest("GET", self.path, None, self.headers.get("Authorization")))
            self._send(404, _error_body(f"unknown path {self.path}", "invalid_request_error"))

    return Handler

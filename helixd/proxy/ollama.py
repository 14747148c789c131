"""The Ollama dialect, translated to and from the OpenAI one every upstream speaks.

``/api/chat`` → ``/v1/chat/completions``, ``/api/generate`` → ``/v1/completions``,
``/api/embed`` and the older ``/api/embeddings`` (one ``prompt``, one ``embedding``) →
``/v1/embeddings``; answers come back as Ollama objects, streamed as NDJSON (Ollama
streams unless ``"stream": false``). Native pass-through to models that
Ollama itself hosts comes with the Ollama adapter; this covers every other provider.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from helixd.edge.client import Pool, UpstreamIOError
from helixd.edge.message import Answer, Request, Response, StreamResponse, json_response
from helixd.errors import EndpointError
from helixd.proxy.errors import OPENAI_STATUS
from helixd.proxy.relay import DROPPED_HEADERS, RelayResult, open_upstream, read_bounded

# Ollama's request options that have an OpenAI field of the same meaning.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


class BadOllamaRequest(EndpointError, ValueError):
    """A request that is not valid Ollama; the message names the field."""

    code = "bad_request"


# The Ollama dialect's codes → HTTP status. Ollama's errors carry no code, only the text,
# so its clients read the status alone: each code means here what it means in the OpenAI
# dialect (the same requests reach both), and the dialect adds the requests that are not
# Ollama's. An upstream's own error status passes through as it came.
OLLAMA_STATUS: Final[Mapping[str, int]] = {**OPENAI_STATUS, BadOllamaRequest.code: 400}


@dataclass(frozen=True)
class Translation:
    """An Ollama request as the OpenAI request to send, and how to answer back."""

    openai_path: str
    body: dict[str, Any]
    kind: str  # "chat" | "generate" | "embed" | "embeddings"
    stream: bool


def translate(path: str, body: Mapping[str, Any]) -> Translation:
    """Map an Ollama request body onto its OpenAI equivalent."""
    if path in ("/api/embed", "/api/embeddings"):
        return _embedding(path, body)
    stream = body.get("stream", True) is not False
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadOllamaRequest("'options' must be an object")
    common: dict[str, Any] = {"model": body["model"]}
    common.update({_OPTIONS[k]: v for k, v in options.items() if k in _OPTIONS})
    if body.get("format") == "json":
        common["response_format"] = {"type": "json_object"}
    if path == "/api/chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise BadOllamaRequest("'messages' must be a list of {role, content}")
        return Translation(
            "/v1/chat/completions",
            {**common, "messages": [_message(m) for m in messages], **_streaming(stream)},
            "chat",
            stream,
        )
    if path == "/api/generate":
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise BadOllamaRequest("'prompt' must be a string")
        if isinstance(body.get("system"), str):
            prompt = f"{body['system']}\n\n{prompt}"
        return Translation(
            "/v1/completions",
            {**common, "prompt": prompt, **_streaming(stream)},
            "generate",
            stream,
        )
    raise BadOllamaRequest(f"{path} is not an Ollama route helixd translates")


def _embedding(path: str, body: Mapping[str, Any]) -> Translation:
    # Sampling options mean nothing to an embedding: OpenAI servers may refuse them.
    if path == "/api/embeddings":  # the older route: one prompt, one vector
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise BadOllamaRequest("'prompt' must be a string")
        request: dict[str, Any] = {"model": body["model"], "input": [prompt]}
        return Translation("/v1/embeddings", request, "embeddings", False)
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise BadOllamaRequest("'input' must be a string or a list of strings")
    request = {"model": body["model"], "input": texts}
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            raise BadOllamaRequest("'dimensions' must be a positive integer")
        request["dimensions"] = dimensions
    return Translation("/v1/embeddings", request, "embed", False)


def _streaming(stream: bool) -> dict[str, Any]:
    # Ollama's last object carries token counts; OpenAI servers send usage in a stream
    # only when asked (those that do not know the option ignore it).
    if stream:
        return {"stream": True, "stream_options": {"include_usage": True}}
    return {"stream": False}


def _message(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadOllamaRequest("each message needs a 'role' and a 'content'")
    return {"role": message["role"], "content": message.get("content", "")}


def ollama_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Ollama's error shape: ``{"error": "text"}``."""
    return json_response({"error": message}, status=status, headers=headers)


def now_rfc3339() -> str:
    """Ollama's timestamps."""
    return rfc3339(time.time())


def rfc3339(epoch_s: float) -> str:
    """A wall-clock time in Ollama's format."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


class _Answer:
    """Builds Ollama answer objects for one request."""

    def __init__(self, model: str, kind: str) -> None:
        self.model = model
        self.kind = kind
        self.started = time.monotonic_ns()

    def piece(self, text: str) -> dict[str, Any]:
        payload: Any = {"role": "assistant", "content": text} if self.kind == "chat" else text
        key = "message" if self.kind == "chat" else "response"
        return {"model": self.model, "created_at": now_rfc3339(), key: payload, "done": False}

    def final(self, text: str, reason: str | None, usage: Mapping[str, Any]) -> dict[str, Any]:
        took = time.monotonic_ns() - self.started
        final = {
            **self.piece(text),
            "done": True,
            "done_reason": reason or "stop",
            "total_duration": took,
            "load_duration": 0,
            "eval_duration": took,
        }
        # Counts only when the upstream reported them: a 0 would be a made-up figure.
        for ours, theirs in (
            ("prompt_eval_count", "prompt_tokens"),
            ("eval_count", "completion_tokens"),
        ):
            if isinstance(usage.get(theirs), int):
                final[ours] = usage[theirs]
        return final


def _delta(kind: str, choice: Mapping[str, Any]) -> str:
    if kind == "chat":
        part = choice.get("delta") or choice.get("message") or {}
        content = part.get("content") if isinstance(part, dict) else None
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


async def relay_ollama(
    pool: Pool,
    request: Request,
    url: str,
    translation: Translation,
    model: str,
    extra_headers: dict[str, str],
    started: float,
    clock: Callable[[], float],
    may_retry: bool,
    upstream_headers: dict[str, str] | None = None,
) -> tuple[Answer, RelayResult]:
    """Send the OpenAI request; answer the client in Ollama's shape, streaming as NDJSON."""
    payload = json.dumps(translation.body).encode()
    upstream = await open_upstream(pool, url, payload, upstream_headers, may_retry)
    async with upstream:
        result = RelayResult(upstream.status, None)
        if upstream.status >= 400:
            # Ollama's error shape: {"error": "text"}.
            raw = await read_bounded(upstream)
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw[:500].decode(errors="replace")
            response = json_response({"error": message}, status=upstream.status)
            response.headers.update(extra_headers)
            return response, result
        answer = _Answer(model, translation.kind)
        if not translation.stream:
            data = await upstream.json()
            result.first_byte_s = clock() - started
            document = _whole(translation.kind, answer, data)
            if isinstance(data.get("usage"), dict):
                result.usage = data["usage"]
            response = json_response(document, headers=extra_headers)
            return response, result
        headers = {k: v for k, v in extra_headers.items() if k.lower() not in DROPPED_HEADERS}
        stream = StreamResponse(
            status=200, headers={**headers, "Content-Type": "application/x-ndjson"}
        )
        await stream.prepare(request)
        reason: str | None = None
        usage: Mapping[str, Any] = {}
        try:
            async for line in upstream.lines():
                text = line.strip()
                if not text.startswith(b"data:"):
                    continue
                data = text[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    raise ValueError(f"an event that is not a JSON object: {data[:80]!r}")
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    reason = choice.get("finish_reason") or reason
                    piece = _delta(translation.kind, choice)
                    if piece:
                        if result.first_byte_s is None:
                            result.first_byte_s = clock() - started
                        await stream.write((json.dumps(answer.piece(piece)) + "\n").encode())
        except (
            UpstreamIOError,
            TimeoutError,
            ValueError,  # a malformed event: the answer cannot go on
        ) as exc:
            result.failed_mid_stream = True
            error = {"error": f"the model's server failed mid-answer: {exc or type(exc).__name__}"}
            await stream.write((json.dumps(error) + "\n").encode())
            await stream.write_eof()
            return stream, result
        result.usage = dict(usage) or None
        await stream.write((json.dumps(answer.final("", reason, usage)) + "\n").encode())
        await stream.write_eof()
        return stream, result


def _whole(kind: str, answer: _Answer, data: Mapping[str, Any]) -> dict[str, Any]:
    if kind in ("embed", "embeddings"):
        vectors = [item.get("embedding") for item in data.get("data") or []]
        if kind == "embeddings":
            return {"embedding": vectors[0] if vectors else []}
        return {"model": answer.model, "embeddings": vectors}
    choice = (data.get("choices") or [{}])[0]
    text = _delta(kind, choice)
    return answer.final(text, choice.get("finish_reason"), data.get("usage") or {})

"""Serve a trained run over an OpenAI-compatible API (/v1/chat/completions, /v1/models).

    python -m blocks.serve --adapter data/demo/runs/RUN/adapter                 # http://127.0.0.1:8000/v1
    python -m blocks.serve --model models/smollm2-135m-instruct --port 8001
    UMTCDS_API_KEY=secret python -m blocks.serve --adapter ... --host 0.0.0.0   # clients send Bearer secret
    python -m blocks.serve --adapter data/demo/runs/RUN/adapter --project demo  # grounded in demo's pages

With --project, each question is answered from the passages the project's retrieval index finds
for it (blocks.index), and the reply ends with its sources ("Sources:" then one "[n] URL" line each);
the non-streamed response also lists them as `sources` ([{url, title}]).

Any OpenAI client works: `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")`, with
`model` set to the id listed by /v1/models. Requests are answered one at a time in arrival order
(the model's lock), so concurrent clients queue instead of failing. Streaming uses server-sent events.
A request body of the wrong shape gets 400 naming the field; one over MAX_REQUEST_BYTES gets 413, a
prompt that does not fit the model's context with its max_tokens gets 400; a client that hangs up (streamed
or not) ends its generation within a token or two, so the next client does not wait for a reply nobody reads.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from blocks.chat import ChatError, GenParams, LoadedModel, ask_messages, load_model, stream_reply
from blocks.workspace import is_loopback

API_KEY_ENV = "UMTCDS_API_KEY"
MAX_REQUEST_BYTES = 1_000_000  # a request body above this gets 413 before it is parsed
DISCONNECT_POLL_S = 0.2  # how often a running reply checks whether its client is still there


class ServeError(ValueError):
    """A serve option the server refuses; the message says what to do."""


class RequestError(ValueError):
    """A request the server answers with an error status (400 unless given); the message names the field."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_body(body: object) -> dict:
    """Return the request body if every field the server reads has the right type and a finite value,
    else raise RequestError naming the first field that does not (OpenAI's types; unknown keys are left)."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str):
        raise RequestError("model must be a string: the id listed by /v1/models.")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise RequestError("messages must be a list of {role, content} objects.")
    if not messages:
        raise RequestError("messages is empty: send at least one user message.")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestError(f"messages[{i}] must be an object with a string role and content.")
        content = m.get("content")
        if not (content is None or isinstance(content, str) or isinstance(content, list)):
            raise RequestError(f"messages[{i}].content must be a string or a list of text parts.")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise RequestError(f"{name} must be a whole number, got {json.dumps(value)[:40]}.")
    for name in ("temperature", "top_p", "repetition_penalty"):
        value = body.get(name)
        if value is not None and not _is_number(value):
            raise RequestError(f"{name} must be a finite number, got {json.dumps(value)[:40]}.")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise RequestError("stream must be true or false.")
    options = body.get("stream_options")
    if options is not None and (
        not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)
    ):
        raise RequestError('stream_options must be an object such as {"include_usage": true}.')
    return body


def check_context(loaded: LoadedModel, messages: list[dict], max_new_tokens: int) -> None:
    """Raise RequestError when the prompt plus max_tokens does not fit the model's context window.

    The cheap character bound first: a prompt of more characters than the context has tokens x 16 is
    refused before the tokenizer has to read it.
    """
    context = int(getattr(loaded.model.config, "max_position_embeddings", 0) or 0)
    if not context:
        return
    chars = sum(len(m["content"]) for m in messages)
    if chars > context * 16:
        raise RequestError(
            f"The prompt ({chars} characters) is far beyond the model's context of {context} tokens: shorten it.",
            413,
        )
    text = loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tokens = len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokens + max_new_tokens > context:
        raise RequestError(
            f"The prompt has {tokens} tokens; with max_tokens {max_new_tokens} that exceeds the model's context "
            f"of {context} tokens: shorten the messages or lower max_tokens."
        )


def to_messages(raw: list[dict]) -> list[dict]:
    """OpenAI messages (string content or text parts) to plain {role, content} dicts."""
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ChatError(f"messages[{i}] must be an object with role and content.")
        content = m.get("content")
        if isinstance(content, list):
            parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content):
                raise ChatError(f"messages[{i}]: only text content parts are supported.")
            content = "".join(parts)
        if content is None:
            content = ""
        messages.append({"role": m.get("role"), "content": content})
    return messages


def to_params(body: dict, max_new_tokens: int) -> GenParams:
    """Sampling settings from a request body, server defaults where absent."""
    defaults = GenParams(max_new_tokens=max_new_tokens)
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or defaults.max_new_tokens
    if not 1 <= limit <= 8192:
        raise ChatError(f"max_tokens {limit} is out of range: use 1 to 8192.")
    params = GenParams(
        temperature=defaults.temperature if body.get("temperature") is None else float(body["temperature"]),
        top_p=defaults.top_p if body.get("top_p") is None else float(body["top_p"]),
        max_new_tokens=int(limit),
        repetition_penalty=float(body.get("repetition_penalty") or defaults.repetition_penalty),
    )
    if params.temperature > 0 and params.top_p == 0:
        params.top_p = 1.0
    return params.check()


def error_body(message: str, kind: str, code: str | None = None) -> dict:
    """The error shape OpenAI clients parse into their exceptions."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def ground(messages: list[dict], project) -> tuple[list[dict], list]:
    """(messages with the last user turn put behind its retrieved passages, the passages), as the chat
    CLI and tab ground a question; a request that does not end in a user question is left as it is."""
    if project is None or not messages or messages[-1].get("role") != "user":
        return messages, []
    question = messages[-1]["content"]
    if not isinstance(question, str) or not question.strip():
        return messages, []
    system = messages[0]["content"] if messages[0].get("role") == "system" else ""
    return ask_messages(messages[1 if system else 0 : -1], question, system, project)


def sources_text(reply: str, hits: list) -> tuple[str, list[dict]]:
    """The 'Sources:' block appended to a grounded reply, and the cited passages as {url, title}."""
    from blocks.index import cited_hits, format_sources

    cited = cited_hits(reply, hits)
    if not cited:
        return "", []
    return "\n\nSources:\n" + format_sources(cited), [
        {"url": h.passage.url, "title": h.passage.title} for h in cited
    ]


def create_app(loaded: LoadedModel, api_key: str | None = None, max_new_tokens: int = 512, project=None):
    """The FastAPI app answering with `loaded`; with `api_key`, every request needs `Bearer <api_key>`;
    with `project`, answers are grounded in its retrieval index and cite their sources."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    model_id = loaded.name
    app = FastAPI(title="UMTCDS model server", docs_url=None, redoc_url=None, openapi_url=None)
    started = int(time.time())
    expected = api_key.encode("utf-8") if api_key else None

    class Guard:
        """Key and size checks as plain ASGI middleware: Starlette's BaseHTTPMiddleware would hide a
        client's disconnect from the endpoint (see collect_reply)."""

        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] == "http":
                headers = dict(scope["headers"])  # lower-case names, values as the bytes sent
                refusal = refuse_request(
                    headers.get(b"authorization", b""), headers.get(b"content-length"), expected
                )
                if refusal is not None:
                    status, message, kind = refusal
                    await JSONResponse(error_body(message, kind), status_code=status)(scope, receive, send)
                    return
            await self.app(scope, receive, send)

    app.add_middleware(Guard)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []))
        msg = f"Invalid request: {where}: {first.get('msg', 'bad value')}"
        return JSONResponse(error_body(msg, "invalid_request_error"), status_code=400)

    @app.get("/v1/models")
    def list_models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": started, "owned_by": "umtcds"}],
        }

    async def chat_completions(request):
        try:
            body = await read_body(request)
            if isinstance(body, dict) and body.get("model") != model_id:
                msg = f"The model {str(body.get('model'))[:100]!r} does not exist: this server serves {model_id!r}."
                return JSONResponse(
                    error_body(msg, "invalid_request_error", "model_not_found"), status_code=404
                )
            check_body(body)
            if body.get("n") not in (None, 1):
                raise RequestError("n must be 1.")
            params = to_params(body, max_new_tokens)
            messages, hits = await asyncio.to_thread(ground, to_messages(body["messages"]), project)
            stream = stream_reply(loaded, messages, params)
            check_context(loaded, stream.messages, params.max_new_tokens)
        except RequestError as exc:
            return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=exc.status)
        except (ChatError, TypeError, ValueError) as exc:
            return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=400)
        reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = sse_events(stream, reply_id, created, model_id, include_usage, hits)
            return StreamingResponse(
                until_disconnect(events, stream, request), media_type="text/event-stream"
            )
        try:
            text = await collect_reply(stream, request)
        except ChatError as exc:
            return JSONResponse(error_body(str(exc), "server_error"), status_code=500)
        if text is None:  # the client hung up; nobody reads this
            return JSONResponse(error_body("client disconnected", "server_error"), status_code=499)
        reply = stream.reply
        extra, sources = sources_text(text, hits)
        text += extra
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        **({"sources": sources} if hits else {}),
                    },
                    "finish_reason": reply.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage(reply),
        }

    # Request is imported here (FastAPI is heavy): FastAPI must see the class itself, not the name.
    chat_completions.__annotations__ = {"request": Request}
    app.post("/v1/chat/completions")(chat_completions)
    return app


async def read_body(request) -> object:
    """The request's JSON body, read up to MAX_REQUEST_BYTES (413 beyond, also without a Content-Length)."""
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > MAX_REQUEST_BYTES:
            raise RequestError(
                f"The request body is over {MAX_REQUEST_BYTES} bytes: shorten the messages.", 413
            )
    try:
        return json.loads(bytes(data))
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"The request body is not valid JSON ({type(exc).__name__}).") from None


async def collect_reply(stream, request) -> str | None:
    """The whole reply text, or None (the generation stopped) when the client disconnects first."""
    job = asyncio.ensure_future(asyncio.to_thread(lambda: "".join(stream)))
    while True:
        done, _ = await asyncio.wait({job}, timeout=DISCONNECT_POLL_S)
        if done:
            return job.result()
        if await request.is_disconnected():
            stream.stop()
            await asyncio.wait({job})
            return None


async def until_disconnect(events: Iterator[str], stream, request):
    """Pass on the server-sent events of `events` (pulled on a worker thread) until the client disconnects;
    then the generation is stopped. (An ASGI server may not tell a streaming response that its client left.)"""
    finished = object()
    try:
        while True:
            pull = asyncio.ensure_future(asyncio.to_thread(next, events, finished))
            while True:
                done, _ = await asyncio.wait({pull}, timeout=DISCONNECT_POLL_S)
                if done or await request.is_disconnected():
                    break
            if not done:
                stream.stop()
                return
            event = pull.result()
            if event is finished:
                return
            yield event
    finally:
        stream.stop()  # also when the response task is cancelled: the generation ends after its token


def refuse_request(authorization: bytes, content_length: bytes | None, expected: bytes | None):
    """(status, message, type) when a request is refused before it is read, else None.

    The key is compared as bytes (a non-ASCII key arrives as its UTF-8 bytes) in constant time.
    """
    if expected is not None:
        token = authorization[7:] if authorization[:7].lower() == b"bearer " else b""
        if not hmac.compare_digest(token, expected):  # constant time: no guessing by timing
            return 401, "Invalid or missing API key: send 'Authorization: Bearer <key>'.", "auth_error"
    if content_length is not None and (
        not content_length.isdigit() or int(content_length) > MAX_REQUEST_BYTES
    ):
        return (
            413,
            f"The request body is over {MAX_REQUEST_BYTES} bytes: shorten the messages.",
            "invalid_request_error",
        )
    return None


def usage(reply) -> dict:
    """OpenAI usage numbers of a finished reply."""
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def sse_events(
    stream, reply_id: str, created: int, model_id: str, include_usage: bool, hits: list | None = None
) -> Iterator[str]:
    """Server-sent events of one streamed reply (its sources last when grounded), ending with `data: [DONE]`."""

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        data = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model_id}
        data.update(choices=choices, **extra)
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    pieces = []
    try:
        for piece in stream:
            pieces.append(piece)
            yield chunk({"content": piece})
    except ChatError as exc:
        # Headers are already sent: report in-band, which OpenAI clients raise as APIError.
        yield f"data: {json.dumps(error_body(str(exc), 'server_error'))}\n\n"
        return
    finally:
        stream.stop()  # a client that hung up ends the generation too
    if hits:
        extra, _ = sources_text("".join(pieces), hits)
        if extra:
            yield chunk({"content": extra})
    yield chunk({}, stream.reply.finish_reason)
    if include_usage:
        data = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model_id}
        data.update(choices=[], usage=usage(stream.reply))
        yield f"data: {json.dumps(data)}\n\n"
    yield "data: [DONE]\n\n"


@dataclass
class RunningServer:
    """A uvicorn server running in a background thread (tests, or the app's own use)."""

    server: Any
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        """Ask uvicorn to shut down and wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(app, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Start `app` on host:port (0 = a free port) in a thread; returns once it accepts connections."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="umtcds-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServeError(f"The server did not start on {host}:{port}: see the log above.")
        time.sleep(0.02)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(server, thread, f"http://{shown}:{bound}/v1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="base model folder (with --adapter: only if it moved)")
    parser.add_argument(
        "--adapter", default=None, help="adapter folder: runs/<run-id>/adapter or checkpoint-N"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=None, help=f"require this Bearer key (or set {API_KEY_ENV})")
    parser.add_argument(
        "--insecure-no-auth", action="store_true", help="allow a non-loopback address without an API key"
    )
    parser.add_argument("--max-new-tokens", type=int, default=512, help="default reply length limit")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--project", default=None, help="ground answers in this project's pages and cite them"
    )
    args = parser.parse_args(argv)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        if not 1 <= args.port <= 65535:
            raise ServeError(
                f"--port {args.port} is out of range: choose a port from 1 to 65535 (default 8000)."
            )
        if not 1 <= args.max_new_tokens <= 8192:
            raise ServeError(f"--max-new-tokens {args.max_new_tokens} is out of range: use 1 to 8192.")
        if not is_loopback(args.host) and api_key is None and not args.insecure_no_auth:
            raise ServeError(
                f"Refusing to serve on {args.host} without an API key: anyone who reaches the port could use "
                f"the model. Pass --api-key KEY (or set {API_KEY_ENV}), or --insecure-no-auth if you mean it."
            )
        project = None
        if args.project:
            from blocks.index import ensure_index
            from blocks.workspace import get_project

            project = get_project(args.project)
            ensure_index(project)  # nothing to index: say so before the slow model load
        sock = bind_socket(args.host, args.port)  # before the slow model load: fail fast on a taken port
        loaded = load_model(args.model, args.adapter, args.device)
    except (ChatError, ServeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    app = create_app(loaded, api_key, args.max_new_tokens, project)
    print(f"Serving {loaded.describe()}", flush=True)
    print(f"OpenAI base_url: http://{args.host}:{args.port}/v1   model: {loaded.name}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port, or ServeError saying why it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
    except (OSError, UnicodeError) as exc:
        raise ServeError(
            f"Cannot listen on {host}:{port} ({getattr(exc, 'strerror', None) or exc}): the port may be taken "
            "or the address is not one of this machine's; choose another --port or --host."
        ) from exc
    return sock


if __name__ == "__main__":
    sys.exit(main())

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
"""

from __future__ import annotations

import argparse
import hmac
import json
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


class ServeError(ValueError):
    """A serve option the server refuses; the message says what to do."""


def to_messages(raw: list[dict]) -> list[dict]:
    """OpenAI messages (string content or text parts) to plain {role, content} dicts."""
    messages = []
    for i, m in enumerate(raw):
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
    expected = api_key.encode() if api_key else None

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if expected is not None:
            given = request.headers.get("authorization", "")
            token = given[7:].encode() if given.lower().startswith("bearer ") else b""
            if not hmac.compare_digest(token, expected):  # constant time: no guessing by timing
                body = error_body(
                    "Invalid or missing API key: send 'Authorization: Bearer <key>'.", "auth_error"
                )
                return JSONResponse(body, status_code=401)
        return await call_next(request)

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

    @app.post("/v1/chat/completions")
    def chat_completions(body: dict[str, Any]):
        if body.get("model") != model_id:
            msg = f"The model {body.get('model')!r} does not exist: this server serves {model_id!r}."
            return JSONResponse(error_body(msg, "invalid_request_error", "model_not_found"), status_code=404)
        if int(body.get("n") or 1) != 1:
            return JSONResponse(error_body("n must be 1.", "invalid_request_error"), status_code=400)
        if not isinstance(body.get("messages"), list):
            return JSONResponse(
                error_body("messages must be a list.", "invalid_request_error"), status_code=400
            )
        try:
            messages, hits = ground(to_messages(body["messages"]), project)
            stream = stream_reply(loaded, messages, to_params(body, max_new_tokens))
        except (ChatError, TypeError, ValueError) as exc:
            return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=400)
        reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = sse_events(stream, reply_id, created, model_id, include_usage, hits)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            text = "".join(stream)
        except ChatError as exc:
            return JSONResponse(error_body(str(exc), "server_error"), status_code=500)
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

    return app


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

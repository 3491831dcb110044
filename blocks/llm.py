"""Chat clients for the LLM stages: Zhipu AI, any OpenAI-compatible server, or a local HF model.

All three offer `chat(messages, max_tokens=, temperature=) -> str`, `count_tokens(text)` and
`context_tokens`; `make_client(ClientSettings(...))` picks one. `run_requests` runs many requests
through a client: a bounded thread pool with retries for the HTTP backends, length-sorted
left-padded batches for the local one. Stage functions (blocks.clean, blocks.qa) take the client.

    python -m blocks.llm --backend openai --base-url http://127.0.0.1:8000/v1 --model qwen "Hello"
    python -m blocks.llm --backend zhipu "你好"                   # key from ZHIPUAI_API_KEY
    python -m blocks.llm --backend local --model-path models/smollm2-135m-instruct "Hi"
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

BACKENDS = ("zhipu", "openai", "local")
DEFAULT_ZHIPU_MODEL = "glm-4-flash"
DEFAULT_ZHIPU_URL = "https://open.bigmodel.cn/api/paas/v4"
ZHIPU_CONTENT_FILTER = "1301"
ZHIPU_RATE_LIMIT = {"1302", "1303", "1305"}  # concurrency, frequency, traffic limits

Messages = list[dict[str, str]]


# ---------------------------------------------------------------- errors


class LLMError(RuntimeError):
    """A chat request failed; `reason` is a short label used in run summaries."""

    reason = "error"
    retryable = False

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(LLMError):
    reason, retryable = "rate_limited", True


class ServerError(LLMError):
    reason, retryable = "server_error", True


class LLMConnectionError(LLMError):
    reason, retryable = "connection", True


class LLMTimeoutError(LLMError):
    reason, retryable = "timeout", True


class MalformedResponseError(LLMError):
    reason, retryable = "malformed_response", True


class TruncatedResponseError(MalformedResponseError):
    """The response ended before its promised length (a dropped connection, a proxy or server cut it)."""

    reason = "truncated"


class EmptyOutputError(LLMError):
    reason, retryable = "empty_output", True


class ContentFilterError(LLMError):
    """The provider refused the content (Zhipu 1301); retrying the same text will not help."""

    reason = "content_filter"


class AuthError(LLMError):
    reason = "auth"


class BadRequestError(LLMError):
    reason = "bad_request"


class NotFoundError(LLMError):
    """HTTP 404: the base URL's path or the model name is wrong, so every request gets the same answer."""

    reason = "not_found"


class RefusedAddressError(LLMError):
    """The exposed app refused to connect: the API's address is loopback, private or link-local."""

    reason = "private_address"


class ContextOverflowError(LLMError):
    reason = "context_overflow"


class OutOfMemoryError(LLMError):
    reason = "out_of_memory"


class StoppedError(LLMError):
    reason = "stopped"


class SettingsError(ValueError):
    """Client settings that cannot work; the message says what to change."""


# ---------------------------------------------------------------- settings and protocol


@dataclass
class ClientSettings:
    """Which backend to use and how; the API key is held only in memory and never shown."""

    backend: str = "zhipu"
    model: str = ""  # API model name; empty = backend default
    base_url: str = ""  # empty = backend default
    api_key: str = field(default="", repr=False)
    model_path: str = ""  # local backend: HF folder
    timeout: float = 120.0  # seconds per HTTP request
    batch_size: int = 8  # local backend
    context_tokens: int = 0  # 0 = backend default / model config
    static_cache: bool = False  # local backend on a GPU: compiled static KV cache (see generate_ids)
    allow_private: bool = True  # False when the app is exposed: the API must be at a public address


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, honouring Retry-After."""

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0
    item_timeout: float = 300.0  # total seconds one item may spend, retries included


class StopSignal(Protocol):
    """Anything with is_set(): a threading.Event, or blocks.clean.StopFlag (a file)."""

    def is_set(self) -> bool: ...


class ChatClient(Protocol):
    backend: str
    model: str
    context_tokens: int

    def chat(self, messages: Messages, max_tokens: int = 1024, temperature: float = 0.3) -> str: ...

    def count_tokens(self, text: str) -> int: ...


def check_base_url(base_url: str, backend: str, allow_private: bool = True) -> str:
    """Return a usable http(s) base URL (stripped), or raise SettingsError saying what it should look like.

    With `allow_private` False (the app is exposed) the host must resolve to public addresses only, by the
    crawler's rule (blocks.crawl.check_address): an exposed app must not become a way into the machine's
    own services or the cloud's metadata address (169.254.169.254).
    """
    from urllib.parse import urlsplit

    url = (base_url or "").strip()
    example = "http://127.0.0.1:8000/v1" if backend == "openai" else DEFAULT_ZHIPU_URL
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise SettingsError(
            f"The base URL {url[:200]!r} is not an http(s) address: write it like {example} "
            "(scheme, host, optional port and path)."
        )
    if any(ch.isspace() for ch in url):
        raise SettingsError(f"The base URL {url[:200]!r} contains spaces: remove them.")
    if not allow_private:
        check_public_url(url)
    return url


def check_public_url(url: str) -> None:
    """Raise SettingsError unless every address `url`'s host resolves to is public (the crawler's rule)."""
    from blocks.crawl import CrawlOptions, FetchFailed, check_address

    try:
        check_address(url, CrawlOptions(allow_private=False))
    except FetchFailed as exc:
        what = str(exc.args[1] if len(exc.args) > 1 else exc).split(";")[0]
        raise SettingsError(
            f"The base URL is refused: {what}. While the app is exposed, the LLM API must be at a public "
            "address; to use a server on this machine or your network, run the app on 127.0.0.1 or use the "
            "command line (python -m blocks.clean / blocks.qa)."
        ) from None


def public_only_http_client(timeout: float):
    """An httpx.Client whose every new connection must reach a public address (blocks.crawl's rule).

    check_public_url resolves the name once; the connection resolves it again, and a redirect may name
    another host. So, as the crawler does, each socket's real peer is checked right after the TCP connect,
    before a byte is sent: a name that re-resolves to 127.0.0.1 (DNS rebinding) or a redirect to
    169.254.169.254 is refused. Requests through an HTTP(S)_PROXY are connected by the proxy, as for the crawler.
    """
    import ipaddress

    import httpcore
    import httpx

    from blocks.crawl import is_public_address

    class PublicOnlyBackend(httpcore.SyncBackend):
        def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            stream = super().connect_tcp(host, port, timeout, local_address, socket_options)
            peer = ipaddress.ip_address(stream.get_extra_info("socket").getpeername()[0].split("%")[0])
            if not is_public_address(peer):
                stream.close()
                raise RefusedAddressError(
                    f"{host} connected to {peer}, a loopback/private/link-local address: while the app is "
                    "exposed, the LLM API must be at a public address (run the app on 127.0.0.1 to use a local server)."
                )
            return stream

    transport = httpx.HTTPTransport()
    transport._pool._network_backend = PublicOnlyBackend()  # httpx has no public hook for the connect step
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=True)


def estimate_tokens(text: str) -> int:
    """Conservative token estimate for hosted models whose tokenizer we cannot load offline.

    Chinese characters are counted as one token each (GLM/Qwen average ~0.7), other text as one
    token per 3 characters (English averages ~4), so chunks never exceed the real limit.
    """
    cjk = len(re.findall(r"[\u3000-\u9fff\uff00-\uffef]", text))
    return cjk + (len(text) - cjk + 2) // 3


# ---------------------------------------------------------------- HTTP clients


def provider_message(response) -> str:
    """The provider's own error message from a JSON error body, cut to 200 characters; '' otherwise.

    Never the raw body: a base URL that points at some other service must not get its pages quoted back.
    """
    try:
        body = json.loads(response.text)
    except (ValueError, AttributeError, RecursionError):
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) and isinstance(body, dict):
        message = body.get("message") if isinstance(body.get("message"), str) else None
    return " ".join(message.split())[:200] if isinstance(message, str) else ""


_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;}]+")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with each secret, and any bearer/basic credential, replaced by ***."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _BEARER.sub(lambda m: m.group(1) + " ***", text)


def without_secrets(error: LLMError, secrets: tuple[str, ...]) -> LLMError:
    """`error` with its message redacted and its cause dropped (an SDK error's text quotes the response
    body, and a server that echoes the Authorization header puts the key there)."""
    error.args = (redact(str(error), secrets),)
    error.__cause__, error.__suppress_context__ = None, True
    return error


def _error_code(response) -> str | None:
    """The provider's error code from a JSON error body ({"error": {"code": ...}}), if any."""
    try:
        body = json.loads(response.text)
    except (ValueError, AttributeError, RecursionError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if code is not None else None


def _retry_after(response) -> float | None:
    """Seconds from a Retry-After header (numeric form only; dates are rare for LLM APIs)."""
    value = getattr(response, "headers", {}).get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def translate_status_error(status: int, response, base_url: str = "") -> LLMError:
    """Map an HTTP error response of either SDK to one of our errors (quoting only the provider's message)."""
    code = _error_code(response)
    said = provider_message(response)
    short = f": {said}" if said else ""
    if code == ZHIPU_CONTENT_FILTER:
        return ContentFilterError(f"content filter refused the request (code 1301){short}")
    if status == 429 or code in ZHIPU_RATE_LIMIT:
        return RateLimitedError(f"rate limited (HTTP {status}, code {code})", _retry_after(response))
    if status in (401, 403):
        return AuthError(f"the API key was refused (HTTP {status}): check the key and the base URL")
    if status == 404:
        return NotFoundError(
            f"HTTP 404 from {base_url or 'the API'}{short}: check the base URL (an OpenAI-compatible server's "
            "usually ends in /v1, e.g. http://127.0.0.1:8000/v1) and the model name"
        )
    if status >= 500 or status in (408, 409):
        return ServerError(f"server error HTTP {status}{short}", _retry_after(response))
    return BadRequestError(f"request refused HTTP {status}{short}")


def _content_of(completion) -> str:
    """The assistant text of a completion, or a specific error when there is none."""
    try:
        choice = completion.choices[0]
        content = choice.message.content
        finish = getattr(choice, "finish_reason", None)
    except (AttributeError, IndexError, TypeError) as exc:
        raise MalformedResponseError("the response has no choices[0].message") from exc
    if finish in ("content_filter", "sensitive"):
        raise ContentFilterError(f"the provider filtered the output (finish_reason={finish})")
    if not isinstance(content, str):
        raise MalformedResponseError(f"the response content is not text but {type(content).__name__}")
    if not content.strip():
        raise EmptyOutputError("the model returned an empty answer")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON escape such as \ud800: no file could hold this text
        raise MalformedResponseError(
            f"the answer is not valid Unicode (a lone surrogate at character {exc.start})"
        ) from None
    return content


class OpenAIClient:
    """Any OpenAI-compatible endpoint (vLLM, Ollama, LM Studio, DeepSeek, blocks.serve)."""

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout: float = 120.0,
        context_tokens=0,
        allow_private: bool = True,
    ):
        import openai

        if not base_url:
            raise SettingsError(
                "OpenAI-compatible backend: enter the server's base URL, e.g. http://host:8000/v1"
            )
        base_url = check_base_url(base_url, "openai", allow_private)
        if not model:
            raise SettingsError("OpenAI-compatible backend: enter the model name the server serves")
        self.base_url = base_url
        self.reached = False  # set by the first answer; until then a connection error means "wrong URL"
        self.model = model
        self.context_tokens = context_tokens or 32768
        # Local servers ignore the key but the SDK insists on one.
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._secrets = (key,)  # redacted from every error message (see without_secrets)
        self._sdk = openai
        http = None if allow_private else public_only_http_client(timeout)
        self._client = openai.OpenAI(
            base_url=base_url, api_key=key, timeout=timeout, max_retries=0, http_client=http
        )

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def chat(self, messages: Messages, max_tokens: int = 1024, temperature: float = 0.3) -> str:
        try:
            return self._chat(messages, max_tokens, temperature)
        except LLMError as exc:
            raise without_secrets(exc, self._secrets) from None

    def _chat(self, messages: Messages, max_tokens: int, temperature: float) -> str:
        sdk = self._sdk
        try:
            completion = self._client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature
            )
        except sdk.APITimeoutError as exc:
            raise LLMTimeoutError(f"the request timed out: {exc}") from exc
        except sdk.APIConnectionError as exc:
            raise unreachable(self, exc) from exc
        except sdk.APIStatusError as exc:
            self.reached = True
            raise translate_status_error(exc.status_code, exc.response, self.base_url) from exc
        except sdk.APIResponseValidationError as exc:
            raise MalformedResponseError(f"malformed response: {exc}") from exc
        except (ValueError, RecursionError) as exc:  # JSON decoding of a broken or absurdly nested body
            raise malformed_body(exc) from exc
        self.reached = True
        if isinstance(completion, str):  # the SDK hands back unparseable bodies as text
            raise not_chat_json(completion)
        return _content_of(completion)


class ZhipuClient:
    """Zhipu AI (GLM) through the zhipuai SDK; default model glm-4-flash."""

    backend = "zhipu"

    def __init__(
        self,
        api_key: str = "",
        model: str = "",
        base_url: str = "",
        timeout: float = 120.0,
        context_tokens=0,
        allow_private: bool = True,
    ):
        import zhipuai

        key = api_key or os.environ.get("ZHIPUAI_API_KEY", "")
        if not key:
            raise SettingsError(
                "Zhipu backend: enter an API key or set the ZHIPUAI_API_KEY environment variable"
            )
        self.model = model or DEFAULT_ZHIPU_MODEL
        self.context_tokens = context_tokens or 128000
        self.base_url = check_base_url(base_url, "zhipu", allow_private) if base_url else DEFAULT_ZHIPU_URL
        self.reached = False
        self._secrets = (key,)  # redacted from every error message (see without_secrets)
        self._sdk = zhipuai
        http = None if allow_private else public_only_http_client(timeout)
        self._client = zhipuai.ZhipuAI(
            api_key=key, base_url=self.base_url, timeout=timeout, max_retries=0, http_client=http
        )

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def chat(self, messages: Messages, max_tokens: int = 1024, temperature: float = 0.3) -> str:
        try:
            return self._chat(messages, max_tokens, temperature)
        except LLMError as exc:
            raise without_secrets(exc, self._secrets) from None

    def _chat(self, messages: Messages, max_tokens: int, temperature: float) -> str:
        from zhipuai.core import _errors as zerr

        # Zhipu refuses temperature 0 on some models; 0.01 is its documented near-greedy value.
        temperature = min(max(temperature, 0.01), 0.99)
        try:
            completion = self._client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature
            )
        except zerr.APITimeoutError as exc:
            raise LLMTimeoutError(f"the request timed out: {exc}") from exc
        except zerr.APIConnectionError as exc:
            raise unreachable(self, exc) from exc
        except zerr.APIStatusError as exc:
            self.reached = True
            raise translate_status_error(exc.status_code, exc.response, self.base_url) from exc
        except zerr.ZhipuAIError as exc:
            raise MalformedResponseError("malformed response: not the chat-completions shape") from exc
        except (ValueError, RecursionError) as exc:
            raise malformed_body(exc) from exc
        self.reached = True
        if isinstance(completion, str):
            raise not_chat_json(completion)
        return _content_of(completion)


def malformed_body(exc: Exception) -> MalformedResponseError:
    """The error for a response body that cannot be decoded (never quoting the body)."""
    if isinstance(exc, RecursionError):
        return MalformedResponseError("malformed response body: JSON nested too deeply to read")
    return MalformedResponseError(f"malformed response body: {type(exc).__name__}: {str(exc)[:120]}")


def not_chat_json(body: str) -> MalformedResponseError:
    """The error for a 200 response that is not chat-completions JSON (its text is not quoted)."""
    return MalformedResponseError(
        f"the server answered with {len(body)} characters that are not chat-completions JSON: check the base URL"
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, its cause, the cause's cause, ... (each once)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def unreachable(client, exc: Exception) -> LLMError:
    """The error for a failed connection; before any answer it points at the base URL and is final.

    Two failures that look like a lost connection to the SDKs are told apart: a refused private address
    (see public_only_http_client) and a response that ended before its promised length (truncated: the
    server was reached, so retrying may help).
    """
    for cause in _causes(exc):
        if isinstance(cause, RefusedAddressError):
            return RefusedAddressError(str(cause))
        if type(cause).__name__ == "RemoteProtocolError" and "complete message body" in str(cause):
            client.reached = True
            return TruncatedResponseError(
                "the response was cut off before its end (truncated): the connection or a proxy dropped it"
            )
    if getattr(client, "reached", True):
        return LLMConnectionError(f"cannot reach the server: {exc}")
    error = LLMConnectionError(
        f"Cannot reach the API at {client.base_url} ({exc}): check the base URL, that the server is "
        "running, and the network."
    )
    error.retryable = False  # a wrong address does not get better with waiting
    return error


# ---------------------------------------------------------------- local model

# One in-process model at a time, shared by every caller: a GPU is one resource, and loading a
# second copy per session/tab would run out of memory. The lock serialises loading and generation.
_LOCAL_LOCK = threading.RLock()
_LOCAL_MODELS: dict[str, tuple[object, object]] = {}


def load_local_model(model_path: str):
    """Return (model, tokenizer) for `model_path`, loading it once; a different path replaces it."""

    key = str(Path(model_path).resolve())
    with _LOCAL_LOCK:
        if key in _LOCAL_MODELS:
            return _LOCAL_MODELS[key]
        check_model_folder(Path(key), model_path)
        unload_local_models()
        import torch
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cuda = torch.cuda.is_available()
        try:
            tokenizer = AutoTokenizer.from_pretrained(key)
            # safetensors only: a pickled .bin weight file can run code when it is opened.
            model = AutoModelForCausalLM.from_pretrained(
                key,
                dtype=torch.bfloat16 if cuda else torch.float32,
                device_map="cuda" if cuda else None,
                use_safetensors=True,
            )
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError, ImportError) as exc:
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            raise SettingsError(
                f"Cannot load the model in {model_path}: {str(exc)[:300]}. Choose a complete Hugging Face "
                "model folder (config.json, tokenizer files, *.safetensors weights)."
            ) from exc
        tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        _LOCAL_MODELS[key] = (model, tokenizer)
        log.info("loaded local model %s on %s", key, "cuda" if cuda else "cpu")
        return model, tokenizer


def check_model_folder(folder: Path, shown: str) -> None:
    """Refuse a folder that is not a Hugging Face model with safetensors weights (never unpickle .bin)."""
    if not folder.is_dir():
        raise SettingsError(f"{shown} is not a folder: choose a Hugging Face model folder.")
    if not (folder / "config.json").is_file():
        raise SettingsError(f"{shown} is not a Hugging Face model folder (no config.json)")
    if not list(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        extra = f" (found {', '.join(pickled[:3])}: pickled weights are never loaded)" if pickled else ""
        raise SettingsError(
            f"{shown} has no .safetensors weights{extra}: only safetensors models are loaded. Convert it "
            "with `model.save_pretrained(folder, safe_serialization=True)` on a machine you trust."
        )


def unload_local_models() -> int:
    """Drop every cached local model and free its (GPU) memory; returns how many were unloaded."""
    with _LOCAL_LOCK:
        count = len(_LOCAL_MODELS)
        _LOCAL_MODELS.clear()
        _COMPILED_STEPS.clear()  # a compiled step holds its model
        _STATIC_CACHES.clear()
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return count


def loaded_local_models() -> list[str]:
    """Paths of the models currently held in memory."""
    return list(_LOCAL_MODELS)


STATIC_WIDTH_STEP = 64  # static cache: prompt widths are padded to a multiple of this (fewer shapes)


def generate_ids(
    model,
    prompts: list[list[int]],
    pad_id: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    min_new_tokens=0,
    static_rows: int = 0,
    max_width: int = 0,
    stop: StopSignal | None = None,
    on_tokens: Callable[[int], None] | None = None,
    row_done: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """Generate for token-id prompts as one left-padded batch; returns only the new tokens of each.

    `on_tokens(n)` is told after every decoding step how many new tokens the unfinished rows wrote (a
    progress signal for long batches); once `stop.is_set()` every row ends after its current token; a row
    whose new tokens make `row_done(ids)` true ends there (e.g. a complete question; dynamic cache only).

    `static_rows` > 0 decodes with a static KV cache through `decode_static` (on CUDA the decoding
    step is compiled and replayed as a CUDA graph: several times faster for big batches). Every new
    shape compiles again, so the batch is filled up to `static_rows` rows (copies of the first prompt,
    dropped afterwards) and the width padded to a multiple of STATIC_WIDTH_STEP (at most `max_width`).
    """
    import torch

    count = len(prompts)
    width = max(len(p) for p in prompts)
    if static_rows:
        prompts = prompts + [prompts[0]] * max(0, static_rows - count)
        bucket = -(-width // STATIC_WIDTH_STEP) * STATIC_WIDTH_STEP
        width = max(width, min(bucket, max_width or bucket))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    device = next(model.parameters()).device
    if static_rows:
        new = decode_static(
            model,
            ids.to(device),
            mask.to(device),
            max_new_tokens,
            pad_id,
            temperature,
            min_new_tokens,
            stop,
            on_tokens,
        )
        return [_until_eos(row, model, pad_id) for row in new.cpu()[:count].tolist()]
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": 0.9}
        if temperature > 0
        else {"do_sample": False}
    )
    watch = []
    if stop is not None or on_tokens is not None or row_done is not None:
        watch = [_watcher(width, _eos_ids(model), stop, on_tokens, row_done)]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            pad_token_id=pad_id,
            stopping_criteria=watch or None,
            **sampling,
        )
    return [row[width:].tolist() for row in out.cpu()[:count]]


def _watcher(width: int, eos_ids: list[int], stop: StopSignal | None, on_tokens, row_done):
    """A generate() stopping criterion: reports new tokens each step, ends rows that are done (row_done)
    and every row on Stop."""
    import torch
    from transformers import StoppingCriteria

    eos = torch.tensor(eos_ids or [-1])
    finished: set[int] = set()  # rows ended by row_done (generate pads them from then on)

    class Watch(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            new = input_ids[:, width:].cpu()
            live = ~torch.isin(new[:, :-1], eos).any(-1)
            for row in finished:
                live[row] = False
            if on_tokens is not None:
                on_tokens(int(live.sum()))
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
            if row_done is not None:
                for row in live.nonzero().flatten().tolist():
                    if row_done(new[row].tolist()):
                        finished.add(row)
                        done[row] = True
            if stop is not None and stop.is_set():
                done[:] = True
            return done.to(input_ids.device)

    return Watch()


def _eos_ids(model) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _until_eos(row: list[int], model, pad_id: int) -> list[int]:
    """generate()'s output shape: after the first end-of-sequence token, padding."""
    eos = set(_eos_ids(model))
    for index, token in enumerate(row):
        if token in eos:
            return row[: index + 1] + [pad_id] * (len(row) - index - 1)
    return row


_COMPILED_STEPS: dict = {}  # id(model) -> compiled decoding step (CUDA)
_STATIC_CACHES: dict = {}  # (id(model), rows, length) -> StaticCache, reused: same addresses, same graph
_STATIC_LOCK = threading.Lock()  # one static decode at a time: the caches and CUDA graphs are shared


def decode_static(
    model,
    ids,
    mask,
    max_new_tokens: int,
    pad_id: int,
    temperature=0.0,
    min_new_tokens=0,
    stop: StopSignal | None = None,
    on_tokens=None,
):
    """New tokens [rows, max_new_tokens] for a left-padded batch, decoded with a static KV cache.

    The prompt is prefilled eagerly; each following step feeds one token per row with fixed shapes
    (the attention mask covers the whole cache from the start), so on CUDA the step is compiled once
    per shape and replayed as a CUDA graph. Choosing the next token stays on the GPU; the host looks
    at the tokens only every 16 steps to stop early once every row has ended.
    """
    with _STATIC_LOCK:
        return _decode_static(
            model, ids, mask, max_new_tokens, pad_id, temperature, min_new_tokens, stop, on_tokens
        )


def _decode_static(model, ids, mask, max_new_tokens, pad_id, temperature, min_new_tokens, stop, on_tokens):
    import torch

    rows, width = ids.shape
    device = ids.device
    cache = _static_cache(model, rows, width + max_new_tokens)
    full_mask = torch.cat([mask, mask.new_ones(rows, max_new_tokens)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    eos_ids = _eos_ids(model)
    eos = torch.tensor(eos_ids or [-1], device=device)
    # made once: a tensor built from host values inside the loop would wait for the GPU every step
    cache_positions = torch.arange(width, width + max_new_tokens, device=device)
    use_grouped_attention(model)
    step = _decoding_step(model)
    with torch.no_grad():
        # the prefill runs eagerly (its shape changes with every batch), the same forward as a step
        logits = _cached_forward(model, ids, full_mask, positions, cache, torch.arange(width, device=device))
        next_position = positions[:, -1:] + 1
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
        for index in range(max_new_tokens):
            if index < min_new_tokens and eos_ids:
                logits[:, eos] = float("-inf")
            token = _choose(logits, temperature)
            out[:, index] = torch.where(done, pad_id, token)
            done |= torch.isin(token, eos)
            if index == max_new_tokens - 1 or (index % 16 == 15 and bool(done.all())):
                break
            if index % 16 == 15:  # the host looks only every 16 steps (a look waits for the GPU)
                if on_tokens is not None:
                    on_tokens(16 * int((~done).sum()))
                if stop is not None and stop.is_set():
                    break
            logits = step(
                token[:, None],
                full_mask,
                next_position + index,
                cache,
                cache_positions[index : index + 1],
            ).clone()  # the next replay overwrites a CUDA graph's output
    return out


GROUPED_ATTENTION = "umtcds_grouped_sdpa"


def grouped_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA, except for one-token decoding steps of grouped-query models with a mask.

    With a mask, transformers' SDPA path copies every key/value head once per query head it serves
    (GLM-4: 2 KV heads -> 32 copies, ~0.3 GB a layer a step at batch 32 x 640 cached tokens). Here the
    query heads of a group attend to their shared key/value head directly: same result, no copies.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, heads, q_len, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    if q_len != 1 or attention_mask is None or heads == kv_heads or (module.training and dropout):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    q = query.reshape(rows, kv_heads, heads // kv_heads, dim)  # query head h uses key/value head h // group
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * (dim**-0.5 if scaling is None else scaling)
    mask = attention_mask[:, :, :, :length]  # [rows, 1, 1, length]: broadcast over heads
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)
    return out.reshape(rows, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_grouped_attention(model) -> None:
    """Switch a model on transformers' SDPA attention to `grouped_attention` (registered once)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if GROUPED_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
        AttentionMaskInterface.register(GROUPED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    if model.config._attn_implementation == "sdpa":
        model.config._attn_implementation = GROUPED_ATTENTION


def _static_cache(model, rows: int, length: int):
    """A zeroed static KV cache for this model and shape. Reusing one keeps its tensors at the same
    addresses, so the recorded CUDA graph replays instead of being recorded again for a new cache."""
    from transformers import StaticCache

    key = (id(model), rows, length)
    if key in _STATIC_CACHES:
        cache = _STATIC_CACHES.pop(key)
        cache.reset()
    else:
        if any(k[0] != id(model) for k in _STATIC_CACHES) or len(_STATIC_CACHES) >= 4:
            _STATIC_CACHES.clear()  # another model, or too many shapes held: free their memory
        cache = StaticCache(config=model.config, max_cache_len=length)
    _STATIC_CACHES[key] = cache
    return cache


def _cached_forward(model, ids, full_mask, positions, cache, cache_position):
    """The last position's logits after writing `ids` into the static cache at `cache_position`."""
    return model(
        input_ids=ids,
        attention_mask=full_mask,
        position_ids=positions,
        past_key_values=cache,
        cache_position=cache_position,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1, :]


def _decoding_step(model):
    import torch

    def step(token, full_mask, position, cache, cache_position):
        return _cached_forward(model, token, full_mask, position, cache, cache_position)

    if next(model.parameters()).device.type != "cuda":
        return step  # CPU: nothing to gain from a graph
    if id(model) not in _COMPILED_STEPS:
        _COMPILED_STEPS.clear()  # one model at a time (unload_local_models drops the model too)
        _COMPILED_STEPS[id(model)] = torch.compile(step, mode="reduce-overhead")
    return _COMPILED_STEPS[id(model)]


def _choose(logits, temperature: float):
    """Greedy, or top-p 0.9 sampling at `temperature` (as generate_ids' sampling settings)."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) > 0.9] = 0
    return order.gather(-1, torch.multinomial(sorted_probs, 1)).squeeze(-1)


def short_answer_done(text: str, stop_strings: tuple[str, ...]) -> bool:
    """A short answer (one that has stop strings) is done at a stop string, or once it loops: its last 12
    characters occur three times (a small model repeating itself never reaches the stop string; a
    question may name "Eastlake University" twice, not three times)."""
    if any(x in text for x in stop_strings):
        return True
    return len(text) >= 36 and text.count(text[-12:]) >= 3


def default_cpu_threads() -> int:
    """Torch threads for CPU generation: one per physical core (half the logical CPUs), at least one.

    Measured on the 2-vCPU machine shared with other work, SmolLM2 QA questions (16 prompts of 205
    tokens, batch 8): 1 thread 13-15 s, 2 threads 26-68 s (OpenMP threads spin-wait for a busy core).
    """
    return max(1, (os.cpu_count() or 2) // 2)


class LocalClient:
    """A Hugging Face model in this process: fp32 on CPU, bf16 on GPU, batched generation."""

    backend = "local"

    def __init__(
        self,
        model_path: str,
        batch_size: int = 8,
        context_tokens: int = 0,
        static_cache: bool = False,
        threads: int = 0,
    ) -> None:
        if not model_path:
            raise SettingsError("Local backend: enter a model folder (default: the embedded SmolLM2)")
        check_model_folder(Path(model_path), model_path)  # cheap: refuse a bad folder before any work
        self.model_path = model_path
        self.model = os.path.basename(os.path.normpath(model_path))
        self.batch_size = max(1, batch_size)
        self._context = context_tokens
        self.static_cache = static_cache  # used on CUDA only (the compile pays off there)
        self.threads = threads or default_cpu_threads()  # CPU generation only

    @property
    def context_tokens(self) -> int:
        if self._context:
            return self._context
        model, _ = load_local_model(self.model_path)
        return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)

    @property
    def n_parameters(self) -> int:
        model, _ = load_local_model(self.model_path)
        return sum(p.numel() for p in model.parameters())

    def count_tokens(self, text: str) -> int:
        _, tokenizer = load_local_model(self.model_path)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_chat(self, messages: Messages) -> list[int]:
        """Token ids of the chat prompt with the generation prompt appended."""
        _, tokenizer = load_local_model(self.model_path)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat(self, messages: Messages, max_tokens: int = 1024, temperature: float = 0.3) -> str:
        return self.chat_batch([messages], max_tokens, temperature)[0]

    def chat_batch(
        self,
        batch: list[Messages],
        max_tokens: int = 1024,
        temperature: float = 0.3,
        stop: StopSignal | None = None,
        on_tokens: Callable[[int], None] | None = None,
        stop_strings: tuple[str, ...] = (),
    ) -> list[str]:
        """Answer several conversations in one left-padded generate() call; order is kept.

        A row ends at the end-of-sequence token or once its text contains one of `stop_strings` (kept) or
        loops (see short_answer_done).
        Raises StoppedError when `stop` is set before or during the batch (checked between tokens).
        """
        if stop is not None and stop.is_set():
            raise StoppedError("stopped by the user")
        with _LOCAL_LOCK:
            model, tokenizer = load_local_model(self.model_path)
            prompts = [self.encode_chat(m) for m in batch]
            limit = self.context_tokens
            for prompt in prompts:
                if len(prompt) + max_tokens > limit:
                    raise ContextOverflowError(
                        f"prompt of {len(prompt)} tokens + {max_tokens} new tokens exceeds the model's "
                        f"context of {limit}: lower the chunk size"
                    )
            import torch

            before = torch.get_num_threads()
            on_cpu = not next(model.parameters()).is_cuda
            if on_cpu:
                torch.set_num_threads(self.threads)
            try:
                static = self.static_cache and next(model.parameters()).is_cuda
                outs = generate_ids(
                    model,
                    prompts,
                    tokenizer.pad_token_id,
                    max_tokens,
                    temperature,
                    static_rows=self.batch_size if static else 0,
                    max_width=limit - max_tokens,
                    stop=stop,
                    on_tokens=on_tokens,
                    row_done=(
                        (lambda ids: short_answer_done(tokenizer.decode(ids), stop_strings))
                        if stop_strings
                        else None
                    ),
                )
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                raise OutOfMemoryError(
                    f"GPU out of memory generating {len(prompts)} answers at once: lower the batch size "
                    "or the chunk size, or unload the model held by another tab"
                ) from exc
            finally:
                if on_cpu:
                    torch.set_num_threads(before)
        if stop is not None and stop.is_set():
            raise StoppedError("stopped by the user (mid-batch: the partial answers are dropped)")
        texts = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]
        return texts


# ---------------------------------------------------------------- choosing and running


def make_client(settings: ClientSettings) -> ChatClient:
    """Build the client `settings.backend` names; raises SettingsError with what to fill in."""
    if settings.backend == "zhipu":
        return ZhipuClient(
            settings.api_key,
            settings.model,
            settings.base_url,
            settings.timeout,
            settings.context_tokens,
            settings.allow_private,
        )
    if settings.backend == "openai":
        return OpenAIClient(
            settings.base_url,
            settings.model,
            settings.api_key,
            settings.timeout,
            settings.context_tokens,
            settings.allow_private,
        )
    if settings.backend == "local":
        from blocks.models import default_model_path

        path = settings.model_path or default_model_path()
        return LocalClient(path, settings.batch_size, settings.context_tokens, settings.static_cache)
    raise SettingsError(f"unknown backend {settings.backend!r}: choose one of {', '.join(BACKENDS)}")


def backoff_delay(attempt: int, policy: RetryPolicy, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry `attempt` (1-based): Retry-After if given, else full-jitter backoff."""
    if retry_after is not None:
        return min(retry_after, policy.max_delay)
    cap = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    return rng.uniform(cap / 2, cap)


def chat_with_retry(
    client: ChatClient,
    messages: Messages,
    max_tokens: int = 1024,
    temperature: float = 0.3,
    policy: RetryPolicy = RetryPolicy(),
    stop: StopSignal | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> str:
    """One chat request, retried on rate limits, 5xx, timeouts and malformed/empty answers."""
    rng = rng or random.Random()
    deadline = time.monotonic() + policy.item_timeout
    for attempt in range(1, policy.max_attempts + 1):
        try:
            return client.chat(messages, max_tokens=max_tokens, temperature=temperature)
        except LLMError as exc:
            if not exc.retryable or attempt == policy.max_attempts:
                raise
            delay = backoff_delay(attempt, policy, exc.retry_after, rng)
            if time.monotonic() + delay > deadline:
                raise LLMTimeoutError(
                    f"gave up after {attempt} attempts ({policy.item_timeout:.0f} s): {exc}"
                ) from exc
            log.info("retry %d after %.1f s: %s", attempt, delay, exc.reason)
            if stop is not None and stop.is_set():
                raise StoppedError("stopped by the user") from exc
            sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class Heartbeat:
    """A sign of life from run_requests during a long local batch: tokens written since the last one."""

    tokens: int
    seconds: float


@dataclass
class Request:
    """One chat request of a batch run."""

    messages: Messages
    max_tokens: int = 1024
    temperature: float = 0.3
    stop_strings: tuple[str, ...] = ()  # local backend: a row ends once its text contains one of these


def run_requests(
    client: ChatClient,
    requests: list[Request],
    concurrency: int = 4,
    policy: RetryPolicy = RetryPolicy(),
    stop: StopSignal | None = None,
    sleep: Callable[[float], None] = time.sleep,
    heartbeat: float | None = None,
) -> Iterator[tuple[int, str | LLMError | Heartbeat]]:
    """Yield (index, answer or LLMError) as requests finish; a failure never stops the others.

    HTTP clients run `concurrency` requests at a time with retries; a LocalClient runs
    length-sorted batches of its batch_size (similar lengths waste little padding) and, with
    `heartbeat` seconds given, also yields (-1, Heartbeat) that often while a batch is generating.
    When `stop` is set no new request starts; a local batch ends between two tokens (its requests are
    not yielded), HTTP requests already sent finish in the background.
    """
    if isinstance(client, LocalClient):
        order = sorted(range(len(requests)), key=lambda i: -len(json.dumps(requests[i].messages)))
        size = client.batch_size
        for start in range(0, len(order), size):
            if stop is not None and stop.is_set():
                return
            group = order[start : start + size]
            # a batch's budget is the largest of its requests' (they differ when asks differ in size)
            first = max((requests[i] for i in group), key=lambda r: r.max_tokens)
            batch = [requests[i].messages for i in group]
            try:
                if heartbeat is None:
                    texts = client.chat_batch(
                        batch, first.max_tokens, first.temperature, stop=stop, stop_strings=first.stop_strings
                    )
                else:
                    texts = yield from _batch_with_heartbeat(client, batch, first, stop, heartbeat)
            except StoppedError:
                return
            except LLMError as exc:
                for i in group:
                    yield i, exc
                continue
            for i, text in zip(group, texts, strict=True):
                yield i, (text if text.strip() else EmptyOutputError("the model returned an empty answer"))
        return

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="llm")
    pending = {}
    queue = list(enumerate(requests))[::-1]
    try:
        while queue or pending:
            while queue and len(pending) < concurrency and not (stop is not None and stop.is_set()):
                i, req = queue.pop()
                fut = pool.submit(
                    chat_with_retry,
                    client,
                    req.messages,
                    req.max_tokens,
                    req.temperature,
                    policy,
                    stop,
                    sleep,
                )
                pending[fut] = i
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                try:
                    yield i, fut.result()
                except LLMError as exc:
                    yield i, exc
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _batch_with_heartbeat(client: LocalClient, batch, request: Request, stop, every: float):
    """Run one local batch in a worker thread, yielding (-1, Heartbeat) every `every` seconds; returns
    the answers (the generator's return value) or raises the batch's error."""
    written = [0]

    def work():
        return client.chat_batch(
            batch,
            request.max_tokens,
            request.temperature,
            stop=stop,
            on_tokens=lambda n: written.__setitem__(0, written[0] + n),
            stop_strings=request.stop_strings,
        )

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-llm")
    try:
        future = pool.submit(work)
        reported, last = 0, time.monotonic()
        while True:
            done, _ = wait([future], timeout=every)
            now, tokens = time.monotonic(), written[0]
            if tokens > reported or done:
                yield -1, Heartbeat(tokens - reported, now - last)
                reported, last = tokens, now
            if done:
                return future.result()
    finally:
        pool.shutdown(wait=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt", help="user message")
    parser.add_argument("--backend", choices=BACKENDS, default="zhipu")
    parser.add_argument("--model", default="", help="API model name (zhipu default glm-4-flash)")
    parser.add_argument("--base-url", default="", help="API base URL")
    parser.add_argument("--model-path", default="", help="local backend: HF model folder")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    settings = ClientSettings(args.backend, args.model, args.base_url, model_path=args.model_path)
    try:
        client = make_client(settings)
        print(chat_with_retry(client, [{"role": "user", "content": args.prompt}], args.max_tokens))
    except (SettingsError, LLMError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

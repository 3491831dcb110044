"""Crawl stage: a polite, resumable campus-site crawler that saves main texts with provenance.

    python -m blocks.crawl START_URL --out DIR [--max-depth N] [--max-pages N] [--delay SECONDS]
                                     [--concurrency N] [--user-agent UA]
    python -m blocks.crawl http://127.0.0.1:8765/index.htm --out data/demo/crawl --delay 0

Breadth-first within the start host and its subdomains (same registrable domain, offline Public
Suffix List); robots.txt first and obeyed; per-host delay; retries with backoff and Retry-After;
HTML, PDF and DOCX by Content-Type; login walls, error pages and duplicates are not saved.

Output in DIR (docs/CONTRACTS.md): pages.jsonl (one record per saved document, rewritten
atomically), pages/<id>.txt (UTF-8 main text), skipped.jsonl (what was not saved and why) and
state.jsonl (append-only per-URL log: a killed crawl resumes from it; a finished one is re-crawled
with ETag/Last-Modified and pages are marked new/unchanged/changed/vanished).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import ipaddress
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

from blocks.extract import read_html

log = logging.getLogger(__name__)
ROBOTS_TOKEN = "UMTCDS-crawler"
USER_AGENT = f"{ROBOTS_TOKEN}/1.0 (campus chatbot builder; obeys robots.txt; +https://github.com/umtcds)"
STOP_FILE = "STOP"
MAX_DELAY_S = 3600.0  # an hour between requests to one host: politer than any site asks

# Query parameters that only track visitors or sessions; every other parameter is kept, in particular
# the ones that identify articles on Chinese campus CMSs (KEEP_PARAMS, documented for readers/tests).
DROP_PARAMS = {"jsessionid", "phpsessid", "sessionid", "sid", "aspsessionid", "cfid", "cftoken", "spm",
               "fbclid", "gclid", "yclid", "msclkid", "mc_cid", "mc_eid", "from_wecom", "isappinstalled",
               "_hsenc", "_hsmi", "share_token"}  # fmt: skip
KEEP_PARAMS = {"wbtreeid", "wbnewsid", "wbfileid", "columnid", "articleid", "newsid", "id", "catid",
               "classid", "infoid", "urltype", "owner", "page", "tid", "aid"}  # fmt: skip
PATH_SESSION_PARAMS = ("jsessionid", "phpsessid", "sid")
# Query parameters of calendars, pagers and searches: each (path, parameter names) pattern gets a budget.
TRAP_PARAMS = {"month", "year", "date", "day", "week", "page", "pagenum", "pageno", "pageindex", "p",
               "start", "offset", "cursor", "q", "query", "keyword", "keywords", "wd", "search",
               "sort", "order", "calendar", "ym"}  # fmt: skip
# Links never worth a request: assets and media (the Content-Type of anything else is checked).
SKIP_EXTENSIONS = {".css", ".js", ".ico", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".svg",
                   ".mp4", ".avi", ".mov", ".wmv", ".flv", ".mkv", ".mp3", ".wav", ".zip", ".rar",
                   ".7z", ".gz", ".tar", ".exe", ".apk", ".iso", ".dmg", ".woff", ".woff2", ".ttf"}  # fmt: skip
LOGIN_PATH = re.compile(r"/(?:authserver|cas|sso|idp|oauth2?|passport|uc)(?:/|$)|/login\b|/signin\b", re.I)
LOGIN_HOST = re.compile(r"^(?:cas|sso|authserver|ids|idp|pass|passport|uis|login)\d*\.", re.I)
HTML_TYPES = {"text/html", "application/xhtml+xml"}
PDF_TYPES = {"application/pdf", "application/x-pdf"}
DOCX_TYPES = {"application/vnd.openxmlformats-officedocument.wordprocessingml.document"}
SNIFF_TYPES = {"application/octet-stream", "application/force-download", "application/x-download",
               "binary/octet-stream", "application/download", ""}  # fmt: skip
MIN_TEXT_CHARS = 20
# Failures that say nothing about whether a page still exists: its earlier copy stays in the manifest.
TRANSIENT_REASONS = {"timeout", "connection error", "unreachable", "http 429", "http 500", "http 502",
                     "http 503", "http 504", "too large", "stopped", "truncated body", "request failed"}  # fmt: skip
# A page whose own text is this short and says the page is missing is a soft 404 (status 200).
SOFT_404 = re.compile(
    r"页面不存在|页面未找到|找不到(?:该|您要的|你要的)?页面|网页不存在|页面已(?:删除|失效)|(?:文章|信息|内容)不存在"
    r"|page (?:was )?not found|(?:page|file) (?:does not|doesn't|no longer) exists?"
    r"|page you (?:requested|are looking for)",
    re.IGNORECASE,
)
# In the raw <title> ("Page not found | Site"): the page title we keep is only its longest part.
SOFT_404_TITLE = re.compile(rb"<title[^>]*>[^<]*(?:\b404\b|not found)[^<]*</title>", re.IGNORECASE)
# A short page that only says it has nothing (an empty calendar or result list) is template only.
NO_CONTENT = re.compile(
    r"no (?:upcoming )?events?(?: (?:are|were))? (?:scheduled|found)|no (?:results|posts|items|entries) found"
    r"|nothing (?:found|to show)|there are no (?:events|posts|results|items)"
    r"|暂无(?:数据|内容|信息|记录|活动|文章|新闻)|没有(?:找到)?(?:相关)?(?:记录|内容|数据|信息|活动)",
    re.IGNORECASE,
)
SHORT_PAGE_CHARS = 200
BINARY_CONTROL_SHARE = (
    0.05  # more control bytes than this in the first 8 KB: not text, whatever the header says
)


class CrawlError(ValueError):
    """A crawl that cannot start or continue; the message says what to change."""


@dataclass
class CrawlOptions:
    """Crawl bounds and politeness; defaults suit a real campus site."""

    max_depth: int = 3
    max_pages: int = 200  # URLs fetched (documents or not), the load the site sees
    delay: float = 1.0  # seconds between requests to one host (robots Crawl-delay wins if larger)
    concurrency: int = 2
    user_agent: str = USER_AGENT
    include_attachments: bool = True
    max_bytes: int = 20_000_000
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    retries: int = 3
    backoff: float = 1.0
    max_retry_after: float = 120.0
    max_url_length: int = 1024
    trap_budget: int = 10
    max_redirects: int = 5
    near_duplicate_bits: int = 3
    allow_private: bool = True  # False when the app is exposed: no loopback/private/link-local targets
    allowed_origins: tuple[str, ...] = ()  # origin_key()s allowed even when private (the app's demo site)


@dataclass
class CrawlProgress:
    """What the UI and CLI show while crawling."""

    fetched: int = 0
    saved: int = 0  # documents in the manifest from this run (new + changed + unchanged)
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    skipped: int = 0
    queued: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    last: str = ""
    finished: bool = False
    status: str = "running"  # running | done | stopped


@dataclass
class Task:
    """One URL waiting to be fetched."""

    url: str
    depth: int
    parent_url: str | None


@dataclass
class Outcome:
    """What fetching and converting one URL produced (built in a worker thread)."""

    task: Task
    final_url: str = ""
    reason: str | None = None  # why nothing is saved: a short key counted in progress
    detail: str = ""
    kind: str = ""  # html | pdf | docx
    content_type: str = ""
    encoding: str | None = None
    title: str = ""
    text: str = ""
    links: list[str] = field(default_factory=list)
    canonical: str | None = None
    refresh: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False


class Stopped(Exception):
    """The user asked to stop while a request was waiting."""


class FetchFailed(Exception):
    """A request that failed after its retries; args[0] is the reason key, args[1] the detail."""


# ---------------------------------------------------------------- pure core: URLs, scope, traps


def canonical_url(url: str, base: str | None = None) -> str | None:
    """The canonical form of a link (None for mailto:, javascript: and other non-web schemes)."""
    url = (url or "").strip().replace("\\", "/")
    if not url or url.startswith("#"):
        return None if not base else canonical_url(base)
    try:
        absolute = urljoin(base, url) if base else url
        parts = urlsplit(absolute)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, 80 if scheme == "http" else 443) else f"{host}:{port}"
    segments = []
    for segment in (parts.path or "/").split("/"):
        name, _, param = segment.partition(";")
        # Tomcat/PHP session ids as path parameters (";jsessionid=...") make every visit a new URL.
        if param and param.split("=", 1)[0].lower() in PATH_SESSION_PARAMS:
            segment = name
        segments.append(segment)
    path = quote(unquote("/".join(segments)), safe="/;:@!$&'()*+,=-._~")
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_") and k.lower() not in DROP_PARAMS
    ]
    # Sorted so that the same page reached with parameters in another order is one URL.
    query_text = urlencode(sorted(query), quote_via=quote, safe="/:@!$'()*,-._~")
    return urlunsplit((scheme, netloc, path or "/", query_text, ""))


@lru_cache(maxsize=1)
def _psl():  # noqa: D103 (built once: loading the suffix list takes ~0.1 s)
    import tldextract

    # suffix_list_urls=() uses the Public Suffix List snapshot bundled in the wheel: no download.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


@lru_cache(maxsize=4096)
def registrable_domain(host: str) -> str:
    """The registrable domain of a host (xxx.edu.cn for lib.xxx.edu.cn); the host itself for IPs."""
    host = host.lower().strip("[]").rstrip(".")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    result = _psl()(host)
    return result.top_domain_under_public_suffix or host


def in_scope(url: str, start_url: str) -> bool:
    """True for the start host and hosts under the same registrable domain (never a sibling site)."""
    target, start = urlsplit(url), urlsplit(start_url)
    host, start_host = (target.hostname or ""), (start.hostname or "")
    if not host:
        return False
    if host == start_host:
        # IP and localhost sites are told apart by port; named hosts may mix http/https ports.
        return target.port == start.port or registrable_domain(host) != host
    domain = registrable_domain(start_host)
    if domain == start_host.strip("[]") and registrable_domain(host) == host:
        return False  # IP address or bare name: only the exact host is in scope
    return host == domain or host.endswith("." + domain)


def trap_key(url: str) -> str | None:
    """The pattern a calendar/pager/search URL belongs to (path + trap parameter names), else None."""
    parts = urlsplit(url)
    names = sorted({k.lower() for k, _ in parse_qsl(parts.query, keep_blank_values=True)} & TRAP_PARAMS)
    if not names:
        return None
    return f"{parts.netloc}{parts.path}?{'&'.join(names)}"


def is_login_url(url: str) -> bool:
    """True for CAS/SSO/login pages that campus portals redirect to."""
    parts = urlsplit(url)
    return bool(LOGIN_PATH.search(parts.path) or LOGIN_HOST.match(parts.hostname or ""))


def skip_by_extension(url: str) -> bool:
    """True for links to stylesheets, scripts, images, media and archives (never requested)."""
    path = urlsplit(url).path.lower()
    return os.path.splitext(path)[1] in SKIP_EXTENSIONS


def simhash(text: str) -> int:
    """64-bit SimHash of character 4-grams (works for Chinese and English alike)."""
    compact = "".join(text.split())
    grams = Counter(compact[i : i + 4] for i in range(max(1, len(compact) - 3)))
    weights = [0] * 64
    for gram, count in grams.items():
        h = int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest(), "big")
        for bit in range(64):
            weights[bit] += count if h >> bit & 1 else -count
    return sum(1 << bit for bit in range(64) if weights[bit] > 0)


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return (a ^ b).bit_count()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def classify_content(content_type: str, disposition: str, head: bytes) -> str:
    """html | pdf | docx | skip:<why> from headers, sniffing only for generic binary types."""
    main = content_type.split(";")[0].strip().lower()
    if main in HTML_TYPES:
        return "html"
    if main in PDF_TYPES:
        return "pdf"
    if main in DOCX_TYPES:
        return "docx"
    if main in SNIFF_TYPES:
        filename = disposition.lower()
        if head.startswith(b"%PDF") or ".pdf" in filename:
            return "pdf"
        if head.startswith(b"PK") and (".docx" in filename or not filename):
            return "docx"
        if head.lstrip()[:1] == b"<" and not filename:
            return "html"
        return f"skip:unsupported type ({main or 'none'})"
    family = main.split("/")[0]
    if family in ("image", "video", "audio") or any(k in main for k in ("zip", "rar", "7z", "tar", "gzip")):
        return f"skip:media ({main})"
    return f"skip:unsupported type ({main})"


# ---------------------------------------------------------------- conversion of bodies to text


def read_pdf(body: bytes) -> tuple[str, str]:
    """(title, text) of a PDF, paragraphs as lines."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(body))
    lines = []
    for page in reader.pages:
        lines += [" ".join(line.split()) for line in (page.extract_text() or "").splitlines()]
    title = str((reader.metadata or {}).get("/Title") or "")
    return title, "\n".join(line for line in lines if line)


def read_docx(body: bytes) -> tuple[str, str]:
    """(title, text) of a DOCX: paragraphs and table rows as lines."""
    import docx

    document = docx.Document(io.BytesIO(body))
    lines = [p.text.strip() for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    title = document.core_properties.title or ""
    return title, "\n".join(line for line in lines if line.strip())


def filename_title(disposition: str, url: str) -> str:
    """A title for an attachment from its Content-Disposition filename or URL."""
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)", disposition, re.IGNORECASE)
    name = unquote(match.group(1)) if match else unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return os.path.splitext(name)[0]


# ---------------------------------------------------------------- network: robots, gate, fetch


def origin_key(url: str) -> str:
    """ "host:port" of a URL as CrawlOptions.allowed_origins lists it (IPv6 hosts without brackets)."""
    parts = urlsplit(url)
    return f"{parts.hostname or ''}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def check_address(url: str, options: CrawlOptions) -> None:
    """Refuse loopback/private/link-local targets when the app is exposed (except allowed origins)."""
    if options.allow_private:
        return
    if origin_key(url) in options.allowed_origins:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        # getaddrinfo also decodes the spellings browsers accept (2130706433, 0x7f.1, 127.1), so what is
        # checked is the address the request will really go to.
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise FetchFailed(
            "unreachable", f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not is_public_address(address):
            raise private_address(host, "resolves to", address)


def check_peer(sock: socket.socket, host: str) -> None:
    """Refuse a connected socket whose peer is not public (the address the request would really go to)."""
    address = ipaddress.ip_address(sock.getpeername()[0].split("%")[0])
    if not is_public_address(address):
        raise private_address(host, "connected to", address)


def private_address(
    host: str, how: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> FetchFailed:
    """The refusal of a private target, said the same way by check_address and check_peer."""
    return FetchFailed(
        "private address",
        f"{host} {how} {address}, a private/loopback/link-local address; the app is exposed, "
        "so only public sites (and the built-in demo site) may be crawled",
    )


# IPv6 ranges whose last 32 bits are an IPv4 address that the host's stack or a gateway connects to.
_IPV4_IN_LAST_32_BITS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "::ffff:0:0/96",  # IPv4-mapped (::ffff:127.0.0.1)
        "::ffff:0:0:0/96",  # IPv4-translated (::ffff:0:7f00:1; SIIT, RFC 2765)
        "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052): the gateway connects to the IPv4 address
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")  # IANA: all globally routable IPv6 unicast lies here


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for globally routable unicast addresses, by the address a connection really ends at.

    IPv6 that carries an IPv4 address (mapped, translated, NAT64, 6to4, Teredo) is judged by that IPv4
    address; any other IPv6 outside 2000::/3 (IPv4-compatible ::127.0.0.1, site-local fec0::/10, local-use
    NAT64 64:ff9b:1::/48, unique-local, link-local, multicast, ...) is not public.
    """
    if isinstance(address, ipaddress.IPv6Address):
        for net in _IPV4_IN_LAST_32_BITS:
            if address in net:
                return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address not in _GLOBAL_UNICAST_V6:
            return False
        wrapped = address.sixtofour or (address.teredo or (None, None))[1]
        if wrapped is not None and not is_public_address(wrapped):
            return False
    return address.is_global and not address.is_multicast


def new_session(options: CrawlOptions):
    """A requests.Session for one worker; when the app is exposed, its connections check their peer.

    check_address resolves a name, then the connection resolves it again: a DNS server answering a public
    address to the check and 127.0.0.1 to the connection (DNS rebinding) would slip a request through. So
    each new connection also checks the address its socket reached, before a byte is sent on it.
    """
    import requests

    session = requests.Session()
    session.max_redirects = options.max_redirects
    if not options.allow_private:
        adapter = _peer_checked_adapter(options.allowed_origins)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


def _peer_checked_adapter(allowed_origins: tuple[str, ...]):
    """A requests adapter whose urllib3 connections run check_peer (except to the allowed origins).

    Proxied requests do not pass here (requests gives them a separate proxy manager): the proxy resolves.
    """
    import requests
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class PeerCheck:
        def _new_conn(self):  # urllib3 opens the TCP socket here (for HTTPS too, before TLS)
            sock = super()._new_conn()
            if f"{self.host}:{self.port}" not in allowed_origins:  # the same rule as check_address
                try:
                    check_peer(sock, self.host)
                except FetchFailed:  # not an OSError: urllib3 and requests pass it on unwrapped
                    sock.close()
                    raise
            return sock

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = type("PeerCheckedHTTPConnection", (PeerCheck, HTTPConnection), {})

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = type("PeerCheckedHTTPSConnection", (PeerCheck, HTTPSConnection), {})

    class PeerCheckedAdapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

    return PeerCheckedAdapter()


class HostGate:
    """Spaces requests to each host by its delay; shared by worker threads, stop-aware."""

    def __init__(self, stop: threading.Event) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._delay: dict[str, float] = {}
        self._stop = stop

    def set_delay(self, host: str, seconds: float) -> None:
        with self._lock:
            self._delay[host] = seconds

    def hold(self, host: str, seconds: float) -> None:
        """Push the host's next slot back (429/503 back-off applies to every worker)."""
        with self._lock:
            self._next[host] = max(self._next.get(host, 0.0), time.monotonic() + seconds)

    def wait_turn(self, host: str) -> None:
        """Block until `host` may get a request; raise Stopped if the crawl is being stopped."""
        while True:
            with self._lock:
                now = time.monotonic()
                slot = self._next.get(host, 0.0)
                if now >= slot:
                    self._next[host] = now + self._delay.get(host, 0.0)
                    return
            if self._stop.wait(slot - now):
                raise Stopped


def fetch_robots(session, origin: str, options: CrawlOptions) -> RobotFileParser:
    """robots.txt of an origin (RFC 9309: 4xx = allow all, 5xx = disallow all); raises FetchFailed."""
    import requests

    rules = RobotFileParser(origin + "/robots.txt")
    url = origin + "/robots.txt"
    # Redirects are followed by hand so that each hop passes check_address (no detour to 169.254.169.254).
    for _hop in range(options.max_redirects + 1):
        check_address(url, options)
        try:
            response = session.get(
                url,
                headers={"User-Agent": options.user_agent},
                timeout=(options.connect_timeout, options.read_timeout),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise FetchFailed("unreachable", f"cannot reach {origin}: {exc.__class__.__name__}") from exc
        target = canonical_url(response.headers.get("Location", ""), url) if response.is_redirect else None
        if target is None:
            break
        url = target
    else:
        rules.allow_all = True  # RFC 9309: more than five redirects = robots.txt unavailable
        return rules
    if response.is_redirect:
        rules.allow_all = True
    elif response.status_code >= 500:
        rules.disallow_all = True
    elif response.status_code >= 400:
        rules.allow_all = True
    else:
        rules.parse(response.content[:500_000].decode("utf-8", "replace").splitlines())
    return rules


def _send(session, url: str, headers: dict[str, str], options: CrawlOptions, gate: HostGate, stop):
    """GET with streaming; retry timeouts, resets and 5xx with backoff; honour Retry-After on 429/503."""
    import requests

    host = urlsplit(url).netloc
    for attempt in range(options.retries + 1):
        last = attempt == options.retries
        gate.wait_turn(host)
        try:
            response = session.get(
                url,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=(options.connect_timeout, options.read_timeout),
            )
        except (requests.Timeout, requests.ConnectionError) as exc:
            if last:
                reason = "timeout" if isinstance(exc, requests.Timeout) else "connection error"
                raise FetchFailed(reason, f"{exc.__class__.__name__} after {attempt + 1} tries") from exc
            if stop.wait(options.backoff * 2**attempt):
                raise Stopped from exc
            continue
        if response.status_code in (429, 503) or 500 <= response.status_code < 600 and not last:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            wait_s = retry_after if retry_after is not None else options.backoff * 2**attempt
            if last or wait_s > options.max_retry_after:
                return response
            response.close()
            gate.hold(host, wait_s)
            continue
        return response
    raise AssertionError("unreachable")  # the loop always returns or raises


def _read_capped(response, limit: int) -> bytes:
    """The body, read while streaming; raises FetchFailed when it exceeds `limit` bytes."""
    chunks, size = [], 0
    for chunk in response.iter_content(65536):
        size += len(chunk)
        if size > limit:
            response.close()
            raise FetchFailed("too large", f"over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def fetch_document(
    session,
    task: Task,
    options: CrawlOptions,
    gate: HostGate,
    stop: threading.Event,
    allow: Callable[[str], str | None],
    validators: dict[str, str] | None = None,
) -> Outcome:
    """Fetch one URL (redirects checked hop by hop with `allow`) and convert it to text."""
    import requests

    outcome = Outcome(task=task, final_url=task.url)
    url, seen = task.url, {task.url}
    headers = {"User-Agent": options.user_agent, "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}
    if validators:
        headers.update(validators)
    try:
        for _hop in range(options.max_redirects + 1):
            check_address(url, options)
            response = _send(session, url, headers, options, gate, stop)
            if response.is_redirect and response.headers.get("Location"):
                response.close()
                target = canonical_url(response.headers["Location"], url)
                if target is None:
                    raise FetchFailed("bad redirect", response.headers["Location"][:200])
                if is_login_url(target):
                    raise FetchFailed("login wall", f"redirects to {target[:200]}")
                if target in seen:
                    raise FetchFailed("redirect loop", target)
                refusal = allow(target)
                if refusal:
                    raise FetchFailed(refusal, f"redirect to {target}")
                seen.add(target)
                url = target
                headers.pop("If-None-Match", None)
                headers.pop("If-Modified-Since", None)
                continue
            break
        else:
            raise FetchFailed("too many redirects", url)
        outcome.final_url = url
        with response:
            if response.status_code == 304 and validators:
                outcome.not_modified = True
                return outcome
            if response.status_code >= 400 or response.status_code < 200 or response.status_code == 204:
                raise FetchFailed(f"http {response.status_code}", url)
            content_type = response.headers.get("Content-Type", "")
            disposition = response.headers.get("Content-Disposition", "")
            length = response.headers.get("Content-Length", "")
            kind = classify_content(content_type, disposition, b"")
            head = b""
            if (
                kind.startswith("skip:unsupported")
                and content_type.split(";")[0].strip().lower() in SNIFF_TYPES
            ):
                head = next(response.iter_content(16), b"")
                kind = classify_content(content_type, disposition, head)
            if kind.startswith("skip:"):
                # Closing without reading tells the server to stop sending the body.
                reason, _, detail = kind[5:].partition(" (")
                raise FetchFailed(reason, detail.rstrip(")"))
            if length.isdigit() and int(length) > options.max_bytes:
                raise FetchFailed("too large", f"{length} bytes")
            if kind != "html" and not options.include_attachments:
                raise FetchFailed("attachments off", kind)
            body = head + _read_capped(response, options.max_bytes - len(head))
            outcome.kind, outcome.content_type = kind, content_type.split(";")[0].strip().lower() or kind
            outcome.etag = response.headers.get("ETag")
            outcome.last_modified = response.headers.get("Last-Modified")
            declared = response.encoding if "charset" in content_type.lower() else None
        convert_body(outcome, body, disposition, declared)
    except FetchFailed as exc:
        outcome.reason, outcome.detail = exc.args[0], exc.args[1] if len(exc.args) > 1 else ""
    except (requests.Timeout, requests.ConnectionError) as exc:  # raised while streaming the body
        outcome.reason, outcome.detail = "timeout", exc.__class__.__name__
    except requests.exceptions.ChunkedEncodingError as exc:
        # A reset mid-body or a Content-Length the server did not honour: what arrived is incomplete.
        outcome.reason, outcome.detail = "truncated body", _short_cause(exc)
    except requests.RequestException as exc:  # an invalid URL or header the server sent
        outcome.reason, outcome.detail = "request failed", _short_cause(exc)
    except Stopped:
        outcome.reason = "stopped"
    return outcome


def _short_cause(exc: Exception) -> str:
    """The exception's class and message, short enough for skipped.jsonl."""
    return f"{exc.__class__.__name__}: {exc}"[:200]


def looks_binary(body: bytes) -> bool:
    """True when the start of a body is mostly control bytes (an image or archive served as text/html)."""
    head = body[:8192]
    if not head or head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 text has NUL bytes by design
        return False
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return controls > BINARY_CONTROL_SHARE * len(head)


def sniff_body(body: bytes) -> str | None:
    """The kind the bytes themselves show (pdf, docx, or skip:media (...)), whatever the header said."""
    head = body[:1024].lstrip()
    if head.startswith(b"%PDF-"):
        return "pdf"
    if body.startswith(b"PK\x03\x04") and b"word/" in body[:4096]:
        return "docx"
    for magic, name in ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
                        (b"RIFF", "image/webp"), (b"PK\x03\x04", "application/zip")):  # fmt: skip
        if body.startswith(magic):
            return f"skip:media ({name})"
    return None


def convert_body(outcome: Outcome, body: bytes, disposition: str, declared: str | None) -> None:
    """Fill the outcome's text, title and links from the body; sets a reason when nothing is kept."""
    from pypdf.errors import PyPdfError

    url = outcome.final_url
    sniffed = sniff_body(body) if outcome.kind == "html" else None
    if sniffed and sniffed.startswith("skip:"):
        reason, _, detail = sniffed[5:].partition(" (")
        outcome.reason, outcome.detail = reason, f"served as HTML but is {detail.rstrip(')')}"
        return
    if sniffed:  # PDF or DOCX bytes served as text/html
        outcome.kind = sniffed
    if outcome.kind == "html" and looks_binary(body):
        outcome.reason, outcome.detail = "binary content", "served as HTML but is not text"
        return
    if outcome.kind == "html":
        page = read_html(body, url, declared)
        outcome.encoding, outcome.title, outcome.text = page.encoding, page.title, page.text
        outcome.links, outcome.canonical, outcome.refresh = page.links, page.canonical, page.refresh
        body_chars = len(page.text) - len(page.title)
        if page.has_login_form and (body_chars < 300 or is_login_url(url)):
            outcome.reason, outcome.detail = "login wall", "login form"
        elif body_chars < SHORT_PAGE_CHARS and (
            SOFT_404.search(page.text) or SOFT_404_TITLE.search(body[:8192])
        ):
            outcome.reason, outcome.detail = "soft 404", page.text[:100].replace("\n", " ")
        elif body_chars < MIN_TEXT_CHARS:
            outcome.reason = "empty text"
            outcome.detail = f"meta refresh to {page.refresh}" if page.refresh else ""
        elif body_chars < SHORT_PAGE_CHARS and NO_CONTENT.search(page.text):
            outcome.reason, outcome.detail = "no content", page.text[:100].replace("\n", " ")
        return
    try:
        title, text = read_pdf(body) if outcome.kind == "pdf" else read_docx(body)
    except (PyPdfError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        outcome.reason, outcome.detail = (
            f"unreadable {outcome.kind}",
            f"{exc.__class__.__name__}: {exc}"[:200],
        )
        return
    outcome.title = title.strip() or filename_title(disposition, url)
    outcome.text = text if outcome.title in text[:200] else f"{outcome.title}\n{text}"
    if len(text.strip()) < MIN_TEXT_CHARS:
        outcome.reason = "empty text"


# ---------------------------------------------------------------- disk: atomic files and the state log


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text via a temporary file and os.replace, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a file behind, even a temporary one
        raise


def trim_torn_tail(path: Path) -> None:
    """Cut a last line that a kill or a full disk left without its newline, so appends start clean."""
    if not path.is_file():
        return
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        fh.seek(max(0, size - 1_000_000))
        tail = fh.read()
        cut = tail.rfind(b"\n")
        fh.truncate(size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail)))


def disk_error(out: Path, exc: OSError) -> CrawlError:
    """The message for a write that failed (full disk, quota, permissions): what happened and what to do."""
    return CrawlError(
        f"Cannot write to {out}: {exc.strerror or exc}. Nothing saved so far is lost: free some disk space "
        "(or choose another folder) and run the crawl again to resume."
    )


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """Rewrite a JSONL file atomically."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file, one per line.

    A line that is not one (torn by a kill or a full disk, cut inside a UTF-8 character, blank, or
    damaged on disk) is skipped with a warning wherever it is: the rest of the file is still good.
    """
    if not path.is_file():
        return []
    rows = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            log.warning("%s:%d: skipping a line that is not a JSON object: %.80r", path, number, raw)
    return rows


def is_state_row(row: dict) -> bool:
    """True when a state.jsonl row has the fields a resume relies on (else it is skipped as damaged)."""
    if not isinstance(row.get("run"), int):
        return False
    if "url" not in row:
        return True  # run and end events
    doc = row.get("doc")
    if not isinstance(row["url"], str):
        return False
    return doc is None or (
        isinstance(doc, dict)
        and isinstance(doc.get("id"), int)
        and all(isinstance(doc.get(k), str) for k in ("url", "sha256", "simhash", "text_file"))
        and doc.get("status") in ("new", "changed", "unchanged", "vanished")
        and re.fullmatch(r"[0-9a-f]{1,16}", doc["simhash"]) is not None
    )


def read_manifest(out_dir: Path) -> list[dict]:
    """The saved-document records of a crawl folder (empty if it has not run)."""
    return read_jsonl(Path(out_dir) / "pages.jsonl")


def read_skipped(out_dir: Path) -> list[dict]:
    """What a crawl did not save, with the reason."""
    return read_jsonl(Path(out_dir) / "skipped.jsonl")


def request_stop(out_dir: Path) -> None:
    """Ask a running crawl into `out_dir` to stop after the pages in flight (works across processes)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / STOP_FILE).write_text("stop\n", encoding="utf-8")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the crawl


def normalize_start_url(start_url: str) -> str:
    """The canonical start URL; a bare host gets http://; raises CrawlError for anything malformed."""
    raw = (start_url or "").strip()
    if raw and "://" not in raw and re.match(r"^[\w.-]+\.[a-z]{2,}(?::\d+)?(/|$)", raw, re.I):
        raw = "http://" + raw
    url = canonical_url(raw)
    if not raw or url is None or "." not in (urlsplit(url).hostname or "") and "localhost" not in url:
        raise CrawlError(
            f"Malformed start URL {start_url!r}: enter a full web address such as "
            "https://www.example.edu.cn/ (http or https)."
        )
    return url


def prepare_out_dir(out_dir: Path) -> Path:
    """Create the output folder and check it is writable; raises CrawlError with the fix."""
    out = Path(out_dir)
    try:
        (out / "pages").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise CrawlError(
            f"Cannot write to {out}: {exc.strerror or exc}. Choose a folder you can write to."
        ) from exc
    return out


def is_number(value, whole: bool = False) -> bool:
    """True for a finite int or float (not a bool, NaN or infinity); `whole`: an int value."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not (math.isfinite(value) and (value.is_integer() or not whole)):
        return False
    return True


def check_options(options: CrawlOptions) -> None:
    """Refuse nonsensical bounds with a message naming the field (NaN and infinity included: a NaN
    delay passes every comparison and never ends a wait; an infinite one cannot be slept)."""
    problems = []
    if not is_number(options.max_depth, whole=True) or options.max_depth < 0:
        problems.append(f"max depth must be 0 or more, a whole number (got {options.max_depth!r})")
    if not is_number(options.max_pages, whole=True) or options.max_pages < 1:
        problems.append(f"max pages must be at least 1, a whole number (got {options.max_pages!r})")
    if not is_number(options.delay) or not 0 <= options.delay <= MAX_DELAY_S:
        problems.append(f"delay must be 0 seconds or more, at most {MAX_DELAY_S:.0f} (got {options.delay!r})")
    if not is_number(options.concurrency, whole=True) or not 1 <= options.concurrency <= 32:
        problems.append(f"concurrency must be between 1 and 32, a whole number (got {options.concurrency!r})")
    for name in ("max_bytes", "connect_timeout", "read_timeout", "retries", "backoff", "max_retry_after",
                 "max_url_length", "trap_budget", "max_redirects", "near_duplicate_bits"):  # fmt: skip
        value = getattr(options, name)
        if not is_number(value) or value < 0:
            problems.append(f"{name} must be a finite number, 0 or more (got {value!r})")
    if not isinstance(options.user_agent, str) or not options.user_agent.strip():
        problems.append("the user agent must not be empty")
    if problems:
        raise CrawlError("Invalid crawl settings: " + "; ".join(problems) + ".")


def crawl_site(
    start_url: str,
    out_dir: Path,
    options: CrawlOptions | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[CrawlProgress]:
    """Crawl `start_url` into `out_dir`, yielding progress; bad input raises CrawlError at once."""
    options = options or CrawlOptions()
    check_options(options)
    url = normalize_start_url(start_url)
    out = prepare_out_dir(out_dir)
    try:
        check_address(url, options)
    except FetchFailed as exc:
        raise CrawlError(exc.args[1]) from exc
    return CrawlRun(url, out, options, should_stop).iterate()


class CrawlRun:
    """One crawl into one folder: frontier, politeness, dedupe and the on-disk state."""

    def __init__(self, start_url: str, out: Path, options: CrawlOptions, should_stop) -> None:
        self.start_url, self.out, self.options = start_url, out, options
        self.should_stop = should_stop or (lambda: False)
        self.stop_event = threading.Event()
        self.gate = HostGate(self.stop_event)
        self.local = threading.local()
        self.sessions: list = []
        self.robots: dict[str, RobotFileParser | str] = {}  # origin -> rules, or why they were not fetched
        self.robots_lock = threading.Lock()  # workers meet new hosts through redirects
        self.current: dict[str, dict] = {}  # url -> state record of this run
        self.previous: dict[str, dict] = {}  # url -> latest record of earlier runs
        self.queued: set[str] = set()
        self.frontier: deque[Task] = deque()
        self.trap_counts: Counter[str] = Counter()
        self.link_skips: dict[str, dict] = {}  # url -> skip row for links never fetched
        self.sha_owner: dict[str, str] = {}
        self.hashes: list[tuple[int, str]] = []
        self.next_id = 1
        self.progress = CrawlProgress()
        self.last_manifest_write = 0.0
        self.run_number = 0

    # -- setup

    def session(self):
        """A requests.Session per worker thread (cookies and pools are not shared across threads)."""
        if not hasattr(self.local, "session"):
            self.local.session = new_session(self.options)
            self.sessions.append(self.local.session)
        return self.local.session

    def load_state(self) -> None:
        """Resume an unfinished run of the same start URL, or start a new run that remembers the old."""
        path = self.out / "state.jsonl"
        rows = [r for r in read_jsonl(path) if is_state_row(r)]
        runs = [r for r in rows if r.get("event") == "run"]
        ended = {r["run"] for r in rows if r.get("event") == "end" and r.get("status") in ("done", "failed")}
        last = runs[-1] if runs else None
        resume = last is not None and last["run"] not in ended and last.get("start_url") == self.start_url
        latest: dict[str, dict] = {}
        for row in rows:
            if "url" in row:
                latest[row["url"]] = row
        if resume:
            trim_torn_tail(path)
            self.run_number = last["run"]
            self.current = {u: r for u, r in latest.items() if r["run"] == self.run_number}
            older: dict[str, dict] = {}
            for row in rows:
                if "url" in row and row["run"] != self.run_number:
                    older[row["url"]] = row
            self.previous = older
        else:
            self.run_number = (last["run"] + 1) if last else 1
            self.previous = latest
            # Compact: keep only the latest record per URL, so the log does not grow run after run.
            try:
                write_jsonl_atomic(path, list(latest.values()))
            except OSError as exc:
                raise disk_error(self.out, exc) from exc
        # Unbuffered: nothing waits in memory, so closing after a failed write cannot fail again.
        self.log = path.open("ab", buffering=0)
        if not resume:
            self.append(
                {"event": "run", "run": self.run_number, "start_url": self.start_url, "time": now_iso()}
            )
        ids = [r["doc"]["id"] for r in latest.values() if r.get("doc")]
        self.next_id = max(ids, default=0) + 1
        for record in self.current.values():
            self.count(record, replay=True)
            doc = record.get("doc")
            if doc:
                self.queued.add(doc["url"])
                if doc["status"] != "vanished":
                    self.sha_owner.setdefault(doc["sha256"], doc["url"])
                    self.hashes.append((int(doc["simhash"], 16), doc["url"]))

    def append(self, row: dict) -> None:
        """Append one line to the state log, unbuffered (a killed crawl or full disk tears at most this line)."""
        data = memoryview((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        try:
            while data:
                data = data[self.log.write(data) :]
        except OSError as exc:
            raise disk_error(self.out, exc) from exc

    def robots_for(self, url: str) -> RobotFileParser | str:
        """robots.txt rules of the URL's origin, fetched once (or a str: why its links are skipped)."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self.robots_lock:
            return self._robots_locked(origin, parts.netloc)

    def _robots_locked(self, origin: str, netloc: str) -> RobotFileParser | str:
        if origin not in self.robots:
            try:
                check_address(origin, self.options)
                self.gate.wait_turn(netloc)
                rules = fetch_robots(self.session(), origin, self.options)
            except FetchFailed as exc:
                if origin == self.start_origin:
                    raise CrawlError(
                        f"Cannot reach {origin}: {exc.args[1]}. Check the address and your network."
                    ) from exc
                rules = exc.args[0]  # its links are skipped with this reason
            self.robots[origin] = rules
            if isinstance(rules, RobotFileParser):
                delay = max(self.options.delay, float(rules.crawl_delay(self.options.user_agent) or 0))
                self.gate.set_delay(netloc, delay)
        return self.robots[origin]

    def refusal(self, url: str) -> str | None:
        """Why a URL must not be fetched (scope, login, robots), or None."""
        if not in_scope(url, self.start_url):
            return "off-site"
        if is_login_url(url):
            return "login wall"
        rules = self.robots_for(url)
        if isinstance(rules, str):
            return rules
        if not rules.can_fetch(self.options.user_agent, url):
            return "robots.txt"
        return None

    def redirect_refusal(self, url: str) -> str | None:
        """Why a redirect target must not be fetched: also when it is crawled under its own URL."""
        if url in self.queued:
            return "duplicate"
        return self.refusal(url)

    # -- frontier

    def skip_link(self, url: str, reason: str, parent: str | None, listed: bool = True) -> None:
        self.progress.reasons[reason] = self.progress.reasons.get(reason, 0) + 1
        if listed and url not in self.link_skips and url not in self.current:
            self.link_skips[url] = {"url": url, "reason": reason, "detail": "", "parent_url": parent}

    def add_link(self, href: str, base: str, depth: int, parent: str | None) -> None:
        """Queue one link if it is new, in scope, allowed, within depth and within its trap budget."""
        url = canonical_url(href, base)
        if url is None or url in self.queued:
            return
        self.queued.add(url)
        if len(url) > self.options.max_url_length:
            return self.skip_link(url, "URL too long", parent)
        if skip_by_extension(url):
            return self.skip_link(url, "asset or media link", parent, listed=False)
        if depth > self.options.max_depth:
            return self.skip_link(url, "beyond max depth", parent, listed=False)
        refusal = self.refusal(url)
        if refusal:
            return self.skip_link(url, refusal, parent)
        key = trap_key(url)
        if key:
            if self.trap_counts[key] >= self.options.trap_budget:
                return self.skip_link(url, "trap budget", parent)
            self.trap_counts[key] += 1
        self.frontier.append(Task(url, depth, parent))

    def expand(self, record: dict) -> None:
        """Queue the links of a processed page (also used to replay a resumed run)."""
        base = record.get("final_url") or record["url"]
        depth = record["depth"]
        if record.get("refresh"):
            self.add_link(record["refresh"], base, depth, record["url"])
        for href in record.get("links", []):
            self.add_link(href, base, depth + 1, record["url"])

    # -- results

    def count(self, record: dict, replay: bool = False) -> None:
        p = self.progress
        p.fetched += 1
        doc = record.get("doc")
        if doc and doc["status"] != "vanished":
            p.saved += 1
            setattr(p, doc["status"], getattr(p, doc["status"]) + 1)
            p.last = f"{doc['status']}: {doc['url']}"
        else:
            p.skipped += 1
            reason = record.get("reason") or "skipped"
            p.reasons[reason] = p.reasons.get(reason, 0) + 1
            p.last = f"skipped ({reason}): {record['url']}"

    def save_text(self, doc_id: int, text: str) -> str:
        relative = f"pages/{doc_id:06d}.txt"
        try:
            write_text_atomic(self.out / relative, text + "\n")
        except OSError as exc:
            raise disk_error(self.out, exc) from exc
        return relative

    def handle(self, outcome: Outcome) -> None:
        """Turn a worker's outcome into a state record (and a saved text), then queue its links."""
        task = outcome.task
        record = {"run": self.run_number, "url": task.url, "depth": task.depth, "parent_url": task.parent_url,
                  "final_url": outcome.final_url, "reason": outcome.reason, "detail": outcome.detail,
                  "links": [], "doc": None}  # fmt: skip
        prev = self.previous.get(task.url) or {}
        is_start = task.depth == 0 and task.url == self.start_url
        if is_start and outcome.kind in ("pdf", "docx"):
            self.fail_start(outcome)
        if outcome.not_modified and prev.get("doc"):
            record["links"] = prev.get("links", [])
            record["refresh"] = prev.get("refresh")
            doc = dict(prev["doc"], status="unchanged", checked_at=now_iso())
            record["doc"] = doc
            self.sha_owner.setdefault(doc["sha256"], doc["url"])
            self.hashes.append((int(doc["simhash"], 16), doc["url"]))
        elif outcome.reason is None:
            record["links"] = outcome.links
            record["refresh"] = outcome.refresh
            record["doc"] = self.make_doc(outcome, prev, record)
        elif outcome.kind == "html" and outcome.reason == "empty text" and outcome.refresh:
            record["refresh"] = outcome.refresh  # a meta-refresh stub: follow it, do not save it
        if is_start and record["doc"] is None:
            self.fail_start(outcome)
        self.queued.add(outcome.final_url)
        self.current[task.url] = record
        self.append(record)
        self.count(record)
        if not self.stop_event.is_set():  # when stopping, a resumed run replays these links instead
            self.expand(record)

    def make_doc(self, outcome: Outcome, prev: dict, record: dict) -> dict | None:
        """The manifest record for new text, or None (with a reason) for a duplicate."""
        url = outcome.task.url
        if outcome.canonical:
            canonical = canonical_url(outcome.canonical, outcome.final_url)
            if canonical and canonical != url and urlsplit(canonical).netloc == urlsplit(url).netloc:
                if canonical in self.current or canonical in self.sha_owner.values():
                    record["reason"], record["detail"] = "duplicate", f"canonical is {canonical}"
                    return None
                self.queued.add(canonical)
                url = canonical
                prev = self.previous.get(url) or prev
        sha = hashlib.sha256(outcome.text.encode("utf-8")).hexdigest()
        if sha in self.sha_owner and self.sha_owner[sha] != url:
            record["reason"], record["detail"] = "duplicate", f"same text as {self.sha_owner[sha]}"
            return None
        fingerprint = simhash(outcome.text)
        for other, other_url in self.hashes:
            if other_url != url and hamming(fingerprint, other) <= self.options.near_duplicate_bits:
                record["reason"], record["detail"] = "near-duplicate", f"almost the same text as {other_url}"
                return None
        old = prev.get("doc")
        if old and old["sha256"] == sha:
            status, doc_id, text_file = "unchanged", old["id"], old["text_file"]
        else:
            status = "changed" if old else "new"
            doc_id = old["id"] if old else self.next_id
            if not old:
                self.next_id += 1
            text_file = self.save_text(doc_id, outcome.text)
        self.sha_owner[sha] = url
        self.hashes.append((fingerprint, url))
        return {"id": doc_id, "url": url, "final_url": outcome.final_url, "title": outcome.title,
                "depth": outcome.task.depth, "parent_url": outcome.task.parent_url, "kind": outcome.kind,
                "content_type": outcome.content_type, "encoding": outcome.encoding, "fetched_at": now_iso(),
                "sha256": sha, "simhash": f"{fingerprint:016x}", "chars": len(outcome.text),
                "text_file": text_file, "status": status, "etag": outcome.etag,
                "last_modified": outcome.last_modified}  # fmt: skip

    def fail_start(self, outcome: Outcome) -> None:
        reason, detail = outcome.reason or "not saved", outcome.detail
        hints = {
            "unreachable": "Check the address and your network.",
            "connection error": "Check the address and your network.",
            "timeout": "The site did not answer in time; try again later.",
            "login wall": "The page needs a login; start from a public page.",
            "robots.txt": "The site's robots.txt forbids crawling it.",
            "http 404": "The page does not exist: check the address (copy it from the browser's address bar).",
            "redirect loop": "The page redirects in a circle: open it in a browser and start from where it ends.",
            "too many redirects": "The page redirects too often: start from the address it finally shows.",
            "too large": "The page is larger than the crawler accepts: start from a smaller index page.",
            "truncated body": "The server cut the page off mid-transfer: try again later.",
            "binary content": "The address serves a file, not a web page: start from an HTML page.",
            "private address": "Only public sites (and the built-in demo site) may be crawled while the app "
            "is exposed.",
        }
        if (
            reason.startswith("unsupported type")
            or reason in ("media", "attachments off")
            or outcome.kind
            in (
                "pdf",
                "docx",
            )
        ):
            hint = "The start page must be an HTML page (a site's home page or a section index)."
        else:
            hint = hints.get(reason, "Choose a start page that shows the site's content.")
        self.append({"event": "end", "run": self.run_number, "status": "failed", "time": now_iso()})
        raise CrawlError(
            f"The start page {outcome.task.url} was not crawled ({reason}{': ' + detail if detail else ''}). {hint}"
        )

    # -- output

    def manifest_rows(self, done: bool) -> list[dict]:
        """Documents of this run, plus earlier ones: kept until revisited, vanished when a full run missed them."""
        docs: dict[str, dict] = {}
        for url, record in self.previous.items():
            if record.get("doc"):
                doc = record["doc"]
                docs[doc["url"]] = dict(doc, status="vanished") if done and url not in self.current else doc
        for url, record in self.current.items():
            doc = record.get("doc")
            if doc:
                docs[doc["url"]] = doc
            elif url in docs and record.get("reason") not in TRANSIENT_REASONS:
                docs[url] = dict(docs[url], status="vanished")
        return sorted(docs.values(), key=lambda d: d["id"])

    def write_outputs(self, done: bool) -> None:
        try:
            self._write_outputs(done)
        except OSError as exc:
            raise disk_error(self.out, exc) from exc

    def _write_outputs(self, done: bool) -> None:
        write_jsonl_atomic(self.out / "pages.jsonl", self.manifest_rows(done))
        skipped = [
            {
                "url": r["url"],
                "reason": r["reason"],
                "detail": r.get("detail", ""),
                "parent_url": r["parent_url"],
            }
            for r in self.current.values()
            if not r.get("doc")
        ]
        write_jsonl_atomic(self.out / "skipped.jsonl", skipped + list(self.link_skips.values()))
        self.last_manifest_write = time.monotonic()

    # -- the loop

    def stop_requested(self) -> bool:
        return self.should_stop() or (self.out / STOP_FILE).exists()

    def iterate(self) -> Iterator[CrawlProgress]:
        """Breadth-first crawl loop; yields progress after every finished URL."""
        (self.out / STOP_FILE).unlink(missing_ok=True)
        parts = urlsplit(self.start_url)
        self.start_origin = f"{parts.scheme}://{parts.netloc}"
        self.load_state()
        status = "failed"
        pool = ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="crawl")
        inflight: dict[Future, int] = {}
        # Outcomes are handled in the order their URLs were dispatched (breadth-first order), not in
        # the order fetches happen to finish: which of two identical pages is saved, and which links
        # are queued first, must not depend on thread timing.
        finished_early: dict[int, Outcome] = {}
        dispatched = handled = 0
        try:
            self.robots_for(self.start_url)
            self.queued.add(self.start_url)
            self.frontier.append(Task(self.start_url, 0, None))
            yield self.progress
            stopping = False
            while True:
                if not stopping and self.stop_requested():
                    stopping = True
                    self.stop_event.set()
                while not stopping and self.frontier and len(inflight) < self.options.concurrency:
                    task = self.frontier.popleft()
                    if task.url in self.current:  # resumed run: already fetched, just replay its links
                        self.expand(self.current[task.url])
                        continue
                    if len(self.current) + len(inflight) + len(finished_early) >= self.options.max_pages:
                        self.skip_link(task.url, "max pages reached", task.parent_url, listed=False)
                        continue
                    validators = self.validators_for(task.url)
                    future = pool.submit(self.fetch, task, validators)
                    inflight[future] = dispatched
                    dispatched += 1
                if not inflight:
                    break
                finished, _ = wait(inflight, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    finished_early[inflight.pop(future)] = future.result()
                while handled in finished_early:
                    outcome = finished_early.pop(handled)
                    handled += 1
                    if outcome.reason != "stopped":
                        self.handle(outcome)
                self.progress.queued = len(self.frontier) + len(inflight)
                if time.monotonic() - self.last_manifest_write > 2.0:
                    self.write_outputs(done=False)
                yield self.progress
            status = "stopped" if stopping else "done"
        except GeneratorExit:
            status = "stopped"
            raise
        finally:
            self.stop_event.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for session in self.sessions:
                session.close()
            try:
                if status != "failed":  # "failed" here is an error on its way out: keep the run resumable
                    self.write_outputs(done=status == "done")
                    self.append({"event": "end", "run": self.run_number, "status": status, "time": now_iso()})
            finally:
                self.log.close()
                (self.out / STOP_FILE).unlink(missing_ok=True)
        self.progress.finished, self.progress.status, self.progress.queued = True, status, 0
        self.progress.last = f"{status}: {self.progress.saved} saved, {self.progress.skipped} skipped"
        yield self.progress

    def validators_for(self, url: str) -> dict[str, str] | None:
        """Conditional-request headers from the last crawl, so unchanged pages cost a 304."""
        prev = self.previous.get(url) or {}
        doc = prev.get("doc")
        if not doc or doc["status"] == "vanished" or not prev.get("links") and doc.get("kind") == "html":
            return None  # without the stored links a 304 could not continue the crawl
        headers = {}
        if doc.get("etag"):
            headers["If-None-Match"] = doc["etag"]
        if doc.get("last_modified"):
            headers["If-Modified-Since"] = doc["last_modified"]
        return headers or None

    def fetch(self, task: Task, validators: dict[str, str] | None) -> Outcome:
        """Worker: fetch and convert one URL."""
        return fetch_document(
            self.session(), task, self.options, self.gate, self.stop_event, self.redirect_refusal, validators
        )


def options_dict(options: CrawlOptions) -> dict:
    """The options as plain values (for logs and the UI)."""
    return asdict(options)


def main(argv: list[str] | None = None) -> int:
    """CLI: crawl START_URL into --out DIR, printing progress."""
    parser = argparse.ArgumentParser(
        prog="python -m blocks.crawl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("start_url", metavar="START_URL", help="the page to start from (a campus home page)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (pages.jsonl, pages/)")
    parser.add_argument("--max-depth", type=int, default=3, metavar="N", help="link depth from the start (3)")
    parser.add_argument("--max-pages", type=int, default=200, metavar="N", help="URLs to fetch at most (200)")
    parser.add_argument("--delay", type=float, default=1.0, metavar="SECONDS", help="per-host delay (1.0)")
    parser.add_argument("--concurrency", type=int, default=2, metavar="N", help="parallel requests (2)")
    parser.add_argument("--user-agent", default=USER_AGENT, metavar="UA", help="User-Agent header")
    args = parser.parse_args(argv)
    options = CrawlOptions(
        max_depth=args.max_depth,
        max_pages=args.max_pages,
        delay=args.delay,
        concurrency=args.concurrency,
        user_agent=args.user_agent,
    )
    last = ""
    try:
        for progress in crawl_site(args.start_url, Path(args.out), options):
            if progress.last and progress.last != last:
                last = progress.last
                print(
                    f"[{progress.fetched} fetched, {progress.saved} saved, {progress.skipped} skipped] {last}"
                )
    except CrawlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: rerun the same command to resume", file=sys.stderr)
        return 130
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(progress.reasons.items(), key=lambda kv: -kv[1]))
    print(f"manifest: {Path(args.out) / 'pages.jsonl'}\nnot saved: {reasons or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

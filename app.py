"""UMTCDS web app: from a campus website to a fine-tuned campus chatbot, one tab per stage.

    python app.py                                  # http://127.0.0.1:6006
    python app.py --host 0.0.0.0 --auth admin:S3cret   # exposed (AutoDL tunnel): login required
    UMTCDS_AUTH=admin:S3cret python app.py --host 0.0.0.0
    python app.py --lang zh --model-root /root/autodl-tmp

Each tab is built by ui_<stage>.py and calls one module under blocks/; torch and
transformers are imported only when a stage needs them, so the page is up in seconds.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import warnings
from dataclasses import dataclass, field, replace

from blocks.models import default_model_path
from blocks.workspace import (
    DEFAULT_PROJECT,
    WorkspaceError,
    check_name,
    get_project,
    is_loopback,
    list_projects,
)
from blocks.workspace import check_model_root as ws_check_model_root

TABS = [
    # (module, English title, Chinese title)
    ("ui_crawl", "1 Crawl", "1 爬取"),
    ("ui_api_clean", "2 API clean", "2 API 清洗"),
    ("ui_local_clean", "3 Local clean", "3 本地清洗"),
    ("ui_qa", "4 QA generation", "4 问答生成"),
    ("ui_dataset", "5 Dataset", "5 数据集"),
    ("ui_config", "6 Config", "6 训练配置"),
    ("ui_training", "7 Training", "7 训练"),
    ("ui_chat", "8 Chat", "8 对话"),
]


class LaunchError(ValueError):
    """A launch option combination that is refused; the message says what to do."""


@dataclass
class LaunchSettings:
    """Parsed command-line options."""

    host: str = "127.0.0.1"
    port: int = 6006
    auth: tuple[str, str] | None = None
    lang: str = "en"
    project: str = DEFAULT_PROJECT
    model_roots: list[str] = field(default_factory=list)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """Split 'user:password' (from --auth or UMTCDS_AUTH) into a pair."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user.strip() or not password.strip():
        raise LaunchError("--auth must look like user:password (both non-empty).")
    if user != user.strip() or any(ch.isspace() for ch in user):
        raise LaunchError("The --auth user name must not contain spaces.")
    # The value itself is never echoed: it holds the password.
    if len(password) < 8:
        raise LaunchError("The password is shorter than 8 characters: choose a longer one.")
    return user, password


def parse_args(argv: list[str] | None = None) -> LaunchSettings:
    """Read the command line; refuse to expose the app without a login."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=6006, help="port (default 6006, AutoDL's tunnel port)")
    parser.add_argument("--auth", default=None, help="user:password; or set UMTCDS_AUTH")
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback address without login (anyone who reaches the port controls the app)",
    )
    parser.add_argument("--lang", choices=["en", "zh"], default="en", help="start language (switchable)")
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="project opened at start")
    parser.add_argument(
        "--model-root", action="append", default=[], help="extra folder models may be loaded from"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise LaunchError(
            f"--port {args.port} is out of range: choose a port from 1 to 65535 (default 6006)."
        )
    check_host(args.host)
    roots = [check_model_root(root) for root in args.model_root]
    auth = parse_auth(args.auth or os.environ.get("UMTCDS_AUTH"))
    if not is_loopback(args.host) and auth is None and not args.insecure_no_auth:
        raise LaunchError(
            f"Refusing to listen on {args.host} without a login: anyone who reaches the port could "
            "crawl, train and read your data. Pass --auth user:password (or set UMTCDS_AUTH), "
            "or --insecure-no-auth if you really mean it."
        )
    check_name(args.project)
    return LaunchSettings(args.host, args.port, auth, args.lang, args.project, roots)


def check_host(host: str) -> None:
    """Refuse a bind address that is neither an IP address nor a name this machine resolves."""
    import socket

    if not host.strip():
        raise LaunchError(
            "--host is empty: use 127.0.0.1 (this machine only) or 0.0.0.0 (exposed, with --auth)."
        )
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as exc:
        raise LaunchError(
            f"--host {host!r} is not an IP address or a known host name: use 127.0.0.1 or 0.0.0.0."
        ) from exc


def check_model_root(root: str) -> str:
    """A --model-root must be an existing folder that holds models, not a system or home-wide folder."""
    try:
        return str(ws_check_model_root(root))
    except WorkspaceError as exc:
        raise LaunchError(str(exc)) from exc


def build_app(settings: LaunchSettings | None = None):
    """Build the eight-tab Blocks app (imports gradio and the tab modules)."""
    import importlib

    import gradio as gr

    from ui_common import LANGS, Bilingual, UIContext

    settings = settings or LaunchSettings()
    os.environ["UMTCDS_MODEL_ROOTS"] = os.pathsep.join(settings.model_roots)
    L = Bilingual(settings.lang)
    get_project(settings.project)
    with gr.Blocks(title="UMTCDS", analytics_enabled=False) as demo:
        lang_state = gr.State(L.lang)
        L.lang_state = lang_state
        with gr.Row(equal_height=True):
            gr.Markdown(
                L(
                    "## UMTCDS · campus website → fine-tuned chatbot",
                    "## UMTCDS · 从校园网站到微调的校园问答机器人",
                )
            )
            project = gr.Dropdown(
                choices=list_projects() or [settings.project],
                value=settings.project,
                allow_custom_value=True,
                label=L("Project (type a new name to create one)", "项目（输入新名称即可创建）"),
                scale=1,
            )
            switch = gr.Radio(
                choices=list(LANGS.values()), value=LANGS[L.lang], label="Language / 语言", scale=0
            )
        ctx = UIContext(
            L=L,
            project=project,
            lang=lang_state,
            default_model=default_model_path(),
            model_roots=settings.model_roots,
            exposed=not is_loopback(settings.host),
        )

        def on_project(name: str):
            try:
                get_project(name)
            except WorkspaceError as exc:
                raise gr.Error(str(exc)) from exc
            return gr.update(choices=list_projects())

        project.change(on_project, inputs=project, outputs=project, show_progress="hidden")
        with gr.Tabs():
            for module_name, en, zh in TABS:
                with gr.Tab(L(en, zh)) as tab:
                    importlib.import_module(module_name).build_tab(replace(ctx, tab=tab))
        L.bind(demo, switch)
    return demo


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_args(argv)
    except (LaunchError, WorkspaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    demo = build_app(settings)
    url_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(f"UMTCDS running at http://{url_host}:{settings.port}", flush=True)
    # gradio 5.50 warns that show_api moves to footer_links in 6.0; we pin 5.50
    warnings.filterwarnings("ignore", message=".*show_api.*", category=DeprecationWarning)
    try:
        demo.queue(default_concurrency_limit=4).launch(
            server_name=settings.host,
            server_port=settings.port,
            auth=settings.auth,
            show_api=False,
            quiet=True,
            inbrowser=False,
        )
    except OSError as exc:  # port taken, or an address this machine does not have
        print(f"error: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

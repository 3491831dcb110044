"""Damaged crawl files: a line of crawl/state.jsonl or pages.jsonl that a kill, a full disk or the disk
itself damaged (cut inside a UTF-8 character, cut JSON, blank, not an object, fields of the wrong
type) is skipped, wherever it is: the next crawl runs and the Crawl tab's table shows the good rows
(issue 16, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blocks.crawl import CrawlOptions, crawl_site, read_manifest
from blocks.workspace import get_project

FAST = {"delay": 0, "concurrency": 2, "read_timeout": 3, "retries": 1, "backoff": 0.05}
TORN_UTF8 = '{"run": 1, "url": "http://x.edu.cn/a", "doc": {"title": "东湖大学'.encode()[:-2]
DAMAGED_LINES = [
    TORN_UTF8,
    b'{"run": 1, "url": "http://x.edu.cn/b", "doc": {"id": 3, "ur',
    b"",
    b"   ",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b'"just a string"',
    b"null",
    b'{"run": "one", "url": "http://x.edu.cn/c"}',
    b'{"run": 1, "url": ["http://x.edu.cn/d"]}',
    b'{"run": 1, "url": "http://x.edu.cn/e", "doc": {"id": "7", "url": "http://x.edu.cn/e"}}',
    b'{"run": 1, "url": "http://x.edu.cn/f", "doc": {"id": 8, "url": "http://x.edu.cn/f", "status": "new", '
    b'"sha256": "ab", "simhash": "not hex", "text_file": "pages/000008.txt"}}',
    b"[" * 50_000,
]


@pytest.fixture(scope="module")
def site():
    from faults.hostile_site import start_hostile_site

    server = start_hostile_site()
    yield server
    server.stop()


def crawl(site, out: Path) -> set[str]:
    list(crawl_site(site.url + "/start.htm", out, CrawlOptions(**FAST)))
    return {d["url"] for d in read_manifest(out)}


def insert_lines(path: Path, lines: list[bytes], where: str) -> None:
    """Put damaged lines into a JSONL file: in the middle, or as the last line (torn: no newline)."""
    rows = path.read_bytes().splitlines(keepends=True)
    if where == "middle":
        rows[1:1] = [line + b"\n" for line in lines]
        path.write_bytes(b"".join(rows))
    else:
        path.write_bytes(b"".join(rows) + b"\n".join(lines))


@pytest.mark.parametrize("where", ["middle", "end"])
@pytest.mark.parametrize("killed", [False, True], ids=["after-a-finished-crawl", "after-a-killed-crawl"])
def test_next_crawl_runs_over_a_damaged_state_log(site, tmp_path, where, killed):
    out = tmp_path / "crawl"
    expected = crawl(site, out)
    state = out / "state.jsonl"
    if killed:  # a killed crawl never wrote its end event: the next run resumes it
        rows = state.read_bytes().splitlines(keepends=True)
        state.write_bytes(b"".join(r for r in rows if b'"event": "end"' not in r))
    insert_lines(state, DAMAGED_LINES, where)

    assert crawl(site, out) == expected
    docs = read_manifest(out)
    assert len({d["id"] for d in docs}) == len(docs) == len(expected)
    assert all((out / d["text_file"]).is_file() for d in docs)


@pytest.mark.parametrize("where", ["middle", "end"])
def test_crawl_table_shows_the_good_rows_of_a_damaged_manifest(site, workspace, where):
    import ui_crawl

    out = get_project("p").crawl_dir
    expected = crawl(site, out)
    good = ui_crawl.manifest_table("p")
    damaged = [*DAMAGED_LINES, b'{"id": 99}', b'{"id": {"x": 1}, "title": null, "url": 5}']
    insert_lines(out / "pages.jsonl", damaged, where)

    table = ui_crawl.manifest_table("p")
    assert [row for row in table if row in good] == good  # every good row, in order
    assert {row[2] for row in table} >= expected
    for row in table:  # the rows that parse as objects show blanks where fields are missing or odd
        assert len(row) == len(ui_crawl.TABLE_HEADERS)
        assert all(isinstance(cell, int | float | str) for cell in row)
    assert all(isinstance(d, dict) for d in read_manifest(out))
    json.dumps(table)  # what Gradio sends to the browser

"""Faults during a crawl (and a dataset build): SIGKILL mid-crawl, servers that reset or truncate, a full disk.

Each test is bounded in time. The disk that fills is a small tmpfs where this machine allows mounting
(root in a container), else a RLIMIT_FSIZE cap in the child process (writes past N bytes fail with EFBIG).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blocks import dataset as ds
from blocks.crawl import CrawlOptions, crawl_site, read_manifest, read_skipped

ROOT = Path(__file__).resolve().parents[2]
FAST = {"delay": 0, "concurrency": 2, "read_timeout": 3, "retries": 1, "backoff": 0.05}


@pytest.fixture(scope="module")
def site():
    from faults.hostile_site import start_hostile_site

    server = start_hostile_site()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference(site, tmp_path_factory) -> set[str]:
    """URLs an uninterrupted crawl of the good pages saves."""
    out = tmp_path_factory.mktemp("ref") / "crawl"
    list(crawl_site(site.url + "/start.htm", out, CrawlOptions(**FAST)))
    urls = {d["url"] for d in read_manifest(out)}
    assert len(urls) == 13  # the start page and 12 notices
    return urls


def fetched_lines(state: Path) -> int:
    """URLs recorded in a crawl's state log so far."""
    return sum('"url"' in line for line in state.read_text().splitlines()) if state.is_file() else 0


def crawl_cmd(site, out: Path) -> list[str]:
    return [sys.executable, "-m", "blocks.crawl", site.url + "/start.htm", "--out", str(out), "--delay", "0",
            "--concurrency", "1"]  # fmt: skip


def assert_complete_and_consistent(out: Path, expected: set[str]) -> None:
    """No lost page, no duplicate URL or id, every text file whole (its sha256 matches the manifest)."""
    docs = read_manifest(out)
    assert {d["url"] for d in docs} == expected
    assert len({d["url"] for d in docs}) == len(docs) == len({d["id"] for d in docs})
    for doc in docs:
        text = (out / doc["text_file"]).read_text(encoding="utf-8")
        assert hashlib.sha256(text.removesuffix("\n").encode()).hexdigest() == doc["sha256"]
    assert not list(out.rglob("*.tmp"))


@pytest.mark.timeout(120)
def test_sigkill_mid_crawl_then_rerun_loses_nothing_and_duplicates_nothing(site, reference, tmp_path):
    out = tmp_path / "crawl"
    site.delay = 0.15  # slow enough to be killed in the middle
    try:
        proc = subprocess.Popen(
            crawl_cmd(site, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        state = out / "state.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and fetched_lines(state) < 5:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        site.delay = 0.0
    assert proc.returncode == -signal.SIGKILL
    fetched_before = {json.loads(line)["url"] for line in state.read_text().splitlines() if '"url"' in line}
    assert 5 <= len(fetched_before) < len(reference)
    # A kill can land in the middle of a line: simulate the worst case, a torn last record.
    with state.open("a", encoding="utf-8") as fh:
        fh.write('{"run": 1, "url": "http://torn')
    seen = len(site.paths)
    rerun = subprocess.run(crawl_cmd(site, out), cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert rerun.returncode == 0, rerun.stderr
    refetched = {site.url + p for p in site.paths[seen:]}
    assert not refetched & (
        fetched_before - {site.url + "/start.htm"}
    )  # finished pages are not fetched again
    assert_complete_and_consistent(out, reference)
    # The repaired log stays readable: a later re-crawl of the same folder works too.
    again = subprocess.run(crawl_cmd(site, out), cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert again.returncode == 0, again.stderr
    assert_complete_and_consistent(out, reference)
    assert {d["status"] for d in read_manifest(out)} == {"unchanged"}


@pytest.mark.timeout(120)
def test_resets_and_truncated_bodies_are_skipped_with_a_reason(site, reference, tmp_path):
    hazards = ["/reset.htm", "/reset-mid.htm", "/truncated.htm"]
    site.start_links = [*site.start_links, *hazards]
    try:
        last = list(crawl_site(site.url + "/start.htm", tmp_path / "crawl", CrawlOptions(**FAST)))[-1]
        cli = subprocess.run(
            [*crawl_cmd(site, tmp_path / "cli")], cwd=ROOT, capture_output=True, text=True, timeout=90
        )
    finally:
        site.start_links = site.start_links[: -len(hazards)]
    assert last.status == "done" and cli.returncode == 0, cli.stderr
    for out in (tmp_path / "crawl", tmp_path / "cli"):
        assert_complete_and_consistent(out, reference)
        skipped = {s["url"].rsplit("/", 1)[1]: s for s in read_skipped(out)}
        assert skipped["reset.htm"]["reason"] == "connection error"
        assert skipped["reset-mid.htm"]["reason"] == "truncated body"
        assert skipped["truncated.htm"]["reason"] == "truncated body"
        assert "IncompleteRead" in skipped["truncated.htm"]["detail"]
    assert "truncated body: 2" in cli.stdout and "connection error: 1" in cli.stdout


@contextlib.contextmanager
def small_disk(tmp_path: Path, size_kb: int):
    """(folder, preexec_fn, grow) for a disk of `size_kb`: a tmpfs if mount works, else RLIMIT_FSIZE."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode == 0:

        def grow() -> None:
            subprocess.run(["mount", "-o", "remount,size=8m", str(folder)], check=True)

        try:
            yield folder, None, grow
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return

    def limit() -> None:  # Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_kb * 1024 // 4, resource.RLIM_INFINITY))

    yield folder, limit, lambda: None


@pytest.mark.timeout(120)
def test_disk_full_mid_crawl_clear_error_nothing_truncated_then_resume(site, reference, tmp_path):
    with small_disk(tmp_path, 40) as (disk, preexec, grow):
        out = disk / "crawl"
        proc = subprocess.run(
            crawl_cmd(site, out), cwd=ROOT, capture_output=True, text=True, timeout=90, preexec_fn=preexec
        )
        assert proc.returncode == 2, proc.stdout[-500:] + proc.stderr[-2000:]
        assert "Cannot write to" in proc.stderr and "run the crawl again to resume" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not list(out.rglob("*.tmp"))
        if (out / "pages.jsonl").exists():  # whatever was written is whole
            partial = read_manifest(out)
            assert {d["url"] for d in partial} < reference
        grow()
        rerun = subprocess.run(crawl_cmd(site, out), cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert rerun.returncode == 0, rerun.stderr
        assert_complete_and_consistent(out, reference)


def qa_rows(pages: int, per_page: int, answer_chars: int) -> str:
    rows = [
        {"question": f"Question {k} about office {p}?", "answer": f"Office {p}, fact {k}: " + "x" * answer_chars,
         "source_url": f"https://x.edu.cn/{p}.htm"}
        for p in range(pages)
        for k in range(per_page)
    ]  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.timeout(120)
def test_disk_full_during_dataset_build_keeps_the_previous_dataset(tmp_path):
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_text(qa_rows(6, 2, 20))
    big.write_text(qa_rows(30, 10, 400))  # ~150 KB of records
    with small_disk(tmp_path, 256) as (disk, preexec, grow):
        env = {**os.environ, "UMTCDS_DATA_DIR": str(disk)}
        cmd = [sys.executable, "-m", "blocks.dataset", "--project", "p", "--no-qa-file", "--model", ""]
        first = subprocess.run(
            [*cmd, "--input", str(small)], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert first.returncode == 0, first.stderr
        dataset = disk / "p" / "dataset"
        before = {p.name: p.read_bytes() for p in dataset.iterdir() if p.is_file()}
        filler = None
        if preexec is None:  # leave ~60 KB free on the tmpfs
            free = shutil.disk_usage(disk).free
            filler = disk / "filler"
            filler.write_bytes(b"\0" * max(0, free - 60 * 1024))
        proc = subprocess.run(
            [*cmd, "--input", str(big)], cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=preexec
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert (
            "Cannot write the dataset" in proc.stderr
            and "previous dataset files are unchanged" in proc.stderr
        )
        assert "Traceback" not in proc.stderr
        after = {p.name: p.read_bytes() for p in dataset.iterdir() if p.is_file()}
        assert after == before  # train/dev/test/stats still belong together; no .tmp left behind
        if filler is not None:  # the function path says the same
            with pytest.raises(ds.DatasetError, match="No space left"):
                ds.build_dataset(disk / "p", [big])
            assert {p.name: p.read_bytes() for p in dataset.iterdir() if p.is_file()} == before
            filler.unlink()
        grow()
        again = subprocess.run([*cmd, "--input", str(big)], cwd=ROOT, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert ds.validate_dataset(dataset)["train"] > 200

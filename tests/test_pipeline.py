"""One-click pipeline: the demo site through crawl, QA (a loopback LLM speaking the OpenAI API), index,
dataset, config and the real trainer (tiny model), then a grounded chat that cites the site's pages."""

from __future__ import annotations

import json
import re

import pytest
from fake_llm_server import FakeLLMServer

from blocks import pipeline as pl
from blocks.demo_site import start_demo_site
from blocks.workspace import get_project


def sentence_pairs(messages: list[dict]) -> str:
    """A QA model stand-in: one pair per English sentence with a number, answered by that sentence."""
    text = messages[-1]["content"]
    doc = text.split("<document>")[-1]
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", doc) if re.search(r"[A-Za-z].*\d", s)]
    sentences = sentences or [s.strip() for s in doc.splitlines() if len(s.strip()) >= 8]  # Chinese pages
    pairs = [
        {"question": f"What does Eastlake University say about {' '.join(s.split()[:4]).strip('.,:')}?",
         "answer": s}
        for s in sentences[:3]
    ]  # fmt: skip
    return json.dumps(pairs)


@pytest.mark.slow
def test_one_click_builds_a_chatbot_that_cites_the_site_and_a_rerun_redoes_nothing(
    workspace, tiny_model_dir, monkeypatch, capsys
):
    from blocks import chat

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    project = get_project("oneclick")
    with start_demo_site() as site, FakeLLMServer(responder=sentence_pairs) as llm:
        settings = pl.PipelineSettings(
            site.url + "/en/index.htm",
            max_pages=6,
            max_depth=1,
            backend="openai",
            qa_model="fake",
            base_url=llm.url,
            base_model=str(tiny_model_dir),
            preset="cpu-demo",
        )
        seen = []  # the stage of each update, in order (the status object itself is updated in place)
        for final in pl.run_pipeline(project, settings):
            seen.append(final.stage)
        assert final.done and final.run_dir is not None, final.text()
        assert seen.index("crawl") < seen.index("qa") < seen.index("index") < seen.index("dataset")
        assert seen.index("dataset") < seen.index("config") < seen.index("training")
        assert (final.run_dir / "adapter" / "adapter_config.json").is_file()
        assert (project.root / "index" / "passages.jsonl").is_file()
        stats = json.loads((project.dataset_dir / "stats.json").read_text())
        assert stats["records_by_kind"]["train"]["raft"] > 0 and stats["rewordings"]["min"] >= 1
        requests_made = len(llm.requests)

        again = list(pl.run_pipeline(project, settings))
        assert again[-1].done and again[-1].run_dir == final.run_dir  # nothing new: no second run
        assert "already crawled" in again[-1].lines["crawl"]
        assert len(llm.requests) == requests_made  # finished pages are not asked again
        assert sorted(p.name for p in project.runs_dir.iterdir()) == [final.run_dir.name]

    code = chat.main(
        ["--adapter", str(final.run_dir / "adapter"), "--project", "oneclick", "--retrieve",
         "--temperature", "0", "--max-new-tokens", "8", "--prompt", "How often does the shuttle bus run?"]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("[1] " + site.url)


def test_cli_explains_a_start_address_it_cannot_use(workspace, capsys):
    assert pl.main(["not a url", "--project", "x", "--max-pages", "1"]) == 2
    assert "crawl:" in capsys.readouterr().err

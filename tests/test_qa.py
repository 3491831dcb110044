"""QA generation: the parser's accepted forms, the quality filters, and the stage end to end."""

from __future__ import annotations

import json
import threading

import pytest
from fake_llm_server import DEMO_PAGES, FakeLLMServer, campus_responder, document_of, write_crawl

from blocks import qa
from blocks.chunking import Chunk
from blocks.clean import PromptError, StageInputError, read_jsonl
from blocks.llm import OpenAIClient, RetryPolicy, ZhipuClient
from blocks.qa import (
    QASettings,
    generate_qa,
    is_grounded,
    is_near_duplicate,
    is_standalone,
    parse_qa_pairs,
    parse_variants,
    questions_for,
)
from blocks.workspace import get_project

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)
CONTRACT = {
    "id",
    "question",
    "answer",
    "source_url",
    "title",
    "chunk_id",
    "backend",
    "model",
    "prompt_version",
    "created_at",
}
EXPECTED = [("When does the library open?", "At 8:00."), ("What is the phone number?", "027-87651234.")]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "answer",
    [
        '[{"question": "When does the library open?", "answer": "At 8:00."}, '
        '{"question": "What is the phone number?", "answer": "027-87651234."}]',
        'Here you go:\n```json\n{"pairs": [{"Question": "When does the library open?", "Answer": "At 8:00."},'
        ' {"q": "What is the phone number?", "a": "027-87651234."}]}\n```\nHope this helps.',
        '{"question": "When does the library open?", "answer": "At 8:00."}\n'
        '{"question": "What is the phone number?", "answer": "027-87651234."}',
        "Q: When does the library open?\nA: At 8:00.\n\nQ: What is the phone number?\nA: 027-87651234.",
        "1. Q: When does the library open?\n   A: At 8:00.\n2. Q: What is the phone number?\n   A: 027-87651234.",
        "**Q1:** When does the library open?\n**A1:** At 8:00.\n**Q2:** What is the phone number?\n**A2:** 027-87651234.",
        "1. When does the library open?\nAt 8:00.\n2. What is the phone number?\n027-87651234.",
        "<think>Q: Is this a trap?\nA: yes</think>\nQ: When does the library open?\nA: At 8:00.\n"
        "Q: What is the phone number?\nA: 027-87651234.",
        "When does the library open?\nA: At 8:00.\nWhat is the phone number?\nA: 027-87651234.",
    ],
    ids=[
        "json",
        "fenced-dict",
        "json-lines",
        "q-a",
        "numbered",
        "bold",
        "numbered-plain",
        "think",
        "bare-question",
    ],
)
def test_parser_accepts_the_forms_models_produce(answer):
    assert parse_qa_pairs(answer) == EXPECTED


def test_parser_reads_chinese_markers_and_multiline_answers():
    text = "问：东湖大学图书馆几点开门？\n答：每天8:00开门，\n22:00闭馆。\nQ：宿舍费用是多少？\nA：每学年1200元。"
    assert parse_qa_pairs(text) == [
        ("东湖大学图书馆几点开门？", "每天8:00开门， 22:00闭馆。"),
        ("宿舍费用是多少？", "每学年1200元。"),
    ]
    assert parse_qa_pairs("I cannot help with that.") == []
    assert parse_variants('```json\n["A?", "B?"]\n```') == ["A?", "B?"]
    assert parse_variants("1. A?\n2. B?") == ["A?", "B?"]


# ---------------------------------------------------------------- quality


def test_questions_must_stand_alone():
    assert is_standalone("When does the Eastlake University library open?")
    assert not is_standalone("What does this page say about fees?")
    assert not is_standalone("According to the text, when is the deadline?")
    assert not is_standalone("本文提到的截止日期是哪天？")
    assert not is_standalone("该通知的发布单位是？")
    assert is_standalone("东湖大学图书馆几点开门？")


def test_answers_must_be_supported_by_the_chunk():
    chunk = "东湖大学图书馆总馆开放时间为每天8:00至22:00。借阅咨询电话：027-87651234。"
    assert is_grounded("图书馆每天8:00至22:00开放。", chunk)
    assert not is_grounded("图书馆每天9:00开放。", chunk)  # a number not in the text
    assert not is_grounded("学校的校训是明德笃学。", chunk)  # nothing in the text
    english = "The library opens at 8:00 and closes at 22:00 every day."
    assert is_grounded("It opens at 8:00 and closes at 22:00.", english)
    assert not is_grounded("Students must pay a deposit for the gym.", english)


def test_near_duplicates_and_question_count():
    assert is_near_duplicate("东湖大学图书馆几点开门？", "东湖大学图书馆几点开门?")
    assert is_near_duplicate("When does the library open?", "when does the library open")
    assert not is_near_duplicate("When does the library open?", "When does the canteen close?")
    assert questions_for(Chunk(0, "x", 40), 80, 8) == 1
    assert questions_for(Chunk(0, "x", 400), 80, 8) == 5
    assert questions_for(Chunk(0, "x", 4000), 80, 8) == 8


# ---------------------------------------------------------------- the stage


@pytest.fixture()
def project(workspace):
    p = get_project("campus")
    write_crawl(p.root)
    return p


def run(gen):
    """Drive a stage generator to the end and return its final report."""
    return list(gen)[-1]


def messy_responder(messages):
    """The campus responder plus one page-bound question and one invented answer per chunk."""
    answer = campus_responder(messages)
    content = messages[-1]["content"]
    if "JSON 数组" in content:
        pairs = json.loads(answer) + [
            {"question": "本页介绍了什么？", "answer": document_of(messages).splitlines()[0]},
            {"question": "东湖大学的校训是什么？", "answer": "校训是明德、笃学、求实、致远。"},
        ]
        return json.dumps(pairs, ensure_ascii=False)
    return answer


def test_pairs_keep_their_provenance_and_drops_are_counted(project):
    with FakeLLMServer(messy_responder) as server:
        client = ZhipuClient("k", base_url=server.url)
        report = run(generate_qa(project, client, QASettings(concurrency=2, variants=0), policy=FAST))
    pairs = read_jsonl(project.qa_file)
    assert report.done == 3 and report.pairs == len(pairs) == 8  # one pair per fact line
    assert report.drops == {"not_standalone": 3, "ungrounded": 3}
    assert "not_standalone 3" in report.summary() and "ungrounded 3" in report.summary()
    for pair in pairs:
        assert CONTRACT <= set(pair)
        url, title, text = next(p for p in DEMO_PAGES if p[0] == pair["source_url"])
        assert pair["title"] == title and pair["answer"] in text
        assert pair["backend"] == "zhipu" and pair["model"] == "glm-4-flash"
        assert pair["chunk_id"].endswith("#0")
    assert len({p["id"] for p in pairs}) == len(pairs)


def test_paraphrase_variants_and_judge(project):
    def judging(messages):
        content = messages[-1]["content"]
        if "只回答“是”或“否”" in content and "食堂" in content:
            return "否"  # the judge rejects every canteen pair
        return campus_responder(messages)

    with FakeLLMServer(judging) as server:
        client = OpenAIClient(server.url, "m")
        report = run(generate_qa(project, client, QASettings(variants=2, judge=True), policy=FAST))
    pairs = read_jsonl(project.qa_file)
    originals = [p for p in pairs if p["variant_of"] is None]
    variants = [p for p in pairs if p["variant_of"] is not None]
    assert report.drops["judge_rejected"] == 3 and len(originals) == 5
    assert len(variants) == 2 * len(originals)
    by_id = {p["id"]: p for p in originals}
    for v in variants:
        assert (
            v["answer"] == by_id[v["variant_of"]]["answer"]
            and v["question"] != by_id[v["variant_of"]]["question"]
        )


def test_stop_and_rerun_completes_without_duplicates(workspace):
    project = get_project("many")
    pages = [
        (f"{url}?copy={n}", f"{title}（{n}）", text) for n in range(4) for url, title, text in DEMO_PAGES
    ]
    write_crawl(project.root, pages)  # 12 pages: three waves of 4 at concurrency 1
    with FakeLLMServer(campus_responder) as server:
        client = OpenAIClient(server.url, "m")
        stop = threading.Event()
        settings = QASettings(concurrency=1, variants=0)
        for report in generate_qa(project, client, settings, stop=stop, policy=FAST):
            if report.done >= 4:
                stop.set()
        assert report.stopped and report.done == 4
        written = read_jsonl(project.qa_file)
        assert written and not (project.qa_dir / "pages" / "000011.jsonl").exists()
        sent = len(server.requests)
        report = run(generate_qa(project, client, settings, policy=FAST))
        assert (report.skipped, report.done) == (4, 8) and report.finished
        assert len(server.requests) - sent == 8  # only the missing pages were sent
        again = run(generate_qa(project, client, settings, policy=FAST))
    assert again.skipped == 12 and again.done == 0
    pairs = read_jsonl(project.qa_file)
    assert len(pairs) == len({p["id"] for p in pairs}) == len({p["question"] for p in pairs}) == 32
    assert written == pairs[: len(written)]  # the first run's pairs are kept as they were


def test_a_refused_chunk_fails_its_page_only(project):
    with FakeLLMServer(campus_responder) as server:
        server.fail_next("1301")
        report = run(
            generate_qa(project, OpenAIClient(server.url, "m"), QASettings(concurrency=1), policy=FAST)
        )
    assert (report.done, report.failed) == (2, 1)
    assert "content_filter 1" in report.summary()
    assert {p["source_url"] for p in read_jsonl(project.qa_file)} == {DEMO_PAGES[1][0], DEMO_PAGES[2][0]}


def test_bad_input_gives_clear_messages(project):
    client = OpenAIClient("http://127.0.0.1:9/v1", "m")
    report = run(generate_qa(project, client, QASettings(source="clean")))
    assert report.failed == 3 and "not_cleaned 3" in report.summary()
    with pytest.raises(PromptError, match=r"\{n\}"):
        run(generate_qa(project, client, QASettings(prompt="Write questions about {text}")))
    with pytest.raises(StageInputError, match="choose one of"):
        run(generate_qa(project, client, QASettings(source="web")))
    with pytest.raises(StageInputError, match="run the Crawl tab"):
        run(generate_qa(get_project("nothing"), client))


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        qa.main(["--help"])
    assert "--variants" in capsys.readouterr().out


SMALL_MODEL_PROMPT = (
    "{text}\n\nRead the text above. Write {n} question about it and answer it with a sentence from the text, "
    "in the form\nQ: <question>\nA: <answer>"
)


@pytest.mark.slow
def test_embedded_model_writes_a_grounded_pair_from_a_demo_site_page(workspace, embedded_model_dir):
    """SmolLM2 on a demo-site page: at least one parseable pair supported by its page.

    A 135M model cannot follow the default JSON prompt, so this uses a short Q:/A: prompt, as a user
    of a small local model would type into the prompt box.
    """
    import urllib.request

    import torch
    import trafilatura

    from blocks import llm
    from blocks.demo_site import start_demo_site

    with start_demo_site() as site:
        url = site.url + "/en/index.htm"
        text = trafilatura.extract(urllib.request.urlopen(url, timeout=10).read().decode("utf-8"))
    project = get_project("demo")
    write_crawl(project.root, [(url, "About Eastlake University", text)])
    client = llm.LocalClient(str(embedded_model_dir), batch_size=4)
    settings = QASettings(
        prompt=SMALL_MODEL_PROMPT,
        source="raw",
        chunk_tokens=100,
        overlap_tokens=0,
        max_questions=1,
        max_new_tokens=60,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than 2 on a shared 2-core machine
    try:
        report = run(generate_qa(project, client, settings))
    finally:
        torch.set_num_threads(threads)
        llm.unload_local_models()
    pairs = read_jsonl(project.qa_file)
    assert report.done == 1 and pairs, report.summary()
    assert all(is_grounded(p["answer"], text) and p["source_url"] == url for p in pairs)
    assert pairs[0]["backend"] == "local" and pairs[0]["model"] == "smollm2-135m-instruct"

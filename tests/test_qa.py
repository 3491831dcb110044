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
    check_question,
    generate_qa,
    is_grounded,
    is_near_duplicate,
    is_standalone,
    parse_qa_pairs,
    parse_variants,
    questions_for,
    resolve_method,
    select_facts,
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


@pytest.mark.parametrize(
    "question",
    [
        "What is the website of the admissions office?",
        "Where is the announcement board?",
        "以上哪些学院招收研究生？",
        "Which page of the library catalogue lists e-books?",
        "When does the text messaging service of Eastlake University start?",
    ],
)
def test_standalone_questions_that_merely_contain_page_words_are_kept(question):
    assert is_standalone(question)


@pytest.mark.parametrize(
    "question",
    [
        "What does this page say about fees?",
        "According to the text, when is the deadline?",
        "What is mentioned above about housing?",
        "What does the above notice announce?",
        "本文提到的截止日期是哪天？",
        "以上内容的发布单位是？",
        "上述通知什么时候生效？",
    ],
)
def test_questions_that_point_at_the_page_are_rejected(question):
    assert not is_standalone(question)


@pytest.mark.parametrize(
    ("answer", "chunk"),
    [
        ("A four-person room costs 1,200 RMB.", "四人间 1200 RMB per year for a four-person room."),
        ("四人间每学年1,200元。", "四人间住宿费为每学年1200元。"),
        ("It is open 8:00-22:00.", "The library is open from 8:00 to 22:00 every day."),
        ("It is open 8:00 to 22:00.", "The library is open 8:00-22:00 every day."),
        ("每天８:００至２２:００开放。", "图书馆每天8:00-22:00开放。"),
        ("每天8:00到22:00开放", "图书馆每天8:00–22:00开放"),
        ("Tuition is 22,000 RMB.", "Tuition is 22000 RMB per year."),
        ("Call 027-87651234.", "电话：027-87651234"),
    ],
)
def test_the_same_number_written_another_way_is_grounded(answer, chunk):
    assert is_grounded(answer, chunk)


@pytest.mark.parametrize(
    ("answer", "chunk"),
    [
        ("A four-person room costs 1,300 RMB.", "A four-person room costs 1,200 RMB per year."),
        ("It opens at 9:00.", "It opens at 19:00 on Sundays."),
        ("It is open 8:00-23:00.", "It is open 8:00 to 22:00."),
        ("图书馆每天9:00开放。", "图书馆每天8:00至22:00开放。"),
        ("Tuition is 12,000 RMB.", "Tuition is 1,200 RMB."),
    ],
)
def test_numbers_absent_from_the_chunk_are_still_rejected(answer, chunk):
    assert not is_grounded(answer, chunk)


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


@pytest.mark.slow
def test_embedded_model_writes_three_grounded_pairs_from_an_english_demo_page(workspace, embedded_model_dir):
    """SmolLM2 with the defaults (sentence method) on the demo site's English page: >= 3 pairs, each
    answer a sentence of the page, each question naming only what the page names."""
    import urllib.request

    import trafilatura

    from blocks import llm
    from blocks.demo_site import start_demo_site

    with start_demo_site() as site:
        url = site.url + "/en/index.htm"
        text = trafilatura.extract(urllib.request.urlopen(url, timeout=10).read().decode("utf-8"))
    project = get_project("demo")
    write_crawl(project.root, [(url, "About Eastlake University", text)])
    client = llm.LocalClient(str(embedded_model_dir))
    try:
        report = run(generate_qa(project, client, QASettings()))
    finally:
        llm.unload_local_models()
    pairs = read_jsonl(project.qa_file)
    assert report.done == 1 and len(pairs) >= 3, report.summary()
    assert all(p["answer"] in text and is_grounded(p["answer"], text) for p in pairs)
    assert all(check_question(p["question"], p["answer"], text) is None for p in pairs)
    assert pairs[0]["backend"] == "local" and pairs[0]["model"] == "smollm2-135m-instruct"
    assert report.tokens_per_s and report.tokens_per_s > 0


# ---------------------------------------------------------------- sentence method and defaults

GUIDE = (
    "International Students Guide\n"
    "Admission and tuition\n"
    "Tuition for international undergraduates is 22,000 RMB per academic year.\n"
    "The application fee is 600 RMB and is not refundable.\n"
    "Office: Room 302, Yifu Building, main campus.\n"
    "Office hours: Monday to Friday, 8:30-12:00 and 14:00-17:30.\n"
    "Phone: +86-27-8765-1500.\n"
    "中文首页"
)
# What a small model answers for each fact sentence: good questions and the usual mistakes.
SMALL_MODEL_QUESTIONS = {
    "Tuition": "How much is tuition for international undergraduates?",
    "application fee": "Is the application fee for international students refundable?",
    "Room 302": "Where is the office of the International Students Guide?",
    "Office hours": "What are the office hours of the University of Cambridge?",  # invented name
    "Phone": "What is the phone number +86-27-8765-1500?",  # gives the answer away
}


def small_model_responder(messages):
    """Answers the sentence method's few-shot request for the GUIDE facts like the 135M model does."""
    fact = messages[-1]["content"]
    return next((q for key, q in SMALL_MODEL_QUESTIONS.items() if key in fact), "Eastlake University")


def test_fact_sentences_leave_out_headings_menus_and_footers():
    assert select_facts(GUIDE, "International Students Guide") == [
        "Tuition for international undergraduates is 22,000 RMB per academic year.",
        "The application fee is 600 RMB and is not refundable.",
        "Office: Room 302, Yifu Building, main campus.",
        "Office hours: Monday to Friday, 8:30-12:00 and 14:00-17:30.",
        "Phone: +86-27-8765-1500.",
    ]
    assert select_facts(
        "首页 | 学校概况 | 图书馆\n东湖大学图书馆总馆建筑面积4.2万平方米。\n版权所有 © 东湖大学"
    ) == ["东湖大学图书馆总馆建筑面积4.2万平方米。"]


def test_question_check_keeps_questions_about_the_fact_and_drops_the_rest():
    fact = "Tuition for international undergraduates is 22,000 RMB per academic year."
    assert check_question("How much is tuition for international undergraduates?", fact, GUIDE) is None
    assert check_question("What is the cost of tuition in Tuvalu?", fact, GUIDE) == "invented_name"
    assert check_question("What does this sentence say about tuition?", fact, GUIDE) == "not_standalone"
    assert check_question("Where can I park my car?", fact, GUIDE) == "off_topic"
    assert check_question("Is tuition 22,000 RMB?", fact, GUIDE) == "gives_answer"
    assert check_question("Tuition for undergraduates", fact, GUIDE) == "not_a_question"
    assert (
        check_question("关于学费的通知？", "学费为每学年6380元。", "学费为每学年6380元。") == "not_a_question"
    )


def test_sentence_method_answers_with_the_page_sentence_and_counts_what_it_drops(workspace):
    project = get_project("guide")
    url = "https://www.elu.edu.cn/international/index.htm"
    write_crawl(project.root, [(url, "International Students Guide", GUIDE)])
    with FakeLLMServer(small_model_responder) as server:
        settings = QASettings(method="sentence", concurrency=1)
        report = run(generate_qa(project, OpenAIClient(server.url, "m"), settings, policy=FAST))
    pairs = read_jsonl(project.qa_file)
    assert [(p["question"], p["answer"]) for p in pairs] == [
        (
            SMALL_MODEL_QUESTIONS["Tuition"],
            "Tuition for international undergraduates is 22,000 RMB per academic year.",
        ),
        (SMALL_MODEL_QUESTIONS["application fee"], "The application fee is 600 RMB and is not refundable."),
        (SMALL_MODEL_QUESTIONS["Room 302"], "Office: Room 302, Yifu Building, main campus."),
    ]
    assert report.drops == {"invented_name": 1, "gives_answer": 1}
    assert len(server.requests) == 5  # one short request per fact sentence, no paraphrases by default
    assert all(r["body"]["max_tokens"] <= 40 for r in server.requests)
    assert "5/5 sentences" in report.summary()


def test_a_page_without_any_question_is_counted_not_retried_and_its_reason_is_plain_text(workspace):
    """An English-only model on a Chinese page: no pairs, said so in the summary and the page's state, and a
    rerun does not spend minutes asking again (greedy decoding would write the same)."""
    project = get_project("zh")
    write_crawl(project.root, [DEMO_PAGES[0]])
    with FakeLLMServer(lambda m: "# 东湖大学\n---\n**图书馆** 图书馆 图书馆") as server:
        client = OpenAIClient(server.url, "m")
        report = run(generate_qa(project, client, QASettings(method="sentence"), policy=FAST))
        sent = len(server.requests)
        again = run(generate_qa(project, client, QASettings(method="sentence"), policy=FAST))
        assert len(server.requests) == sent and again.skipped == 1
    assert report.failed == 0 and report.pairs == 0
    assert "pages_without_questions 1" in report.summary()
    reason = read_jsonl(project.qa_dir / "state.jsonl")[-1]["reason"]
    assert "English-only" in reason and "#" not in reason and "---" not in reason and "**" not in reason


def test_api_models_get_two_fact_keeping_paraphrases_per_question_by_default(workspace):
    project = get_project("variants")
    write_crawl(project.root, [DEMO_PAGES[2]])

    def responder(messages):
        content = messages[-1]["content"]
        if "JSON 字符串数组" in content:  # one faithful rewording, one that loses the name and the time
            question = content.split("问题：", 1)[-1].strip()
            lossy = "宿舍几点" + question.replace("东湖大学", "").replace("23:00", "")
            return json.dumps([f"请问{question}", lossy], ensure_ascii=False)
        return campus_responder(messages)

    with FakeLLMServer(responder) as server:
        report = run(generate_qa(project, OpenAIClient(server.url, "m"), QASettings(), policy=FAST))
    pairs = read_jsonl(project.qa_file)
    originals = [p for p in pairs if p["variant_of"] is None]
    variants = [p for p in pairs if p["variant_of"] is not None]
    assert len(originals) == 2 and len(variants) == 2  # the number-losing rewordings were dropped
    assert report.drops.get("variant_lost_facts") == 2, report.drops
    assert all(v["question"].startswith("请问") for v in variants)
    asked = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert sum("JSON 字符串数组" in text for text in asked) == 2  # one paraphrase request per question


def test_passage_answers_get_a_budget_that_follows_the_number_of_questions(project):
    with FakeLLMServer(campus_responder) as server:
        run(generate_qa(project, OpenAIClient(server.url, "m"), QASettings(variants=0), policy=FAST))
    budgets = {r["body"]["max_tokens"] for r in server.requests}
    assert budgets and max(budgets) <= 32 + 2 * 64  # these short pages ask for one or two questions


def test_auto_method_is_sentence_for_a_small_local_model_and_passage_for_an_api(tiny_model_dir):
    from blocks import llm

    try:
        assert resolve_method(QASettings(), llm.LocalClient(str(tiny_model_dir))) == "sentence"
    finally:
        llm.unload_local_models()
    assert resolve_method(QASettings(), OpenAIClient("http://127.0.0.1:9/v1", "m")) == "passage"
    assert (
        resolve_method(QASettings(method="passage"), OpenAIClient("http://127.0.0.1:9/v1", "m")) == "passage"
    )


def test_local_run_shows_progress_inside_pages_and_tokens_per_second(workspace, tiny_model_dir):
    from blocks import llm

    project = get_project("local")
    write_crawl(project.root, [("https://www.elu.edu.cn/intl", "International Students Guide", GUIDE)])
    seen = []
    try:
        client = llm.LocalClient(str(tiny_model_dir), batch_size=2, threads=1)
        for report in generate_qa(project, client, QASettings()):
            seen.append((report.units_done, report.units_total, report.summary()))
    finally:
        llm.unload_local_models()
    assert seen[-1][1] == 5 and [done for done, _, _ in seen].count(5) >= 1
    assert any("/5 sentences" in text and "tok/s" in text for _, _, text in seen)
    assert report.tokens_per_s and report.tokens_per_s > 0


def test_english_only_model_skips_chinese_pages_and_says_so(workspace):
    """The embedded model is English-only: with only_language="en" Chinese pages are not sent (they stay
    searchable in the index) and the report names the reason."""
    p = get_project("mixed")
    english = (
        "https://www.ehu.edu.cn/en/index.htm",
        "About",
        "The shuttle bus runs every 30 minutes from 7:00.",
    )
    write_crawl(p.root, [DEMO_PAGES[0], english])
    with FakeLLMServer(campus_responder) as server:
        client = ZhipuClient("k", base_url=server.url)
        report = run(generate_qa(p, client, QASettings(variants=0, only_language="en"), policy=FAST))
        sent = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert sent and not any("图书馆" in text for text in sent)
    assert any("shuttle" in text for text in sent)
    assert report.drops.get("pages_not_in_model_language") == 1 and report.skipped >= 1

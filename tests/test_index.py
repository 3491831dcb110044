"""Retrieval index: passages with URLs from crawled pages and QA pairs, BM25 search in English and Chinese,
incremental refresh, citations, and grounded answers in the chat CLI and the server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blocks import index as ix
from blocks.workspace import get_project

PAGES = {
    "000001": (
        "http://campus.test/library/index.htm",
        "Library opening hours",
        "Hartley Library\nMonday to Friday: 7:30 to 23:00.\nSaturday: 9:00 to 18:00.\nSunday: 12:00 to 22:00.\n"
        "Undergraduates may borrow 15 items for 21 days.",
    ),
    "000002": (
        "http://campus.test/housing/index.htm",
        "Residence halls",
        "First-year students live in Maple Hall and Birch Hall.\nA double room costs $1,200 per semester.",
    ),
    "000003": (
        "http://campus.test/it/wifi.htm",
        "Wi-Fi and network",
        "Connect to the NFC-Secure network with your student ID.\nGuests use NFC-Guest.",
    ),
    "000004": (
        "http://campus.test/library/zh.htm",
        "图书馆开放时间",
        "图书馆借阅区开放时间为每天7:30-22:30。\n本科生可借图书20册，借期30天。",
    ),
}

PAGES_BY_URL = {url: text for url, _, text in PAGES.values()}


def write_project(name: str = "site", pages=PAGES, qa: list[dict] | None = None):
    project = get_project(name)
    (project.crawl_dir / "pages").mkdir(parents=True, exist_ok=True)
    lines = []
    for pid, (url, title, text) in pages.items():
        (project.crawl_dir / "pages" / f"{pid}.txt").write_text(text, encoding="utf-8")
        lines.append(
            json.dumps({"url": url, "title": title, "text_file": f"pages/{pid}.txt", "status": "new"})
        )
    (project.crawl_dir / "pages.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if qa is not None:
        project.qa_dir.mkdir(parents=True, exist_ok=True)
        project.qa_file.write_text("".join(json.dumps(r) + "\n" for r in qa), encoding="utf-8")
    return project


def test_tokens_match_however_numbers_and_words_are_written():
    assert set(ix.tokenize("$1,200 per semester")) >= set(ix.tokenize("1200"))
    assert "30000" in set(ix.tokenize("an income below £30,000")) & set(ix.tokenize("earns under £30k"))
    assert ix.normalize_numbers("12kg, 1.5k, 2 k") == "12kg, 1500, 2 k"
    assert set(ix.tokenize("libraries opening")) == set(ix.tokenize("library opens"))
    assert "8" in ix.tokenize("at 8:00")
    assert "图书馆" in ix.tokenize("图书馆几点开门")
    assert "the" not in ix.tokenize("the library")


def test_passages_keep_paragraphs_and_stay_short():
    text = "First paragraph.\n" + "A sentence that goes on. " * 40 + "\nLast."
    passages = ix.split_passages(text, max_chars=200)
    assert all(len(p) <= 230 for p in passages)
    assert passages[0].startswith("First paragraph.")
    assert "".join(passages).replace("\n", " ").count("A sentence") == 40


def test_reworded_questions_find_the_right_page_and_chinese_uses_segmentation(workspace):
    project = write_project()
    report = ix.build_index(project)
    assert report.sources == 4 and report.passages >= 4
    assert (ix.index_dir(project) / "passages.jsonl").is_file()
    cases = {
        "If I want to study on a Saturday, when can I get into the library?": "library/index.htm",
        "How much is a double room in the dorms for first-years?": "housing/index.htm",
        "what network should I join on my laptop as a student": "it/wifi.htm",
        "本科生能借多少本书？": "library/zh.htm",
    }
    for question, path in cases.items():
        hits = ix.retrieve(project, question)
        assert hits and hits[0].passage.url.endswith(path), (question, [h.passage.url for h in hits])


def test_refresh_reindexes_only_changed_pages_and_drops_vanished_ones(workspace):
    project = write_project()
    ix.build_index(project)
    (project.crawl_dir / "pages" / "000003.txt").write_text("Wi-Fi: join CampusAir now.", encoding="utf-8")
    manifest = project.crawl_dir / "pages.jsonl"
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[1]["status"] = "vanished"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ix.is_stale(project)  # the crawl wrote after the build: the next search refreshes first
    report = ix.build_index(project)
    assert not ix.is_stale(project)
    assert (report.rebuilt, report.reused, report.removed) == (1, 2, 1)
    assert ix.retrieve(project, "which wifi network")[0].passage.text == "Wi-Fi: join CampusAir now."
    assert not any("housing" in h.passage.url for h in ix.retrieve(project, "double room semester cost"))


def test_cleaned_text_is_preferred_and_qa_pairs_alone_are_searchable(workspace):
    project = write_project()
    project.clean_dir.mkdir(parents=True, exist_ok=True)
    (project.clean_dir / "000002.txt").write_text("Cleaned: Maple Hall houses first-year students.")
    ix.build_index(project)
    assert ix.retrieve(project, "where do first-year students live")[0].passage.text.startswith("Cleaned:")

    only_pairs = get_project("pairs-only")
    only_pairs.qa_dir.mkdir(parents=True)
    only_pairs.qa_file.write_text(
        json.dumps(
            {"question": "Who is the president?", "answer": "Dr. Helen Park.", "source_url": "http://x/about"}
        )
        + "\n"
    )
    ix.build_index(only_pairs)
    hit = ix.retrieve(only_pairs, "who leads the college as its president")[0]
    assert hit.passage.url == "http://x/about" and "Helen Park" in hit.passage.text


def test_no_index_and_nothing_to_index_say_what_to_run(workspace):
    empty = get_project("empty")
    with pytest.raises(ix.RetrievalError, match="blocks.index"):
        ix.load_index(empty)
    with pytest.raises(ix.RetrievalError, match="crawl"):
        ix.build_index(empty)


def test_citations_follow_the_facts_of_the_reply(workspace):
    project = write_project()
    ix.build_index(project)
    hits = ix.retrieve(project, "library hours Saturday and a double room price")
    urls = {h.passage.url for h in hits}
    assert {"http://campus.test/library/index.htm", "http://campus.test/housing/index.htm"} <= urls
    cited = ix.cited_hits("A double room costs 1200 dollars.", hits)
    assert cited[0].passage.url.endswith("housing/index.htm")
    cited = ix.cited_hits("On Saturday it opens 9:00 to 18:00.", hits)
    assert cited[0].passage.url.endswith("library/index.htm")
    library = next(n for n, h in enumerate(hits, 1) if "library" in h.passage.url)
    assert ix.cited_hits(f"See [{library}].", hits)[0].passage.url.endswith("library/index.htm")
    assert ix.format_sources(cited).startswith("[1] http://campus.test/library/index.htm")


def test_grounded_prompt_puts_passages_before_the_question():
    p = ix.Passage("a#0", "a", "http://u", "Library", "Open 9:00 to 18:00.")
    text = ix.grounded_question("When does it open?", [ix.Hit(p, 1.0)])
    assert text.index("[1] Library") < text.index("Open 9:00") < text.index("When does it open?")
    assert "校园网页资料" in ix.grounded_question("图书馆几点开门？", [ix.Hit(p, 1.0)])


def test_index_cli_builds_and_searches(workspace, capsys):
    write_project()
    assert ix.main(["--project", "site", "--query", "Saturday library hours"]) == 0
    out = capsys.readouterr().out
    assert "4 sources" in out and "[1]" in out and "http://campus.test/library/index.htm" in out
    assert ix.main(["--project", "nothing-here"]) == 2


def test_chat_cli_with_retrieve_prints_reply_then_cited_urls(workspace, tiny_model_dir, capsys):
    from blocks import chat

    assert (
        chat.main(["--model", str(tiny_model_dir), "--retrieve", "--project", "void", "--prompt", "hi"]) == 2
    )
    assert "crawl a site" in capsys.readouterr().err  # nothing to search: said before loading the model
    write_project()  # no index yet: --retrieve builds it
    code = chat.main(
        [
            "--model", str(tiny_model_dir), "--retrieve", "--project", "site", "--temperature", "0",
            "--max-new-tokens", "8", "--prompt", "When is the library open on Saturday?",
        ]
    )  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("[1] http://campus.test/")
    urls = [line.split(" ", 1)[1] for line in lines if line[:1] == "[" and line[1:2].isdigit()]
    assert len(urls) == len(set(urls)) >= 1


def test_server_grounds_answers_and_lists_sources(workspace, tiny_model_dir):
    from openai import OpenAI

    from blocks.chat import load_model
    from blocks.serve import create_app, start_server

    project = write_project()
    ix.build_index(project)
    loaded = load_model(tiny_model_dir)
    with start_server(create_app(loaded, None, 8, project)) as server:
        client = OpenAI(base_url=server.url, api_key="none", max_retries=0)
        reply = client.chat.completions.create(
            model=loaded.name,
            messages=[{"role": "user", "content": "Which Wi-Fi network do students use?"}],
            temperature=0,
        )
        text = reply.choices[0].message.content
        assert "\n\nSources:\n[1] http://campus.test/" in text
        assert reply.choices[0].message.model_extra["sources"][0]["url"].startswith("http://campus.test/")
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model=loaded.name,
                messages=[{"role": "user", "content": "Which Wi-Fi network do students use?"}],
                temperature=0,
                stream=True,
            )
            if c.choices
        )
        assert streamed == text


def test_dataset_rewords_and_adds_retrieval_records_in_train_only(workspace):
    from blocks.dataset import DatasetOptions, build_dataset

    qa = [
        {"question": "When is the library open on Saturday?", "answer": "On Saturday the library is open 9:00 to 18:00.",
         "source_url": PAGES["000001"][0]},
        {"question": "How much is a double room?", "answer": "A double room costs $1,200 per semester.",
         "source_url": PAGES["000002"][0]},
        {"question": "Which network do students join?", "answer": "Students join NFC-Secure.",
         "source_url": PAGES["000003"][0]},
        {"question": "本科生可以借几本书？", "answer": "本科生可借图书20册，借期30天。", "source_url": PAGES["000004"][0]},
    ]  # fmt: skip
    project = write_project(qa=qa)
    report = build_dataset(project.root, options=DatasetOptions(ratios=(2, 1, 1), raft_negatives=0.0))
    splits = {s: [json.loads(x) for x in (project.dataset_dir / f"{s}.jsonl").read_text().splitlines()]
              for s in ("train", "dev", "test")}  # fmt: skip
    kinds = report.stats["records_by_kind"]
    assert kinds["train"]["pair"] == 2 and kinds["train"]["reworded"] == 6 and kinds["train"]["raft"] == 4
    assert all(r["meta"]["kind"] == "pair" for s in ("dev", "test") for r in splits[s])
    assert report.stats["rewordings"]["min"] == 3 == report.stats["rewordings"]["max"]
    train_sources = {r["meta"]["source"] for r in splits["train"]}
    assert len(train_sources) == 2  # rewordings and retrieval records never leak into dev/test pages
    for r in splits["train"]:
        if r["meta"]["kind"] == "raft":
            user = r["messages"][-2]["content"]
            assert r["meta"]["source"] in r["meta"]["passages"]  # the gold page is among the passages
            assert user.index("[1]") < user.rindex(r["messages"][-2]["content"].splitlines()[-1])
            if r["meta"].get("variant_of"):  # a rewording read from the page: its own Q/A passage withheld
                assert f"Q: {r['meta']['variant_of']}" not in user
                assert PAGES_BY_URL[r["meta"]["source"]].split("\n")[0] in user
        if r["meta"]["kind"] == "reworded":
            assert r["messages"][-1]["content"] in {q["answer"] for q in qa}


def test_dataset_negatives_teach_to_say_the_pages_do_not_say(workspace):
    from blocks.dataset import DatasetOptions, build_dataset

    qa = [
        {
            "question": f"Question {i} about the library?",
            "answer": f"Answer {i}: open 9:00.",
            "source_url": url,
        }
        for i, url in enumerate([PAGES["000001"][0], PAGES["000002"][0], PAGES["000003"][0]] * 4)
    ]
    project = write_project(qa=qa)
    build_dataset(project.root, options=DatasetOptions(ratios=(1, 0, 0), raft_negatives=0.5, rewordings=0))
    raft = [
        json.loads(x) for x in (project.dataset_dir / "train.jsonl").read_text().splitlines() if '"raft"' in x
    ]
    negatives = [r for r in raft if r["messages"][-1]["content"] == ix.NOT_FOUND_EN]
    assert 0 < len(negatives) < len(raft)
    assert all(r["meta"]["source"] not in r["meta"]["passages"] for r in negatives)


def test_rewordings_keep_the_question_words(tmp_path: Path):
    from blocks.dataset import keyword_question, reword_question

    q = "What is the phone number of the Office of International Affairs?"
    variants = reword_question(q, 3, seed=1)
    assert len(variants) == 3 and len(set(variants)) == 3 and q not in variants
    assert all("International Affairs" in v for v in variants)
    assert keyword_question("When does the library open on Saturday?") == "When library open Saturday?"
    assert all("图书馆" in v for v in reword_question("图书馆几点开门？", 2))
    assert reword_question(q, 0) == []

"""Dataset stage: leak-free, reproducible chat splits from qa.jsonl and the seed's text files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from blocks import dataset as ds
from blocks.workspace import get_project

DATA = Path(__file__).resolve().parent / "data"


def make_pairs(pages: int = 12, per_page: int = 3) -> list[dict]:
    """QA-stage records: `per_page` paraphrased facts for each page."""
    rows = []
    for p in range(pages):
        for k in range(per_page):
            rows.append(
                {
                    "id": f"p{p}-{k}",
                    "question": f"Question {k} about office {p}: when does it open?",
                    "answer": f"Office {p} opens at {8 + k}:00, fact {p}.{k}.",
                    "source_url": f"https://www.example.edu.cn/page{p}.htm",
                    "title": f"Office {p}",
                    "chunk_id": f"page{p}#0",
                    "backend": "zhipu",
                    "model": "glm-4-flash",
                    "prompt_version": "v1",
                    "created_at": "2026-01-01T00:00:00Z",
                }
            )
    return rows


def write_qa(project_root: Path, rows: list[dict], extra_lines: list[str] = ()) -> Path:
    path = project_root / "qa" / "qa.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_split(project_root: Path, split: str) -> list[dict]:
    text = (project_root / "dataset" / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def sources_by_split(project_root: Path) -> dict[str, set[str]]:
    return {s: {r["meta"]["source"] for r in read_split(project_root, s)} for s in ds.SPLITS}


@pytest.fixture()
def project(workspace):
    return get_project("campus")


def test_build_writes_chat_splits_grouped_by_page(project, tiny_model_dir):
    write_qa(project.root, make_pairs())
    # plain pairs: this test is about splitting (augmentation: tests/test_index.py)
    report = ds.build_dataset(
        project.root, options=ds.DatasetOptions(rewordings=0, retrieval=False), model_path=tiny_model_dir
    )

    splits = {s: read_split(project.root, s) for s in ds.SPLITS}
    assert sum(len(v) for v in splits.values()) == 36
    assert all(splits[s] for s in ds.SPLITS), "dev and test must not be empty"
    # Grouped: every page's pairs sit in exactly one split, so nothing of a test page was trained on.
    by_split = sources_by_split(project.root)
    assert not by_split["train"] & by_split["test"] and not by_split["train"] & by_split["dev"]
    assert not by_split["dev"] & by_split["test"]
    record = splits["train"][0]
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
    assert record["meta"]["source"].startswith("https://www.example.edu.cn/page")
    assert record["meta"]["origin"].startswith("qa.jsonl:")
    assert record["meta"]["id"] and record["meta"]["chunk_id"]
    # Stats on disk match what the user is shown.
    stats = json.loads((project.root / "dataset" / "stats.json").read_text(encoding="utf-8"))
    assert stats == report.stats
    assert {s: v["records"] for s, v in stats["splits"].items()} == {s: len(v) for s, v in splits.items()}
    assert stats["pairs_per_source"]["https://www.example.edu.cn/page0.htm"] == 3
    assert stats["drops"] == {}
    assert ds.validate_dataset(project.dataset_dir) == {s: len(v) for s, v in splits.items()}


def test_split_is_reproducible_independent_of_input_order_and_changes_with_seed(project, workspace):
    rows = make_pairs(pages=20)
    write_qa(project.root, rows)
    ds.build_dataset(project.root)
    first = sources_by_split(project.root)
    train_bytes = (project.dataset_dir / "train.jsonl").read_bytes()
    ds.build_dataset(project.root)
    assert (project.dataset_dir / "train.jsonl").read_bytes() == train_bytes

    other = get_project("shuffled")
    write_qa(other.root, list(reversed(rows)))
    ds.build_dataset(other.root)
    assert sources_by_split(other.root) == first

    ds.build_dataset(project.root, options=ds.DatasetOptions(seed=7))
    assert sources_by_split(project.root) != first


def test_ratios_are_followed_on_larger_data(project):
    write_qa(project.root, make_pairs(pages=100, per_page=2))
    options = ds.DatasetOptions(ratios=(7, 2, 1), rewordings=0, retrieval=False)
    report = ds.build_dataset(project.root, options=options)
    counts = {s: v["records"] for s, v in report.stats["splits"].items()}
    assert counts == {"train": 140, "dev": 40, "test": 20}


def test_same_question_on_another_page_is_dropped_so_it_cannot_cross_splits(project):
    rows = make_pairs(pages=10, per_page=1)
    # Several pages answer the same FAQ (different punctuation and case); same-page paraphrases stay.
    for p in range(10):
        question = "What is the University motto?" if p % 2 else "what is the university motto ？"
        rows.append(
            {
                "question": question,
                "answer": f"Motto {p}",
                "source_url": f"https://www.example.edu.cn/page{p}.htm",
            }
        )
    rows.append(
        {
            "question": "What's the motto, in short?",
            "answer": "Motto 0 again",
            "source_url": rows[10]["source_url"],
        }
    )
    write_qa(project.root, rows)
    report = ds.build_dataset(project.root, options=ds.DatasetOptions(ratios=(1, 1, 1)))
    assert report.stats["drops"] == {"same_question_other_page": 9}
    motto = [
        (s, r["meta"]["source"])
        for s in ds.SPLITS
        for r in read_split(project.root, s)
        if "motto" in r["messages"][0]["content"].lower()
    ]
    assert len(motto) == 2 and len(set(motto)) == 1, "kept FAQ and its same-page paraphrase share one split"


def test_three_pages_fill_every_split(project):
    write_qa(project.root, make_pairs(pages=3, per_page=5))
    report = ds.build_dataset(project.root)
    assert {s: v["groups"] for s, v in report.stats["splits"].items()} == {"train": 1, "dev": 1, "test": 1}


def test_too_few_pages_says_what_is_needed(project):
    write_qa(project.root, make_pairs(pages=2, per_page=5))
    with pytest.raises(ds.DatasetError, match=r"Only 2 source group.*at least 3.*ratio to 0"):
        ds.build_dataset(project.root)
    assert not (project.dataset_dir / "train.jsonl").exists()
    # Without a dev split two pages are enough.
    report = ds.build_dataset(project.root, options=ds.DatasetOptions(ratios=(8, 0, 2)))
    assert report.stats["splits"]["dev"]["records"] == 0
    assert report.stats["splits"]["test"]["records"] == 5


def test_rebuild_replaces_files_instead_of_appending(project):
    write_qa(project.root, make_pairs(pages=6, per_page=2))
    ds.build_dataset(project.root, options=ds.DatasetOptions(rewordings=0, retrieval=False))
    ds.build_dataset(project.root, options=ds.DatasetOptions(rewordings=0, retrieval=False))
    assert sum(len(read_split(project.root, s)) for s in ds.SPLITS) == 12
    leftovers = [p.name for p in project.dataset_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_cleaning_drops_duplicates_empty_and_long_pairs_by_reason(project):
    rows = make_pairs(pages=4, per_page=1)
    base = rows[0]
    rows += [
        dict(base),  # exact duplicate
        {
            **base,
            "question": "  QUESTION 0 about office 0 -- when does it open  ",
            "answer": base["answer"].upper(),
        },
        {**base, "question": "Ｑｕｅｓｔｉｏｎ　0 about office 0: when does it open?"},  # full-width
        {**base, "question": "   ", "answer": "orphan"},
        {**base, "question": "Who?", "answer": ""},
        {**base, "question": "x" * 70, "answer": "long question"},
        {**base, "question": "Long answer?", "answer": "y" * 200},
    ]
    write_qa(project.root, rows)
    options = ds.DatasetOptions(max_question_chars=60, max_answer_chars=100)
    report = ds.build_dataset(project.root, options=options)
    assert report.stats["drops"] == {
        "duplicate_exact": 1,
        "duplicate_normalised": 2,
        "empty_question": 1,
        "empty_answer": 1,
        "question_too_long": 1,
        "answer_too_long": 1,
    }
    assert report.stats["kept"] == 4


def test_malformed_lines_are_reported_with_file_and_line(project):
    write_qa(
        project.root,
        make_pairs(pages=3, per_page=1),
        ['{"question": "broken', '{"question": "No answer?"}', '{"question": "Q", "answer": 42}', "[1, 2]"],
    )
    report = ds.build_dataset(project.root)
    assert report.stats["drops"]["malformed"] == 4
    problems = report.stats["problems"]
    assert problems[0].startswith("qa.jsonl:4: not valid JSON")
    assert problems[1] == "qa.jsonl:5: missing 'answer'"
    assert problems[2] == "qa.jsonl:6: 'answer' must be a string, got int"
    assert problems[3].startswith("qa.jsonl:7: expected an object")
    assert report.stats["kept"] == 3


def test_only_malformed_input_is_an_error_naming_the_line(project):
    write_qa(project.root, [], ["not json"])
    with pytest.raises(ds.DatasetError, match=r"No usable QA pairs.*qa.jsonl:1: not valid JSON"):
        ds.build_dataset(project.root)


def test_import_seed_text_format(project):
    pairs, problems = ds.read_pairs([DATA / "seed_qa.txt"])
    assert [(p.question, p.answer) for p in pairs] == [
        ("图书馆借阅区几点开放？", "图书馆借阅区每天7:30-22:30开放。"),
        ("本科生可以借几本书？", "本科生可借图书20册，\n借期30天，可续借1次。"),
        ("What is the university motto?", "Illuminate virtue, study earnestly, seek truth, reach far."),
        ("校医院在哪里？", "校医院位于东区学生公寓旁。"),
    ]
    assert problems == [
        "seed_qa.txt:14: answer without a preceding 'Q：' question",
        "seed_qa.txt:16: question without an 'A：' answer",
    ]
    assert pairs[1].origin == "seed_qa.txt:4"


def test_seed_llm_variants_are_parsed():
    text = "**Q：** 食堂几点开门？\n**A：** 6:30。\n\nQ：宿舍在哪？ A：东区。\n- Q1: hi?\n  A1: hello\n"
    pairs, problems = ds.parse_qa_text(text, "final_x.txt")
    assert [(p.question, p.answer) for p in pairs] == [
        ("食堂几点开门？", "6:30。"),
        ("宿舍在哪？", "东区。"),
        ("hi?", "hello"),
    ]
    assert problems == []


def test_import_seed_folder_one_file_per_page_groups_by_file(project, tmp_path):
    # The seed kept one final_<page>.txt per page in a folder; old Windows users saved GB18030.
    folder = tmp_path / "seed_out"
    folder.mkdir()
    for p in range(4):
        text = "".join(f"Q：第{p}页问题{k}？\nA：第{p}页答案{k}。\n\n" for k in range(3))
        (folder / f"final_page{p}.txt").write_bytes(text.encode("gb18030" if p == 0 else "utf-8"))
    report = ds.build_dataset(project.root, inputs=[folder])
    assert report.stats["kept"] == 12
    assert len(report.stats["inputs"]) == 4
    by_split = {s: {r["meta"]["source"] for r in read_split(project.root, s)} for s in ds.SPLITS}
    assert sum(len(v) for v in by_split.values()) == 4  # each file (page) in exactly one split
    assert "第0页问题0？" in (project.dataset_dir / "train.jsonl").read_text(encoding="utf-8") + (
        project.dataset_dir / "dev.jsonl"
    ).read_text(encoding="utf-8") + (project.dataset_dir / "test.jsonl").read_text(encoding="utf-8")


def test_import_plain_jsonl_and_json_array(project, tmp_path):
    lines = tmp_path / "pairs.jsonl"
    lines.write_text(
        "\n".join(
            json.dumps({"question": f"q{i}?", "answer": f"a{i}", "url": f"http://x/{i}"}) for i in range(3)
        ),
        encoding="utf-8",
    )
    array = tmp_path / "more.json"
    array.write_text(json.dumps([{"question": "q9?", "answer": "a9"}, {"question": "bad"}]), encoding="utf-8")
    pairs, problems = ds.read_pairs([lines, array])
    assert [p.question for p in pairs] == ["q0?", "q1?", "q2?", "q9?"]
    assert pairs[0].source == "http://x/0"
    assert problems == ["more.json[1]: missing 'answer'"]


def test_unsupported_or_missing_inputs_have_clear_messages(project, tmp_path):
    with pytest.raises(ds.DatasetError, match=r"qa.jsonl does not exist. Run QA generation"):
        ds.build_dataset(project.root)
    csv = tmp_path / "pairs.csv"
    csv.write_text("q,a\n", encoding="utf-8")
    with pytest.raises(ds.DatasetError, match=r"unsupported file type .csv"):
        ds.read_pairs([csv])
    with pytest.raises(ds.DatasetError, match=r"does not exist"):
        ds.read_pairs([tmp_path / "nope.jsonl"])
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81\xff")
    with pytest.raises(ds.DatasetError, match=r"neither UTF-8 nor GB18030"):
        ds.read_pairs([binary])


@pytest.mark.parametrize("text", ["8:1", "a:b:c", "8:-1:1", "0:1:1", ""])
def test_bad_split_ratios_are_refused(text):
    with pytest.raises(ds.DatasetError, match=r"Split"):
        ds.parse_split_ratios(text)


def test_limits_below_one_are_refused(project):
    write_qa(project.root, make_pairs(pages=3, per_page=1))
    with pytest.raises(ds.DatasetError, match=r"max_output_length is 0: it must be at least 1"):
        ds.build_dataset(project.root, options=ds.DatasetOptions(max_output_length=0))
    with pytest.raises(ds.DatasetError, match=r"gives train nothing"):
        ds.build_dataset(project.root, options=ds.DatasetOptions(ratios=(0, 1, 1)))


def test_split_ratio_forms():
    assert ds.parse_split_ratios("8:1:1") == (8, 1, 1)
    assert ds.parse_split_ratios("0.8, 0.1, 0.1") == (0.8, 0.1, 0.1)


def test_token_stats_match_the_chat_template_and_count_truncation(project, tiny_model_dir):
    from transformers import AutoTokenizer

    write_qa(project.root, make_pairs(pages=5, per_page=2))
    options = ds.DatasetOptions(
        system_prompt="You answer questions about Eastlake University.", max_output_length=10
    )
    report = ds.build_dataset(project.root, options=options, model_path=tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = [r for s in ds.SPLITS for r in read_split(project.root, s)]
    # The trainer's recipe: prompt = template up to the generation header, answer = the rest.
    prompts = [
        tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
        for r in records
    ]
    fulls = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
    prompt_lens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    answers = [
        len(tokenizer(f[len(p) :], add_special_tokens=False)["input_ids"])
        for p, f in zip(prompts, fulls, strict=True)
    ]
    totals = sorted(p + a for p, a in zip(prompt_lens, answers, strict=True))
    tokens = report.stats["tokens"]
    assert (tokens["total"]["min"], tokens["total"]["max"]) == (totals[0], totals[-1])
    assert tokens["prompt"]["max"] == max(prompt_lens)
    assert sum(v["output"] for v in tokens["truncated"].values()) == sum(a > 10 for a in answers) > 0
    assert sum(v["input"] for v in tokens["truncated"].values()) == 0


def test_preview_is_what_training_sees_with_system_prompt(project, tiny_model_dir):
    from transformers import AutoTokenizer

    write_qa(project.root, make_pairs(pages=6, per_page=2))
    options = ds.DatasetOptions(system_prompt="You are Eastlake's assistant.")
    report = ds.build_dataset(project.root, options=options, model_path=tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train = read_split(project.root, "train")
    assert len(report.preview) == 5
    assert report.preview[0] == tokenizer.apply_chat_template(train[0]["messages"], tokenize=False)
    assert report.preview[0].startswith("<|im_start|>system\nYou are Eastlake's assistant.<|im_end|>")
    assert train[0]["messages"][0] == {"role": "system", "content": "You are Eastlake's assistant."}


def test_cite_source_appends_the_page_url(project):
    write_qa(project.root, make_pairs(pages=3, per_page=1))
    report = ds.build_dataset(project.root, options=ds.DatasetOptions(cite_source=True))
    record = read_split(project.root, "train")[0]
    assert record["messages"][-1]["content"].endswith(f"\n\nSource: {record['meta']['source']}")
    assert report.stats["cited"] == 3


def test_model_without_tokenizer_or_template_is_explained(project, tmp_path, tiny_model_dir):
    write_qa(project.root, make_pairs(pages=3, per_page=1))
    with pytest.raises(ds.DatasetError, match=r"No tokenizer in"):
        ds.build_dataset(project.root, model_path=tmp_path)
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ds.DatasetError, match=r"no chat template"):
        ds.build_dataset(project.root, model_path=bare)


def test_dataset_info_lets_llamafactory_read_the_files(project):
    write_qa(project.root, make_pairs(pages=3, per_page=1))
    ds.build_dataset(project.root, options=ds.DatasetOptions(system_prompt="Be brief."))
    info = json.loads((project.dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(info) == {"campus_train", "campus_dev", "campus_test"}
    entry = info["campus_train"]
    assert entry["formatting"] == "sharegpt" and entry["file_name"] == "train.jsonl"
    record = read_split(project.root, "train")[0]
    messages = record[entry["columns"]["messages"]]
    tags = entry["tags"]
    assert messages[0][tags["role_tag"]] == tags["system_tag"]
    assert [m[tags["role_tag"]] for m in messages[1:]] == [tags["user_tag"], tags["assistant_tag"]]


def _write_split_files(folder: Path, train: list, dev: list | None = None, test: list | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("dev", dev or []), ("test", test or [])):
        text = "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
        (folder / f"{name}.jsonl").write_text(text, encoding="utf-8")


def _chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", r"train.jsonl:2: not valid JSON"),
        ({"text": "hi"}, r"train.jsonl:2: needs a 'messages' list"),
        ({"messages": [{"role": "user", "content": "q"}]}, r"train.jsonl:2: needs a 'messages' list"),
        (
            {"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]},
            r"train.jsonl:2: message 0 needs a role",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
            r"train.jsonl:2: message 1 \(assistant\) has empty content",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
            r"train.jsonl:2: turns must alternate",
        ),
        ({**_chat("q", "a"), "meta": "page1"}, r"train.jsonl:2: 'meta' must be an object"),
    ],
)
def test_validate_dataset_names_file_and_line(tmp_path, bad, message):
    _write_split_files(tmp_path, [_chat("ok?", "ok"), bad], [_chat("d?", "d")], [_chat("t?", "t")])
    with pytest.raises(ds.DatasetValidationError, match=message):
        ds.validate_dataset(tmp_path)


def test_validate_dataset_finds_leaks_and_missing_files(tmp_path):
    _write_split_files(
        tmp_path, [_chat("When does the library open?", "8")], [], [_chat("when does the LIBRARY open", "8")]
    )
    with pytest.raises(ds.DatasetValidationError, match=r"test.jsonl:1: the same question is also in train"):
        ds.validate_dataset(tmp_path)
    _write_split_files(tmp_path, [], [], [])
    with pytest.raises(ds.DatasetValidationError, match=r"train.jsonl: empty"):
        ds.validate_dataset(tmp_path)
    with pytest.raises(ds.DatasetError, match=r"missing: build the dataset first"):
        ds.validate_dataset(tmp_path / "nothing")


def test_import_files_copies_into_the_project(project, tmp_path):
    upload = tmp_path / "upload" / "old qa.txt"
    upload.parent.mkdir()
    upload.write_text("Q：a？\nA：b。\n", encoding="utf-8")
    copied = ds.import_files(project.root, [upload])
    assert copied == [project.dataset_dir / "imports" / "old qa.txt"]
    assert copied[0].read_text(encoding="utf-8") == "Q：a？\nA：b。\n"


def test_cli_builds_checks_and_explains_errors(project, tiny_model_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        ds.main(["--help"])
    assert exc.value.code == 0
    assert "python -m blocks.dataset --project demo" in capsys.readouterr().out

    assert ds.main(["--project", "campus", "--model", str(tiny_model_dir)]) == 2
    assert "Run QA generation" in capsys.readouterr().err

    write_qa(project.root, make_pairs(pages=5, per_page=2))
    code = ds.main(
        [
            "--project",
            "campus",
            "--model",
            str(tiny_model_dir),
            "--split",
            "3:1:1",
            "--preview",
            "1",
            "--rewordings",
            "0",
            "--no-retrieval",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "splits: train 6 (3 groups), dev 2 (1 groups), test 2 (1 groups)" in out
    assert "<|im_start|>user" in out
    assert ds.main(["--project", "campus", "--check"]) == 0
    assert "dataset is valid: train 6, dev 2, test 2" in capsys.readouterr().out
    assert ds.main(["--project", "campus", "--split", "1:1"]) == 2
    assert "8:1:1" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_model_default_renders_smollm_template(project, embedded_model_dir, capsys):
    write_qa(project.root, make_pairs(pages=10, per_page=2))
    assert ds.main(["--project", "campus", "--preview", "1"]) == 0  # default model: the embedded one
    out = capsys.readouterr().out
    assert "<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in out
    stats = json.loads((project.dataset_dir / "stats.json").read_text(encoding="utf-8"))
    assert stats["model"] == str(embedded_model_dir)
    assert stats["tokens"]["total"]["min"] > 20


@pytest.fixture()
def tab(workspace, tiny_model_dir, monkeypatch):
    """The Dataset tab built alone; its handlers by name, called the way Gradio calls them."""
    import gradio as gr

    monkeypatch.setenv("UMTCDS_MODEL_ROOTS", str(tiny_model_dir.parent))  # as app.py's --model-root does

    import ui_dataset
    from ui_common import Bilingual, UIContext

    get_project("campus")
    texts = Bilingual("en")
    with gr.Blocks() as demo:
        lang = gr.State("en")
        texts.lang_state = lang
        picker = gr.Dropdown(choices=["campus"], value="campus", allow_custom_value=True)
        ui_dataset.build_tab(UIContext(L=texts, project=picker, lang=lang, default_model=str(tiny_model_dir)))
    return {f.name: f.fn for f in demo.fns.values()}


def _ui_args(tiny_model_dir, **over) -> list:
    values = {
        "project": "campus",
        "lang": "en",
        "paths": "",
        "files": None,
        "split": "8:1:1",
        "seed": 42,
        "system": "",
        "cite": False,
        "model": str(tiny_model_dir),
        "max_in": 512,
        "max_out": 512,
        "max_q": 1000,
        "max_a": 4000,
        "rewordings": 3,
        "retrieval": True,
    }
    values.update(over)
    return list(values.values())


def test_tab_builds_from_project_qa_and_shows_stats_drops_and_preview(tab, workspace, tiny_model_dir):
    import gradio as gr

    project = get_project("campus")
    rows = make_pairs(pages=6, per_page=2)
    write_qa(project.root, [*rows, rows[0]], ["{oops"])
    summary, preview, raw = tab["on_build"](*_ui_args(tiny_model_dir))
    assert "kept 12 pairs" in summary
    assert "| exact duplicate | 1 |" in summary and "| malformed line (see problems) | 1 |" in summary
    assert "`qa.jsonl:14: not valid JSON" in summary
    assert "| total |" in summary
    assert "rewordings per fact min 3 / mean 3.0 / max 3" in summary
    assert preview.count("<|im_start|>user") == 5
    assert raw["kept"] == 12
    assert "The dataset is valid" in tab["on_check"]("campus", "en")
    zh_summary = tab["on_build"](*_ui_args(tiny_model_dir, lang="zh"))[0]
    assert "保留 12 个问答对" in zh_summary and "完全重复" in zh_summary and "每个事实的改写数" in zh_summary
    # The project picker reloads the default input and the last build's summary.
    default, shown = tab["on_project"]("campus", "en")
    assert default.endswith("campus/qa/qa.jsonl") and "kept 12 pairs" in shown
    with pytest.raises(gr.Error, match="8:1:1"):
        tab["on_build"](*_ui_args(tiny_model_dir, split="8-1"))
    with pytest.raises(gr.Error, match="outside the workspace"):
        tab["on_build"](*_ui_args(tiny_model_dir, paths="/etc/passwd"))


def test_tab_imports_uploaded_seed_files_when_no_qa_file_exists(tab, workspace, tmp_path, tiny_model_dir):
    import gradio as gr

    uploads = []
    for p in range(3):
        path = tmp_path / f"final_page{p}.txt"
        path.write_text(f"Q：第{p}页的问题？\nA：第{p}页的答案。\n", encoding="utf-8")
        uploads.append(str(path))
    default, _ = tab["on_project"]("campus", "en")
    with pytest.raises(gr.Error, match="Run QA generation"):
        tab["on_build"](*_ui_args(tiny_model_dir, paths=default))
    summary, _, raw = tab["on_build"](*_ui_args(tiny_model_dir, paths=default, files=uploads))
    assert raw["kept"] == 3 and "kept 3 pairs" in summary
    assert sorted(p.name for p in (get_project("campus").dataset_dir / "imports").iterdir()) == [
        "final_page0.txt",
        "final_page1.txt",
        "final_page2.txt",
    ]


def test_tab_check_lists_problems(tab, workspace):
    folder = get_project("campus").dataset_dir
    _write_split_files(folder, [_chat("q?", "a"), "{bad"], [_chat("d?", "d")], [_chat("t?", "t")])
    assert "`train.jsonl:2: not valid JSON" in tab["on_check"]("campus", "en")

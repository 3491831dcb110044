"""Dataset stage bad input: a clear message from the CLI (exit 2), from build_dataset (DatasetError) and
from the tab (gr.Error), and the dataset built earlier stays byte-for-byte as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tabs import tab_handlers

from bad_inputs.cli import assert_refused, run_cli, snapshot
from blocks import dataset as ds
from blocks.workspace import get_project

GOOD = [
    {
        "question": f"When does office {p} open ({k})?",
        "answer": f"At {8 + k}:00.",
        "source_url": f"https://x.edu.cn/{p}",
    }
    for p in range(6)
    for k in range(2)
]


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


# (case id, file name, content or None for "make a folder", words the message must contain)
BAD_FILES = [
    (
        "malformed-lines",
        "qa.jsonl",
        b'{oops\nnot json at all\n{"question": \n',
        ["No usable QA pairs", "not valid JSON"],
    ),
    ("wrong-keys", "qa.jsonl", jsonl([{"q": "When?", "a": "Now."}] * 3), ["missing 'question' and 'answer'"]),
    ("wrong-types", "qa.jsonl", jsonl([{"question": 7, "answer": ["x"]}]), ["'question' must be a string"]),
    ("not-objects", "qa.json", b"[1, 2, 3]", ["expected an object"]),
    ("nested-too-deep", "qa.jsonl", b"[" * 50000 + b"\n", ["nested too deeply"]),
    ("empty-file", "qa.jsonl", b"", ["input is empty"]),
    ("blank-lines-only", "qa.jsonl", b"\n  \n\t\n", ["input is empty"]),
    ("non-utf8", "qa.jsonl", b'{"question": "caf\xe9\xff?", "answer": "x"}\n', ["neither UTF-8 nor GB18030"]),
    ("binary", "qa.jsonl", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ["binary file"]),
    (
        "huge-answer",
        "qa.jsonl",
        jsonl([{"question": "Q?", "answer": "x" * 200_000}]),
        ["answer_too_long", "--max-answer-chars"],
    ),
    ("empty-answers", "qa.jsonl", jsonl([{"question": "Q?", "answer": "  "}] * 2), ["empty_answer"]),
    (
        "questions-without-answers",
        "qa.txt",
        "Q：几点开门？\nQ：在哪里？\n".encode(),
        ["question without an 'A：' answer"],
    ),
    (
        "text-outside-blocks",
        "qa.txt",
        b"just some prose\nwith no markers\n",
        ["text outside a Q：/A： block"],
    ),
    ("unsupported-type", "qa.csv", b"question,answer\nQ?,A.\n", ["unsupported file type .csv"]),
    ("one-source-page", "qa.jsonl", jsonl(GOOD[:2]), ["at least 3 are needed"]),
    ("empty-folder", "folder", None, ["has no .jsonl/.json/.txt/.md files"]),
    ("folder-named-like-a-file", "dir.jsonl", None, ["has no .jsonl/.json/.txt/.md files"]),
]


@pytest.fixture()
def built(workspace) -> Path:
    """Project 'p' with a dataset built from good pairs: what a failed rebuild must leave alone."""
    project = get_project("p")
    good = project.root / "good.jsonl"
    good.write_bytes(jsonl(GOOD))
    ds.build_dataset(project.root, [good])
    return project.root


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    """The Dataset tab's handlers by name (no model: token counting is not what these cases test).

    Built once; the handlers look the workspace up when called, so each test's `workspace` applies.
    """
    return tab_handlers("ui_dataset", tmp_path_factory.mktemp("tab-data"))


def ui_build(tab, paths: str = "", split: str = "8:1:1", **numbers):
    values = {"seed": 42, "max_in": 512, "max_out": 512, "max_q": 1000, "max_a": 4000, "rewordings": 3,
              "retrieval": True, **numbers}  # fmt: skip
    return tab["on_build"]("p", "en", paths, None, split, values["seed"], "", False, "",
                           values["max_in"], values["max_out"], values["max_q"], values["max_a"],
                           values["rewordings"], values["retrieval"])  # fmt: skip


def make_input(root: Path, name: str, content: bytes | None) -> Path:
    path = root / "incoming" / name
    if content is None:
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("case,name,content,words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_input_file_is_refused_and_dataset_kept(case, name, content, words, built, tab):
    import gradio as gr

    before = snapshot(built / "dataset")
    path = make_input(built, name, content)

    proc = run_cli(
        ["-m", "blocks.dataset", "--project", "p", "--input", str(path), "--no-qa-file", "--model", ""]
    )
    assert_refused(proc, *words)
    with pytest.raises(ds.DatasetError) as caught:
        ds.build_dataset(built, [path])
    with pytest.raises(gr.Error) as shown:
        ui_build(tab, paths=str(path))
    for word in words:
        assert word in str(caught.value)
        assert word in str(shown.value.message)
    assert snapshot(built / "dataset") == before


BAD_SETTINGS = [
    ("split-not-three-numbers", ["--split", "8-1"], {"split": "8-1"}, "write e.g. 8:1:1"),
    ("split-train-zero", ["--split", "0:1:1"], {"split": "0:1:1"}, "gives train nothing"),
    ("split-negative", ["--split", "8:-1:1"], {"split": "8:-1:1"}, "three non-negative numbers"),
    ("max-answer-zero", ["--max-answer-chars", "0"], {"max_a": 0}, "max_answer_chars is 0"),
    ("max-input-negative", ["--max-input-length", "-5"], {"max_in": -5}, "max_input_length is -5"),
]


@pytest.mark.parametrize("case,flags,ui,message", BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_bad_settings_are_refused_and_dataset_kept(case, flags, ui, message, built, tab):
    import gradio as gr

    before = snapshot(built / "dataset")
    good = str(built / "good.jsonl")
    proc = run_cli(
        ["-m", "blocks.dataset", "--project", "p", "--input", good, "--no-qa-file", "--model", "", *flags]
    )
    assert_refused(proc, message)
    with pytest.raises(gr.Error, match=message):
        ui_build(tab, paths=good, **ui)
    assert snapshot(built / "dataset") == before


def test_emptied_number_field_is_a_message_not_a_type_error(built, tab):
    import gradio as gr

    with pytest.raises(gr.Error, match="Seed is empty"):
        ui_build(tab, paths=str(built / "good.jsonl"), seed=None)


@pytest.mark.parametrize("what", ["missing", "folder"])
def test_default_qa_file_missing_or_a_folder(what, built, tab):
    import gradio as gr

    if what == "folder":
        (built / "qa" / "qa.jsonl").mkdir(parents=True)
    message = "Run QA generation" if what == "missing" else "is a folder, not a file"
    before = snapshot(built / "dataset")
    assert_refused(run_cli(["-m", "blocks.dataset", "--project", "p", "--model", ""]), message)
    with pytest.raises(ds.DatasetError, match=message):
        ds.build_dataset(built)
    with pytest.raises(gr.Error, match=message):
        ui_build(tab, paths=str(built / "qa" / "qa.jsonl"))
    assert snapshot(built / "dataset") == before


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (b'{"messages": [\n', "train.jsonl:1: not valid JSON"),
        (b"\xff\xfe\x00garbage", "train.jsonl: not UTF-8"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "needs a 'messages' list"),
    ],
    ids=["bad-json", "non-utf8", "wrong-shape"],
)
def test_check_reports_a_corrupted_dataset(corrupt, message, built, tab):
    (built / "dataset" / "train.jsonl").write_bytes(corrupt)
    proc = run_cli(["-m", "blocks.dataset", "--project", "p", "--check"])
    assert_refused(proc, message)
    with pytest.raises(ds.DatasetValidationError, match=message):
        ds.validate_dataset(built / "dataset")
    assert message in tab["on_check"]("p", "en")


def test_check_when_a_split_is_a_folder(built, tab):
    import gradio as gr

    (built / "dataset" / "dev.jsonl").unlink()
    (built / "dataset" / "dev.jsonl").mkdir()
    assert_refused(run_cli(["-m", "blocks.dataset", "--project", "p", "--check"]), "is a folder, not a file")
    with pytest.raises(gr.Error, match="is a folder, not a file"):
        tab["on_check"]("p", "en")

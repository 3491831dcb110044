"""Numbers that are not numbers a run can use: NaN, infinity, numbers past what the libraries take, and
YAML aliases that expand a few hundred bytes into billions of items. Each is refused at once with a
message naming the field, before anything is written (issue 16, items 6, 11 and 13)."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from bad_inputs.cli import assert_refused, run_cli, snapshot
from blocks import config as C
from blocks import dataset as ds
from blocks.crawl import CrawlError, CrawlOptions, crawl_site
from blocks.models import REPO_ROOT
from blocks.workspace import get_project

NON_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1e309"]

# ---------------------------------------------------------------- crawl options (item 11)


@pytest.mark.parametrize("value", [*NON_FINITE, "1e300", "-0.5"])
def test_crawl_delay_that_is_not_a_usable_number_is_refused(value, tmp_path):
    out = tmp_path / "crawl"
    with pytest.raises(CrawlError, match="delay must be"):
        crawl_site("http://127.0.0.1:9/", out, CrawlOptions(delay=float(value)))
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "1e309"])
def test_crawl_cli_refuses_a_non_finite_delay_at_once(value, tmp_path):
    start = time.monotonic()
    proc = run_cli(
        ["-m", "blocks.crawl", "http://127.0.0.1:9/", "--out", str(tmp_path / "c"), "--delay", value]
    )
    assert_refused(proc, "delay must be", value if value != "1e309" else "inf")
    assert time.monotonic() - start < 30 and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "field", ["max_depth", "max_pages", "concurrency", "read_timeout", "max_retry_after"]
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_crawl_bounds_that_are_not_finite_are_refused(field, value, tmp_path):
    with pytest.raises(CrawlError) as caught:
        crawl_site("http://127.0.0.1:9/", tmp_path / "c", CrawlOptions(**{field: value}))
    message = str(caught.value).replace("_", " ")
    assert message.startswith("Invalid crawl settings") and field.replace("_", " ") in message
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- dataset split (item 6)


SPLITS = ["nan:1:1", "8:nan:1", "8:1:NaN", "inf:1:1", "8:inf:1", "1e309:1:1", "1e308:1e308:1", "8:1:-inf"]


@pytest.mark.parametrize("split", SPLITS)
def test_non_finite_split_is_refused_before_the_dataset_is_touched(split, workspace):
    project = get_project("p")
    good = project.root / "good.jsonl"
    rows = [
        {
            "question": f"When does office {p} open ({k})?",
            "answer": f"At {8 + k}:00.",
            "source_url": f"https://x/{p}",
        }
        for p in range(6)
        for k in range(2)
    ]
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds.build_dataset(project.root, [good])
    before = snapshot(project.dataset_dir)

    with pytest.raises(ds.DatasetError, match="finite"):
        ds.parse_split_ratios(split)
    with pytest.raises(ds.DatasetError, match="finite"):
        ds.build_dataset(
            project.root, [good], ds.DatasetOptions(ratios=tuple(float(x) for x in split.split(":")))
        )
    proc = run_cli(
        [
            "-m",
            "blocks.dataset",
            "--project",
            "p",
            "--input",
            str(good),
            "--no-qa-file",
            "--model",
            "",
            "--split",
            split,
        ]
    )
    assert_refused(proc, "split", "finite")
    assert snapshot(project.dataset_dir) == before


# ---------------------------------------------------------------- training config (item 13)

PRESET = yaml.safe_load((REPO_ROOT / "configs" / "presets" / "cpu-demo.yaml").read_text(encoding="utf-8"))


def config_text(**changes) -> str:
    return yaml.safe_dump({**PRESET, "dataset_dir": "data/p/dataset", **changes}, sort_keys=False)


BAD_NUMBERS = [
    ("seed", -1),
    ("seed", 5_000_000_000),
    ("seed", 2**32),
    ("num_epochs", float("inf")),
    ("num_epochs", float("nan")),
    ("num_epochs", 1e300),
    ("learning_rate", float("nan")),
    ("warmup_ratio", float("nan")),
    ("max_steps", 10**20),
    ("batch_size", 2**40),
    ("max_input_length", 10**12),
    ("lora", {**PRESET["lora"], "dropout": float("nan")}),
    ("lora", {**PRESET["lora"], "rank": 2**40}),
    ("ptuning", {**PRESET["ptuning"], "num_virtual_tokens": 2**40}),
]


@pytest.mark.parametrize("field,value", BAD_NUMBERS, ids=[f"{f}={v}" for f, v in BAD_NUMBERS])
def test_config_numbers_a_run_cannot_use_are_refused(field, value, tmp_path):
    path = tmp_path / "bad-number.yaml"
    path.write_text(config_text(**{field: value}))
    with pytest.raises(C.ConfigError, match=field):
        C.load_config(path)
    assert_refused(run_cli(["-m", "blocks.config", "check", str(path)]), "bad-number.yaml", field)
    # the Config tab builds the dataclass from its form and saves through the same checks
    cfg = C.load_preset("cpu-demo")
    cfg.dataset_dir = "data/p/dataset"
    if isinstance(value, dict):
        setattr(cfg, field, C.from_dict(value, type(getattr(cfg, field))))
    else:
        setattr(cfg, field, value)
    assert any(field in problem for problem in C.check_fields(cfg))
    before = path.read_bytes()
    with pytest.raises(C.ConfigError):
        C.save_named_config(cfg, "bad-number", tmp_path)
    assert path.read_bytes() == before  # a refused save leaves the file as it was


def test_config_limits_accept_every_real_value(tmp_path):
    for seed in (0, 42, 2**32 - 1):
        for epochs in (0.5, 3, 1000):
            cfg = C.from_dict(yaml.safe_load(config_text(seed=seed, num_epochs=epochs)))
            assert C.check_fields(cfg) == []


def billion_laughs(levels: int = 9) -> str:
    """Nine levels of nine aliases each: 9**9 strings, printed by a message that shows base_model."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{n}: &a{n} [" + ",".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, levels)]
    return "\n".join(lines) + f"\nbase_model: *a{levels - 1}\n"


def list_bomb(levels: int = 9) -> str:
    """The same shape where a list is expected: checking its items would walk 9**9 of them."""
    lines = ["method: lora", "lora:", '  target_modules: &t0 ["q_proj","k_proj","v_proj"]']
    lines += [f"  x{n}: &t{n} [" + ",".join([f"*t{n - 1}"] * 9) + "]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text",
    [
        billion_laughs(),
        list_bomb(),
        config_text().replace("method: lora", "method: &m lora") + "lr_scheduler: *m\n",
    ],
    ids=["alias-bomb-in-message", "alias-bomb-in-a-list", "plain-alias"],
)
def test_yaml_aliases_are_refused_fast_and_never_expanded(text, tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text(text)
    assert len(text.encode()) < 2000
    start = time.monotonic()
    with pytest.raises(C.ConfigError, match="anchor or alias") as caught:
        C.load_config(path)
    assert time.monotonic() - start < 1.0 and len(str(caught.value)) < 500
    proc = run_cli(["-m", "blocks.config", "check", str(path)], timeout=30)
    assert_refused(proc, "aliases.yaml", "anchor or alias")
    assert len(proc.stderr) < 1000


def test_error_messages_show_long_values_short(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(config_text(base_model=list(range(100_000))))
    with pytest.raises(C.ConfigError, match="base_model") as caught:
        C.load_config(path)
    assert len(str(caught.value)) < 500


def test_config_file_that_is_too_big_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(config_text() + "#" * 2_000_000 + "\n")
    with pytest.raises(C.ConfigError, match="bytes"):
        C.load_config(path)

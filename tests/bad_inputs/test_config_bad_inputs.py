"""Training config bad input: `python -m blocks.config check FILE` exits 2 with a message that names the
problem (no traceback), and blocks.config.load_config raises ConfigError; the file itself is left as it was.

Written against the config module owned by another engineer: failures here are reported, not patched.
"""

from __future__ import annotations

import pytest
import yaml

from bad_inputs.cli import assert_refused, run_cli
from blocks.config import ConfigError, load_config
from blocks.models import REPO_ROOT

PRESET = yaml.safe_load((REPO_ROOT / "configs" / "presets" / "cpu-demo.yaml").read_text(encoding="utf-8"))


def preset_with(**changes) -> bytes:
    data = {**PRESET, "dataset_dir": "data/p/dataset", **changes}
    return yaml.safe_dump(data, allow_unicode=True).encode()


# (case id, file bytes, words the message must contain; the file name is always among them)
BAD_CONFIGS = [
    ("unknown-key", preset_with(learning_rat=0.1), ["learning_rat"]),
    ("unknown-nested-key", preset_with(lora={**PRESET["lora"], "rnk": 8}), ["rnk"]),
    ("wrong-type-number", preset_with(learning_rate="fast"), ["learning_rate"]),
    ("wrong-type-int", preset_with(batch_size=[4]), ["batch_size"]),
    ("wrong-type-section", preset_with(lora="big"), ["lora"]),
    ("negative-steps", preset_with(batch_size=-4), ["batch_size"]),
    ("unknown-method", preset_with(method="dpo"), ["method"]),
    ("not-a-mapping-list", b"- base_model: x\n- method: lora\n", ["mapping"]),
    ("not-a-mapping-scalar", b"just a sentence\n", ["mapping"]),
    ("invalid-yaml", b"base_model: [unclosed\nmethod: lora\n", ["not valid YAML"]),
    ("empty-file", b"", ["empty"]),
]
BAD_CONFIGS += [
    pytest.param("binary-file", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ["UTF-8"], id="binary-file"),
    pytest.param("not-utf8", "base_model: 模型\n".encode("gbk"), ["UTF-8"], id="not-utf8"),
]


@pytest.mark.parametrize(
    "case,content,words", BAD_CONFIGS, ids=[c[0] if isinstance(c, tuple) else c.id for c in BAD_CONFIGS]
)
def test_bad_config_file_is_refused_with_a_clear_message(case, content, words, tmp_path):
    path = tmp_path / "my-config.yaml"
    path.write_bytes(content)
    proc = run_cli(["-m", "blocks.config", "check", str(path)])
    assert_refused(proc, "my-config.yaml", *words)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    for word in words:
        assert word.lower() in str(caught.value).lower()
    assert path.read_bytes() == content


def test_missing_config_and_folder_are_refused(tmp_path):
    for target in (tmp_path / "nope.yaml", tmp_path):
        assert_refused(run_cli(["-m", "blocks.config", "check", str(target)]), "does not exist")
        with pytest.raises(ConfigError, match="does not exist"):
            load_config(target)

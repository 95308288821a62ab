"""pipeline.files.read_document: a JSON or YAML file parsed, or one line naming file and spot."""

from __future__ import annotations

import pytest

from pipeline.files import read_document


def test_reads_json_by_suffix_and_yaml_otherwise(tmp_path):
    (tmp_path / "a.json").write_text('{"k": [1, 2]}')
    (tmp_path / "a.yaml").write_text("k: [1, 2]\n")
    assert read_document(tmp_path / "a.json") == read_document(tmp_path / "a.yaml") == {"k": [1, 2]}


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("bad.json", '{"k": [1,\n', "not valid JSON: Expecting value at line 2, column 1"),
        ("bad.yaml", "k: [1,\n", "not valid YAML: "),
    ],
)
def test_malformed_file_is_one_line_naming_file_spot_and_fix(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_document(path, "fetch it again")
    message = str(info.value)
    assert message.startswith(f"{path}: {where}") and message.endswith("; fetch it again")
    assert "\n" not in message and "line 2" in message


def test_missing_file_is_left_to_the_caller(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_document(tmp_path / "nope.json")

"""pipeline.files.read_document: a JSON or YAML file parsed, or one line naming file and spot."""

from __future__ import annotations

import pytest

from pipeline.files import absolute, read_document


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


def test_yaml_booleans_are_true_and_false_only(tmp_path):
    """YAML 1.2: ``on:`` (objective.on) stays a key, ``yes`` a string the config then refuses
    for a boolean, rather than YAML 1.1's silent True."""
    path = tmp_path / "study.yaml"
    path.write_text("objective:\n  on: validation\na: yes\nb: off\nc: true\nd: False\n")
    assert read_document(path, "fix") == {
        "objective": {"on": "validation"},
        "a": "yes",
        "b": "off",
        "c": True,
        "d": False,
    }
    import yaml

    assert yaml.safe_load("on: 1") == {True: 1}  # PyYAML's own loader is left as it was


def test_a_missing_file_is_one_line_naming_it_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_document(tmp_path / "nope.json", "fetch it again")
    assert str(info.value) == f"{tmp_path / 'nope.json'}: no such file; fetch it again"


def test_absolute_resolves_local_locations_and_keeps_other_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("runs") == str(tmp_path.resolve() / "runs")
    assert absolute(f"file://{tmp_path}/a/../b") == str(tmp_path.resolve() / "b")
    assert absolute("s3://bucket/prefix") == "s3://bucket/prefix"

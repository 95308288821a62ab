"""hpo.results: evaluation.csv by position (repeated header name), paper-layout features."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from hpo.results._paper import (
    EXPECTED_HEADER,
    PAPER_HEADLINE,
    PaperFormatError,
    paper_row,
    read_evaluation,
    read_paper_layout,
)


def test_shared_evaluation_csv_has_68_rows_and_the_headline(shared_data_dir):
    rows = read_evaluation(shared_data_dir / "paper" / "evaluation.csv")
    assert len(rows) == 68
    row = paper_row(rows, "xception", 20)
    assert row is not None and row.model_label == "xception-20"
    assert row.features_length == 2048
    assert row.accuracy[0] == pytest.approx(0.9333333333, abs=1e-9)
    assert round(row.accuracy[0], 2) == PAPER_HEADLINE["accuracy"]["mean"]
    assert round(row.accuracy[1], 2) == PAPER_HEADLINE["accuracy"]["std"]
    assert round(row.per_class["cov"]["recall"][0], 2) == PAPER_HEADLINE["cov_recall"]["mean"]
    assert round(row.per_class["cov"]["recall"][1], 2) == PAPER_HEADLINE["cov_recall"]["std"]
    # The first `pneumonia_recall_std` column is the average, the second the std.
    assert row.per_class["pne"]["recall"] == pytest.approx((0.94, 0.12))
    assert row.per_class["reg"]["specificity"] == pytest.approx((0.9826086956, 0.0347826086))
    assert paper_row(rows, "xception", 7) is None


def _write_csv(path, header, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_position_mapping_on_a_synthetic_row(tmp_path):
    values = [f"{i / 100:.2f}" for i in range(26)]
    path = tmp_path / "evaluation.csv"
    _write_csv(path, EXPECTED_HEADER, [["exp", "vgg16-5", "5", "25088", *values]])
    (row,) = read_evaluation(path)
    assert (row.backbone, row.frames) == ("vgg16", 5)
    assert row.accuracy == (0.0, 0.01)
    assert row.per_class["pne"]["precision"] == (0.02, 0.03)
    assert row.per_class["pne"]["recall"] == (0.04, 0.05)
    assert row.per_class["cov"]["precision"] == (0.10, 0.11)
    assert row.per_class["reg"]["specificity"] == (0.24, 0.25)


def test_a_renamed_header_is_refused(tmp_path):
    header = list(EXPECTED_HEADER)
    header[8] = "pneumonia_recall_avg"
    path = tmp_path / "evaluation.csv"
    _write_csv(path, header, [])
    with pytest.raises(PaperFormatError, match="header"):
        read_evaluation(path)


def test_bad_number_names_file_line_and_column(tmp_path):
    values = ["0.5"] * 26
    values[3] = "n/a"
    path = tmp_path / "evaluation.csv"
    _write_csv(path, EXPECTED_HEADER, [["exp", "xception-20", "20", "2048", *values]])
    with pytest.raises(PaperFormatError, match=r"evaluation.csv:2: column '7:"):
        read_evaluation(path)


def test_paper_layout_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    clips = ["a.gif", "b (1).mp4", "c.gif"]
    labels = np.array([0, 2, 1])
    feats = rng.normal(size=(3, 4, 5)).astype(np.float32)
    names, rows, row_labels = [], [], []
    # Stored frame-major and shuffled, so the reader must gather by name.
    for i in (3, 1, 4, 2):
        for c, clip in enumerate(clips):
            names.append(f"{['cov', 'pne', 'reg'][labels[c]]}/{clip}-{i}.png")
            rows.append(feats[c, i - 1])
            row_labels.append(labels[c])
    np.save(tmp_path / "features-5.npy", np.stack(rows))
    np.save(tmp_path / "filenames.npy", np.array(names))
    np.save(tmp_path / "labels.npy", np.array(row_labels))
    got, got_labels = read_paper_layout(tmp_path, ["c.gif", "a.gif"])
    np.testing.assert_array_equal(got, feats[[2, 0]])
    np.testing.assert_array_equal(got_labels, labels[[2, 0]])
    with pytest.raises(PaperFormatError, match=r"missing\.gif"):
        read_paper_layout(tmp_path, ["missing.gif"])


def test_paper_layout_label_that_contradicts_its_file_name_is_refused(tmp_path):
    np.save(tmp_path / "features-2.npy", np.zeros((2, 2), np.float32))
    np.save(tmp_path / "filenames.npy", np.array(["cov/a.gif-1.png", "cov/a.gif-2.png"]))
    np.save(tmp_path / "labels.npy", np.array([2, 2]))
    with pytest.raises(PaperFormatError, match="labelled 2 but its file name says 'cov'"):
        read_paper_layout(tmp_path, ["a.gif"])

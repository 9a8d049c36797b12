"""Figures: which ones the data allows, their data, size scaling with M, byte-identical PNGs (a fresh
interpreter too: tests/test_report.py)."""

import math
import struct
import zlib

import numpy as np
import pytest
from report_samples import celeba_like, sample

from aal_k8s.figures import FIGURES, pearson, relative_matrix, render_figures, scatter_points
from aal_k8s.reduce import ReduceOutput
from aal_k8s.report import table_rows


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + data)
        chunks.append((kind, data))
        pos += 12 + length
    return chunks


def _size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", _chunks(png)[0][1][:8])


@pytest.fixture(scope="module")
def six():
    out = sample()
    return render_figures(out, table_rows(out, "val"))


@pytest.fixture(scope="module")
def forty():
    out = celeba_like()
    return render_figures(out, table_rows(out, "val"))


def test_every_figure_is_made_when_the_data_is_there(six, forty):
    assert list(six) == list(FIGURES) and list(forty) == list(FIGURES)


def test_pngs_are_valid_and_carry_no_software_or_time_metadata(six):
    for name, png in six.items():
        kinds = [k for k, _ in _chunks(png)]
        assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND", name
        assert b"tIME" not in kinds, name
        assert all(b"Software" not in data for k, data in _chunks(png) if k in (b"tEXt", b"iTXt", b"zTXt")), name


@pytest.mark.parametrize("name", ["pairwise_relative", "accuracy_bars", "affinity"])
def test_figures_grow_with_the_number_of_attributes(six, forty, name):
    (w6, h6), (w40, _) = _size(six[name]), _size(forty[name])
    assert w40 > w6 * 1.4 and w40 <= 3000 and h6 >= 600


def test_the_scatter_has_a_fixed_size(six, forty):
    assert _size(six["correlation_scatter"]) == _size(forty["correlation_scatter"]) == (960, 690)


def test_no_figure_without_data():
    out = ReduceOutput(dataset="synthetic", attributes=["a", "b", "c"])
    assert render_figures(out, table_rows(out, "val")) == {}
    out.single_val = {"a": 0.8, "b": 0.9, "c": 0.7}
    assert list(render_figures(out, table_rows(out, "val"))) == ["accuracy_bars"]


def test_relative_matrix_is_percentage_points_with_a_blank_diagonal():
    m = relative_matrix(sample())
    assert m[0][0] is None and m[0][4] == pytest.approx(-10.0) and m[0][1] == pytest.approx(-2.0)
    assert m[4][5] == pytest.approx(-0.5) and m[2] == [pytest.approx(1.0)] * 2 + [None] + [pytest.approx(1.0)] * 3


def test_scatter_points_are_every_ordered_pair_with_the_relative_change():
    out = sample()
    points = scatter_points(out)
    assert len(points) == 30
    a, b, corr, rel = points[3]  # square with red_tint
    assert (a, b, corr) == ("square", "red_tint", 0.6) and rel == pytest.approx(100 * (0.70 - 0.80) / 0.80)
    out.label_corr = {}
    assert scatter_points(out) == []


def test_pearson_matches_numpy_and_is_none_for_constant_or_tiny_input():
    points = scatter_points(sample())
    xs, ys = [p[2] for p in points], [p[3] for p in points]
    assert pearson(xs, ys) == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    assert pearson([0.1, 0.1, 0.1], [1.0, 2.0, 3.0]) is None
    assert pearson([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) is None
    assert pearson([1.0, 2.0], [1.0, 2.0]) is None
    assert not math.isnan(pearson([1.0, 2.0, 4.0], [1.0, 3.0, 2.0]))

"""Figures: which ones the data allows, the values they draw, size scaling with M, byte-identical
PNGs (a fresh interpreter too: test_report.py)."""

import math
import struct
import zlib

import numpy as np
import pytest
from report_samples import celeba_like, sample

from aal_k8s.reduce import ReduceOutput
from aal_k8s.report import render_report
from aal_k8s.report.analysis import analyse
from aal_k8s.report.document import Fig
from aal_k8s.report.figures import FIGURES


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
    return render_report(sample(), "exp").figures


@pytest.fixture(scope="module")
def forty():
    return render_report(celeba_like(), "celeba").figures


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
    assert render_report(out, "e").figures == {}
    out.single_val = {"a": 0.8, "b": 0.9, "c": 0.7}
    assert list(render_report(out, "e").figures) == ["accuracy_bars"]


def test_relative_matrix_is_percentage_points_with_a_blank_diagonal():
    m = analyse(sample()).relative
    assert m[0][0] is None and m[0][4] == pytest.approx(-10.0) and m[0][1] == pytest.approx(-2.0)
    assert m[4][5] == pytest.approx(-0.5) and m[2] == [pytest.approx(1.0)] * 2 + [None] + [pytest.approx(1.0)] * 3


def test_scatter_points_are_every_ordered_pair_with_the_relative_change():
    out = sample()
    points = analyse(out).scatter
    assert len(points) == 30
    p = points[3]  # square with red_tint
    assert (p.a, p.b, p.corr) == ("square", "red_tint", 0.6) and p.change == pytest.approx(100 * (0.70 - 0.80) / 0.80)
    out.label_corr = {}
    assert analyse(out).scatter == []


def test_pearson_matches_numpy_and_is_none_for_constant_or_tiny_input():
    out = sample()
    a = analyse(out)
    xs, ys = [p.corr for p in a.scatter], [p.change for p in a.scatter]
    assert a.scatter_r == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    constant = {x: {y: 0.1 for y in out.attributes} for x in out.attributes}
    out.label_corr = constant
    assert analyse(out).scatter_r is None
    assert "Pearson r of the scatter: n/a (constant input) over 30 ordered pairs" in render_report(out, "e").markdown
    out.label_corr = {"square": {"ring": 0.1, "cross": 0.3}}  # two points: r undefined
    assert analyse(out).scatter_r is None
    out.label_corr = {"square": {"ring": 0.1, "cross": 0.3, "red_tint": 0.2}}
    assert not math.isnan(analyse(out).scatter_r)


def test_the_heatmap_explains_hatching_only_when_a_cell_is_hatched():
    def legend(out):
        return next(b.figure for b in render_report(out, "e").blocks if isinstance(b, Fig) and b.name == "pairwise_relative").legend

    out = sample()  # every pairwise run committed
    assert legend(out) == "boxes: each attribute's partner (pairwise)"
    del out.pair_val["square"]["ring"]
    assert legend(out).endswith("; hatched: run missing")

"""Mask files from strangers: a sparse matrix whose indices lie outside its shape, a ``.npz`` whose
headers declare more than it holds, a ``.npy`` that is not an array. Each is one MaskError before
scipy or numpy touches the bad data (these inputs gave wrong plans, segmentation faults and heap
corruption when scipy got them unchecked)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import maskc
from maskc.cli.main import cli
from maskc.errors import MaskError
from maskc.sparse import SparseSource

MASK = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=bool)


def npy_bytes(array: np.ndarray | None = None, header: dict | None = None) -> bytes:
    """A .npy member: ``array`` as numpy writes it, or a bare ``header`` with no data after it."""
    out = io.BytesIO()
    if header is None:
        np.lib.format.write_array(out, np.asarray(array), allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


def write_npz(path, fmt: str = "csr", shape=(3, 3), **members) -> None:
    """An .npz laid out as scipy.sparse.save_npz lays it out, with the members given (raw bytes or arrays)."""
    members = {"format": np.array(fmt), "shape": np.array(shape), **members}
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in members.items():
            archive.writestr(f"{name}.npy", value if isinstance(value, bytes) else npy_bytes(value))


def csr_members(indices, indptr=(0, 1, 3, 5)) -> dict:
    return {"data": np.ones(len(indices), dtype=bool), "indices": np.array(indices), "indptr": np.array(indptr)}


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("index", [3, -1, 10**6, 10**8])
def test_out_of_range_indices_are_refused_before_scipy(tmp_path, fmt, index):
    path = tmp_path / "m.npz"
    write_npz(path, fmt, data=np.ones(3, dtype=bool), indices=np.array([0, 1, index]), indptr=np.array([0, 1, 2, 3]))
    with pytest.raises(MaskError, match=rf"m.npz: indices\[2\] = {index} lies outside \[0, 3\)"):
        maskc.compile(path, block=32)


@pytest.mark.parametrize(
    "members, message",
    [
        (csr_members([0, 0, 1, 1, 2], indptr=(1, 1, 3, 5)), r"m.npz: not a valid csr matrix \(index pointer should start with 0\)"),
        (csr_members([0, 0, 1, 1, 2], indptr=(0, 3, 2, 5)), r"indptr\[2\] = 2; indptr must start at 0 and never decrease"),
        (csr_members([0, 0, 1, 1, 2], indptr=(0, 1, 3)), r"not a valid csr matrix \(index pointer size 3 should be 4\)"),
        ({**csr_members([0, 0, 1]), "indptr": np.array([0, 1, 2, 2.5])}, r"m.npz\[indptr\]: dtype float64 is not an integer type"),
        ({**csr_members([0, 0, 1, 1, 2]), "indices": npy_bytes(header={"descr": "<i8", "fortran_order": False, "shape": (10**12,)})},
         r"m.npz\[indices\]: 1000000000000 items, more than its matrix can hold \(22\)"),
        ({**csr_members([0, 0, 1, 1, 2]), "indices": npy_bytes(header={"descr": "<i8", "fortran_order": False, "shape": (5,)})},
         r"m.npz\[indices\]: the .npy data ends after 0 of its 40 bytes"),
        ({**csr_members([0, 0, 1, 1, 2]), "data": np.array([None, 1, 1, 1, 1], dtype=object)}, r"m.npz\[data\]: the .npy array holds Python objects"),
        ({k: v for k, v in csr_members([0, 0, 1, 1, 2]).items() if k != "indptr"}, r"m.npz: no 'indptr' array"),
    ],
    ids=["indptr-start", "indptr-decreases", "indptr-short", "indptr-float", "declared-huge", "data-missing", "pickled", "member-missing"],
)
def test_malformed_csr_files(tmp_path, members, message):
    path = tmp_path / "m.npz"
    write_npz(path, **members)
    with pytest.raises(MaskError, match=message):
        maskc.open_mask(path)


@pytest.mark.parametrize(
    "fmt, shape, members, message",
    [
        ("coo", (3, 3), {"data": np.ones(2), "row": np.array([0, 3]), "col": np.array([0, 1])}, r"not a valid coo matrix"),
        ("dia", (3, 3), {"data": np.ones((1, 3)), "offsets": np.array([3])}, r"offsets\[0\] = 3 lies outside \[-2, 3\)"),
        ("dia", (3, 3), {"data": np.ones((2, 3)), "offsets": np.array([0, 0])}, r"not a valid dia matrix"),
        ("bsr", (4, 4), {"data": np.ones((1, 2, 2)), "indices": np.array([2]), "indptr": np.array([0, 1, 1])}, r"indices\[0\] = 2 lies outside \[0, 2\)"),
        ("lil", (3, 3), {}, r"sparse format 'lil' is not one save_npz writes"),
        ("csr", (3, 2**31), csr_members([0, 0, 1, 1, 2]), r"the shape must be 2 integers in \[1, 2147483647\]"),
        ("csr", (3, 3, 3), csr_members([0, 0, 1, 1, 2]), r"the shape must be 2 integers"),
    ],
)
def test_malformed_files_of_other_formats(tmp_path, fmt, shape, members, message):
    path = tmp_path / "m.npz"
    write_npz(path, fmt, shape, **members)
    with pytest.raises(MaskError, match=message):
        maskc.open_mask(path)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "bsr", "dia", "lil", "dok"])
def test_every_format_reads_as_its_dense_mask(tmp_path, fmt):
    matrix = sp.csr_array(MASK).asformat(fmt)
    source = maskc.open_mask(matrix)
    assert np.array_equal(source.to_dense()[0, 0], MASK)
    if fmt not in ("lil", "dok"):
        sp.save_npz(tmp_path / "m.npz", matrix)
        assert np.array_equal(maskc.open_mask(tmp_path / "m.npz").to_dense()[0, 0], MASK)


def test_matrices_from_callers_are_checked_too():
    matrix = sp.csr_array(MASK)
    matrix.indices[0] = 10**6  # scipy does not look again
    with pytest.raises(MaskError, match=r"sparse: indices\[0\] = 1000000 lies outside \[0, 3\)"):
        maskc.compile(matrix)
    coo = sp.coo_array(MASK)
    coo.coords[1][0] = -5
    with pytest.raises(MaskError, match=r"col\[0\] = -5 lies outside"):
        maskc.open_mask(coo)
    with pytest.raises(MaskError, match=r"a sparse mask is 2-D"):
        SparseSource(sp.coo_array(np.ones((2, 2, 2))))
    dia = sp.dia_array(MASK)
    dia.offsets[1] = dia.offsets[0]
    with pytest.raises(MaskError, match=r"offsets repeat a diagonal"):
        SparseSource(dia)
    csc = sp.csc_array(MASK)
    csc.indptr[2] = 1
    with pytest.raises(MaskError, match=r"indptr\[2\] = 1; indptr must start at 0 and never decrease"):
        SparseSource(csc)


def test_text_named_npy_is_not_an_array_and_gets_no_pickle_advice(tmp_path):
    path = tmp_path / "m.npy"
    path.write_text("0 1\n1 1\n")
    with pytest.raises(MaskError) as e:
        maskc.open_mask(path)
    assert "m.npy: not a readable .npy array: it does not start with NumPy's magic string" in str(e.value)
    assert "pickle" not in str(e.value)
    np.save(path, np.array([[None, 1]], dtype=object), allow_pickle=True)
    with pytest.raises(MaskError, match=r"holds Python objects \(dtype object\); only plain numbers are read, never pickles"):
        maskc.open_mask(path)
    (tmp_path / "t.npz").write_text("not a zip")
    with pytest.raises(MaskError, match=r"t.npz: not a sparse matrix written by scipy.sparse.save_npz"):
        maskc.open_mask(tmp_path / "t.npz")


def test_cli_reports_bad_mask_files_in_one_line(tmp_path):
    (tmp_path / "p.npy").write_text("-1,0,0\n")
    np.save(tmp_path / "o.npy", np.array([None], dtype=object), allow_pickle=True)
    write_npz(tmp_path / "m.npz", data=np.ones(3, dtype=bool), indices=np.array([0, 1, 10**6]), indptr=np.array([0, 1, 2, 3]))
    runner = CliRunner()
    for args, fragment in [
        (["compile", str(tmp_path / "m.npz"), "-o", str(tmp_path / "x.plan"), "--no-cache"], "indices[2] = 1000000 lies outside"),
        (["compile", str(tmp_path / "o.npy"), "-o", str(tmp_path / "x.plan"), "--no-cache"], "holds Python objects"),
        (["mask", "medusa", "--prompt", "4", "--parents", str(tmp_path / "p.npy"), "-o", str(tmp_path / "x.npy")], "not a readable .npy array"),
    ]:
        result = runner.invoke(cli, args)
        lines = result.output.splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.output
        assert "pickle=" not in result.output

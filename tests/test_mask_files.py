"""Mask files from strangers: a ``.npy`` that is not an array, or holds Python objects, is one
MaskError before numpy reads its data."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import maskc
from maskc.cli.main import cli
from maskc.errors import MaskError


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


def test_cli_reports_bad_mask_files_in_one_line(tmp_path):
    (tmp_path / "p.npy").write_text("-1,0,0\n")
    np.save(tmp_path / "o.npy", np.array([None], dtype=object), allow_pickle=True)
    runner = CliRunner()
    for args, fragment in [
        (["compile", str(tmp_path / "o.npy"), "-o", str(tmp_path / "x.plan"), "--no-cache"], "holds Python objects"),
        (["mask", "medusa", "--prompt", "4", "--parents", str(tmp_path / "p.npy"), "-o", str(tmp_path / "x.npy")], "not a readable .npy array"),
    ]:
        result = runner.invoke(cli, args)
        lines = result.output.splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.output
        assert "pickle=" not in result.output

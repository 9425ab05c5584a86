"""Files as the CLI writes them: atomically, with errors that name them."""

from __future__ import annotations

from pathlib import Path

from maskc.cli.errors import UserError
from maskc.runtime.format import atomic_write


def check_output_dir(path: Path) -> None:
    if path.parent and not path.parent.is_dir():
        raise UserError(f"output directory does not exist: {path.parent}")


def write_file(path: Path, data: bytes) -> None:
    """Write a file atomically; an error that names no file (a full disk) names this one."""
    try:
        atomic_write(path, data)
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"

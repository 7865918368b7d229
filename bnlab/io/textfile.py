"""Text and CSV files: the one atomic writer (temp file in the same folder, fsync, rename) that JSON, CSV and
report files go through, so a reader never sees half a file and a full disk is one line."""
from __future__ import annotations

import csv
import errno
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import BnlabError


def write_error(path: Path, e: BaseException) -> BnlabError:
    """One line for a write that failed (full disk, quota, permissions); nothing was left at `path`."""
    if isinstance(e, OSError):
        why = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            why += "; free some space and rerun"
    else:
        why = " ".join(str(e).split())[:200] + " (is the disk full?)"
    return BnlabError(f"cannot write {path}: {why}")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically; ENOSPC/EDQUOT/EROFS/EIO become one BnlabError line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):  # others (a missing folder, ...) as is
            raise write_error(path, e) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A header and rows (sequences in header order) as one CSV file, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return write_text(path, buf.getvalue())


def write_dict_rows(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    """Records as CSV with the given columns (missing keys empty, extra keys ignored), atomically."""
    return write_csv(path, columns, ([r.get(c, "") for c in columns] for r in rows))

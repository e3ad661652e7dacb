"""HF-hub fallback: fetch a benchmark split with `datasets.load_dataset` when the files are absent.

Only fetching lives here; each benchmark module maps the rows through the same record builder as its
files, so both sources give identical Records. `datasets` is imported lazily (it is slow to import).
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError


def fetch(benchmark: str, repo: str, config: str | None, split: str, **kwargs: Any) -> list[dict]:
    """Rows of `repo` (config, split) as plain dicts; any failure becomes a DataError naming repo/split."""
    try:
        import datasets

        ds = datasets.load_dataset(repo, config, split=split, **kwargs)
        return [dict(row) for row in ds]
    except DataError:
        raise
    except Exception as exc:  # network, missing repo/config, auth: all one user-facing failure
        cfg = f" (config {config!r})" if config else ""
        raise DataError(
            f"{benchmark}: could not load {repo}{cfg} split {split!r} from the HF hub: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def hub_where(repo: str, split: str, index: int) -> str:
    """The location of a hub row in error messages, in the same role as "<file>:<line>"."""
    return f"hub:{repo}[{split}]:row {index}"

"""The torch/transformers/peft versions clsharelora runs with, and the refusal outside them.

`make install` pins one tested set (pyproject.toml); a GPU node brings its own CUDA build of torch and
transformers, possibly other versions. The range below is what the project supports at run time: the upper
ends stop before the next release line of the pins (torch and transformers: the next major; peft, before
1.0: the next minor), the lower ends are what `make test-lower-bounds` installs and tests (not run yet,
docs/scale.md "First run on a GPU node"). A version outside it is refused before any work, with the range
in the message: the adapters and the training loop build on peft/transformers internals that change between
releases, and a silently different result is worse than no result.

This file imports nothing of clsharelora's and only the standard library plus `packaging` (a dependency of
transformers), so the offline bundle's install.sh runs it as a script before installing anything:
`python versions.py` exits 2 with one `error:` line naming every package outside the range.
"""

from __future__ import annotations

import importlib.metadata as md
import sys

from packaging.specifiers import SpecifierSet
from packaging.version import Version

#: distribution -> supported versions (PEP 440). Lower ends: `make test-lower-bounds`; upper ends: the pins' majors.
SUPPORTED = {
    "torch": ">=2.11,<3",
    "transformers": ">=5.17,<6",
    "peft": ">=0.21,<0.22",
}


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def problems(versions: dict[str, str | None] | None = None, names=None) -> list[str]:
    """One message per supported package (of `names`, default all) that is missing or outside its range."""
    names = list(SUPPORTED) if not names else names
    versions = {name: installed(name) for name in names} if versions is None else versions
    out = []
    for name in names:
        spec = SUPPORTED[name]
        version = versions.get(name)
        if version is None:
            out.append(f"{name} is not installed; clsharelora needs {name}{spec}")
        elif not SpecifierSet(spec).contains(Version(version), prereleases=True):
            out.append(f"{name} {version} is outside the range clsharelora supports ({name}{spec}); install a "
                       f"version in it (make install pins the tested set, pyproject.toml)")
    return out


def check_versions() -> None:
    """Raise a UserError naming every package outside SUPPORTED (the CLI prints it as `error: ...`, exit 2)."""
    found = problems()
    if found:
        from .errors import UserError

        raise UserError("; ".join(found))


def main(argv: list[str] | None = None) -> int:
    """`python versions.py [NAME...]`: check those packages (default all); install.sh checks torch and
    transformers before installing the bundle's peft."""
    names = sys.argv[1:] if argv is None else argv
    unknown = [n for n in names if n not in SUPPORTED]
    if unknown:
        print(f"error: unknown package {unknown[0]!r}; known: {', '.join(SUPPORTED)}", file=sys.stderr)
        return 2
    found = problems(names=names)
    if found:
        print("error: " + "; ".join(found), file=sys.stderr)
    else:
        print("versions: " + ", ".join(f"{n} {installed(n)} in {SUPPORTED[n]}" for n in names or SUPPORTED))
    return 2 if found else 0


if __name__ == "__main__":
    sys.exit(main())

"""The public surface: everything exported exists, and each group of __all__ is sorted."""

from __future__ import annotations

from pathlib import Path

import mem0_receiver


def test_all_members_exist_and_are_public() -> None:
    for name in mem0_receiver.__all__:
        assert hasattr(mem0_receiver, name), name
    public = {
        name
        for name, value in vars(mem0_receiver).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("mem0_receiver")
    }
    assert public <= set(mem0_receiver.__all__)


def test_each_commented_group_of_all_is_sorted() -> None:
    source = Path(mem0_receiver.__file__).read_text()
    block = source[source.index("__all__ = [") :].splitlines()[1:]
    groups: list[list[str]] = [[]]
    for line in block:
        line = line.strip()
        if line.startswith("#"):
            groups.append([])
        elif line.startswith('"'):
            groups[-1].append(line.strip('",'))
        elif line == "]":
            break

    # isort's order, as ruff's RUF022 uses everywhere else: CONSTANTS, Classes, functions.
    def key(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    for group in groups:
        assert group == sorted(group, key=key)
    assert sum(map(len, groups)) == len(mem0_receiver.__all__)

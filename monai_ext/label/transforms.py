"""The monai>=1.6 ``Spacingd`` vs MONAI Label ``image_path`` workaround.

MONAI Label adds ``image_path`` (a string) to the data dictionary before the bundle's pre-transforms run. monai 1.6's
``Spacingd`` treats every entry whose key starts with ``image_`` as a meta dictionary and calls ``.update()`` on it, so
any bundle with ``Spacingd`` fails with ``AttributeError: 'str' object has no attribute 'update'``.
:class:`HideNonDictEntries` runs one transform with those entries taken out and puts them back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

__all__ = ["HideNonDictEntries", "shield_transforms"]


class HideNonDictEntries:
    """Run ``transform`` on a data dictionary without its non-dictionary entries whose key starts with ``prefixes``.

    Args:
        transform: a dictionary transform (e.g. ``Spacingd``).
        prefixes: key prefixes a transform may take for meta dictionaries (``image_``, ``label_``).
    """

    def __init__(self, transform: Callable, prefixes: tuple[str, ...] = ("image_", "label_")) -> None:
        self.transform = transform
        self.prefixes = prefixes

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        data = dict(data)
        hidden = {
            k: data.pop(k)
            for k in list(data)
            if isinstance(k, str) and k.startswith(self.prefixes) and not isinstance(data[k], Mapping)
        }
        out = self.transform(data)
        if isinstance(out, list):  # transforms returning several samples
            return [{**hidden, **o} for o in out]
        return {**hidden, **out}

    def __repr__(self) -> str:
        return f"HideNonDictEntries({self.transform!r})"


def shield_transforms(transforms: list, needs_shield: tuple[type, ...]) -> list:
    """Wrap each transform of a type in ``needs_shield`` in :class:`HideNonDictEntries`; keep the others as they are."""
    return [HideNonDictEntries(t) if isinstance(t, needs_shield) else t for t in transforms]

"""Semantic label sets: class names, left/right flip pairs and named class groups (presets).

One ``LabelSet`` describes how the integer values of a label map are to be read. The toy faces
and real CelebAMask-HQ data share ``CELEBAMASK_HQ``, so the same models and loaders work on both.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """Names of the classes of a label map (index = label value), flip pairs and presets.

    ``flip_pairs`` lists classes that swap under a horizontal flip (left/right eye …);
    ``presets`` maps a group name (e.g. ``"eyes"``) to class ids, as used by style-transfer edits.
    """

    name: str
    class_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    presets: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ValueError(f"label set {self.name!r}: class_names must not be empty")
        names = [n.lower() for n in self.class_names]
        if len(set(names)) != len(names):
            raise ValueError(f"label set {self.name!r}: class_names must be unique, got {self.class_names}")
        seen: set[int] = set()
        for pair in self.flip_pairs:
            if len(pair) != 2 or pair[0] == pair[1] or any(not 0 <= i < len(names) for i in pair):
                raise ValueError(f"label set {self.name!r}: flip pair {pair} must be two distinct ids in [0, {len(names)})")
            if seen & set(pair):
                raise ValueError(f"label set {self.name!r}: class in flip pair {pair} already appears in another pair")
            seen |= set(pair)
        for key, ids in self.presets.items():
            if not ids or any(not 0 <= i < len(names) for i in ids):
                raise ValueError(f"label set {self.name!r}: preset {key!r} must list ids in [0, {len(names)}), got {ids}")

    @property
    def num_classes(self) -> int:
        """Number of classes (label values are 0 … num_classes − 1)."""
        return len(self.class_names)

    def class_id(self, name: str) -> int:
        """Id of the class called ``name`` (case-insensitive); presets are not consulted."""
        lowered = [n.lower() for n in self.class_names]
        key = name.strip().lower()
        if key not in lowered:
            raise ValueError(f"unknown class {name!r} in label set {self.name!r}; valid: {', '.join(self.class_names)}")
        return lowered.index(key)

    def resolve(self, spec: str | int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
        """Parse a class selection such as ``"hair,skin"``, ``"4,5"`` or ``"eyes"`` → sorted unique ids.

        Comma-separated tokens may be class ids, class names or preset names (case-insensitive).
        A preset wins over a class of the same name (``"mouth"`` → mouth + both lips, as in the
        CA²-SIS edits); use the id (``"10"``) for the single class.
        """
        if isinstance(spec, int):
            tokens: list[str] = [str(spec)]
        elif isinstance(spec, (tuple, list)):
            tokens = [str(t) for t in spec]
        else:
            tokens = [t.strip() for t in str(spec).split(",")]
        if not tokens or any(not t for t in tokens):
            raise ValueError(f"class selection {spec!r} is empty or has an empty item; expected e.g. 'hair,skin', '4,5' or 'eyes'")
        lowered = [n.lower() for n in self.class_names]
        presets = {k.lower(): v for k, v in self.presets.items()}
        ids: set[int] = set()
        for token in tokens:
            key = token.lower()
            if key in presets:
                ids.update(presets[key])
            elif key in lowered:
                ids.add(lowered.index(key))
            elif key.lstrip("-").isdigit():
                value = int(key)
                if not 0 <= value < self.num_classes:
                    raise ValueError(f"class id {value} in {spec!r} is out of range; expected 0..{self.num_classes - 1}")
                ids.add(value)
            else:
                valid = ", ".join(list(self.class_names) + sorted(self.presets))
                raise ValueError(f"unknown class or preset {token!r} in {spec!r}; valid names: {valid}")
        return tuple(sorted(ids))

    def flip_permutation(self) -> list[int]:
        """Label permutation for a horizontal flip: ``perm[labels[:, ::-1]]`` is the flipped map."""
        perm = list(range(self.num_classes))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (stored in dataset.json beside exported data)."""
        return {
            "name": self.name,
            "class_names": list(self.class_names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "presets": {k: list(v) for k, v in sorted(self.presets.items())},
        }


CELEBAMASK_HQ = LabelSet(
    name="celebamask_hq",
    class_names=(
        "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
        "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
    ),
    flip_pairs=((4, 5), (6, 7), (8, 9)),
    presets={
        "eyes": (4, 5),
        "mouth": (10, 11, 12),
        "hair": (13,),
        "brows": (6, 7),
        "skin": (1, 2),
        "background": (0,),
    },
)
"""The 19 CelebAMask-HQ classes (SEAN preprocessing order) with the CA²-SIS edit presets."""

LABELSETS: dict[str, LabelSet] = {CELEBAMASK_HQ.name: CELEBAMASK_HQ}


def get_labelset(name: str) -> LabelSet:
    """Look up a registered label set by name (e.g. ``"celebamask_hq"``)."""
    key = name.strip().lower()
    if key not in LABELSETS:
        raise ValueError(f"unknown label set {name!r}; expected one of {', '.join(sorted(LABELSETS))}")
    return LABELSETS[key]

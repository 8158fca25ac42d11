"""Words, specs and the caption grammar of the shapes toy world (sampling and parsing).

Every caption that :func:`sample_caption` produces, and every prompt that :func:`spec_from_prompt`
accepts, follows this grammar (lower-case; words separated by single spaces, a comma sticks to
the word before it)::

    caption   ::= list | single RELATION single          a relation joins exactly two subjects
    list      ::= subject (SEP subject){0,3}              1–4 subjects
    SEP       ::= "and" | "," | ", and"                   generated: "x and y", "x, y and z"
    subject   ::= single | plural
    single    ::= ("a" | "an") [COLOUR] SHAPE             count 1 ("an" before a vowel when generated)
    plural    ::= NUMBER [COLOUR] SHAPES                  count 2–4
    NUMBER    ::= "two" | "three" | "four"
    COLOUR    ::= red | orange | yellow | green | cyan | blue | purple | pink
    SHAPE     ::= circle | disk | disc | square | box | triangle | star | cross | diamond | rhombus
    SHAPES    ::= circles | disks | discs | squares | boxes | triangles | stars | crosses
                | diamonds | rhombuses
    RELATION  ::= "to the left of" | "left of" | "to the right of" | "right of" | "above" | "over"
                | "below" | "under" | "next to" | "beside"

Synonyms (``SYNONYMS``) and relation phrasings (``RELATION_PHRASES``) name the same thing and are
drawn at random when captions are generated. Generated captions also keep to: at most 4 object
instances in total, distinct (shape, colour) per subject, and a colourless subject ("a circle")
never shares its shape with another subject, so every caption has one unambiguous reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

#: Shapes, in a fixed order (also the oracle's class order).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")

#: Named colours (sRGB, 0–255): eight saturated hues at least 33° apart in OKLCh hue (a perceptual
#: space), so none can be taken for another or for the light, low-saturation backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 45),
    "orange": (245, 135, 15),
    "yellow": (235, 210, 25),
    "green": (25, 170, 55),
    "cyan": (20, 175, 200),
    "blue": (35, 70, 210),
    "purple": (135, 50, 195),
    "pink": (230, 75, 180),
}

#: Every word for each shape; the first entry is the canonical name.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross",),
    "diamond": ("diamond", "rhombus"),
}

#: Spatial relations (canonical names), read "subject i <relation> subject j".
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "next to")

#: Every phrasing of each relation; the first is the one a reader expects most.
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
    "next to": ("next to", "beside"),
}

NUMBER_WORDS: dict[str, int] = {"two": 2, "three": 3, "four": 4}
MAX_SUBJECTS = 4
MAX_INSTANCES = 4  # object instances in a generated caption (counts included)
RELATION_PROB = 0.25  # share of generated captions that are a relation between two subjects

_PLURAL_IRREGULAR = {"box": "boxes", "cross": "crosses", "rhombus": "rhombuses"}
_SINGULAR_WORDS: dict[str, str] = {w: s for s, words in SYNONYMS.items() for w in words}
_PLURAL_WORDS: dict[str, str] = {_PLURAL_IRREGULAR.get(w, w + "s"): s for w, s in _SINGULAR_WORDS.items()}
_COUNT_WORDS = {v: k for k, v in NUMBER_WORDS.items()}

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in [0, 1], y down


def plural(word: str) -> str:
    """Plural of a shape word ('box' → 'boxes')."""
    return _PLURAL_IRREGULAR.get(word, word + "s")


def vocabulary() -> list[str]:
    """Every word the grammar can produce, sorted (for building a tokenizer).

    Only letter words are listed; the one punctuation mark captions use is the comma, which a
    tokenizer must handle separately.
    """
    words = {"a", "an", "and", *NUMBER_WORDS, *COLOURS, *_SINGULAR_WORDS, *_PLURAL_WORDS}
    for phrases in RELATION_PHRASES.values():
        for phrase in phrases:
            words.update(phrase.split())
    return sorted(words)


# ----------------------------------------------------------------------------- specs


def _check_box(box: Any, what: str) -> Box:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 4 numbers (x0, y0, x1, y1), got {box!r}") from None
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(f"{what} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {box!r}")
    return (x0, y0, x1, y1)


@dataclass(frozen=True)
class ObjectSpec:
    """One subject of a scene: a shape, an optional colour, how many, and where (when drawn).

    ``boxes`` holds one box per instance for a rendered scene and is empty for a prompt;
    ``box`` is the single box when ``count == 1`` (None for prompts and for counts above one).
    """

    shape: str
    colour: str | None = None
    box: Box | None = None
    count: int = 1
    boxes: tuple[Box, ...] = ()

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.colour is not None and self.colour not in COLOURS:
            raise ValueError(f"colour must be None or one of {', '.join(COLOURS)}, got {self.colour!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, (int, np.integer)) or self.count < 1:
            raise ValueError(f"count must be an integer >= 1, got {self.count!r}")
        object.__setattr__(self, "count", int(self.count))
        boxes = tuple(_check_box(b, "boxes entry") for b in self.boxes)
        if self.box is not None:
            box = _check_box(self.box, "box")
            if self.count != 1:
                raise ValueError(f"box is only for count 1 (use boxes for {self.count} instances), got box={self.box!r}")
            if boxes and boxes != (box,):
                raise ValueError(f"box {box} disagrees with boxes {boxes}")
            boxes = (box,)
        if boxes and len(boxes) != self.count:
            raise ValueError(f"boxes must hold count={self.count} boxes, got {len(boxes)}")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "box", boxes[0] if boxes and self.count == 1 else None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (boxes as lists)."""
        return {"shape": self.shape, "colour": self.colour, "count": self.count, "boxes": [list(b) for b in self.boxes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ObjectSpec":
        """Inverse of :meth:`to_dict` (also accepts a single ``box``)."""
        return cls(
            shape=data["shape"],
            colour=data.get("colour"),
            box=tuple(data["box"]) if data.get("box") is not None else None,
            count=data.get("count", 1),
            boxes=tuple(tuple(b) for b in data.get("boxes", ())),
        )


@dataclass(frozen=True)
class Subject:
    """Where one subject sits in its caption: the noun and colour words as character spans.

    ``noun_span``/``attribute_span`` are ``(start, end)`` with ``caption[start:end]`` the word, so
    callers can map them to tokenizer tokens (e.g. through offset mappings).
    """

    noun: str
    noun_span: tuple[int, int]
    attribute: str | None
    attribute_span: tuple[int, int] | None
    object_index: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "noun": self.noun,
            "noun_span": list(self.noun_span),
            "attribute": self.attribute,
            "attribute_span": list(self.attribute_span) if self.attribute_span is not None else None,
            "object_index": self.object_index,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Subject":
        """Inverse of :meth:`to_dict`."""
        span = data.get("attribute_span")
        return cls(
            noun=data["noun"],
            noun_span=tuple(data["noun_span"]),
            attribute=data.get("attribute"),
            attribute_span=tuple(span) if span is not None else None,
            object_index=int(data["object_index"]),
        )


@dataclass(frozen=True)
class Spec:
    """What a caption says: objects (one per subject), relations ``(i, relation, j)``, word spans."""

    objects: tuple[ObjectSpec, ...]
    relations: tuple[tuple[int, str, int], ...] = ()
    subjects: tuple[Subject, ...] = field(default=())

    def __post_init__(self) -> None:
        objects = tuple(self.objects)
        if not objects:
            raise ValueError("Spec.objects must hold at least one ObjectSpec, got none")
        relations = tuple((int(i), str(r), int(j)) for i, r, j in self.relations)
        for i, rel, j in relations:
            if rel not in RELATIONS:
                raise ValueError(f"relation must be one of {', '.join(RELATIONS)}, got {rel!r}")
            if not (0 <= i < len(objects) and 0 <= j < len(objects)) or i == j:
                raise ValueError(f"relation ({i}, {rel!r}, {j}) must join two different objects among 0..{len(objects) - 1}")
        subjects = tuple(self.subjects)
        for s in subjects:
            if not 0 <= s.object_index < len(objects):
                raise ValueError(f"subject {s.noun!r} points at object {s.object_index}, but there are {len(objects)}")
        object.__setattr__(self, "objects", objects)
        object.__setattr__(self, "relations", relations)
        object.__setattr__(self, "subjects", subjects)

    def without_boxes(self) -> "Spec":
        """The same spec with every box dropped (what a prompt alone can say)."""
        return replace(self, objects=tuple(replace(o, box=None, boxes=()) for o in self.objects))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; :meth:`from_dict` inverts it exactly."""
        return {
            "objects": [o.to_dict() for o in self.objects],
            "relations": [[i, r, j] for i, r, j in self.relations],
            "subjects": [s.to_dict() for s in self.subjects],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Spec":
        """Inverse of :meth:`to_dict`."""
        return cls(
            objects=tuple(ObjectSpec.from_dict(o) for o in data["objects"]),
            relations=tuple(tuple(r) for r in data.get("relations", ())),
            subjects=tuple(Subject.from_dict(s) for s in data.get("subjects", ())),
        )


# ----------------------------------------------------------------------------- sampling


def sample_objects(
    rng: np.random.Generator,
    *,
    n_subjects: int | None = None,
    relation: str | None = None,
    allow_counts: bool = True,
    colour_prob: float = 0.92,
) -> tuple[list[ObjectSpec], list[tuple[int, str, int]]]:
    """Draw the subjects of a caption (no boxes) and its relation, if any.

    ``n_subjects``/``relation`` None means "draw at random": a relation with probability
    ``RELATION_PROB`` (then exactly two singular subjects), otherwise 1–4 subjects. Each subject
    is named with a colour with probability ``colour_prob``; counts appear when ``allow_counts``.
    """
    if relation is None and n_subjects is None and rng.random() < RELATION_PROB:
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    if relation is not None:
        n_subjects, allow_counts = 2, False
    elif n_subjects is None:
        n_subjects = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.2, 0.15]))
    objects: list[ObjectSpec] = []
    budget = MAX_INSTANCES
    while len(objects) < n_subjects:
        previous = objects[-1] if objects else None
        if previous is not None and previous.colour is not None and rng.random() < 0.15:
            shape = previous.shape  # same shape, another colour: the hard binding case
        else:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour: str | None = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        if rng.random() >= colour_prob:
            colour = None
        same_shape = [o for o in objects if o.shape == shape]
        if (colour is None and same_shape) or any(o.colour is None or o.colour == colour for o in same_shape):
            continue  # keep one unambiguous reading
        left_for_others = n_subjects - len(objects) - 1
        count = 1
        if allow_counts and budget - left_for_others >= 2 and rng.random() < 0.25:
            count = int(rng.integers(2, budget - left_for_others + 1))
        budget -= count
        objects.append(ObjectSpec(shape=shape, colour=colour, count=count))
    relations = [(0, relation, 1)] if relation is not None else []
    return objects, relations


def compose_caption(rng: np.random.Generator, objects: list[ObjectSpec], relations: list[tuple[int, str, int]]) -> tuple[str, tuple[Subject, ...]]:
    """Write a caption for the given subjects (synonyms and phrasings drawn at random) with word spans."""
    if relations and (len(relations) != 1 or len(objects) != 2 or (relations[0][0], relations[0][2]) != (0, 1)):
        raise ValueError(f"a relation caption joins exactly objects 0 and 1, got {len(objects)} objects and {relations}")
    text = ""
    subjects: list[Subject] = []

    def put(word: str) -> tuple[int, int]:
        nonlocal text
        if text and word != ",":
            text += " "
        start = len(text)
        text += word
        return start, len(text)

    for index, obj in enumerate(objects):
        if index > 0:
            if relations:
                phrases = RELATION_PHRASES[relations[0][1]]
                put(phrases[int(rng.integers(len(phrases)))])
            elif index < len(objects) - 1:
                put(",")
            else:
                put("and")
        words = SYNONYMS[obj.shape]
        noun = words[int(rng.integers(len(words)))]
        first = obj.colour or noun
        put(("an" if first[0] in "aeiou" else "a") if obj.count == 1 else _COUNT_WORDS[obj.count])
        attribute_span = put(obj.colour) if obj.colour is not None else None
        noun_word = noun if obj.count == 1 else plural(noun)
        noun_span = put(noun_word)
        subjects.append(Subject(noun_word, noun_span, obj.colour, attribute_span, index))
    return text, tuple(subjects)


def sample_caption(rng: np.random.Generator, **kwargs: Any) -> tuple[str, Spec]:
    """Draw subjects and a caption for them: ``(caption, spec)`` without boxes (see :func:`sample_objects`)."""
    objects, relations = sample_objects(rng, **kwargs)
    caption, subjects = compose_caption(rng, objects, relations)
    return caption, Spec(objects=tuple(objects), relations=tuple(relations), subjects=subjects)


def sample_prompt(
    seed: int, n_subjects: int, relation: str | None = None, *, allow_counts: bool = False, colour_prob: float = 1.0
) -> tuple[str, Spec]:
    """A prompt and its spec without an image (benchmarks draw prompts from held-out seeds).

    ``relation`` (one of ``RELATIONS``) needs ``n_subjects == 2``. By default every subject is
    singular and coloured ("a red circle and a blue box"); ``allow_counts`` lets counts appear,
    ``colour_prob < 1`` lets colour words be left out.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(n_subjects, (int, np.integer)) or not 1 <= n_subjects <= MAX_SUBJECTS:
        raise ValueError(f"n_subjects must be an integer in 1..{MAX_SUBJECTS}, got {n_subjects!r}")
    if relation is not None:
        if relation not in RELATIONS:
            raise ValueError(f"relation must be None or one of {', '.join(RELATIONS)}, got {relation!r}")
        if n_subjects != 2:
            raise ValueError(f"a relation joins exactly 2 subjects, got n_subjects={n_subjects}")
    if not 0.0 <= colour_prob <= 1.0:
        raise ValueError(f"colour_prob must be in [0, 1], got {colour_prob}")
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    return sample_caption(rng, n_subjects=int(n_subjects), relation=relation, allow_counts=allow_counts, colour_prob=colour_prob)


# ----------------------------------------------------------------------------- parsing

_TOKEN = re.compile(r"[a-z]+|,|\S")
_RELATION_WORDS = sorted(((tuple(p.split()), rel) for rel, ps in RELATION_PHRASES.items() for p in ps), key=lambda x: -len(x[0]))


def _one_of(words: Any) -> str:
    return ", ".join(words)


def spec_from_prompt(prompt: str) -> Spec:
    """Parse a caption of the grammar (module docstring) into a :class:`Spec` without boxes.

    Case and extra spaces are tolerated; anything else outside the grammar raises a one-line
    ``ValueError`` naming the offending word, its position and what was expected.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(prompt.lower())]
    if not tokens:
        raise ValueError("prompt is empty; expected e.g. 'a red circle and a blue square'")
    pos = 0

    def fail(k: int, problem: str, expected: str) -> ValueError:
        """One-line error: what is wrong with word k (``{word}`` stands for it) and what was expected."""
        if k >= len(tokens):
            return ValueError(f"prompt {prompt!r} ends too early; expected {expected}")
        problem = problem.replace("{word}", repr(tokens[k][0]))
        return ValueError(f"{problem} at word {k + 1} of {prompt!r}; expected {expected}")

    def parse_subject(index: int) -> tuple[ObjectSpec, Subject]:
        nonlocal pos
        if pos >= len(tokens):
            raise fail(pos, "", "a subject such as 'a red circle'")
        det = tokens[pos][0]
        if det in ("a", "an"):
            count = 1
        elif det in NUMBER_WORDS:
            count = NUMBER_WORDS[det]
        else:
            raise fail(pos, "unexpected {word}", f"'a', 'an' or a number ({_one_of(NUMBER_WORDS)})")
        pos += 1
        colour, colour_span = None, None
        if pos < len(tokens) and tokens[pos][0] in COLOURS:
            colour, colour_span = tokens[pos][0], tokens[pos][1:]
            pos += 1
        nouns = _SINGULAR_WORDS if count == 1 else _PLURAL_WORDS
        if pos >= len(tokens):
            raise fail(pos, "", f"a shape ({_one_of(nouns)}) after {tokens[pos - 1][0]!r}")
        word = tokens[pos][0]
        if word not in nouns:
            if word in _PLURAL_WORDS or word in _SINGULAR_WORDS:
                number = "singular" if count == 1 else "plural"
                raise fail(pos, f"{{word}} does not agree in number with {det!r}", f"a {number} shape ({_one_of(nouns)})")
            if colour is None and word not in COLOURS:
                raise fail(pos, "unknown colour or shape {word}", f"a colour ({_one_of(COLOURS)}) or a shape ({_one_of(nouns)})")
            raise fail(pos, "unknown shape {word}", f"one of {_one_of(nouns)}")
        obj = ObjectSpec(shape=nouns[word], colour=colour, count=count)
        subject = Subject(word, tokens[pos][1:], colour, colour_span, index)
        pos += 1
        return obj, subject

    objects: list[ObjectSpec] = []
    subjects: list[Subject] = []
    relations: list[tuple[int, str, int]] = []
    while True:
        obj, subject = parse_subject(len(objects))
        objects.append(obj)
        subjects.append(subject)
        if relations or pos >= len(tokens):
            break
        words = tuple(t[0] for t in tokens[pos:])
        relation = next(((ws, rel) for ws, rel in _RELATION_WORDS if words[: len(ws)] == ws), None)
        if relation is not None:
            if len(objects) != 1:
                example = "'a red circle above a blue box'"
                raise fail(pos, "relation {word} after a list of subjects", f"a relation to join exactly two subjects ({example})")
            pos += len(relation[0])
            relations.append((0, relation[1], 1))
            continue
        if words[0] == ",":
            pos += 1 + (words[1:2] == ("and",))
        elif words[0] == "and":
            pos += 1
        else:
            phrases = _one_of(p for ps in RELATION_PHRASES.values() for p in ps)
            raise fail(pos, "unexpected {word}", f"'and', ',' or a relation ({phrases})")
        if len(objects) >= MAX_SUBJECTS:
            raise fail(pos, "too many subjects", f"at most {MAX_SUBJECTS} subjects")
    if pos < len(tokens):
        raise fail(pos, "unexpected {word} after the second subject of a relation", "the end of the prompt")
    if relations and any(o.count != 1 for o in objects):
        raise ValueError(f"relations join singular subjects ('a ...'), got counts {[o.count for o in objects]} in {prompt!r}")
    return Spec(objects=tuple(objects), relations=tuple(relations), subjects=tuple(subjects))

"""Prompt subjects → token groups: which attention maps belong to which subject and its attributes.

``resolve_subjects("a small red cat chasing a hedgehog", ["cat", "hedgehog"], tokenizer)`` maps
each subject word or phrase to the token positions it occupies in the pipeline's own
tokenisation (BOS = 0), gathering multi-token words ("hedgehog" → several BPE tokens), synonyms
(``[["cat", "kitten"], ...]``) and repeated mentions into one group, and binds the adjectives of
each mention's noun phrase ("small", "red") as its attributes — never the article before it.

Words are aligned to tokens through the tokenizer's character offsets when it has them (fast
tokenizers), otherwise by tokenising the prompt piece by piece (slow CLIP tokenizers), with a
prefix-tokenisation fallback. ``subjects="auto"`` takes the nouns from spaCy's tagger when spaCy
and its ``en_core_web_sm`` model are installed, else from a small built-in heuristic
(determiner/adjective chains before boundary words). Attributes always come from the built-in
rules (adjective chains, "is <colour>", "with <colour> fur"), which need no parser.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["SubjectGroup", "TextSegment", "TextStreamGroup", "count_prompt_tokens", "prompt_token_positions", "resolve_stream_subjects", "resolve_subjects"]

# Pieces as CLIP's pre-tokenizer splits text: contractions, letter runs, single digits, other symbols.
# CLIP's pre-tokenizer pieces, plus a learned placeholder token such as "<heart>" as one piece (textual inversion
# adds it to the tokenizer whole), so "<heart>," does not become "<", "heart", ">,".
_PIECE = re.compile(r"<[^\W\d_]+(?:[-_][^\W\d_]+)*>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE)

_DETERMINERS = frozenset(
    "a an the this that these those some several many few any each every another no both all "
    "my your his her its our their one two three four five six seven eight nine ten eleven twelve "
    "dozen pair couple".split()
)
_PREPOSITIONS = frozenset(
    "of on in at by to from into onto inside outside across along around between among against "
    "toward towards through beneath beside besides behind below above under underneath over near "
    "next atop upon within without for like after before during amid via".split()
)
_CONJUNCTIONS = frozenset("and or but nor plus while as than then".split())
_PRONOUNS = frozenset("it they them he she him we us you i itself themselves which who whom whose what".split())
_AUXILIARIES = frozenset("is are was were be been being am has have had does do did looks look looking seems".split())
_ADVERBS = frozenset("very really quite extremely slightly rather too so".split())
_FUNCTION_WORDS = _DETERMINERS | _PREPOSITIONS | _CONJUNCTIONS | _PRONOUNS | _AUXILIARIES | _ADVERBS | {"with"}

# Describing words bound to a noun after "is" or "with … fur", and the -ed/-ing words that are adjectives.
_COLOURS = frozenset(
    "red orange yellow green blue purple pink brown gray grey black white golden silver gold beige "
    "cyan magenta violet turquoise teal navy maroon crimson scarlet ivory tan khaki lime olive "
    "colorful colourful multicolored multicoloured transparent dark light pale bright".split()
)
_ADJECTIVES = _COLOURS | frozenset(
    "big small large tiny huge little giant tall short long wide narrow thin thick fat round square "
    "wooden metal metallic glass plastic stone marble leather woolen woollen furry fluffy shiny "
    "striped spotted checkered dotted polka plaid floral patterned painted knitted colored coloured "
    "old new young ancient modern cute happy sad angry sleepy fuzzy hairy smooth rough wet dry "
    "cracked broken rusty curly spiky soft hard fluffy ornate sparkling glowing shining".split()
)
# "a cat with white fur": adjectives before one of these after "with" describe the subject itself.
_BODY_PARTS = frozenset(
    "fur hair feathers feather skin coat eyes wings wing stripes spots scales shell petals leaves "
    "mane tail paws body fins horns horn ears beak".split()
)
# "a photo of …": these head a phrase that frames the subject rather than being one.
_FRAMING = frozenset(
    "photo photograph picture image painting drawing illustration sketch render rendering portrait "
    "closeup view shot scene style watercolor watercolour oil".split()
)
_MAX_ATTRIBUTE_CHAIN = 4  # adjectives considered before a noun
_SPACY_MODEL = "en_core_web_sm"  # used for subjects="auto" when installed (pip install attnsynth[nlp])


@dataclass(frozen=True)
class SubjectGroup:
    """One subject of a prompt: its token positions (BOS = 0), its attribute tokens and its mentions."""

    name: str  # e.g. "cat" or "cat/kitten"
    token_indices: tuple[int, ...]  # every token of every mention, ascending
    attribute_indices: tuple[int, ...] = ()  # adjective/colour tokens bound to the subject
    mention_spans: tuple[tuple[int, ...], ...] = ()  # token positions per mention; () = one mention
    first_position: ClassVar[int] = 1  # lowest valid position: 0 is BOS

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"SubjectGroup name={self.name!r} is invalid; expected a non-empty string")
        tokens = _positions(self.token_indices, f"SubjectGroup {self.name!r} token_indices", self.first_position)
        if not tokens:
            raise ValueError(f"SubjectGroup {self.name!r} has no token_indices; expected at least one token position")
        attributes = _positions(self.attribute_indices, f"SubjectGroup {self.name!r} attribute_indices", self.first_position)
        if set(attributes) & set(tokens):
            raise ValueError(
                f"SubjectGroup {self.name!r} attribute_indices {attributes} overlap its token_indices {tokens}"
            )
        spans = tuple(_positions(span, f"SubjectGroup {self.name!r} mention span", self.first_position) for span in self.mention_spans)
        if not spans:
            spans = (tokens,)
        if sorted(i for span in spans for i in span) != list(tokens):
            raise ValueError(
                f"SubjectGroup {self.name!r} mention_spans {spans} do not partition token_indices {tokens}"
            )
        object.__setattr__(self, "token_indices", tokens)
        object.__setattr__(self, "attribute_indices", attributes)
        object.__setattr__(self, "mention_spans", spans)


def _positions(values: Any, what: str, minimum: int = 1) -> tuple[int, ...]:
    """Validate token positions (integers >= ``minimum``, no repeats) and return them ascending."""
    values = tuple(values)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values) or len(set(values)) != len(values):
        hint = " (0 is BOS)" if minimum == 1 else ""
        raise ValueError(f"{what}={values!r} is invalid; expected distinct token positions >= {minimum}{hint}")
    return tuple(sorted(values))


@dataclass(frozen=True)
class TextStreamGroup(SubjectGroup):
    """A subject's rows in an MMDiT transformer's text stream (SD3: 77 CLIP rows then T5 rows; FLUX: T5 rows).

    Positions are rows of the stream, so 0 is valid (FLUX's text starts with the prompt's
    first T5 token: T5 has no BOS). A word's tokens from every encoder form one group.
    """

    first_position: ClassVar[int] = 0


@dataclass(frozen=True)
class TextSegment:
    """One tokenizer's rows in a text stream: rows ``offset .. offset + max_length − 1``."""

    name: str  # for errors, e.g. "CLIP" or "T5"
    tokenizer: Any
    offset: int  # first row of this tokenizer's tokens in the stream
    max_length: int  # rows it occupies (padding included); longer prompts are refused


def _is_placeholder(text: str) -> bool:
    """A learned-concept token written as ``<name>`` (one piece of the prompt, a word for the subject rules)."""
    return len(text) > 2 and text[0] == "<" and text[-1] == ">" and text[1:-1].replace("-", "").replace("_", "").isalpha()


@dataclass(frozen=True)
class _Piece:
    """A pre-tokenizer piece of the prompt with its character span and token positions."""

    text: str  # lower-cased
    start: int
    end: int
    tokens: tuple[int, ...]

    @property
    def is_word(self) -> bool:
        return self.text.isalpha() or _is_placeholder(self.text)


def _input_ids(tokenizer: Any, text: str, **kwargs: Any) -> list[int]:
    encoding = tokenizer(text, **kwargs)
    ids = encoding["input_ids"] if isinstance(encoding, dict) or hasattr(encoding, "keys") else encoding.input_ids
    return list(ids)


def count_prompt_tokens(prompt: str, tokenizer: Any) -> int:
    """Number of tokens of ``prompt`` with BOS and EOS and without padding (``prompt_length`` of the losses)."""
    return len(_input_ids(tokenizer, prompt))


def prompt_token_positions(prompt: str, tokenizer: Any) -> tuple[int, ...]:
    """Positions of the prompt's own tokens in ``tokenizer(prompt)`` (no BOS, EOS or padding)."""
    full = _input_ids(tokenizer, prompt)
    content = _input_ids(tokenizer, prompt, add_special_tokens=False)
    first = _leading_specials(full, content)
    return tuple(range(first, first + len(content)))


def _token_limit(tokenizer: Any, max_length: int | None) -> int | None:
    limit = max_length if max_length is not None else getattr(tokenizer, "model_max_length", None)
    if limit is None or limit > 100_000:  # transformers' "no limit" sentinel is ~1e30
        return None
    return int(limit)


def _leading_specials(full: list[int], content: list[int]) -> int:
    """Number of special tokens (BOS) in front of the prompt's own tokens."""
    for offset in range(0, len(full) - len(content) + 1):
        if full[offset : offset + len(content)] == content:
            return offset
    raise ValueError("tokenizer output with special tokens does not contain its output without them; cannot align")


def _pieces_from_offsets(prompt: str, tokenizer: Any, spans: list[tuple[int, int]]) -> list[tuple[int, ...]] | None:
    """Token positions per piece from the tokenizer's character offsets, or None without offsets."""
    try:
        encoding = tokenizer(prompt, return_offsets_mapping=True)
        offsets = list(encoding["offset_mapping"])
    except (TypeError, ValueError, KeyError, NotImplementedError, AttributeError):
        return None
    if len(offsets) != len(_input_ids(tokenizer, prompt)):
        return None
    owned: list[list[int]] = [[] for _ in spans]
    for position, (start, end) in enumerate(offsets):
        if end <= start:  # special tokens have empty spans
            continue
        for index, (piece_start, piece_end) in enumerate(spans):
            if piece_start <= start < piece_end:
                owned[index].append(position)
                break
    return [tuple(p) for p in owned]


def _pieces_from_tokenising(prompt: str, tokenizer: Any, spans: list[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Token positions per piece by tokenising piece by piece (checked), else by prefixes."""
    full = _input_ids(tokenizer, prompt)
    content = _input_ids(tokenizer, prompt, add_special_tokens=False)
    first = _leading_specials(full, content)
    counts = [len(_input_ids(tokenizer, prompt[s:e], add_special_tokens=False)) for s, e in spans]
    pieces_ids = [i for s, e in spans for i in _input_ids(tokenizer, prompt[s:e], add_special_tokens=False)]
    if pieces_ids != content:  # the tokenizer merges across pieces: count tokens of growing prefixes
        ends = [len(_input_ids(tokenizer, prompt[:e], add_special_tokens=False)) for _, e in spans]
        if ends != sorted(ends) or (ends and ends[-1] != len(content)):
            raise ValueError(f"prompt {prompt!r} cannot be aligned word by word with this tokenizer's tokens")
        counts = [b - a for a, b in zip([0, *ends[:-1]], ends)]
    owned, cursor = [], first
    for count in counts:
        owned.append(tuple(range(cursor, cursor + count)))
        cursor += count
    return owned


def _split_prompt(prompt: str, tokenizer: Any) -> list[_Piece]:
    """The prompt's pieces (words, digits, punctuation) with the token positions of each."""
    matches = list(_PIECE.finditer(prompt))
    spans = [m.span() for m in matches]
    owned = _pieces_from_offsets(prompt, tokenizer, spans)
    if owned is None:
        owned = _pieces_from_tokenising(prompt, tokenizer, spans)
    return [_Piece(m.group().lower(), m.start(), m.end(), tokens) for m, tokens in zip(matches, owned)]


def _phrase_words(phrase: str) -> list[str]:
    return [m.group().lower() for m in _PIECE.finditer(phrase)]


def _find_mentions(pieces: list[_Piece], phrase: list[str]) -> list[tuple[int, int]]:
    """Piece ranges [start, end) where ``phrase`` occurs; a plural ("cats", "boxes") also counts."""
    texts = [p.text for p in pieces]
    n = len(phrase)

    def matches(variant: list[str]) -> list[tuple[int, int]]:
        return [(i, i + n) for i in range(len(texts) - n + 1) if texts[i : i + n] == variant]

    found = matches(phrase)
    if not found and phrase and phrase[-1].isalpha():
        for suffix in ("s", "es"):
            found += matches(phrase[:-1] + [phrase[-1] + suffix])
    return sorted(found)


def _is_verb_form(word: str) -> bool:
    """-ing / -ed words that are not known adjectives ("sitting", "parked"; not "striped", "red")."""
    if word in _ADJECTIVES:
        return False
    return (len(word) > 4 and word.endswith("ing")) or (len(word) > 4 and word.endswith("ed")) or word.endswith("ly")


def _attributes_of(pieces: list[_Piece], start: int, end: int, taken: set[int]) -> list[int]:
    """Piece indices of the words describing the mention pieces[start:end]."""
    found: list[int] = []
    # 1. Adjective chain before the noun, inside its noun phrase: "a small red-ish cat".
    j, chain = start - 1, 0
    while j >= 0 and chain < _MAX_ATTRIBUTE_CHAIN:
        piece = pieces[j]
        if piece.text == "-" and j > 0 and pieces[j - 1].is_word:  # hyphenated modifier: "dark-blue"
            j -= 1
            continue
        if not piece.is_word or piece.text in _FUNCTION_WORDS or j in taken or _is_verb_form(piece.text):
            break
        found.append(j)
        chain += 1
        j -= 1
    # 2. Predicative: "a cat that is black and white", "the cat is red".
    k = end
    if k < len(pieces) and pieces[k].text in ("that", "which", "who"):
        k += 1
    if k < len(pieces) and pieces[k].text in _AUXILIARIES:
        k += 1
        while k < len(pieces) and pieces[k].text in _ADVERBS:
            k += 1
        while k < len(pieces) and pieces[k].text in _ADJECTIVES and k not in taken:
            found.append(k)
            k += 1
            if k + 1 < len(pieces) and pieces[k].text in ("and", ",") and pieces[k + 1].text in _ADJECTIVES:
                k += 1
    # 3. "with" + adjectives + a body part: "a bird with blue wings" binds "blue".
    k = end
    if k < len(pieces) and pieces[k].text == "with":
        adjectives = []
        k += 1
        while k < len(pieces) and pieces[k].text in _ADJECTIVES and k not in taken:
            adjectives.append(k)
            k += 1
        if adjectives and k < len(pieces) and pieces[k].text in _BODY_PARTS:
            found.extend(adjectives)
    return sorted(set(found))


def _auto_subjects(pieces: list[_Piece]) -> list[str]:
    """Nouns of the prompt by a light heuristic: heads of determiner/adjective chains before a boundary."""
    nouns: list[str] = []
    for i, piece in enumerate(pieces):
        word = piece.text
        previous = pieces[i - 1].text if i > 0 and pieces[i - 1].is_word else None
        # A word that can be an adjective or a noun ("square", "round") is the noun when it ends a
        # determiner/adjective chain: "a blue square" (but not "the cat is square").
        head_of_chain = word not in _COLOURS and previous is not None and (previous in _DETERMINERS or previous in _ADJECTIVES)
        if not piece.is_word or word in _FUNCTION_WORDS or (word in _ADJECTIVES and not head_of_chain) or _is_verb_form(word):
            continue
        following = pieces[i + 1].text if i + 1 < len(pieces) else None
        boundary = (
            following is None
            or not pieces[i + 1].is_word
            or following in _FUNCTION_WORDS
            or following in ("that", "which", "who")
            or _is_verb_form(following)
        )
        if not boundary or (word in _FRAMING and following == "of") or word == "background":
            continue
        # Walk left over modifiers to a determiner, number, boundary word or the start of the prompt.
        j, chain = i - 1, 0
        while j >= 0 and chain < _MAX_ATTRIBUTE_CHAIN and pieces[j].is_word and pieces[j].text not in _FUNCTION_WORDS:
            if _is_verb_form(pieces[j].text):
                break
            j, chain = j - 1, chain + 1
        if chain < _MAX_ATTRIBUTE_CHAIN and word not in nouns:
            nouns.append(word)
    return nouns


@functools.lru_cache(maxsize=1)
def _load_spacy() -> Any:
    """spaCy's small English pipeline, loaded once (raises if spaCy or the model is missing)."""
    import spacy

    return spacy.load(_SPACY_MODEL)


def _spacy_nouns(prompt: str) -> list[str] | None:
    """Nouns by spaCy's tagger when spaCy and ``en_core_web_sm`` are installed, else None.

    Heads only (compound modifiers such as "teddy" in "teddy bear" are skipped), framing
    words before "of" ("a photo of …") too; lower-cased, first occurrence first.
    """
    try:
        nlp = _load_spacy()
    except Exception:  # not installed, model not downloaded, incompatible version: use the heuristic
        return None
    tokens = list(nlp(prompt))
    nouns: list[str] = []
    for i, token in enumerate(tokens):
        word = token.text.lower()
        following = tokens[i + 1].text.lower() if i + 1 < len(tokens) else None
        if token.pos_ not in ("NOUN", "PROPN") or token.dep_ == "compound" or word in nouns:
            continue
        if (word in _FRAMING and following == "of") or word == "background":
            continue
        nouns.append(word)
    return nouns


def _normalise_request(subjects: Any) -> list[list[str]]:
    """Subjects as lists of synonym phrases, validated."""
    if isinstance(subjects, str):
        subjects = [subjects]
    if not isinstance(subjects, Sequence):
        raise ValueError(
            f"subjects={subjects!r} is invalid; expected 'auto', a list of words/phrases or of synonym lists"
        )
    request = []
    for entry in subjects:
        synonyms = [entry] if isinstance(entry, str) else entry
        valid = isinstance(synonyms, Sequence) and len(synonyms) > 0
        if not valid or not all(isinstance(s, str) and s.strip() for s in synonyms):
            raise ValueError(f"subject {entry!r} is invalid; expected a non-empty word/phrase or a list of them")
        request.append([s.strip() for s in synonyms])
    return request


def resolve_subjects(
    prompt: str, subjects: Any, tokenizer: Any, *, max_length: int | None = None
) -> list[SubjectGroup]:
    """Token groups of ``subjects`` in ``prompt`` as tokenised by the pipeline's ``tokenizer``.

    ``subjects``: None or [] → no groups; ``"auto"`` → the prompt's nouns (built-in heuristic);
    a list of words/phrases (``["cat", "teddy bear"]``) and/or synonym lists (``[["cat", "kitten"]]``,
    named ``"cat/kitten"``; at least one synonym must occur). Any other string is one subject.
    Groups keep the requested order. Raises ValueError when a subject is missing from the prompt,
    two subjects share tokens, or the prompt has more tokens (BOS/EOS included) than ``max_length``
    (default ``tokenizer.model_max_length``).
    """
    _check_prompt(prompt, tokenizer, max_length)
    return [
        SubjectGroup(name=name, token_indices=tokens, attribute_indices=attributes, mention_spans=spans)
        for name, tokens, attributes, spans in _resolve_positions(prompt, subjects, tokenizer)
    ]


def _check_prompt(prompt: Any, tokenizer: Any, max_length: int | None, what: str = "the tokenizer limit") -> None:
    """Reject an empty prompt or one with more tokens (specials included) than the limit."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt={prompt!r} is invalid; expected a non-empty string")
    limit = _token_limit(tokenizer, max_length)
    length = count_prompt_tokens(prompt, tokenizer)
    if limit is not None and length > limit:
        shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        raise ValueError(
            f"prompt has {length} tokens (BOS/EOS included) but {what} is {limit}; shorten it: {shown!r}"
        )


def _resolve_positions(
    prompt: str, subjects: Any, tokenizer: Any
) -> list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]]:
    """(name, token positions, attribute positions, mention spans) per subject, in ``tokenizer``'s positions."""
    if subjects is None or (not isinstance(subjects, str) and isinstance(subjects, Sequence) and len(subjects) == 0):
        return []
    pieces = _split_prompt(prompt, tokenizer)
    if isinstance(subjects, str) and subjects == "auto":
        nouns = _spacy_nouns(prompt)
        if nouns is None:
            nouns = _auto_subjects(pieces)
        nouns = [noun for noun in nouns if _find_mentions(pieces, _phrase_words(noun))]
        if not nouns:
            raise ValueError(f"subjects='auto' found no nouns in prompt {prompt!r}; name the subjects explicitly")
        request = [[noun] for noun in nouns]
    else:
        request = _normalise_request(subjects)

    mentions: list[list[tuple[int, int]]] = []
    for synonyms in request:
        found = sorted({m for phrase in synonyms for m in _find_mentions(pieces, _phrase_words(phrase))})
        if not found:
            words = " ".join(p.text for p in pieces if p.is_word)
            raise ValueError(
                f"subject {'/'.join(synonyms)!r} not found in prompt {prompt!r}; "
                f"expected one of its words or phrases ({words})"
            )
        mentions.append(found)

    owner: dict[int, int] = {}  # piece index → subject index
    for k, found in enumerate(mentions):
        for start, end in found:
            for j in range(start, end):
                if j in owner and owner[j] != k:
                    raise ValueError(
                        f"subjects {'/'.join(request[owner[j]])!r} and {'/'.join(request[k])!r} share the word "
                        f"{pieces[j].text!r} in prompt {prompt!r}; expected disjoint subjects"
                    )
                owner[j] = k

    groups = []
    for k, found in enumerate(mentions):
        spans = tuple(tuple(t for j in range(s, e) for t in pieces[j].tokens) for s, e in found)
        attribute_pieces = sorted({a for s, e in found for a in _attributes_of(pieces, s, e, set(owner))})
        attributes = tuple(t for a in attribute_pieces for t in pieces[a].tokens)
        groups.append(("/".join(request[k]), tuple(sorted(t for span in spans for t in span)), attributes, spans))
    return groups


def resolve_stream_subjects(prompt: str, subjects: Any, segments: Sequence[TextSegment]) -> list[TextStreamGroup]:
    """Subject groups over a text stream made of several tokenizers' rows (SD3: CLIP then T5; FLUX: T5).

    Each segment resolves the subjects with its own tokenizer (multi-piece words grouped as in
    :func:`resolve_subjects`; no padding row is ever selected); a word's rows from every segment
    form one group, and mention ``k`` joins the ``k``-th mention of every segment. Same
    ``subjects=`` forms and errors as :func:`resolve_subjects`; a prompt longer than a segment's
    ``max_length`` (its tokens with specials) is refused naming that segment.
    """
    for segment in segments:
        _check_prompt(prompt, segment.tokenizer, segment.max_length, f"the {segment.name} text limit (max_sequence_length)")
    per_segment = [
        [(name, tuple(segment.offset + t for t in tokens), tuple(segment.offset + t for t in attributes),
          tuple(tuple(segment.offset + t for t in span) for span in spans))
         for name, tokens, attributes, spans in _resolve_positions(prompt, subjects, segment.tokenizer)]
        for segment in segments
    ]
    groups = []
    for entries in zip(*per_segment):
        spans = tuple(tuple(t for entry in entries for t in entry[3][m]) for m in range(len(entries[0][3])))
        groups.append(
            TextStreamGroup(
                name=entries[0][0],
                token_indices=tuple(sorted(t for entry in entries for t in entry[1])),
                attribute_indices=tuple(sorted(t for entry in entries for t in entry[2])),
                mention_spans=spans,
            )
        )
    return groups

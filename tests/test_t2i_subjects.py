"""Tests for attnsynth.t2i.subjects: words → token groups through a real (tiny) CLIP BPE tokenizer."""

import sys
import types

import pytest

from attnsynth.t2i import subjects as subjects_module
from attnsynth.t2i.subjects import SubjectGroup, count_prompt_tokens, resolve_subjects
from attnsynth.t2i.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


class NoOffsetsTokenizer:
    """A tokenizer like transformers' slow CLIPTokenizer: input_ids only, no character offsets."""

    def __init__(self, inner):
        self.inner = inner
        self.model_max_length = inner.model_max_length

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.inner(text, add_special_tokens=add_special_tokens).input_ids}


class WhitespaceTokenizer:
    """One token per whitespace-separated chunk (so "cat," is ONE token) with BOS=0 and EOS=1."""

    model_max_length = 77

    def __call__(self, text, add_special_tokens=True):
        ids = [hash(chunk) % 1000 + 2 for chunk in text.split()]
        return {"input_ids": [0, *ids, 1] if add_special_tokens else ids}


class MergingTokenizer(WhitespaceTokenizer):
    """Splits at whitespace only after "-": "red-blue cat" → ["red-blue", "cat"], "red-" → ["red-"]."""

    def __call__(self, text, add_special_tokens=True):
        ids = [hash(chunk) % 1000 + 2 for chunk in text.replace("-", " - ").split()]
        ids = ids[:1] if "-" in text and not text.endswith("-") else ids
        return {"input_ids": [0, *ids, 1] if add_special_tokens else ids}


def words_of(tokenizer, prompt, positions):
    """Decode token positions of ``prompt`` back to text."""
    ids = tokenizer(prompt).input_ids
    return tokenizer.decode([ids[i] for i in positions]).replace(" ", "")


def test_single_token_subjects_and_positions(tokenizer):
    prompt = "a cat and a dog"
    cat, dog = resolve_subjects(prompt, ["cat", "dog"], tokenizer)
    assert (cat.name, cat.token_indices, cat.mention_spans) == ("cat", (2,), ((2,),))
    assert (dog.name, dog.token_indices) == ("dog", (5,))
    assert cat.attribute_indices == () and dog.attribute_indices == ()  # never the article "a"
    assert words_of(tokenizer, prompt, cat.token_indices) == "cat"


def test_multi_token_words_are_one_mention(tokenizer):
    prompt = "a hedgehog next to a sunflower"
    hedgehog, sunflower = resolve_subjects(prompt, ["hedgehog", "sunflower"], tokenizer)
    assert len(hedgehog.token_indices) > 1 and len(sunflower.token_indices) > 1
    assert hedgehog.mention_spans == (hedgehog.token_indices,)
    assert hedgehog.token_indices == tuple(range(2, 2 + len(hedgehog.token_indices)))
    assert words_of(tokenizer, prompt, hedgehog.token_indices) == "hedgehog"
    assert words_of(tokenizer, prompt, sunflower.token_indices) == "sunflower"


def test_repeated_mentions_synonyms_and_phrases(tokenizer):
    prompt = "a cat chasing a kitten past a teddy bear and a cat"
    cats, bear = resolve_subjects(prompt, [["cat", "kitten"], "teddy bear"], tokenizer)
    assert cats.name == "cat/kitten" and len(cats.mention_spans) == 3
    assert [words_of(tokenizer, prompt, span) for span in cats.mention_spans] == ["cat", "kitten", "cat"]
    assert cats.token_indices == tuple(sorted(i for span in cats.mention_spans for i in span))
    assert words_of(tokenizer, prompt, bear.token_indices) == "teddybear"
    only_one_synonym = resolve_subjects("a kitten", [["cat", "kitten"]], tokenizer)[0]
    assert words_of(tokenizer, "a kitten", only_one_synonym.token_indices) == "kitten"


def test_case_punctuation_and_plurals(tokenizer):
    prompt = "Two CATS, one dog!"
    cats, dog = resolve_subjects(prompt, ["cat", "Dog"], tokenizer)
    assert words_of(tokenizer, prompt, cats.token_indices) == "cats"
    assert words_of(tokenizer, prompt, dog.token_indices) == "dog" and dog.name == "Dog"


def test_attributes_from_phrase_structure(tokenizer):
    prompt = "a small red cat chasing a dark-blue bird and a brown dog"
    cat, bird, dog = resolve_subjects(prompt, ["cat", "bird", "dog"], tokenizer)
    assert words_of(tokenizer, prompt, cat.attribute_indices) == "smallred"
    assert words_of(tokenizer, prompt, bird.attribute_indices) == "darkblue"  # the hyphen is not bound
    assert words_of(tokenizer, prompt, dog.attribute_indices) == "brown"


def test_attributes_stop_at_verbs_prepositions_and_other_subjects(tokenizer):
    prompt = "a dog chasing green cat on red grass"
    dog, cat = resolve_subjects(prompt, ["dog", "cat"], tokenizer)
    assert dog.attribute_indices == ()
    assert words_of(tokenizer, prompt, cat.attribute_indices) == "green"  # not "chasing"
    prompt = "a striped cat dog"  # "cat" is a subject, so it is not an attribute of "dog"
    cat, dog = resolve_subjects(prompt, ["cat", "dog"], tokenizer)
    assert words_of(tokenizer, prompt, cat.attribute_indices) == "striped" and dog.attribute_indices == ()


def test_predicative_and_with_attributes(tokenizer):
    prompt = "a cat that is black and white next to a bird with blue wings and a dog with a red hat"
    cat, bird, dog = resolve_subjects(prompt, ["cat", "bird", "dog"], tokenizer)
    assert words_of(tokenizer, prompt, cat.attribute_indices) == "blackwhite"
    assert words_of(tokenizer, prompt, bird.attribute_indices) == "blue"
    assert dog.attribute_indices == ()  # a red hat is an object of its own, not the dog's colour


def test_auto_heuristic_picks_nouns(tokenizer, fake_spacy):
    fake_spacy["fail"] = True  # the built-in heuristic, whether or not spaCy is installed here
    prompt = "a photo of a red cat sitting on a wooden bench"
    cat, bench = resolve_subjects(prompt, "auto", tokenizer)
    assert (cat.name, bench.name) == ("cat", "bench")  # "photo of" frames the scene
    assert words_of(tokenizer, prompt, cat.attribute_indices) == "red"
    assert words_of(tokenizer, prompt, bench.attribute_indices) == "wooden"
    assert [g.name for g in resolve_subjects("a cat chasing a cat", "auto", tokenizer)] == ["cat"]
    assert [g.name for g in resolve_subjects("a red car parked next to a bench", "auto", tokenizer)] == ["car", "bench"]
    names = [g.name for g in resolve_subjects("two hedgehogs and a sunflower", "auto", tokenizer)]
    assert names == ["hedgehogs", "sunflower"]
    with pytest.raises(ValueError, match="found no nouns"):
        resolve_subjects("a red and blue", "auto", tokenizer)


@pytest.fixture
def fake_spacy(monkeypatch):
    """Install a stand-in ``spacy`` module; ``tags`` maps words to (pos_, dep_), others are DET."""
    state = {"tags": {}, "fail": False}

    def load(name):
        assert name == "en_core_web_sm"
        if state["fail"]:
            raise OSError("[E050] Can't find model 'en_core_web_sm'")

        def nlp(text):
            tags = state["tags"]
            return [types.SimpleNamespace(text=w, pos_=tags.get(w, ("DET", ""))[0], dep_=tags.get(w, ("DET", ""))[1])
                    for w in text.split()]

        return nlp

    monkeypatch.setitem(sys.modules, "spacy", types.SimpleNamespace(load=load))
    subjects_module._load_spacy.cache_clear()
    yield state
    subjects_module._load_spacy.cache_clear()


def test_auto_uses_spacy_nouns_when_installed(tokenizer, fake_spacy):
    prompt = "a cat sitting on the grass with a teddy bear"
    fake_spacy["tags"] = {"cat": ("NOUN", "nsubj"), "grass": ("ADJ", "amod"), "teddy": ("NOUN", "compound"),
                          "bear": ("NOUN", "pobj")}
    assert [g.name for g in resolve_subjects(prompt, "auto", tokenizer)] == ["cat", "bear"]
    fake_spacy["fail"] = True  # spaCy without its model: the built-in heuristic
    subjects_module._load_spacy.cache_clear()
    assert [g.name for g in resolve_subjects(prompt, "auto", tokenizer)] == ["cat", "grass", "bear"]


def test_no_subjects(tokenizer):
    assert resolve_subjects("a cat", None, tokenizer) == []
    assert resolve_subjects("a cat", [], tokenizer) == []


def test_missing_subject_is_a_one_line_error(tokenizer):
    with pytest.raises(ValueError, match=r"subject 'dog' not found in prompt 'a cat'") as info:
        resolve_subjects("a cat", ["dog"], tokenizer)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="subject 'dog/puppy' not found"):
        resolve_subjects("a cat", [["dog", "puppy"]], tokenizer)


def test_prompt_longer_than_the_limit(tokenizer):
    prompt = "a cat " * 40  # 80 words + BOS + EOS
    with pytest.raises(ValueError, match="prompt has 82 tokens .* limit is 77"):
        resolve_subjects(prompt, ["cat"], tokenizer)
    with pytest.raises(ValueError, match="prompt has 7 tokens .* limit is 5"):
        resolve_subjects("a cat and a dog", ["cat"], tokenizer, max_length=5)


@pytest.mark.parametrize(
    "subjects,message",
    [
        ([""], "subject '' is invalid"),
        ([["cat", 3]], r"subject \['cat', 3\] is invalid"),
        (42, "subjects=42 is invalid"),
        (["cat", "a cat"], "share the word 'cat'"),
    ],
)
def test_bad_subject_requests(tokenizer, subjects, message):
    with pytest.raises(ValueError, match=message):
        resolve_subjects("a cat and a dog", subjects, tokenizer)


def test_without_offsets_gives_the_same_groups(tokenizer):
    prompt = "A small red cat, chasing a hedgehog's dark-blue sunflower!"
    subjects = [["cat", "kitten"], "hedgehog", "sunflower"]
    with_offsets = resolve_subjects(prompt, subjects, tokenizer)
    assert resolve_subjects(prompt, subjects, NoOffsetsTokenizer(tokenizer)) == with_offsets


def test_tokenizers_that_merge_across_pieces_fall_back_to_prefixes():
    cat, dog = resolve_subjects("a cat, and a dog", ["cat", "dog"], WhitespaceTokenizer())
    assert cat.token_indices == (2,) and dog.token_indices == (5,)  # "cat," is one token
    with pytest.raises(ValueError, match="cannot be aligned word by word"):
        resolve_subjects("red-blue cat", ["cat"], MergingTokenizer())


def test_count_prompt_tokens(tokenizer):
    assert count_prompt_tokens("a cat and a dog", tokenizer) == 7
    (hedgehog,) = resolve_subjects("a hedgehog", ["hedgehog"], tokenizer)
    assert count_prompt_tokens("a hedgehog", tokenizer) == 3 + len(hedgehog.token_indices)  # BOS, "a", EOS


def test_subject_group_validation_and_defaults():
    group = SubjectGroup(name="2", token_indices=[5, 2])
    assert group.token_indices == (2, 5) and group.mention_spans == ((2, 5),) and group.attribute_indices == ()
    with pytest.raises(ValueError, match="token_indices"):
        SubjectGroup(name="x", token_indices=(0,))
    with pytest.raises(ValueError, match="no token_indices"):
        SubjectGroup(name="x", token_indices=())
    with pytest.raises(ValueError, match="overlap"):
        SubjectGroup(name="x", token_indices=(2,), attribute_indices=(2,))
    with pytest.raises(ValueError, match="do not partition"):
        SubjectGroup(name="x", token_indices=(2, 3), mention_spans=((2,),))
    with pytest.raises(ValueError, match="name"):
        SubjectGroup(name="", token_indices=(2,))


def test_auto_takes_adjective_words_that_end_a_chain_as_nouns():
    # "square"/"round" are adjectives in "a square cake", nouns in "a blue square" (the shapes world's prompts)
    from attnsynth.t2i.subjects import resolve_subjects
    from attnsynth.t2i.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    names = lambda prompt: [g.name for g in resolve_subjects(prompt, "auto", tokenizer)]  # noqa: E731
    assert names("a red circle and a blue square") == ["circle", "square"]
    assert names("a square cake and a round table") == ["cake", "table"]
    assert names("the box is square") == ["box"]


def test_a_learned_placeholder_token_is_one_piece_even_before_punctuation():
    # textual inversion adds "<heart>" to the tokenizer whole; "<heart>," used to split into "<", "heart", ">,"
    from attnsynth.t2i.subjects import resolve_subjects
    from attnsynth.t2i.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<heart>"])
    ids = tokenizer("a red <heart>, a blue cat").input_ids
    for prompt in ("a red <heart>, a blue cat", "a red <heart> , a blue cat"):
        heart, cat = resolve_subjects(prompt, ["<heart>", "cat"], tokenizer)
        assert [tokenizer.convert_ids_to_tokens(ids[i]) for i in heart.token_indices] == ["<heart>"]
        assert tokenizer.convert_ids_to_tokens(ids[heart.attribute_indices[0]]) == "red</w>"
    assert [g.name for g in resolve_subjects("a red <heart>, a blue cat", "auto", tokenizer)] == ["<heart>", "cat"]

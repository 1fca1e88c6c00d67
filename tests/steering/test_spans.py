"""Character spans: parsing, span -> token masks (hand offsets and a real fast tokenizer), sentences."""

import numpy as np
import pytest

from steerc.steering.spans import best_sentence, parse_spans, spans_to_token_mask, split_sentences

TEXT = "Paris is the capital of France. Berlin is big."
# Hand-made offsets for TEXT: words and the two full stops; (0, 0) is a special token.
OFFSETS = [(0, 0), (0, 5), (6, 8), (9, 12), (13, 20), (21, 23), (24, 30), (30, 31), (32, 38), (39, 41), (42, 45), (45, 46)]


def _fast_tokenizer(trim_offsets):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Paris is the capital of France.", "The Eiffel Tower is in Paris.", "Berlin is the capital of Germany!"]
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_parse_spans():
    assert parse_spans("0:5") == [(0, 5)]
    assert parse_spans("10:42, 80:95") == [(10, 42), (80, 95)]


@pytest.mark.parametrize("bad", ["", "5", "a:b", "3:3", "7:2", "-1:4", "1:4,", "1:4;6:8", "1.5:4"])
def test_parse_spans_rejects(bad):
    with pytest.raises(ValueError, match="bad span"):
        parse_spans(bad)


def test_mask_from_hand_offsets():
    assert TEXT[13:30] == "capital of France"
    mask = spans_to_token_mask(OFFSETS, [(13, 30)], length=len(TEXT))
    assert mask.dtype == bool and mask.shape == (len(OFFSETS),)
    assert np.flatnonzero(mask).tolist() == [4, 5, 6]


def test_mask_partial_overlap_and_string_spans():
    # 10:11 is inside "the"; 31:33 covers the space and the "B" of Berlin but not the "." ending at 31 (half-open).
    assert np.flatnonzero(spans_to_token_mask(OFFSETS, "10:11,31:33")).tolist() == [3, 8]
    assert np.flatnonzero(spans_to_token_mask(OFFSETS, "30:38")).tolist() == [7, 8]
    assert np.flatnonzero(spans_to_token_mask(OFFSETS, "0:1")).tolist() == [1]  # the (0, 0) special never matches


def test_mask_errors():
    with pytest.raises(ValueError, match="31:32 covers no token"):  # only the space between sentences
        spans_to_token_mask(OFFSETS, [(31, 32)])
    with pytest.raises(ValueError, match="past the text"):
        spans_to_token_mask(OFFSETS, [(40, 60)], length=len(TEXT))
    with pytest.raises(ValueError, match="no spans"):
        spans_to_token_mask(OFFSETS, [])
    with pytest.raises(ValueError, match="bad span"):
        spans_to_token_mask(OFFSETS, [(5, 2)])


@pytest.mark.parametrize("trim_offsets", [False, True])  # True gives lone spaces zero-width offsets
def test_mask_with_real_fast_tokenizer(trim_offsets):
    tok = _fast_tokenizer(trim_offsets)
    enc = tok(TEXT, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    start, end = TEXT.index("Berlin"), TEXT.index("big") + 3
    mask = spans_to_token_mask(offsets, [(start, end)], length=len(TEXT))
    picked = np.flatnonzero(mask).tolist()
    decoded = tok.decode([enc["input_ids"][i] for i in picked])
    # Trimmed offsets make the lone space token before "big" zero-width, so it is not selected.
    assert decoded == ("Berlin isbig" if trim_offsets else "Berlin is big")
    assert tok.decode([enc["input_ids"][picked[-1] + 1]]) == "."  # the full stop after the span is left out
    for i, (s, e) in enumerate(offsets):
        overlaps = s < e and s < end and start < e
        assert mask[i] == overlaps
        if mask[i]:
            assert tok.decode([enc["input_ids"][i]]).strip() in TEXT[start:end]
    assert not mask[[i for i, (s, e) in enumerate(offsets) if e <= start]].any()


def test_split_sentences_prose():
    text = "Paris is the capital of France. It has 2.1 million people!  Is it big?\nYes"
    assert [text[s:e] for s, e in split_sentences(text)] == [
        "Paris is the capital of France.",
        "It has 2.1 million people!",
        "Is it big?",
        "Yes",
    ]


def test_split_sentences_wikipedia_and_blank_lines():
    text = (
        "  The U.S. Army was founded in 1775. J. K. Rowling was born in Yate (Gloucestershire).\n\n"
        'Mr. Smith said "stop." Then he left...\n  Last line  '
    )
    got = [text[s:e] for s, e in split_sentences(text)]
    assert got == [
        "The U.S. Army was founded in 1775.",
        "J. K. Rowling was born in Yate (Gloucestershire).",
        'Mr. Smith said "stop."',
        "Then he left...",
        "Last line",
    ]
    assert split_sentences(" \n\n ") == []


def test_best_sentence():
    text = "Paris is the capital of France. The Eiffel Tower is in Paris. Berlin is big."
    sents = split_sentences(text)
    span, score = best_sentence("The Eiffel Tower stands in Paris", text)
    assert span == sents[1] and text[span[0] : span[1]] == "The Eiffel Tower is in Paris."
    # generated words {the, eiffel, tower, stands, in, paris}; sentence {the, eiffel, tower, is, in, paris}: 5 common.
    assert score == pytest.approx(2 * (5 / 6) * (5 / 6) / (5 / 6 + 5 / 6))
    assert best_sentence("paris is the capital of france", text) == (sents[0], 1.0)


def test_best_sentence_ties_empty_and_errors():
    text = "Cats sleep. Dogs sleep."
    assert best_sentence("sleep", text) == ((0, 11), pytest.approx(2 / 3))  # tie: the earlier sentence
    assert best_sentence("", text) == ((0, 11), 0.0)
    assert best_sentence("zebra", text) == ((0, 11), 0.0)
    assert best_sentence("dogs", text, sentences=[(0, 11), (12, 23)])[0] == (12, 23)
    with pytest.raises(ValueError, match="no sentence"):
        best_sentence("anything", "   ")

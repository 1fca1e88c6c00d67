import pytest

from steerc.eval.metrics import best_subspan_em, exact_match, f1_score, normalize_answer, score


@pytest.mark.parametrize("text, expected", [
    ("The Denver Broncos!", "denver broncos"),
    ("  a   Tale of  TWO cities. ", "tale of two cities"),
    ("an apple, the pear", "apple pear"),
    ("theatre", "theatre"),  # articles only as whole words
    ("U.S.A.", "usa"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_takes_the_best_gold():
    assert exact_match("the Denver Broncos", ["Broncos", "Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0


def test_f1_by_hand():
    # prediction tokens: denver broncos won; gold: denver broncos -> common 2, P = 2/3, R = 1, F1 = 0.8
    assert f1_score("The Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)
    # repeated tokens count per occurrence: pred "x y y" vs gold "y y z" -> common 2, P = 2/3, R = 2/3
    assert f1_score("x y y", ["y y z"]) == pytest.approx(2 / 3)
    assert f1_score("nothing here", ["Denver"]) == 0.0
    assert f1_score("Carolina", ["Denver Broncos", "Carolina Panthers"]) == pytest.approx(2 / 3)


def test_best_subspan_em():
    assert best_subspan_em("It was won by the Denver Broncos in 2016.", ["Denver Broncos"]) == 1.0
    assert best_subspan_em("Denver", ["Denver Broncos"]) == 0.0
    assert best_subspan_em("value: 7D5AE253-d936", ["7d5ae253-d936"]) == 1.0  # punctuation stripped on both sides


def test_score_and_bad_answers():
    assert score("Denver Broncos", ["Denver Broncos"]) == {"em": 1.0, "f1": 1.0, "subspan_em": 1.0}
    with pytest.raises(ValueError, match="non-empty list"):
        exact_match("x", [])
    with pytest.raises(ValueError, match="non-empty list"):
        f1_score("x", "Denver")

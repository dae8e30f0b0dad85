"""POPE: question construction (random/popular/adversarial) on hand-built ground truth, answer parsing, metrics."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from prunelab.errors import PrunelabError
from prunelab.eval.pope import (
    PopeError,
    PopeQuestion,
    build_pope,
    build_questions,
    co_occurrence,
    load_questions,
    object_frequencies,
    parse_yes_no,
    pope_metrics,
    question_text,
    save_questions,
    select_images,
)

# Hand-built image set. Frequencies: person 4, dog 3, car 2, chair 2, cup 2, frisbee 1, apple 1, bus 1, cat 1.
GT = {
    1: {"person", "dog", "frisbee"},
    2: {"person", "dog", "car"},
    3: {"person", "car", "bus"},
    4: {"chair", "cup", "apple"},
    5: {"person", "dog", "cat", "chair", "cup"},
    6: {"dog"},  # < 3 objects: never eligible
}


def test_question_text():
    assert question_text("dog") == "Is there a dog in the image?"
    assert question_text("apple") == "Is there an apple in the image?"
    assert question_text("umbrella", reference_quirks=True) == "Is there an umbrella in the imange?"
    assert question_text("dog", reference_quirks=True) == "Is there a dog in the image?"


def test_statistics_by_hand():
    f = object_frequencies(GT)
    assert f["person"] == 4 and f["dog"] == 4 and f["car"] == 2 and f["frisbee"] == 1
    co = co_occurrence(GT)
    # dog co-occurs with person 3x, then car/cat/chair/cup/frisbee once each (ties by name)
    assert co["dog"] == ["person", "car", "cat", "chair", "cup", "frisbee"]
    assert co["apple"] == ["chair", "cup"]


def test_select_images():
    assert select_images(GT) == [1, 2, 3, 4, 5]
    s = select_images(GT, 3, seed=1)
    assert len(s) == 3 and set(s) <= {1, 2, 3, 4, 5} and s == select_images(GT, 3, seed=1)
    with pytest.raises(PopeError, match="only 5 images"):
        select_images(GT, 6)


def _check_structure(qs, gt, sample_num=3):
    by_img = {}
    for q in qs:
        by_img.setdefault(q.image_id, []).append(q)
    for iid, lst in by_img.items():
        assert len(lst) == 2 * sample_num
        assert [q.label for q in lst] == ["yes", "no"] * sample_num
        objs = [q.object for q in lst]
        assert len(set(objs)) == len(objs)  # never the same object twice for one image
        assert all((q.object in gt[iid]) == (q.label == "yes") for q in lst)
    assert [q.question_id for q in qs] == list(range(1, len(qs) + 1))


def test_negatives_exhausted_is_an_error():
    # only image 4 chosen: every object of the set is in the image, so no "no" question can be asked
    with pytest.raises(PopeError, match="no object left"):
        build_questions(GT, "popular", image_ids=[4], positives="first")


def test_popular_and_adversarial_by_hand():
    ids = [1, 2, 3, 4, 5]
    pop = build_questions(GT, "popular", image_ids=ids, positives="first")
    _check_structure(pop, GT)
    # popularity over images 1-5, ties by name: person 4, dog 3, car 2, chair 2, cup 2, apple 1, ...
    # image 4 = {cup, apple, chair} in COCO order; each positive takes the most popular object not yet used
    img4 = [q.object for q in pop if q.image_id == 4]
    assert img4 == ["cup", "person", "apple", "dog", "chair", "car"]
    adv = build_questions(GT, "adversarial", image_ids=ids, positives="first")
    _check_structure(adv, GT)
    img1 = [q.object for q in adv if q.image_id == 1]
    # positives of image 1 in COCO order: person, dog, frisbee.
    # person co-occurs: dog 3, car 2, bus 1, cat 1, chair 1, cup 1, frisbee 1 -> first absent: car
    # dog co-occurs: person 3, car 1, cat 1, ... -> car taken -> cat
    # frisbee co-occurs: dog 1, person 1 -> both in image -> random fallback from the pool
    assert img1[:5] == ["person", "car", "dog", "cat", "frisbee"]
    assert img1[5] not in GT[1] | {"car", "cat"}
    rnd = build_questions(GT, "random", image_ids=ids, seed=3)
    _check_structure(rnd, GT)
    pool = set().union(*(GT[i] for i in ids))
    assert all(q.object in pool for q in rnd)


def test_determinism_and_text():
    a = build_pope(GT, seed=7)
    b = build_pope(GT, seed=7)
    assert a == b and set(a) == {"random", "popular", "adversarial"}
    assert {q.image_id for q in a["random"]} == {q.image_id for q in a["adversarial"]}
    assert all(q.text == question_text(q.object) for qs in a.values() for q in qs)


def test_errors():
    with pytest.raises(PopeError, match="no object left"):
        build_questions({1: {"dog", "cat", "cup"}}, "random")
    with pytest.raises(PopeError, match="objects < sample_num"):
        build_questions(GT, "random", image_ids=[6])
    with pytest.raises(PopeError, match="no ground truth"):
        build_questions(GT, "random", image_ids=[99])
    with pytest.raises(PopeError, match="no image"):
        build_questions({1: {"dog"}}, "random")
    from prunelab.errors import UnknownNameError

    with pytest.raises(UnknownNameError):
        build_questions(GT, "hard")


@settings(max_examples=30, deadline=None)
@given(
    st.dictionaries(
        st.integers(0, 50),
        st.sets(
            st.sampled_from(
                ["person", "dog", "cat", "car", "bus", "cup", "chair", "apple", "kite", "tv", "bed", "sink"]
            ),
            min_size=3,
            max_size=6,
        ),
        min_size=3,
        max_size=10,
    ),
    st.sampled_from(["random", "popular", "adversarial"]),
    st.integers(0, 5),
)
def test_question_properties(gt, setting, seed):
    try:
        qs = build_questions(gt, setting, seed=seed)
    except PopeError:
        return  # tiny pools can legitimately run out of negatives; the error is explicit
    _check_structure(qs, gt)
    assert qs == build_questions(gt, setting, seed=seed)


def test_save_load_roundtrip(tmp_path):
    qs = build_questions(GT, "adversarial", seed=1)
    p = save_questions(tmp_path / "q.jsonl", qs)
    back = load_questions(p)
    assert back == qs
    official = tmp_path / "coco_pope_random.json"
    official.write_text(
        '{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there an '
        'umbrella in the imange?", "label": "no"}\n'
    )
    q = load_questions(official, setting="random")[0]
    assert q.object == "umbrella" and q.label == "no" and q.setting == "random"
    official.write_text('{"question_id": 1, "text": "x", "label": "maybe"}\n')
    with pytest.raises(PopeError, match="maybe"):
        load_questions(official)


ANSWERS = [
    ("Yes", "yes", "yes"),
    ("yes.", "yes", "yes"),
    ("No", "no", "no"),
    ("No, there is no dog in the image.", "no", "no"),
    ("Yes, there is a dog sitting on the grass.", "yes", "yes"),
    ("There is a dog in the image.", "yes", "yes"),
    ("There is no dog in the image.", "no", "no"),
    ("I don't see a dog.", "no", "yes"),  # POPE's rule only knows "no"/"No"/"not" as whole words
    ("The image does not contain a dog.", "no", "no"),
    ("There isn't any cat.", "no", "yes"),
    ("**Yes**", "yes", "yes"),
    ('  "No."', "no", "yes"),  # reference: first word is '' then '"No' -> not "No"
    ("Nope, nothing like that.", "no", "yes"),
    ("A dog is visible near the bench.", "yes", "yes"),
    ("The answer is unclear.", None, "yes"),
    ("", None, "yes"),
    ("Yes. But there is no cat.", "yes", "yes"),
    # issue 13: answers the old robust default misread ("no") or could not read (None, dropped)
    ("Without a doubt, yes.", "yes", "yes"),
    ("Not sure, but yes.", "yes", "yes"),  # reference: "Not" is not "not"
    ("1. No", "no", "yes"),  # reference: its first "."-sentence is "1"
    ("Is there a dog? No.", "no", "no"),
    ("Is there a dog in the image? Yes, there is one.", "yes", "yes"),
    ("Answer: No.", "no", "no"),
    ("(b) yes", "yes", "yes"),
]


def _pope_evaluate_rule(text: str) -> str:
    """POPE's answer rule, transcribed from ``AoiDragon/POPE`` ``evaluate.py`` lines 12-21 (commit 08d957b): keep
    the part before the first '.', remove ',', split on ' ', then 'No' / 'not' / 'no' among the words -> no."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


@pytest.mark.parametrize("text,robust,reference", ANSWERS)
def test_parse_yes_no(text, robust, reference):
    assert _pope_evaluate_rule(text) == reference  # the table's reference column is POPE's own reading
    assert parse_yes_no(text) == reference  # the default is POPE's rule (paper-comparable numbers)
    assert parse_yes_no(text, "reference") == reference
    assert parse_yes_no(text, "robust") == robust


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("Yesnot NoNOT.,?!'\"-1a")), max_size=30))
def test_default_parser_is_pope_evaluate_rule(text):
    assert parse_yes_no(text) == _pope_evaluate_rule(text)


def test_default_metrics_use_pope_rule():
    labels = ["yes", "yes", "no", "no"]
    answers = ["Without a doubt, yes.", "Not sure, but yes.", "1. No", "Is there a dog? No."]
    ref = pope_metrics(labels, answers)
    assert ref.parser == "reference" and ref.n == 4 and ref.n_unparsed == 0
    assert ref.predictions == [_pope_evaluate_rule(a) for a in answers] == ["yes", "yes", "yes", "no"]
    rob = pope_metrics(labels, answers, parser="robust")
    assert rob.predictions == ["yes", "yes", "no", "no"] and rob.n == 4 and rob.accuracy == 1.0
    with pytest.raises(PrunelabError, match="unknown answer parser"):
        parse_yes_no("yes", "strict")


def test_metrics_by_hand():
    labels = ["yes", "yes", "no", "no", "yes", "no"]
    answers = ["Yes.", "No, there is not.", "There is no cat.", "Yes", "There is a cat.", "No"]
    r = pope_metrics(labels, answers)
    # preds yes,no,no,yes,yes,no -> TP 2, FN 1, TN 2, FP 1
    assert (r.tp, r.fn, r.tn, r.fp) == (2, 1, 2, 1)
    assert r.accuracy == pytest.approx(4 / 6) and r.precision == pytest.approx(2 / 3)
    assert r.recall == pytest.approx(2 / 3) and r.f1 == pytest.approx(2 / 3) and r.yes_ratio == pytest.approx(0.5)
    assert r.summary()["Accuracy"] == 66.7


def test_metrics_unparsed_policies():
    labels = [
        PopeQuestion(1, 1, "dog", "", "yes", "random"),
        PopeQuestion(2, 1, "cat", "", "no", "random"),
        PopeQuestion(3, 1, "cup", "", "yes", "random"),
    ]
    answers = ["Yes", "Hmm, hard to say", "Yes"]
    ex = pope_metrics(labels, answers, parser="robust")
    assert ex.n == 2 and ex.n_unparsed == 1 and ex.accuracy == 1.0 and math.isnan(ex.f1) is False
    no = pope_metrics(labels, answers, parser="robust", on_unparsed="no")
    assert no.n == 3 and no.tn == 1 and no.accuracy == 1.0
    with pytest.raises(PopeError, match="neither yes nor no"):
        pope_metrics(labels, answers, parser="robust", on_unparsed="raise")
    ref = pope_metrics(labels, answers)
    assert ref.n_unparsed == 0 and ref.fp == 1  # POPE's rule calls it "yes"
    with pytest.raises(PopeError, match="answers for"):
        pope_metrics(labels, answers[:2])
    with pytest.raises(PopeError, match="not 'yes'/'no'"):
        pope_metrics(["maybe"], ["yes"])
    all_no = pope_metrics(["yes", "no"], ["no", "no"])
    assert math.isnan(all_no.precision) and all_no.recall == 0.0 and math.isnan(all_no.f1)

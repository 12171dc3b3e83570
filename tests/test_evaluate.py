"""The oracle protocol: support slice choice, chunk assignment, per-scan Dice."""

import numpy as np
import pytest

from fsmis import evaluate as E
from fsmis import protocols


def test_support_slices_at_chunk_centres():
    lab = np.zeros((20, 2, 2), np.uint8)
    lab[4:16] = 3  # 12 slices: zlist = 4..15
    # int(1/6*12)=2 -> 6, int(1/2*12)=6 -> 10, int(5/6*12)=10 -> 14
    assert protocols.support_slices(lab, 3, 3) == [6, 10, 14]
    with pytest.raises(ValueError, match="absent"):
        protocols.support_slices(lab, 1, 3)


def test_chunk_assignment_reference_formula():
    # extent 10..19: width 9/3 = 3 per chunk; z=13 -> floor(3/3) = 1; z=19 -> 3 -> clipped to 2
    assert [protocols.chunk_of(z, 10, 19, 3) for z in (10, 12, 13, 15, 16, 19)] == [0, 0, 1, 1, 2, 2]
    assert protocols.chunk_of(5, 5, 5, 3) == 0


def _scan(case, label):
    return E.Scan(case, np.zeros(label.shape, np.float32), label, (5.0, 1.0, 1.0))


def test_mask_transfer_on_identical_scans_is_perfect_and_outside_slab_ignored():
    lab = np.zeros((9, 8, 8), np.uint8)
    lab[2:7, 2:5, 2:5] = 1
    rows, preds = E.evaluate_oracle(E.MaskTransferPredictor(), _scan("s", lab), [_scan("q", lab.copy())],
                                    {"liver": 1}, n_parts=3)
    assert rows[0]["dice"] == pytest.approx(1.0) and rows[0]["slices_scored"] == 5
    assert (preds["q"] == lab).all()


def test_mask_transfer_dice_by_hand():
    sup = np.zeros((3, 4, 4), np.uint8)
    sup[:, 0:2, 0:2] = 1  # 4 px per slice
    qry = np.zeros((3, 4, 4), np.uint8)
    qry[:, 0:2, 1:3] = 1  # shifted by one column: overlap 2 px per slice
    rows, _ = E.evaluate_oracle(E.MaskTransferPredictor(), _scan("s", sup), [_scan("q", qry)], {"liver": 1})
    # per slice tp 2, fp 2, fn 2 -> Dice = 2*6 / (2*6 + 6 + 6) = 0.5
    assert rows[0]["dice"] == pytest.approx(0.5)
    assert (rows[0]["tp"], rows[0]["fp"], rows[0]["fn"]) == (6, 6, 6)


def test_missing_class_in_query_is_flagged_not_zero():
    sup = np.zeros((3, 4, 4), np.uint8)
    sup[1, :2, :2] = 1
    qry = np.zeros((3, 4, 4), np.uint8)
    rows, _ = E.evaluate_oracle(E.MaskTransferPredictor(), _scan("s", sup), [_scan("q", qry)], {"liver": 1})
    assert rows[0]["flag"] == "empty_reference" and np.isnan(rows[0]["dice"])
    assert np.isnan(E.summarize(rows, ["liver"])["dice"]["liver"])


def test_oracle_and_full_protocols_differ_by_hand():
    """A false positive outside the organ's extent counts under `full` only."""
    sup = np.zeros((6, 4, 4), np.uint8)
    sup[:, 0:2, 0:2] = 1  # organ on every support slice: 4 px each
    qry = np.zeros((6, 4, 4), np.uint8)
    qry[2:4, 0:2, 0:2] = 1  # organ on slices 2-3 only: 8 px
    rows, preds = E.evaluate_scans(E.MaskTransferPredictor(), _scan("s", sup), [_scan("q", qry)], {"liver": 1},
                                   protocols=("oracle", "full"), n_parts=3)
    by = {r["protocol"]: r for r in rows}
    # oracle: slices 2-3 only, each predicted exactly -> Dice 1
    assert by["oracle"]["dice"] == pytest.approx(1.0) and by["oracle"]["slices_scored"] == 2
    # full: all 6 slices predicted (4 px each = 24 px), tp 8, fp 16, fn 0 -> 16 / (16 + 16) = 0.5
    assert (by["full"]["tp"], by["full"]["fp"], by["full"]["fn"]) == (8, 16, 0)
    assert by["full"]["dice"] == pytest.approx(0.5) and by["full"]["slices_scored"] == 6
    assert preds["oracle"]["q"].sum() == 8 and preds["full"]["q"].sum() == 24


def test_full_protocol_chunks_by_relative_position():
    # support organ on slices 0..8 with a different square per chunk; query 9 slices
    sup = np.zeros((9, 6, 6), np.uint8)
    sup[0:3, 0:2, 0:2] = 1
    sup[3:6, 2:4, 2:4] = 1
    sup[6:9, 4:6, 4:6] = 1
    qry = np.zeros((9, 6, 6), np.uint8)
    qry[4, 2:4, 2:4] = 1  # the organ on one slice only
    plan = protocols.query_plan("full", qry, 1, 3)
    assert plan == {0: [0, 1, 2], 1: [3, 4, 5], 2: [6, 7, 8]}
    assert protocols.query_plan("oracle", qry, 1, 3) == {0: [4]}
    _, preds = E.evaluate_scans(E.MaskTransferPredictor(), _scan("s", sup), [_scan("q", qry)], {"liver": 1},
                                protocols=("full",), n_parts=3)
    # support slices 1, 4, 7 (1/6, 1/2, 5/6 of 9): each chunk of the query receives its square
    assert (preds["full"]["q"] == sup).all()


def test_full_protocol_absent_class_with_prediction_scores_zero():
    sup = np.zeros((3, 4, 4), np.uint8)
    sup[1, :2, :2] = 1
    qry = np.zeros((3, 4, 4), np.uint8)
    rows, _ = E.evaluate_scans(E.MaskTransferPredictor(), _scan("s", sup), [_scan("q", qry)], {"liver": 1},
                               protocols=("full",))
    assert rows[0]["flag"] == "empty_reference" and rows[0]["dice"] == 0.0
    with pytest.raises(ValueError, match="unknown protocol"):
        protocols.query_plan("strict", qry, 1, 3)


# -- a support scan that lacks a test class -------------------------------------------

def test_class_absent_from_the_support_is_flagged_and_the_others_evaluated():
    sup = np.zeros((3, 4, 4), np.uint8)
    sup[:, 0:2, 0:2] = 1  # liver only: no spleen (2) in the support
    qry = np.zeros((3, 4, 4), np.uint8)
    qry[:, 0:2, 1:3] = 1
    qry[:, 3, 3] = 2
    rows, preds = E.evaluate_scans(E.MaskTransferPredictor(), _scan("s", sup), [_scan("q", qry)],
                                   {"liver": 1, "spleen": 2}, protocols=("oracle", "full"))
    by = {(r["protocol"], r["class"]): r for r in rows}
    for protocol in ("oracle", "full"):
        assert by[protocol, "spleen"]["flag"] == E.SUPPORT_MISSING and np.isnan(by[protocol, "spleen"]["dice"])
        assert by[protocol, "spleen"]["support"] == "s"
    assert by["oracle", "liver"]["dice"] == pytest.approx(0.5)  # as test_mask_transfer_dice_by_hand
    summary = E.summarize([r for r in rows if r["protocol"] == "oracle"], ["liver", "spleen"])
    assert summary["support_missing"] == ["spleen"] and summary["mean_dice"] == pytest.approx(0.5)
    assert not (preds["oracle"]["q"] == 2).any()


def test_classes_may_take_their_support_from_different_scans():
    a = np.zeros((3, 4, 4), np.uint8)
    a[:, 0:2, 0:2] = 1
    b = np.zeros((3, 4, 4), np.uint8)
    b[:, 2:4, 2:4] = 2
    qry = a + b
    rows, _ = E.evaluate_scans(E.MaskTransferPredictor(), {"liver": _scan("a", a), "spleen": _scan("b", b)},
                               [_scan("q", qry)], {"liver": 1, "spleen": 2})
    assert {(r["class"], r["support"], r["dice"]) for r in rows} == {("liver", "a", 1.0), ("spleen", "b", 1.0)}


def test_next_support_skips_test_scans_and_scans_without_the_class():
    from fsmis.protocols import next_support

    order = ["c1", "c2", "c3", "c4", "c5"]
    has = {"c1": True, "c2": False, "c3": True, "c4": False, "c5": True}
    # fold tests c3 with support c4 (lacks the class): c5 is next
    assert next_support("c4", order, ["c3"], has.get) == "c5"
    # c5 tested: wrap past c1? c1 has it
    assert next_support("c4", order, ["c5"], has.get) == "c1"
    # nothing eligible
    assert next_support("c2", order, ["c1", "c3", "c5"], has.get) is None
    with pytest.raises(ValueError, match="support scan 'x' is not among the cases"):
        next_support("x", order, [], has.get)


def test_supports_by_class_flag_or_next_scan():
    from fsmis.stages.evaluation import supports_by_class

    split = {"test": ["c1"], "support": "c2", "train": ["c3", "c4"]}
    classmap = {"liver": {"c1": [0], "c2": [1], "c3": [0]}, "spleen": {"c1": [0], "c4": [2]}}
    assert supports_by_class(split, classmap, ["liver", "spleen"]) == {"liver": "c2", "spleen": "c2"}
    assert supports_by_class(split, classmap, ["liver", "spleen"], "next_scan") == {"liver": "c2", "spleen": "c4"}
    with pytest.raises(ValueError, match="missing_support must be flag or next_scan"):
        supports_by_class(split, classmap, ["liver"], "skip")


def test_support_choices_are_scored_separately_and_predictions_come_from_the_first():
    qry = np.zeros((3, 4, 4), np.uint8)
    qry[:, 0:2, 0:2] = 1
    same = qry.copy()  # choice 0: the query's own mask -> Dice 1
    shifted = np.zeros_like(qry)
    shifted[:, 0:2, 1:3] = 1  # choice 1: overlap 2 of 4 px -> Dice 0.5 (as test_mask_transfer_dice_by_hand)
    rows, preds = E.evaluate_scans(E.MaskTransferPredictor(), [_scan("a", same), _scan("b", shifted)],
                                   [_scan("q", qry)], {"liver": 1}, ("oracle", "full"))
    by = {(r["protocol"], r["support_choice"]): r for r in rows}
    assert sorted(by) == [("full", 0), ("full", 1), ("oracle", 0), ("oracle", 1)]
    assert by["oracle", 0]["support"] == "a" and by["oracle", 0]["dice"] == pytest.approx(1.0)
    assert by["oracle", 1]["support"] == "b" and by["oracle", 1]["dice"] == pytest.approx(0.5)
    assert (preds["oracle"]["q"] == qry).all() and (preds["full"]["q"] == qry).all()  # choice 0's


def test_support_choices_follow_the_fold_then_natural_order_never_a_test_scan():
    from fsmis.data.splits import make_folds, support_choices

    cases = [f"c{i}" for i in range(1, 11)]  # natural order: c10 last
    fold = make_folds(cases, 5)["folds"][4]  # tests c9, c10; support wraps to c1
    assert fold["support"] == "c1"
    assert support_choices(fold["test"], fold["support"], cases, 3) == ["c1", "c2", "c3"]
    fold = make_folds(cases, 5)["folds"][3]  # tests c7, c8; support c9
    assert support_choices(fold["test"], fold["support"], cases, "all") == ["c9", "c10", "c1", "c2", "c3", "c4",
                                                                             "c5", "c6"]
    with pytest.raises(ValueError, match="8 scan"):
        support_choices(fold["test"], fold["support"], cases, 9)


def test_model_predictor_hands_dspnet_the_image_mask_for_strided_seeds():
    import torch

    from fsmis.models import registry

    torch.manual_seed(0)
    net = registry.build("dspnet", {"backbone": "small_cnn", "feature_dim": 16}, {"seed_mask": "strided"}).eval()
    label = np.zeros((3, 128, 128), np.uint8)
    label[:, 20:100, 16:110] = 1  # large enough on the 32 x 32 grid to be clustered
    scan = E.Scan("s", np.random.default_rng(0).normal(size=label.shape).astype(np.float32), label, (5.0, 1.0, 1.0))
    states = E.ModelPredictor(net, "cpu").states(scan, 1, [1])
    with torch.no_grad():
        feats = net.encode(torch.from_numpy(np.repeat(scan.image[1][None, None], 3, axis=1)))
        direct = net.support_from_mask(feats, torch.from_numpy(label[1:2].astype(np.float32)))
    assert direct["plan"] is not None
    assert states[0]["plan"]["seeds"].tolist() == direct["plan"]["seeds"].tolist()

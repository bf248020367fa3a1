"""mIoU against a confusion matrix worked out by hand."""

import math
from pathlib import Path

import pytest
import torch

from benchmark.metrics import METRICS, MeanIoU, make_metric


def one_hot_logits(predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) class ids -> (N, C, H, W) logits whose argmax is those ids."""
    return torch.nn.functional.one_hot(predicted, num_classes).permute(0, 3, 1, 2).float()


def test_miou_matches_hand_computed_confusion_matrix():
    # 4 classes; class 3 appears in neither truth nor prediction; 255 pixels are ignored
    # whatever is predicted there. Two batches, so accumulation across updates is tested.
    truth_a = torch.tensor([[[0, 0, 1, 255]]])
    pred_a = torch.tensor([[[0, 1, 1, 2]]])
    truth_b = torch.tensor([[[2, 2, 0, 255], [1, 255, 2, 0]]])
    pred_b = torch.tensor([[[2, 0, 0, 3], [1, 1, 2, 0]]])
    metric = MeanIoU(4, ["a", "b", "c", "d"])
    metric.update(one_hot_logits(pred_a, 4), truth_a)
    metric.update(one_hot_logits(pred_b, 4), truth_b)
    # Non-ignored pairs (truth, pred): (0,0) (0,1) (1,1) | (2,2) (2,0) (0,0) (1,1) (2,2) (0,0)
    expected = torch.tensor([
        [3, 1, 0, 0],
        [0, 2, 0, 0],
        [1, 0, 2, 0],
        [0, 0, 0, 0],
    ])
    assert torch.equal(metric.confusion, expected)
    # IoU = tp / (row + col - tp): a: 3/(4+4-3)=3/5, b: 2/(2+3-2)=2/3, c: 2/(3+2-2)=2/3,
    # d: 0/0 -> absent, excluded from the mean.
    result = metric.result()
    assert result["iou/a"] == pytest.approx(60.0)
    assert result["iou/b"] == pytest.approx(200 / 3)
    assert result["iou/c"] == pytest.approx(200 / 3)
    assert math.isnan(result["iou/d"])
    assert result["score"] == pytest.approx((60 + 200 / 3 + 200 / 3) / 3)
    assert result["pixel_accuracy"] == pytest.approx(100 * 7 / 9)
    assert result["n_pixels"] == 9


def test_class_only_predicted_counts_as_zero_iou():
    truth = torch.tensor([[[0, 0, 0, 0]]])
    pred = torch.tensor([[[0, 0, 1, 1]]])
    metric = MeanIoU(3)
    metric.update(one_hot_logits(pred, 3), truth)
    result = metric.result()
    # class 0: 2/4; class 1: predicted only -> 0, counts; class 2 absent -> excluded.
    assert result["iou/0"] == pytest.approx(50.0)
    assert result["iou/1"] == 0.0
    assert math.isnan(result["iou/2"])
    assert result["score"] == pytest.approx(25.0)


def test_miou_is_registered_and_checks_shapes():
    assert METRICS["miou"] is MeanIoU
    metric = make_metric("miou", 5)
    with pytest.raises(ValueError, match="N, 5, H, W"):
        metric.update(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        metric.update(torch.zeros(1, 5, 2, 2), torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be in"):
        metric.update(torch.zeros(1, 5, 1, 1), torch.full((1, 1, 1), 7))


def test_segmentation_board_has_a_per_class_iou_column_group():
    import pandas as pd
    from cells_fixture import cell_row

    from benchmark.report.leaderboard import board_frame
    from suites.scenes import Scenes

    suite = Scenes()
    rows = []
    for seed, road in ((0, 90.0), (1, 80.0)):
        for domain in (suite.source, *suite.targets):
            row = cell_row("source", domain, seed, 50.0, metric="miou",
                           role="source" if domain == suite.source else "target")
            row["iou/road"] = road
            row["iou/pole"] = float("nan") if seed == 0 else 10.0  # absent from seed 0's cell
            rows.append(row)
    board = board_frame(suite, pd.DataFrame(rows)).set_index("adapter")
    assert board.loc["source", "iou/road"] == pytest.approx(85.0)
    assert board.loc["source", "iou/pole"] == pytest.approx(10.0)  # mean over cells scoring it
    # the per-class group follows the suite's class order (road is class 0, pole class 4),
    # and the rendered leaderboard names the classes the mean is taken over
    columns = list(board.columns)
    assert columns.index("iou/road") < columns.index("iou/pole")
    from benchmark.report.markdown import render_for_suite

    text = render_for_suite(suite, board.reset_index(), reported_path=Path("/nonexistent.csv"))
    assert f"over {suite.num_classes} classes (road, sidewalk," in text

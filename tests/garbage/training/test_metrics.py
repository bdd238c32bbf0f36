"""Classification metrics against hand-computed values."""

import pytest

from garbage.training.metrics import classification_metrics


def test_metrics_on_a_small_example() -> None:
    result = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["per_class"]["a"]["precision"] == pytest.approx(1 / 2)
    assert result["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert result["per_class"]["c"]["f1"] == 0.0
    f1_a = 2 * 0.5 * 0.5 / 1.0
    f1_b = 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    assert result["macro_f1"] == pytest.approx((f1_a + f1_b + 0.0) / 3)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]

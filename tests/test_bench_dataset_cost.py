"""benchmarks/dataset_cost.py: the variants it times are the audit's datasets, one knob changed."""

from __future__ import annotations

from benchmarks.dataset_cost import variants
from netalchemy.experiment import DATASETS


def test_each_fashion_variant_is_the_audit_dataset_at_another_side_length():
    out = variants([28, 7], article=True)
    assert list(out) == ["mnist1d", "fashion28", "fashion7", "article64"]
    assert out["mnist1d"] == [] and out["article64"] == list(DATASETS["article"])
    audit = DATASETS["fashion_mnist"]
    for size in (28, 7):
        overrides = out[f"fashion{size}"]
        assert overrides[-1] == f"data.image_size={size}"
        assert [o for o in overrides if o.startswith("data.image_size=")] == [f"data.image_size={size}"]
        assert set(overrides[:-1]) == {o for o in audit if not o.startswith("data.image_size=")}
    assert "data.image_size=7" in audit  # the audit's choice is one of the measured variants


def test_without_the_article_flag_the_article_is_not_timed():
    assert "article64" not in variants([14], article=False)

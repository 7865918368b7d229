"""The posts' numbers beside ours (declared by the findings, read from their records), the outlier count and
the two-halves sample check of F9, and the no-BN overlaps F10 reports beside its verdict."""
from __future__ import annotations

import pytest

from bnlab.findings.f9_sharpness import F9_GAP, f9_sharpness, outliers
from bnlab.findings.f10_overlap import f10_overlap
from bnlab.findings.posts import POST7, PostNumber, posts_table
from bnlab.findings.registry import POST_NUMBERS, REGISTRY


def test_posts_table_reads_ours_from_the_records_and_divides() -> None:
    nums = {"F9": (PostNumber("lambda1", "BN", 128.0, "127.9", lambda v: v["eigenvalues"]["bn"][0]),
                   PostNumber("outliers", "BN", 0, "none", lambda v: v["outliers"]["bn"]),
                   PostNumber("missing", "BN", 2.0, "2", lambda v: v["nothing"]["here"]))}
    rows = posts_table([{"id": "F9", "verdict": "FAIL", "values": {"eigenvalues": {"bn": [64.0]},
                                                                    "outliers": {"bn": 0}}}], nums)
    assert [(r["ours"], r["ratio"]) for r in rows] == [(64.0, 0.5), (0.0, None), (None, None)]
    assert rows[0]["link"] == POST7 and rows[0]["source_text"] == "127.9"
    not_run = posts_table([{"id": "F9", "verdict": "NOT RUN", "values": {"eigenvalues": {"bn": [1.0]}}}], nums)
    assert all(r["ours"] is None for r in not_run)


def test_every_post_number_has_a_source_and_a_finding() -> None:
    assert set(POST_NUMBERS) == {"F2", "F6", "F7", "F9", "F10", "F11"}
    assert sum(len(f.posts) for f in REGISTRY) == 27
    for fid, nums in POST_NUMBERS.items():
        for n in nums:
            assert n.source_text and n.link.startswith("https://myrtle.ai/learn/how-to-train-your-resnet-"), fid


def _spectrum(outliers_: int, gap: float, n: int = 14) -> list[float]:
    """`outliers_` eigenvalues decaying by 3%, then a drop by `gap`, then the bulk decaying by 3%."""
    if not outliers_:
        return [100 * 0.97 ** i for i in range(n)]
    top = [1000.0 * 0.97 ** i for i in range(outliers_)]
    return top + [top[-1] / gap * 0.97 ** i for i in range(n - outliers_)]


@pytest.mark.parametrize("count, gap, expected", [(9, 2.0, 9), (11, 5.0, 11), (9, F9_GAP * 0.99, 0), (0, 1.0, 0)])
def test_outlier_count_is_the_rank_before_the_largest_gap(count: int, gap: float, expected: int) -> None:
    assert outliers(_spectrum(count, gap)) == expected


def test_f9_reports_accuracy_outliers_and_the_halves_beside_an_unchanged_verdict() -> None:
    eig = {"bn": _spectrum(0, 1.0), "frozen": _spectrum(9, 2.0), "no_bn": _spectrum(11, 2.0)}
    plain = f9_sharpness(eig)
    halves = {"bn": {"lambda1": [100.0, 110.0], "spread": 0.095, "num_samples": [256, 384]},
              "frozen": {"lambda1": [1000.0, 990.0], "spread": 0.01, "num_samples": [256, 384]}}
    rec = f9_sharpness(eig, halves=halves, accuracy={"bn": {"train": 0.8, "test": 0.7}})
    assert rec.verdict == plain.verdict == "PASS" and plain.sample is None
    assert rec.values["outliers"] == {"bn": 0, "frozen": 9, "no_bn": 11}
    assert rec.sample == ("two halves of the sample (256+384 images): lambda1 frozen/BN 10.0x and 9.0x; lambda1 "
                          "spread BN 10%, frozen 1%")
    assert rec.values["accuracy"]["bn"]["test"] == 0.7


def _outstats(means: list[float], full: list[float]) -> dict:
    return {"eigen": {"overlap_means": means, "overlap_full": full},
            "span": {"random_overlap_full": [1e-3], "random_overlap_expected": 1e-3, "means_dim": 9, "full_dim": 29}}


def test_f10_reports_no_bn_medians_without_changing_its_verdict() -> None:
    frozen = _outstats([0.8] * 9, [0.99] * 9)
    no_bn = _outstats([0.2, 0.4, 0.6] * 3, [0.9] * 9)
    rec = f10_overlap(frozen, no_bn)
    assert rec.verdict == f10_overlap(frozen).verdict == "PASS"
    assert rec.values["no_bn"] == {"median_means": pytest.approx(0.4), "median_full": pytest.approx(0.9)}
    assert f10_overlap(frozen).values["no_bn"] is None

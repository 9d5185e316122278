"""The quality benchmark's measures (``bench/metrics.py``), on synthetic images with known answers.

The benchmark is the evidence behind every recall and collateral claim, so its
yardstick is tested on its own: if these functions were wrong, every number in
the results table would be too. No model is loaded here.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench import metrics as q
from bench import quality
from bench.recipes import recipe_options, recipe_settings

BOX = (40.0, 30.0, 120.0, 190.0)  # an 80 x 160 "person"


@pytest.fixture
def textured() -> np.ndarray:
    """Fine random texture everywhere: plenty of Laplacian detail to lose."""
    return np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)


def _blur_box(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    out = image.copy()
    x1, y1, x2, y2 = (int(v) for v in box)
    out[y1:y2, x1:x2] = cv2.GaussianBlur(out[y1:y2, x1:x2], (0, 0), sigmaX=8)
    return out


def test_fully_blurred_box_counts_as_anonymized(textured: np.ndarray) -> None:
    check = q.person_anonymized(textured, _blur_box(textured, BOX), BOX, [])
    assert check.anonymized
    assert check.detail < 0.05
    assert not check.still_detectable


def test_untouched_box_is_not_anonymized(textured: np.ndarray) -> None:
    check = q.person_anonymized(textured, textured.copy(), BOX, [])
    assert not check.anonymized
    assert check.detail == pytest.approx(1.0)


def test_half_blurred_box_keeps_too_much_detail(textured: np.ndarray) -> None:
    half = (BOX[0], BOX[1], BOX[2], (BOX[1] + BOX[3]) / 2)
    check = q.person_anonymized(textured, _blur_box(textured, half), BOX, [])
    assert not check.anonymized
    assert check.detail > 0.25


def test_blurred_but_redetected_is_not_anonymized(textured: np.ndarray) -> None:
    redetected = [(42.0, 32.0, 118.0, 185.0)]
    check = q.person_anonymized(textured, _blur_box(textured, BOX), BOX, redetected)
    assert check.still_detectable
    assert not check.anonymized


def test_redetection_elsewhere_does_not_count(textured: np.ndarray) -> None:
    elsewhere = [(200.0, 20.0, 300.0, 200.0), (40.0, 30.0, 70.0, 60.0)]  # far / IoU < 0.5
    check = q.person_anonymized(textured, _blur_box(textured, BOX), BOX, elsewhere)
    assert check.anonymized


def test_flat_input_counts_as_anonymized() -> None:
    """No detail to begin with (variance < 1): nothing identifying can remain."""
    flat = np.full((100, 100, 3), 90, np.uint8)
    assert q.detail_ratio(flat, flat, (10, 10, 60, 60)) == 0.0
    assert q.person_anonymized(flat, flat, (10, 10, 60, 60), []).anonymized


def test_collateral_ignores_changes_inside_enlarged_boxes(textured: np.ndarray) -> None:
    out = textured.copy()
    # Change everything inside the 1.2x enlarged box (8 px margin at 80 px wide, 16 at 160).
    out[14:206, 32:128] = 0
    changed, outside = q.collateral(textured, out, [BOX])
    assert changed == 0
    assert outside == 240 * 320 - (206 - 14) * (128 - 32)


def test_collateral_counts_changes_outside(textured: np.ndarray) -> None:
    out = textured.copy()
    out[:, 200:] = 255 - out[:, 200:]  # invert a 120 px wide strip far from the person
    changed, outside = q.collateral(textured, out, [BOX])
    strip = 240 * 120
    # Inversion changes every pixel whose grey value is not within 6 levels of mid-grey.
    assert 0.9 * strip < changed <= strip
    assert changed / outside > 0.35


def test_collateral_ignores_small_changes(textured: np.ndarray) -> None:
    """JPEG-like noise of a few grey levels is not damage."""
    noise = np.random.default_rng(1).integers(-8, 9, textured.shape)
    out = np.clip(textured.astype(int) + noise, 0, 255).astype(np.uint8)
    changed, _ = q.collateral(textured, out, [])
    assert changed == 0


def test_collateral_on_person_free_image_covers_whole_image(textured: np.ndarray) -> None:
    changed, outside = q.collateral(textured, np.zeros_like(textured), [])
    assert outside == 240 * 320
    assert changed > 0.9 * outside


def test_height_buckets() -> None:
    assert q.height_bucket(64) == "large"
    assert q.height_bucket(63.9) == "medium"
    assert q.height_bucket(32) == "medium"
    assert q.height_bucket(31.9) == "small"


def test_enlarge_box_around_centre_and_clipped() -> None:
    assert q.enlarge_box((10, 10, 20, 30), 1.2, 100, 100) == pytest.approx((9, 8, 21, 32))
    assert q.enlarge_box((0, 0, 100, 50), 1.2, 100, 50) == (0.0, 0.0, 100.0, 50.0)


def test_read_labels_keeps_persons_only() -> None:
    text = "0 0.5 0.5 0.2 0.4\n45 0.1 0.1 0.1 0.1\n\n0 0.25 0.75 0.1 0.1\n"
    boxes = q.read_labels(text, 200, 100)
    assert boxes == [
        pytest.approx((80.0, 30.0, 120.0, 70.0)),
        pytest.approx((40.0, 70.0, 60.0, 80.0)),
    ]


def test_read_objects_keeps_every_class() -> None:
    text = "0 0.5 0.5 0.2 0.4\n45 0.1 0.1 0.1 0.1\nbad line\n79 0.5 0.5 1 1\n"
    objects = q.read_objects(text, 200, 100)
    assert [cls for cls, _ in objects] == [0, 45, 79]
    assert objects[1][1] == pytest.approx((10.0, 5.0, 30.0, 15.0))
    assert objects[2][1] == pytest.approx((0.0, 0.0, 200.0, 100.0))
    assert q.has_person(text)
    assert not q.has_person("45 0.1 0.1 0.1 0.1\n")
    assert not q.has_person("")


# --- precision: synthetic images with exact answers -------------------------------------------

FLAT = 100  # a flat grey image: every change is exactly as large as written


def _flat(height: int = 200, width: int = 250) -> np.ndarray:
    return np.full((height, width, 3), FLAT, np.uint8)


def _change_pixels(image: np.ndarray, count: int, by: int = 50) -> np.ndarray:
    """``image`` with its first ``count`` pixels (row-major) made ``by`` levels brighter."""
    out = image.copy()
    flat = out.reshape(-1, 3)
    flat[:count] = np.clip(flat[:count].astype(int) + by, 0, 255)
    return out


def test_changed_mask_threshold_is_strictly_more_than_12_levels() -> None:
    image = _flat(10, 10)
    assert not q.changed_mask(image, image + 12).any()
    assert q.changed_mask(image, image + 13).all()
    assert q.changed_mask(image, image - 13).all()
    with pytest.raises(ValueError):
        q.changed_mask(image, _flat(10, 11))


def test_person_free_image_altered_above_half_a_percent() -> None:
    image = _flat()  # 50,000 pixels: 0.5 % = 250
    assert not q.image_altered(image, image.copy())
    assert not q.image_altered(image, _change_pixels(image, 200))  # 0.4 %
    assert not q.image_altered(image, _change_pixels(image, 250))  # exactly 0.5 %: not more
    assert q.image_altered(image, _change_pixels(image, 300))  # 0.6 %
    assert not q.image_altered(image, _change_pixels(image, 5000, by=10))  # noise, not change


def test_collateral_on_a_known_mask() -> None:
    image = _flat()
    person = (100.0, 50.0, 150.0, 150.0)  # 50 x 100; 1.2x: (95, 40, 155, 160) = 60 x 120
    out = image.copy()
    out[0:10, 0:30] = 0  # 300 pixels outside the enlarged box
    out[45:155, 97:153] = 0  # inside the enlarged box: the job, not collateral
    changed, outside = q.collateral(image, out, [person])
    assert outside == 200 * 250 - 60 * 120
    assert changed == 300


def test_object_damaged_above_a_quarter_of_its_pixels() -> None:
    image = _flat()
    chair = (20.0, 20.0, 120.0, 120.0)  # 100 x 100 = 10,000 pixels, no person near
    objects = [(56, chair)]
    light, heavy = image.copy(), image.copy()
    light[20:40, 20:120] = 0  # 20 %
    heavy[20:50, 20:120] = 0  # 30 %
    assert q.objects_damaged(image, light, objects) == (0, 1)
    assert q.objects_damaged(image, heavy, objects) == (1, 1)


def test_object_damage_counts_only_its_pixels_outside_person_boxes() -> None:
    image = _flat()
    person = (100.0, 50.0, 150.0, 150.0)  # enlarged: x 95..155, y 40..160
    sofa = (55.0, 60.0, 135.0, 100.0)  # 80 x 40; x 55..95 (40 x 40 = 1,600 px) outside
    objects = [(0, person), (57, sofa)]
    inside_only = image.copy()
    inside_only[40:160, 95:155] = 0  # the person's zone wiped, the sofa's visible part intact
    assert q.objects_damaged(image, inside_only, objects) == (0, 1)
    visible_hit = image.copy()
    visible_hit[60:72, 55:95] = 0  # 12 rows of 40 = 480 px = 30 % of the visible 1,600
    assert q.objects_damaged(image, visible_hit, objects) == (1, 1)
    visible_light = image.copy()
    visible_light[60:68, 55:95] = 0  # 320 px = 20 %
    assert q.objects_damaged(image, visible_light, objects) == (0, 1)


def test_object_entirely_inside_person_boxes_is_not_counted() -> None:
    image = _flat()
    person = (100.0, 50.0, 150.0, 150.0)
    phone = (110.0, 60.0, 130.0, 90.0)
    out = np.zeros_like(image)
    assert q.objects_damaged(image, out, [(0, person), (67, phone)]) == (0, 0)
    assert q.objects_damaged(image, out, [(67, phone)]) == (1, 1)  # no person: counted


def test_false_regions_are_those_barely_on_labelled_persons() -> None:
    persons = [(100.0, 100.0, 200.0, 200.0)]
    on_person = (90.0, 90.0, 210.0, 210.0)
    far = (0.0, 0.0, 50.0, 50.0)
    grazing = (195.0, 100.0, 295.0, 200.0)  # 5 of 100 columns on the person: 5 %
    half = (150.0, 100.0, 250.0, 200.0)  # 50 %
    assert q.false_regions([on_person, half], persons, 400, 300) == 0
    assert q.false_regions([far], persons, 400, 300) == 1
    assert q.false_regions([grazing], persons, 400, 300) == 1
    assert q.false_regions([far, grazing, on_person], persons, 400, 300) == 2
    assert q.false_regions([far], [], 400, 300) == 1  # any region on a person-free image
    # A crowd region over several small people: each holds < 10 %, together they do not.
    crowd = [(x, 100.0, x + 8.0, 120.0) for x in range(0, 100, 10)]
    assert q.false_regions([(0.0, 100.0, 100.0, 120.0)], crowd, 400, 300) == 0


def test_dismissed_candidates_counted_from_the_record() -> None:
    record = {"candidates": [
        {"box": [0, 0, 1, 1], "decision": "dismissed", "stage": "detect", "reason": "x"},
        {"box": [0, 0, 1, 1], "decision": "confirmed", "stage": "detect", "reason": "y"},
        {"box": [0, 0, 1, 1], "decision": "dismissed", "stage": "verify", "reason": "z"},
    ]}
    assert q.dismissed_candidates(record) == 2
    assert q.dismissed_candidates({}) == 0  # records before candidates existed
    assert q.dismissed_candidates({"candidates": None}) == 0


def test_measure_image_published_person_free(textured: np.ndarray) -> None:
    out = textured.copy()
    out[:2, :] = 255 - out[:2, :]  # 640 of 76,800 pixels inverted: ~0.8 %, altered
    labels = "56 0.5 0.5 0.5 0.5\n"
    measures = q.measure_image(textured, out, labels, [(0.0, 0.0, 50.0, 50.0)], [],
                               {"pixels_unchanged": True})
    assert measures.published and measures.person_free
    assert measures.altered
    assert measures.false_regions == 1
    assert measures.objects_counted == 1 and measures.objects_damaged == 0
    assert measures.unchanged_claim_false  # it claimed untouched pixels, and was not
    assert measures.collateral_share == pytest.approx(measures.changed / (240 * 320))
    same = q.measure_image(textured, textured.copy(), labels, [], [], {"pixels_unchanged": True})
    assert not same.altered and not same.unchanged_claim_false and same.changed == 0


def test_measure_image_withheld_has_no_pixel_measures(textured: np.ndarray) -> None:
    measures = q.measure_image(textured, None, "0 0.5 0.5 0.5 0.5\n", [BOX], [], {})
    assert not measures.published
    assert measures.persons == 1 and not measures.checks
    assert measures.outside == 0 and not measures.altered


def test_measure_image_checks_persons(textured: np.ndarray) -> None:
    labels = "0 0.25 0.4375 0.25 0.6667\n"  # about BOX on 320 x 240
    measures = q.measure_image(textured, _blur_box(textured, BOX), labels, [BOX], [])
    assert len(measures.checks) == 1 and measures.checks[0][1].anonymized
    assert measures.false_regions == 0 and not measures.altered


def _measures(**values: object) -> q.ImageMeasures:
    base: dict[str, object] = {"published": True, "persons": 0, "regions": 0, "dismissed": 0}
    return q.ImageMeasures(**(base | values))  # type: ignore[arg-type]


def test_summary_collateral_mean_and_pixels_are_separate() -> None:
    s = quality.Summary()
    s.add(_measures(changed=50, outside=100, altered=True), 1.0, [])
    s.add(_measures(changed=0, outside=9900), 1.0, [])
    s.add(_measures(persons=1, changed=10, outside=100), 1.0, [])
    free = s.collateral_rates("person_free")
    assert free["mean"] == pytest.approx(0.25)
    assert free["pixels"] == pytest.approx(50 / 10000)
    assert s.collateral_rates("persons") == {"mean": pytest.approx(0.1),
                                             "pixels": pytest.approx(0.1)}
    both = s.collateral_rates()
    assert both["mean"] == pytest.approx((0.5 + 0.0 + 0.1) / 3)
    assert both["pixels"] == pytest.approx(60 / 10100)
    assert s.to_dict()["person_free_altered_share"] == pytest.approx(0.5)


def test_summary_rates_and_table() -> None:
    summary = quality.Summary(images=4, seconds=2.0, withheld_images=1, dismissed=7,
                              objects_damaged=1, objects_counted=8, false_regions=3)
    summary.persons.update(large=10, medium=4, small=2)
    summary.anonymized.update(large=9, medium=2, small=0)
    summary.collateral["persons"].update(images=3, changed=5, outside=100, share_sum=0.15)
    data = summary.to_dict()
    assert data["recall"]["large"] == pytest.approx(0.9)
    assert data["recall_all"] == pytest.approx(11 / 16)
    assert data["collateral_rates"]["all"]["pixels"] == pytest.approx(0.05)
    assert data["collateral_rates"]["persons"]["mean"] == pytest.approx(0.05)
    assert data["collateral_rates"]["person_free"]["mean"] is None
    assert data["withheld_share"] == pytest.approx(0.25)
    assert data["false_regions_per_image"] == pytest.approx(1.0)
    assert data["objects_damaged_share"] == pytest.approx(1 / 8)
    assert data["images_per_s"] == pytest.approx(2.0)
    table = quality.markdown_table([("recipe a", summary)])
    assert "| recipe a | 90.0% (9/10) | 50.0% (2/4) | 0.0% (0/2) |" in table
    assert "| 12.5% (1/8) | 1.00 (3) | 7 | 25.00% (1/4) |" in table
    for column in ("person-free altered", "collateral all", "objects damaged", "dismissed"):
        assert column in table


def test_recipe_overrides_keep_verification_at_least_as_strict() -> None:
    args = quality.parse_args([])
    options = recipe_options(args, "conf=0.05,image_size=1280,flip=1")
    settings = recipe_settings(options)
    assert settings.detection.confidence == 0.05
    assert settings.verification.confidence == 0.05
    assert settings.detection.image_size == 1280
    assert settings.detection.flip and settings.verification.flip
    with pytest.raises(SystemExit):
        recipe_options(args, "bogus=1")


def test_recipe_candidate_confidence_follows_a_stricter_detection() -> None:
    """Where the product confirms candidates, they never start above detection's threshold."""
    settings = recipe_settings(recipe_options(quality.parse_args([]), "conf=0.05,confirm=0"))
    confirmation = settings.confirmation
    assert confirmation.candidate_confidence <= 0.05
    assert not confirmation.enabled

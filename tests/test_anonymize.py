import numpy as np
import pytest

from airflow_privacy.core.anonymize import Blur, Fill, Pixelate, make_method
from airflow_privacy.core.verify import detail_retention

BOX = (20, 30, 120, 230)


@pytest.fixture
def texture():
    return np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8)


@pytest.mark.parametrize("method", [Blur(), Pixelate(), Fill()], ids=lambda m: m.name)
def test_changes_only_inside_the_region(method, texture):
    out = method.apply(texture, [BOX])
    inside = np.zeros(texture.shape[:2], bool)
    inside[30:230, 20:120] = True
    assert np.array_equal(out[~inside], texture[~inside])
    assert not np.array_equal(out[inside], texture[inside])
    assert out.shape == texture.shape and out.dtype == texture.dtype


@pytest.mark.parametrize("method", [Blur(), Pixelate(), Fill()], ids=lambda m: m.name)
def test_removes_detail(method, texture):
    out = method.apply(texture, [BOX])
    assert detail_retention(texture, out, BOX) < 0.1


def test_retention_sees_an_untouched_and_a_weakly_blurred_region(texture):
    import cv2

    assert detail_retention(texture, texture, BOX) == pytest.approx(1.0)
    assert detail_retention(texture, 255 - texture, BOX) == pytest.approx(1.0, rel=1e-3)
    smooth = cv2.resize(cv2.resize(texture, (20, 30)), (200, 300), interpolation=cv2.INTER_CUBIC)
    weak = cv2.GaussianBlur(smooth, (3, 3), 0)
    assert detail_retention(smooth, weak, BOX) > 0.5


def test_blur_strength_scales_with_region():
    small = Blur().apply(np.full((50, 50, 3), 128, np.uint8), [(0, 0, 50, 50)])
    assert small.shape == (50, 50, 3)


def test_empty_and_degenerate_regions_are_ignored(texture):
    out = Blur().apply(texture, [(5, 5, 5, 50), (-10, -10, -1, -1)])
    assert np.array_equal(out, texture)


def test_make_method_and_describe():
    assert make_method("pixelate", blocks=4).describe() == {"name": "pixelate", "blocks": 4}
    with pytest.raises(ValueError):
        make_method("swirl")

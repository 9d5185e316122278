import pytest

from airflow_privacy.core.settings import RunSettings, SettingsError


def test_defaults_verify_stricter_than_detect():
    s = RunSettings().validate()
    assert s.verification.confidence < s.detection.confidence
    assert s.verification.flip


def test_laxer_verification_is_refused():
    with pytest.raises(SettingsError, match="at least as strict"):
        RunSettings().with_overrides(confidence=0.2, verify_confidence=0.3)


@pytest.mark.parametrize("kwargs", [{"target": "face"}, {"method": "swirl"}, {"confidence": 0}])
def test_bad_values_are_refused(kwargs):
    with pytest.raises(SettingsError):
        RunSettings().with_overrides(**kwargs)


def test_roundtrip_and_key():
    s = RunSettings().with_overrides(method="pixelate", target="head")
    again = RunSettings.from_dict(s.to_dict())
    assert again == s
    assert again.key() == s.key()
    assert RunSettings().key() != s.key()


def test_unknown_keys_are_refused():
    with pytest.raises(SettingsError, match="unknown"):
        RunSettings.from_dict({"detection": {"confidance": 0.2}})


def test_lower_detection_confidence_pulls_verification_down():
    s = RunSettings().with_overrides(confidence=0.05)
    assert s.verification.confidence == 0.05
    assert s.verification.covered_max_confidence == 0.05


def test_presets():
    thorough = RunSettings.preset("thorough")
    assert thorough.detection.image_size == 1280 and thorough.detection.flip
    assert thorough.verification.confidence <= thorough.detection.confidence
    assert RunSettings.preset("default") == RunSettings()
    with pytest.raises(SettingsError, match="unknown preset"):
        RunSettings.preset("sloppy")

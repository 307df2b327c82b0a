"""Settings: CLINIC_* variables over an optional TOML file; derived embedded defaults; secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from clinic.settings import Settings, load_settings


def test_embedded_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLINIC_CONFIG", raising=False)
    settings = Settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'clinic.db'}"
    assert settings.is_embedded_broker
    assert (settings.http_port, settings.dicom_port, settings.dicom_ae, settings.mllp_port) == (
        8080,
        11112,
        "CLINIC",
        2575,
    )
    assert settings.resolved_models_dir == tmp_path / "models"


def test_environment_wins_over_the_toml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "clinic.toml"
    config.write_text('dicom_ae = "HOSPITAL_AI"\nhttp_port = 9000\nbroker_url = "redis://127.0.0.1:6379/3"\n')
    monkeypatch.setenv("CLINIC_CONFIG", str(config))
    monkeypatch.setenv("CLINIC_HTTP_PORT", "9100")
    settings = load_settings()
    assert settings.dicom_ae == "HOSPITAL_AI"
    assert settings.http_port == 9100
    assert not settings.is_embedded_broker


def test_unknown_keys_and_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "clinic.toml"
    config.write_text("dicom_aet = 'TYPO'\n")
    monkeypatch.setenv("CLINIC_CONFIG", str(config))
    with pytest.raises(ValidationError, match="dicom_aet"):
        load_settings()
    monkeypatch.delenv("CLINIC_CONFIG")
    with pytest.raises(ValidationError, match="dicom_ae"):
        Settings(dicom_ae="AN_AE_TITLE_LONGER_THAN_16")


def test_production_refuses_default_secrets(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="CLINIC_SECRET_KEY"):
        Settings(data_dir=tmp_path, environment="production", secret_key="changeme")
    ok = Settings(data_dir=tmp_path, environment="production", secret_key="x" * 40)
    assert ok.signing_key() == "x" * 40


def test_a_random_signing_key_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    first = Settings(data_dir=tmp_path).signing_key()
    assert len(first) >= 40
    assert Settings(data_dir=tmp_path).signing_key() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600

"""The encoder registry and typed configurations: round-trips, option checks, discovery."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from emostore.errors import UserError
from emostore.extract import base
from emostore.extract.encoders.opensmile import OpenSmileConfig
from emostore.extract.encoders.text import TextConfig


def test_every_registered_config_round_trips() -> None:
    base.discover()
    assert {"text/sentence-transformers", "text/huggingface", "audio/opensmile", "visual/landmarks",
            "visual/fer"} <= set(base.ENCODERS)
    for key, cls in base.ENCODERS.items():
        config = cls.Config()
        assert cls.Config.from_dict(config.to_dict()) == config, key
        assert cls.Config.from_dict({"encoder": cls.kind, **config.to_dict()}) == config, key
        # a non-default value of every user option survives the trip too
        changed = {}
        for f in dataclasses.fields(cls.Config):
            value = getattr(config, f.name)
            if isinstance(value, bool):
                changed[f.name] = not value
            elif isinstance(value, (int, float)):
                changed[f.name] = value + 1
            elif isinstance(value, str):
                changed[f.name] = value + "-x"
        other = dataclasses.replace(config, **changed)
        assert other != config and cls.Config.from_dict(other.to_dict()) == other, key


def test_options_from_the_command_line_are_typed_and_checked() -> None:
    cfg = TextConfig.from_options({"context": "2", "max-length": "64", "precision": "float32"})
    assert cfg.context == 2 and cfg.max_length == 64 and cfg.precision == "float32"
    assert TextConfig.from_options({"max_length": "none"}).max_length is None
    with pytest.raises(UserError, match="cannot read 'two' as int"):
        TextConfig.from_options({"context": "two"})
    with pytest.raises(UserError, match="no encoder option 'window'.*options: model, context"):
        TextConfig.from_options({"window": "3"})
    with pytest.raises(UserError, match="'context_format' is recorded by the encoder, not an option"):
        TextConfig.from_options({"context_format": "mine"})
    with pytest.raises(UserError, match="OpenSmileConfig has no option 'hop'"):
        OpenSmileConfig.from_dict({"feature_set": "egemaps", "hop": 10})


def test_build_encoder_refuses_what_the_encoder_does_not_take(tmp_path) -> None:
    with pytest.raises(UserError, match="audio encoder 'opensmile' does not take --device"):
        base.build_encoder("audio", "opensmile", {}, {"device": "cpu"})
    with pytest.raises(UserError, match="unknown audio encoder 'nope'; known: opensmile"):
        base.build_encoder("audio", "nope")
    enc = base.build_encoder("audio", "opensmile", {"feature_set": "compare", "sample_rate": "22050"})
    assert enc.stored_config["feature_set"] == "compare" and enc.stored_config["sample_rate"] == 22050
    again = base.rebuild_encoder("audio", enc.stored_config, name=enc.name, device="cpu")  # device dropped
    assert again.stored_config == enc.stored_config and again.dim == 6373


@pytest.fixture
def scratch_encoders(tmp_path, monkeypatch):
    """Encoder discovery over a scratch copy of the package path, with the registry restored after."""
    from emostore.extract import encoders

    monkeypatch.setattr(encoders, "__path__", [*encoders.__path__, str(tmp_path)])
    monkeypatch.setattr(base, "_discovered", False)
    monkeypatch.setattr(base, "ENCODERS", dict(base.ENCODERS))
    monkeypatch.setattr(base, "UNAVAILABLE", {})
    yield tmp_path
    for name in ("broken_encoder", "needs_extra"):
        sys.modules.pop(f"emostore.extract.encoders.{name}", None)


def test_discovery_never_hides_a_real_import_error(scratch_encoders) -> None:
    (scratch_encoders / "broken_encoder.py").write_text("from emostore.extract.base import no_such_name\n")
    with pytest.raises(ImportError, match="no_such_name"):
        base.discover()


def test_a_missing_extra_becomes_an_install_hint(scratch_encoders, monkeypatch) -> None:
    monkeypatch.setitem(base.EXTRAS, "emostore_missing_extra_pkg", "audio")
    (scratch_encoders / "needs_extra.py").write_text("import emostore_missing_extra_pkg\n")
    base.discover()
    assert base.UNAVAILABLE == {"needs_extra": "needs emostore_missing_extra_pkg: pip install 'emostore[audio]'"}
    with pytest.raises(UserError, match=r"not available: needs_extra needs emostore_missing_extra_pkg"):
        base.encoder_class("audio", "missing")

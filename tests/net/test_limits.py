"""Limits: safe defaults, validation that names the field, immutability."""

from __future__ import annotations

import dataclasses
import math

import pytest

from socketkit.net.limits import Limits

FIELDS = [f.name for f in dataclasses.fields(Limits)]


def test_defaults_are_positive_numbers():
    limits = Limits()
    for name in FIELDS:
        value = getattr(limits, name)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), name
        assert value > 0, name
        assert math.isfinite(value), name


def test_defaults_bound_everything():
    # An internet-facing server must not wait forever by default.
    assert Limits().idle_timeout is not None


def test_sizes_are_ints():
    limits = Limits()
    for name in ("max_connections", "max_line", "read_buffer", "write_buffer", "max_header_size",
                 "max_headers", "max_body"):
        assert isinstance(getattr(limits, name), int), name


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("bad", [0, -1, -0.5, "10", b"10", [1]])
def test_invalid_value_names_the_field(name: str, bad: object):
    with pytest.raises(ValueError, match=rf"Limits\.{name}\b"):
        Limits(**{name: bad})


@pytest.mark.parametrize("name", [n for n in FIELDS if n != "idle_timeout"])
def test_none_is_rejected_except_for_idle_timeout(name: str):
    with pytest.raises(ValueError, match=rf"Limits\.{name}\b"):
        Limits(**{name: None})


def test_idle_timeout_none_means_forever():
    assert Limits(idle_timeout=None).idle_timeout is None


@pytest.mark.parametrize("name", FIELDS)
def test_small_positive_values_are_accepted(name: str):
    assert getattr(Limits(**{name: 1}), name) == 1


def test_float_timeouts_are_accepted():
    limits = Limits(idle_timeout=0.25, handshake_timeout=0.5, request_timeout=1.5, drain_timeout=0.01)
    assert (limits.idle_timeout, limits.handshake_timeout) == (0.25, 0.5)


# NaN compares false with everything and bool is an int subclass: both must still be refused.
@pytest.mark.parametrize("bad", [math.nan, True, math.inf])
@pytest.mark.parametrize("name", ["max_connections", "handshake_timeout"])
def test_nan_and_bool_are_rejected(name: str, bad: object):
    with pytest.raises(ValueError, match=rf"Limits\.{name}\b"):
        Limits(**{name: bad})


def test_replace_returns_a_new_validated_instance():
    base = Limits()
    changed = base.replace(max_connections=5, idle_timeout=None)
    assert changed.max_connections == 5
    assert changed.idle_timeout is None
    assert changed.max_line == base.max_line
    assert base.max_connections == 10_000 and base.idle_timeout == 300.0  # original untouched
    assert changed != base
    assert base.replace() == base
    with pytest.raises(ValueError, match=r"Limits\.max_line\b"):
        base.replace(max_line=0)
    with pytest.raises(TypeError):
        base.replace(no_such_limit=1)


def test_frozen_and_hashable():
    limits = Limits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_connections = 1  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        limits.extra = 1  # type: ignore[attr-defined]
    assert hash(limits) == hash(Limits())
    assert {limits, Limits()} == {limits}


def test_every_field_accepts_its_default_by_keyword():
    # Services configure limits by keyword; every field must be accepted that way.
    values = {name: getattr(Limits(), name) for name in FIELDS}
    assert Limits(**values) == Limits()


def test_whole_number_fields_refuse_fractions():
    with pytest.raises(ValueError, match=r"Limits\.max_connections must be a positive whole number"):
        Limits(max_connections=1.5)

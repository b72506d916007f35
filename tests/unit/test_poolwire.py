"""The warm pool's wire and settings: every field a peer or the operator sends is checked."""

from __future__ import annotations

import configparser
import json
from typing import Any

import pytest

from vm_isolation.config import settings_from_parser
from vm_isolation.errors import ConfigError
from vm_isolation.poolwire import (
    MAX_LINE,
    ProtocolError,
    Shape,
    decode,
    parse_answer,
    parse_offer,
    parse_shapes,
    parse_take,
)

GOOD_OFFER: dict[str, Any] = {"op": "offer", "name": "vmiso-pool-0123456789", "mac": "52:54:00:aa:bb:cc",
                              "ip": "192.168.122.40", "expiry_time": 2e9, "client_id": "01:52:54:00:aa:bb:cc",
                              "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyHostKey"}


def test_shapes_parse_with_counts_and_merge_duplicates() -> None:
    """``*N`` is the count (1 without it); a shape named twice adds up."""
    assert parse_shapes("busybox:1:128*2, python:2:512,busybox:1:128") == {
        Shape("busybox", 1, 128): 3, Shape("python", 2, 512): 1}


@pytest.mark.parametrize("text", ["busybox:1", "busybox:x:128", "../etc:1:128", "$(reboot):1:128",
                                  "busy box:1:128", "busybox:0:128", "busybox:1:128*0", "busybox:1:128*x",
                                  "busybox:1:99999999", "a\nb:1:128"])
def test_a_malformed_shape_is_a_config_error_naming_it(text: str) -> None:
    """Hostile or malformed shapes never become a Shape."""
    with pytest.raises(ConfigError, match=r"\[pool\] shapes"):
        parse_shapes(text)


def pool_settings(**keys: str) -> Any:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_dict({"pool": keys} if keys else {})
    return settings_from_parser(parser, None).pool


def test_the_pool_is_off_unless_the_operator_sets_a_size() -> None:
    """Default: size 0, nothing wanted (nothing changes for anyone who does not opt in)."""
    pool = pool_settings()
    assert not pool.enabled and pool.wanted("busybox", 256) == {}


def test_a_size_without_shapes_keeps_default_guests() -> None:
    """size = 2 alone: two guests of the default image, 1 vCPU, the default memory."""
    assert pool_settings(size="2").wanted("busybox", 256) == {Shape("busybox", 1, 256): 2}


def test_shapes_that_exceed_the_size_are_refused() -> None:
    """The counts must fit in size (the bound on idle RAM the operator chose)."""
    with pytest.raises(ConfigError, match="size"):
        pool_settings(size="1", shapes="busybox:1:128*2")


@pytest.mark.parametrize("keys", [{"size": "-1"}, {"size": "x"}, {"max_concurrent_boots": "0"},
                                  {"bogus": "1"}, {"take_timeout_s": "-2"}])
def test_bad_pool_keys_are_config_errors(keys: dict[str, str]) -> None:
    """Each bad value names its key."""
    with pytest.raises(ConfigError, match=r"\[pool\]"):
        pool_settings(**keys)


def test_a_take_is_parsed_into_a_shape() -> None:
    """The only request there is."""
    assert parse_take({"op": "take", "image": "busybox", "vcpus": 1, "memory_mib": 128}) == Shape("busybox", 1, 128)


@pytest.mark.parametrize("message", [
    {"op": "stop"}, {"op": "status"}, {"op": "take", "image": "busybox", "vcpus": 1, "memory_mib": 128, "x": 1},
    {"op": "take", "image": "../x", "vcpus": 1, "memory_mib": 128},
    {"op": "take", "image": "busybox", "vcpus": True, "memory_mib": 128},
    {"op": "take", "image": "busybox", "vcpus": 1, "memory_mib": 1 << 40},
    {"op": "take", "image": "busybox", "vcpus": "1", "memory_mib": 128},
    {"op": "take", "image": ["busybox"], "vcpus": 1, "memory_mib": 128},
])
def test_a_peer_can_do_nothing_but_take_a_well_formed_shape(message: dict[str, Any]) -> None:
    """Other ops, extra fields and wrong types are refused with a message safe to send back."""
    with pytest.raises(ProtocolError) as info:
        parse_take(message)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


@pytest.mark.parametrize("line", [b"not json", b"[1,2]", b'{"no": "op"}', b"\xff\xfe", b"{" + b" " * MAX_LINE + b"}"])
def test_lines_that_are_not_protocol_messages_are_refused(line: bytes) -> None:
    """decode refuses non-JSON, non-objects, a missing op, bad UTF-8 and overlong lines."""
    with pytest.raises(ProtocolError):
        decode(line)


def test_a_good_offer_round_trips() -> None:
    """What the pool sends is what the executor parses."""
    offer = parse_offer(GOOD_OFFER)
    assert parse_offer(json.loads(json.dumps(offer.to_wire()))) == offer


@pytest.mark.parametrize("field,value", [
    ("name", "vmiso-task-0123456789"), ("name", "../../etc"), ("name", "vmiso-pool-01234567890123"),
    ("mac", "52:54:00:AA:BB:CC"), ("mac", "00:11:22:33:44:55"), ("ip", "192.168.122.400"), ("ip", "::1"),
    ("expiry_time", "soon"), ("expiry_time", float("inf")), ("client_id", "x;y"),
    ("host_key", "ssh-ed25519 AAAA$(reboot)"), ("host_key", "ssh-ed25519 AAAAbbbb\nssh-rsa AAAA"),
    ("host_key", "ssh-ed25519 AAAAbbbbcccc\n"), ("name", "vmiso-pool-0123456789\n"), ("mac", "52:54:00:aa:bb:cc\n"),
])
def test_an_offer_with_any_odd_field_is_refused(field: str, value: object) -> None:
    """The executor journals, chowns and connects only to what passes these checks."""
    with pytest.raises(ProtocolError):
        parse_offer({**GOOD_OFFER, field: value})


def test_an_answer_is_taken_or_refused_and_nothing_else() -> None:
    """taken -> True, refused -> False, anything else is an error."""
    assert parse_answer({"op": "taken"}) is True
    assert parse_answer({"op": "refused", "why": "x"}) is False
    with pytest.raises(ProtocolError):
        parse_answer({"op": "taken", "also": "stop"})
    with pytest.raises(ProtocolError):
        parse_answer({"op": "destroy-all"})

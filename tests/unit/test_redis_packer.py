"""iotp's Redis command packer: the bytes and the errors of redis-py's own packer."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from iotp.redis_client import HiredisPacker, redis_for

_CONNECTION: Any = redis.Connection()  # not connected: its packer is redis-py's own
_REDIS_PY: Any = _CONNECTION._command_packer

COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),
    ("SET", "k", "v"),
    ("SET", b"k", b"\x00\xff binary"),
    ("EVAL", "return 1", 2, "a", "{a}:b", 100_000, "1796680453.278", "é ∑ 😀"),
    ("HSET", "h", "f", 1.5, "g", 0.1 + 0.2, "h", -0.0, "i", 1e100, "j", 5e-324, "k", -(2**63)),
    ("XADD", "s", "*", "data", memoryview(b"a view")),
    ("CLIENT SETINFO", "LIB-NAME", "redis-py"),  # a command name with a space: split
    (b"CLIENT SETNAME", b"x"),
    ("SET", "", ""),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_commands_pack_to_the_bytes_redis_py_sends(command: tuple[Any, ...]) -> None:
    assert b"".join(HiredisPacker().pack(*command)) == b"".join(_REDIS_PY.pack(*command))


@pytest.mark.parametrize("bad", [True, None, object(), ["list"], {"a": 1}])
def test_what_redis_py_refuses_is_refused_with_its_error(bad: object) -> None:
    with pytest.raises(redis.DataError) as ours:
        HiredisPacker().pack("SET", "k", bad)
    with pytest.raises(redis.DataError) as theirs:
        _REDIS_PY.pack("SET", "k", bad)
    assert str(ours.value) == str(theirs.value)


def test_a_string_that_is_not_unicode_text_is_refused() -> None:
    with pytest.raises(UnicodeEncodeError):
        HiredisPacker().pack("SET", "k", "\udcff")


def test_a_client_made_by_redis_for_packs_with_it() -> None:
    client = redis_for("redis://127.0.0.1:1/0", cluster=False)  # not connected: no I/O
    connection: Any = client.connection_pool.make_connection()
    assert isinstance(connection._command_packer, HiredisPacker)

"""Every rejection a command handler may raise is answered with its status, not a 500."""

from __future__ import annotations

from pydantic import SecretStr

from command_api.app import create_app
from command_api.domain import CommandRejected
from iotp.settings import Settings
from tests.support.servers import TEST_TOKEN


def _kinds(base: type[Exception]) -> set[type[Exception]]:
    found = set(base.__subclasses__())
    for kind in list(found):
        found |= _kinds(kind)
    return found


def test_every_rejection_has_its_own_answer() -> None:
    app = create_app(Settings(api_token=SecretStr(TEST_TOKEN)), run_relay_task=False)
    handled = {k for k in app.exception_handlers if isinstance(k, type) and k is not Exception}
    assert len(_kinds(CommandRejected)) >= 10
    for kind in _kinds(CommandRejected):
        assert any(issubclass(kind, answered) for answered in handled), kind.__name__

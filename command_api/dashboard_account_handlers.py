"""Dashboard account handlers: make an account, and change its role, state or password.

The account's row and its DashboardAccountCreated or DashboardAccountChanged event (outbox,
stream ``iotp:events:access``) commit together, so the audit trail names who made or changed
every account; no event carries a password or its hash. The command line (`iotp users`)
runs these same handlers.
"""

from __future__ import annotations

from command_api.unit_of_work import UnitOfWork
from iotp.commands import ChangeDashboardAccount, CreateDashboardAccount
from iotp.dashboard_accounts import Account
from iotp.events import DashboardAccountChanged, DashboardAccountCreated


async def create_dashboard_account(cmd: CreateDashboardAccount, uow: UnitOfWork) -> Account:
    async with uow:
        account = await uow.dashboard_accounts.create(
            cmd.username, cmd.role, cmd.password.get_secret_value()
        )
        uow.emit(
            DashboardAccountCreated(
                username=account.username, role=account.role.value, occurred_at=account.created_at
            )
        )
        await uow.commit()
    return account


async def change_dashboard_account(cmd: ChangeDashboardAccount, uow: UnitOfWork) -> Account:
    """Change the account; a change to what it already is answers it and records nothing."""
    async with uow:
        account, changed = await uow.dashboard_accounts.change(
            cmd.username,
            role=cmd.role,
            disabled=cmd.disabled,
            password=None if cmd.password is None else cmd.password.get_secret_value(),
        )
        if changed:
            uow.emit(
                DashboardAccountChanged(
                    username=account.username,
                    role=account.role.value,
                    disabled=account.disabled,
                    changed=changed,
                    occurred_at=account.updated_at,
                )
            )
            await uow.commit()
    return account

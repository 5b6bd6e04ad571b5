"""Dashboard account routes (admin only): make an account, list and read accounts, change one.

Each change goes through a handler (command_api.dashboard_account_handlers) and commits with
its event. A password is taken, never answered: no answer holds a password or its hash.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from command_api import dashboard_account_handlers
from command_api.dependencies import PoolDep, UnitOfWorkDep
from iotp import dashboard_accounts
from iotp.commands import (
    DASHBOARD_USERNAME_PATTERN,
    ChangeDashboardAccount,
    CreateDashboardAccount,
    DashboardPassword,
)
from iotp.http_errors import error_responses
from iotp.model import FrozenModel
from iotp.permissions import Permission, Role, requires

dashboard_account_router = APIRouter(
    prefix="/dashboard-accounts",
    tags=["dashboard accounts"],
    dependencies=[requires(Permission.DASHBOARD_ACCOUNTS_MANAGE)],
    responses=error_responses(401, 403, 422, 503),
)
_NO_SUCH_ACCOUNT: dict[int | str, dict[str, Any]] = {
    404: {**error_responses(404)[404], "description": "No such dashboard account"}
}
_TAKEN: dict[int | str, dict[str, Any]] = {
    409: {**error_responses(409)[409], "description": "An account of that user name exists"}
}
UsernamePath = Annotated[str, Path(pattern=DASHBOARD_USERNAME_PATTERN)]


class DashboardAccountOut(BaseModel):
    username: str
    role: Role
    disabled: bool
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None


class DashboardAccountList(BaseModel):
    accounts: list[DashboardAccountOut]


class DashboardAccountPatch(FrozenModel):
    """The attributes to change; those left out keep their value."""

    role: Role | None = None
    disabled: bool | None = Field(default=None, strict=True)
    password: DashboardPassword | None = None


def _out(account: dashboard_accounts.Account) -> DashboardAccountOut:
    return DashboardAccountOut(
        username=account.username,
        role=account.role,
        disabled=account.disabled,
        created_at=account.created_at,
        updated_at=account.updated_at,
        disabled_at=account.disabled_at,
    )


@dashboard_account_router.post(
    "",
    status_code=201,
    response_model=DashboardAccountOut,
    responses={**error_responses(400, 413), **_TAKEN},
)
async def create_dashboard_account(
    cmd: CreateDashboardAccount, response: Response, uow: UnitOfWorkDep
) -> DashboardAccountOut:
    """Make an account with a role and a password (at least 12 characters)."""
    account = await dashboard_account_handlers.create_dashboard_account(cmd, uow)
    response.headers["Location"] = f"/dashboard-accounts/{account.username}"
    return _out(account)


@dashboard_account_router.get("", response_model=DashboardAccountList)
async def list_dashboard_accounts(pool: PoolDep) -> DashboardAccountList:
    """Every account, disabled ones too, by user name."""
    async with pool.connection() as conn:
        listed = await dashboard_accounts.list_accounts(conn)
    return DashboardAccountList(accounts=[_out(account) for account in listed])


@dashboard_account_router.get(
    "/{username}", response_model=DashboardAccountOut, responses=_NO_SUCH_ACCOUNT
)
async def get_dashboard_account(username: UsernamePath, pool: PoolDep) -> DashboardAccountOut:
    async with pool.connection() as conn:
        return _out(await dashboard_accounts.get_account(conn, username))


@dashboard_account_router.patch(
    "/{username}",
    response_model=DashboardAccountOut,
    responses={**error_responses(400, 413), **_NO_SUCH_ACCOUNT},
)
async def change_dashboard_account(
    username: UsernamePath, patch: DashboardAccountPatch, uow: UnitOfWorkDep
) -> DashboardAccountOut:
    """Change the role, disable or enable, or set a new password: a disabled account's
    dashboard session ends within a minute, and the command API refuses to act for it."""
    fields = {name: getattr(patch, name) for name in patch.model_fields_set}
    try:
        cmd = ChangeDashboardAccount.model_validate({"username": username, **fields})
    except ValidationError as exc:  # nothing to change: answered as FastAPI answers a 422
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    return _out(await dashboard_account_handlers.change_dashboard_account(cmd, uow))

"""Who may do what, declared once: roles, permissions, the public paths, and the route marker.

Deny by default: every route of both HTTP APIs declares the permission it needs with
:func:`requires`; a route on neither :data:`PUBLIC_PATHS` nor with a permission is refused
(403) by :class:`iotp.http_middleware.AccessMiddleware`, and a test walks every route.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.params import Depends as DependsMarker
from fastapi.routing import RouteContext
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import BaseRoute

from iotp.events import Actor
from iotp.model import Role

__all__ = ["Permission", "Principal", "Role", "requires"]

# Scope key under which the access middleware leaves the authenticated principal.
PRINCIPAL_SCOPE_KEY = "iotp.principal"


class Permission(StrEnum):
    DEVICES_REGISTER = "devices:register"
    DEVICES_ROTATE_CREDENTIALS = "devices:rotate-credentials"
    DEVICES_MANAGE = "devices:manage"
    ALARM_RULES_READ = "alarm-rules:read"
    ALARM_RULES_MANAGE = "alarm-rules:manage"
    ALARMS_ACKNOWLEDGE = "alarms:acknowledge"
    WEBHOOKS_MANAGE = "webhooks:manage"
    READ_MODELS_READ = "read-models:read"
    API_KEYS_MANAGE = "api-keys:manage"
    DASHBOARD_ACCOUNTS_MANAGE = "dashboard-accounts:manage"
    # Send commands for a logged-in dashboard person (X-Iotp-Dashboard-User): the key the
    # dashboard holds. The command then runs with that person's role, never more.
    DASHBOARD_USERS_ACT = "dashboard-users:act"
    AUDIT_READ = "audit:read"
    # Device profiles and gateways (issue 25): they decide what broker accounts may publish.
    PROFILES_READ = "profiles:read"
    PROFILES_MANAGE = "profiles:manage"
    GATEWAYS_MANAGE = "gateways:manage"


_ALL = frozenset(Role)
_OPERATING = frozenset({Role.ADMIN, Role.OPERATOR})

# The one table of who may do what (docs/security.md repeats it for people).
ROLES_OF: dict[Permission, frozenset[Role]] = {
    Permission.DEVICES_REGISTER: _OPERATING | {Role.PROVISIONER},
    Permission.DEVICES_ROTATE_CREDENTIALS: _OPERATING | {Role.PROVISIONER},
    Permission.DEVICES_MANAGE: _OPERATING,
    Permission.ALARM_RULES_READ: _ALL - {Role.PROVISIONER},
    Permission.ALARM_RULES_MANAGE: _OPERATING,
    Permission.ALARMS_ACKNOWLEDGE: _OPERATING,
    Permission.WEBHOOKS_MANAGE: _OPERATING,
    Permission.READ_MODELS_READ: _ALL - {Role.PROVISIONER},
    Permission.API_KEYS_MANAGE: frozenset({Role.ADMIN}),
    Permission.DASHBOARD_ACCOUNTS_MANAGE: frozenset({Role.ADMIN}),
    Permission.DASHBOARD_USERS_ACT: frozenset({Role.ADMIN}),
    Permission.AUDIT_READ: _OPERATING,
    # Provisioners read profiles to register devices with one.
    Permission.PROFILES_READ: _ALL,
    Permission.PROFILES_MANAGE: frozenset({Role.ADMIN}),
    # A gateway's account may publish for every device it lists: as much as managing them.
    Permission.GATEWAYS_MANAGE: _OPERATING,
}

# The only paths answered without a key: health and the OpenAPI documents.
PUBLIC_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key (`iotp keys create`), or a bootstrap token (IOTP_API_TOKEN,"
    " IOTP_QUERY_TOKEN)",
)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and with which role: the actor its commands' events record."""

    role: Role
    actor: Actor

    @property
    def name(self) -> str:
        return self.actor.name

    def may(self, permission: Permission) -> bool:
        return self.role in ROLES_OF[permission]


@dataclass(frozen=True)
class PermissionCheck:
    """The dependency a route declares; the middleware has already checked the same thing
    before the body was read, this checks again where the route runs."""

    permission: Permission

    def __call__(
        self,
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> None:
        principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
        if not isinstance(principal, Principal):
            raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        if not principal.may(self.permission):
            raise HTTPException(403, forbidden(principal, self.permission))


def requires(permission: Permission) -> Any:
    """The route dependency declaring that a route needs ``permission``."""
    return Depends(PermissionCheck(permission))


def bootstrap_principal(setting: str, role: Role) -> Principal:
    """The principal of a bootstrap token, named by its setting (IOTP_API_TOKEN ...)."""
    return Principal(role, Actor(kind="bootstrap-token", name=setting))


def request_principal(request: Request) -> Principal:
    """The principal AccessMiddleware authenticated for ``request`` (routes that need a key)."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if not isinstance(principal, Principal):
        raise HTTPException(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
    return principal


def forbidden(principal: Principal, permission: Permission) -> str:
    return f"role {principal.role} lacks permission {permission}"


def route_permissions(route: BaseRoute | RouteContext) -> list[Permission]:
    """The permissions ``route`` declares (its own and its routers'), in order."""
    declared = getattr(route, "dependencies", None) or []
    return [
        marker.dependency.permission
        for marker in declared
        if isinstance(marker, DependsMarker) and isinstance(marker.dependency, PermissionCheck)
    ]


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS

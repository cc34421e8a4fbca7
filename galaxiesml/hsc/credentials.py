"""HSC archive account credentials, read from the environment and kept out of logs and messages."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

#: (user variable, password variable) pairs, in the order they are tried: the official HSC tool's
#: names first, then unagi's.
ENV_VARIABLES: tuple[tuple[str, str], ...] = (
    ("HSC_SSP_CAS_USER", "HSC_SSP_CAS_PASSWORD"),
    ("SSP_PDR_USR", "SSP_PDR_PWD"),
)


class HscError(Exception):
    """Base class of the errors the HSC clients raise."""


class HscAuthError(HscError):
    """The archive refused the account (HTTP 401), or no account is configured."""


@dataclass(frozen=True)
class Credentials:
    """An archive account. The password never appears in repr() or str()."""

    user: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=<hidden>)"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Credentials":
        """Credentials from HSC_SSP_CAS_USER / HSC_SSP_CAS_PASSWORD, else SSP_PDR_USR / SSP_PDR_PWD."""
        env = os.environ if environ is None else environ
        for user_var, password_var in ENV_VARIABLES:
            user, password = env.get(user_var), env.get(password_var)
            if user and password:
                return cls(user, password)
        names = " or ".join(f"{u} and {p}" for u, p in ENV_VARIABLES)
        raise HscAuthError(f"no HSC archive account configured: set {names}")

"""Optional dependencies: a missing one fails with the extra to install.

Adapters and drivers import their framework inside :func:`require_extra`, so the
import stays static (typed, visible to tools) and a missing package gives::

    ImportError: sessionmw.contrib.flask needs 'flask', which is not installed:
    pip install 'sessionmw[flask]'
"""

from __future__ import annotations

import importlib
from types import ModuleType, TracebackType

__all__ = ["MissingExtra", "require", "require_extra"]


class MissingExtra(ImportError):
    """An optional dependency of sessionmw is not installed (the message names the extra)."""


def _message(module: str, extra: str, feature: str | None) -> str:
    who = feature or "this part of sessionmw"
    return f"{who} needs {module!r}, which is not installed: pip install 'sessionmw[{extra}]'"


class require_extra:
    """Context manager turning a failed import of ``module`` into :class:`MissingExtra`.

    >>> with require_extra("json", "none"):
    ...     import json
    """

    __slots__ = ("extra", "feature", "module")

    def __init__(self, module: str, extra: str, *, feature: str | None = None) -> None:
        self.module = module
        self.extra = extra
        self.feature = feature

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, ModuleNotFoundError) and _is_missing(exc, self.module):
            raise MissingExtra(_message(self.module, self.extra, self.feature)) from exc


def _is_missing(exc: ModuleNotFoundError, module: str) -> bool:
    # Only the package we asked for (or one of its own dependencies being absent
    # because the package is absent): an unrelated import bug inside an installed
    # package must surface as itself.
    name = exc.name or ""
    root = module.split(".", 1)[0]
    return name == root or name.startswith(root + ".")


def require(module: str, extra: str, *, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` naming ``sessionmw[extra]``."""
    with require_extra(module, extra, feature=feature):
        return importlib.import_module(module)

"""Optional dependencies (pip extras): a missing one is named with the command that installs it."""
from __future__ import annotations

import importlib.util

EXTRAS = {"wsproto": "websocket", "google.protobuf": "protobuf", "prometheus_client": "metrics"}


def missing(module: str, feature: str) -> ImportError:
    """The ImportError for a missing optional dependency, with the pip command that fixes it."""
    extra = EXTRAS[module]
    return ImportError(f"{feature} needs the '{module.split('.')[0]}' package: "
                       f"pip install 'pygev[{extra}]'")


def require(module: str, feature: str) -> None:
    """Raise `missing(...)` unless `module` can be imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise missing(module, feature)


__all__ = ["missing", "require"]

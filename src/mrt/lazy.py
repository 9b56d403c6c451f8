"""Package namespaces that import a name's module on first use, so that importing a package costs nothing."""

import importlib
from collections.abc import Iterable


def lazy_exports(package: str, names: dict[str, str]):
    """A module `__getattr__` for `package` that imports `names[name]` (a module path) when `name` is first read."""

    def __getattr__(name):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def lazy_package(package: str, modules: dict[str, Iterable[str]]):
    """`__all__` and `__getattr__` of a package that exports names of its modules lazily: `modules` maps a
    module (its path below `package`) to the names it exports."""
    names = {name: f"{package}.{module}" for module, exported in modules.items() for name in exported}
    return sorted(names), lazy_exports(package, names)

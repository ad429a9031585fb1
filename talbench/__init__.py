"""talbench: reproducible temporal action localization benchmarks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("talbench")  # one definition: pyproject.toml's, as installed
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

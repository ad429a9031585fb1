"""talbench: reproducible temporal action localization benchmarks."""

__version__ = "0.1.0"

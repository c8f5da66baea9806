"""abstain's torch-free runtime: scores, metrics, calibration, serving, monitoring."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("abstain")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

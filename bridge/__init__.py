"""uploadcare-bridge: Uploadcare conversion status as signed, retried webhooks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("uploadcare-bridge")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

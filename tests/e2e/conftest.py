"""The end-to-end tier shares the integration tier's fixtures."""

from tests.integration.conftest import platform

__all__ = ["platform"]

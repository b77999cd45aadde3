"""The web dashboard: `from service.dashboard import router`."""
from service.dashboard.router import router

__all__ = ["router"]

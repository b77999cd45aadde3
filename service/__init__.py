"""The ncsweep API side: FastAPI app factory, routers, auth, enqueue, dashboard, plots and the `ncsweep` CLI."""

"""API routers (thin: parse, call nc_core.db repositories, shape the response)."""

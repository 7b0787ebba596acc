"""The HTTP layer: routers per resource, their bodies (schemas), how errors are answered (errors), and
the plain ASGI layers in front of FastAPI (asgi). It translates and validates; engines do the work."""

"""Serving a trained run over HTTP: `transferlab serve RUN` (an ASGI app, uvicorn, a page to try it)."""

"""Serving the app with uvicorn, and the HTTP protocol settings it runs with."""

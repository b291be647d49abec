"""One gateway replica as its own process, for tests that kill one: ``python -m tests.replica``.

The same start-up as ``ki2api serve`` (settings from the environment, the start-up checks,
uvicorn), without the web page, which only costs start-up time here.
"""

from ki2api.server.run import serve, settings_or_exit

if __name__ == "__main__":
    serve(settings_or_exit(), with_ui=False)

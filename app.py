"""Entry point for `python app.py`, Docker and Hugging Face Spaces."""

from ki2api.server.run import main

if __name__ == "__main__":
    main()

"""Entry point for `python app.py`, Docker and Hugging Face Spaces."""

from ki2api.server import main

if __name__ == "__main__":
    main()

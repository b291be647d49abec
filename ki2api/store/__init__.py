"""The gateway's stored state (SQLite in ``DATA_DIR``) and its backup."""

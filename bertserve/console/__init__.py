"""The web console: static files (no build step, no network) the HTTP app serves under /ui/."""
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"

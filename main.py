"""``python main.py`` runs the ``openatp`` command line; with no arguments it opens the GUI."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())

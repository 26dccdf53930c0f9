"""PyInstaller entry point of the bundle: the ``openatp`` command (no arguments: the GUI).

It imports the installed wheel's ``app.cli``; nothing else lives here, so the bundle runs
exactly the code ``pip install openatp-*.whl`` would.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # torch DataLoader workers re-enter the executable
    from app.cli import main

    sys.exit(main())

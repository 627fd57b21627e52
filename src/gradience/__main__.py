import sys

from gradience.cli.main import main

if __name__ == "__main__":
    sys.exit(main())

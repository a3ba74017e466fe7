"""``python -m sitepeek``."""

from sitepeek.cli import main

if __name__ == "__main__":
    main()

#!/bin/sh
# Regenerate the shell completion scripts from click's completion machinery.
# tests/test_cli.py fails when these files are stale.
set -eu
cd "$(dirname "$0")"
python3 -m sitepeek completion bash > sitepeek.bash
python3 -m sitepeek completion zsh > _sitepeek
python3 -m sitepeek completion fish > sitepeek.fish

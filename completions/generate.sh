#!/bin/sh
# Regenerate the shell completion scripts with this checkout's `sitepeek completion`
# (sitepeek's own scripts in src/sitepeek/assets/, the same with every click release).
# tests/test_cli.py fails when these files are stale.
set -eu
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/../src${PYTHONPATH:+:$PYTHONPATH}"
python3 -m sitepeek completion bash > sitepeek.bash
python3 -m sitepeek completion zsh > _sitepeek
python3 -m sitepeek completion fish > sitepeek.fish

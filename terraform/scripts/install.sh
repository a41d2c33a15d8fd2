# shellcheck shell=bash
# Default install_command of the coder-task-sidecar module. The start script runs it with
# `bash -euo pipefail -c`, PACKAGE_SPEC set to the module's `package` variable.
#
# Debian 12 and Ubuntu 24.04 mark the system Python externally managed (PEP 668): pip
# refuses to install outside a virtualenv. So: pipx when the image has it, else a
# virtualenv of our own, linked into ~/.local/bin.

if command -v pipx >/dev/null 2>&1; then
  # --force: only reached when the spec changed, and then the new one must replace the old.
  pipx install --force "$PACKAGE_SPEC"
  exit 0
fi

venv="$HOME/.local/share/coder-task-sidecar/venv"
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  # Debian's python3 without python3-venv leaves a virtualenv without pip: start over.
  if ! python3 -m venv --clear "$venv"; then
    echo "python3 -m venv failed: add python3-venv (Debian, Ubuntu) or pipx to the image" >&2
    exit 1
  fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$PACKAGE_SPEC"
mkdir -p "$HOME/.local/bin"
ln -sf "$venv/bin/coder-task-sidecar" "$HOME/.local/bin/coder-task-sidecar"

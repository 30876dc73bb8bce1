# Sourced by bin/demo and bin/test: a project virtual environment in .venv, (re)installed when
# pyproject.toml changes. Needs only python3 (3.11+) and the package index. pip's own output
# goes to .venv/install.log, shown only if the install fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="$1"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($python --version)" >&2
  "$python" -m venv .venv
fi
hash="$(sha256sum pyproject.toml | cut -c1-16)"
stamp=".venv/.installed-$extras-$hash"
# The test extras hold everything the demo needs: after bin/test, bin/demo installs nothing.
if [ -z "$extras" ] && compgen -G ".venv/.installed-*-$hash" >/dev/null; then
  stamp="$(compgen -G ".venv/.installed-*-$hash" | head -n 1)"
fi
if [ ! -f "$stamp" ]; then
  echo "[setup] installing membership_pipeline${extras:+[$extras]} and its dependencies" \
    "(a few minutes the first time; log: .venv/install.log)" >&2
  if ! { .venv/bin/python -m pip install --quiet --upgrade pip \
         && .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"; } \
       >.venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    echo "[setup] the install failed (above: the end of .venv/install.log)" >&2
    exit 1
  fi
  rm -f .venv/.installed-"$extras"-*
  touch "$stamp"
fi

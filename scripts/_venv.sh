# Sourced by scripts/run and scripts/test: make .venv and install the project into it,
# again only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv with $($PYTHON --version)…"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.towerops-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing TowerOps and its dependencies into .venv…"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"

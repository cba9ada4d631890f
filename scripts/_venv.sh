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
want="$(cat pyproject.toml towerops_client/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing TowerOps and its dependencies into .venv…"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # dev: the tests; embedded: the private PostgreSQL and Redis used when no DATABASE_URL is set.
    .venv/bin/python -m pip install --quiet -e '.[dev,embedded]'
    .venv/bin/python -m pip install --quiet -e ./towerops_client   # the Python client (examples/)
    echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"

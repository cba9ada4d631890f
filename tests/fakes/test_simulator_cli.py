"""The simulator's command line: a busy port is one line naming the port, the endpoint and what to change."""
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_profile_keeps_off_ollamas_own_port():
    profile = yaml.safe_load((ROOT / "profiles" / "tower.yaml").read_text())
    urls = [ep["base_url"] for host in profile["hosts"] for ep in host["endpoints"]]
    assert urls and not any(url.endswith(":11434") for url in urls)


def test_a_busy_port_is_one_line_naming_the_port_and_the_profile(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        profile = yaml.safe_load((ROOT / "profiles" / "two-hosts.yaml").read_text())
        profile["hosts"][0]["endpoints"][0]["base_url"] = f"http://127.0.0.1:{port}"
        path = tmp_path / "busy.yaml"
        path.write_text(yaml.safe_dump(profile))
        run = subprocess.run([sys.executable, "-m", "models_registry.fakes.ollama_server", "--profile", str(path),
                              "--host", "alpha"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"simulate_tower: port {port} on 127.0.0.1 is already in use (endpoint alpha-ollama); change that "
        f"endpoint's base_url in {path} or pass another --profile (scripts/run: TOWEROPS_PROFILE)"
    ]

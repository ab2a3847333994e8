"""The Ansible playbook parses, and each host group's config template renders to a config edgeslm accepts.
(The --check run against a host under real systemd is in test_service.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeslm.config import load_config
from tests.system.machine import CACHE, ROOT, run

PLAYBOOK_DIR = ROOT / "deploy" / "ansible"
TOOL_VENV = CACHE / "ansible-venv"


@pytest.fixture(scope="module")
def ansible_bin() -> Path:
    """ansible-core in a tool venv of its own (never in the project's venv)."""
    if not (TOOL_VENV / "bin" / "ansible-playbook").exists():
        run(sys.executable, "-m", "venv", TOOL_VENV)
        run(TOOL_VENV / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "ansible-core", timeout_s=900)
    return TOOL_VENV / "bin"


def test_playbook_syntax(ansible_bin, proved):
    result = run(ansible_bin / "ansible-playbook", "--syntax-check", "-i", "inventory.example.ini", "site.yml",
                 cwd=PLAYBOOK_DIR)
    assert "playbook: site.yml" in result.stdout
    proved("ansible-playbook --syntax-check passes on deploy/ansible/site.yml")


@pytest.mark.parametrize("host", ["pi-kitchen-1", "pi-workshop-1"])
def test_group_templates_render_valid_configs(ansible_bin, host, tmp_path, proved):
    out = tmp_path / f"{host}.toml"
    playbook = tmp_path / "render.yml"
    playbook.write_text(f"""
- hosts: {host}
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.template:
        src: "{{{{ edgeslm_config_template }}}}"
        dest: "{out}"
      delegate_to: localhost
""")
    (tmp_path / "templates").symlink_to(PLAYBOOK_DIR / "templates")
    (tmp_path / "group_vars").symlink_to(PLAYBOOK_DIR / "group_vars")
    result = subprocess.run([str(ansible_bin / "ansible-playbook"), "-i", str(PLAYBOOK_DIR / "inventory.example.ini"),
                             str(playbook), "-e", f"ansible_python_interpreter={sys.executable}"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    config = load_config(out, env={})
    if host == "pi-kitchen-1":
        assert config.server.request_timeout_s == 5 and config.access.allow_groups == ("audio",)
        assert [m.name for m in config.models] == ["intents"] and config.models[0].batching.max_queue == 16
    else:
        assert config.server.request_timeout_s == 30 and [m.name for m in config.models] == ["intents"]
    proved(f"the config template for {host}'s group renders to a config edgeslm loads")

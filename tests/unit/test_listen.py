"""The listening socket's permissions, as a user who is not root meets them."""

from __future__ import annotations

import os

import pytest

from edgeslm.errors import ConfigError
from edgeslm.server import listen


def test_a_socket_group_the_user_may_not_give_is_a_config_error_and_leaves_no_socket(tmp_path, monkeypatch):
    # A user outside the group gets EPERM from chown (root never does, so the refusal is stood in for here).
    def refuse(path, uid, gid):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(listen.os, "chown", refuse)
    path = tmp_path / "e.sock"
    with pytest.raises(ConfigError) as caught:
        listen.bind_unix_socket(path, group="root")
    assert f"server.socket_group 'root': this user (uid {os.getuid()}) may not give the socket" in str(caught.value)
    assert "usermod -aG root" in str(caught.value)
    assert not path.exists()

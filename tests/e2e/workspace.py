"""The workspace a sidecar process runs in: the loopback fakes of agentapi and Coder, a
home holding the state directory, agentapi's state file and the agent token file, and the
environment that points a sidecar at all of them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sidecar.standins.agentapi import FakeAgentapi
from sidecar.standins.coder import FakeCoder
from sidecar.standins.server import Served
from tests.e2e.harness import base_env


@dataclass
class Workspace:
    """`home` is the sidecar's HOME; the token file holds Coder's token from the start."""

    home: Path
    agentapi: Served[FakeAgentapi]
    coder: Served[FakeCoder]

    def __post_init__(self) -> None:
        self.write_token(self.coder.fake.token)

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def spool_path(self) -> Path:
        """Where the sidecar spools the task's undelivered snapshot."""
        return self.state_dir / f"{self.coder.fake.task_id}.json"

    @property
    def state_file(self) -> Path:
        """Where agentapi's --state-file would be; nothing writes it unless a test does."""
        return self.home / "agentapi" / "state.json"

    @property
    def token_file(self) -> Path:
        return self.home / "agent-token"

    def write_token(self, token: str) -> None:
        """Replace the token file atomically, as a secret manager would."""
        temp = self.token_file.with_name(self.token_file.name + ".new")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        os.replace(temp, self.token_file)

    def env(self, **overrides: str) -> dict[str, str]:
        """Settings that point a sidecar at the fakes, with short intervals for tests; the
        token itself is in CODER_AGENT_TOKEN."""
        return self._env({"CODER_AGENT_TOKEN": self.coder.fake.token}, overrides)

    def token_file_env(self, **overrides: str) -> dict[str, str]:
        """The same settings with the token file's path in CODER_AGENT_TOKEN_FILE instead."""
        return self._env({"CODER_AGENT_TOKEN_FILE": str(self.token_file)}, overrides)

    def _env(self, token: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
        settings = {
            "CODER_AGENT_URL": self.coder.url,
            **token,
            "CODER_TASK_ID": str(self.coder.fake.task_id),
            "CODER_MCP_AI_AGENTAPI_URL": self.agentapi.url,
            "SIDECAR_STATE_DIR": str(self.state_dir),
            "SIDECAR_SNAPSHOT_INTERVAL": "1",
            "SIDECAR_SHUTDOWN_TIMEOUT": "3",
            "SIDECAR_AGENTAPI_PROBE_INTERVAL": "1",
        }
        settings.update(overrides)
        return base_env(self.home, **settings)

"""The real process reaches Coder through HTTP_PROXY, as Coder's agent would.

The Coder URL names a made-up host, `coder.test`, that only the recording proxy maps to
the fake Coder on loopback: a process that bypassed the proxy would have to resolve the
name itself and fail (`.test` is reserved and never resolves).
"""

from __future__ import annotations

from tests.e2e.conftest import SidecarFactory
from tests.e2e.harness import run_to_exit, stored_contents
from tests.e2e.workspace import Workspace
from tests.fakes.proxy import RecordingProxy

PASSWORD = "pr0xy-s3cret"


def proxied_env(workspace: Workspace, proxy_port: int) -> dict[str, str]:
    return workspace.env(
        CODER_AGENT_URL=f"http://coder.test:{workspace.coder.server.port}",
        HTTP_PROXY=f"http://sidecar:{PASSWORD}@127.0.0.1:{proxy_port}",
    )


async def test_daemon_posts_snapshots_through_the_proxy(
    workspace: Workspace, start_sidecar: SidecarFactory
) -> None:
    coder = workspace.coder.fake
    workspace.agentapi.fake.add_message("user", "Fix the tests")
    async with RecordingProxy(hosts={"coder.test": "127.0.0.1"}) as proxy:
        proc = await start_sidecar(proxied_env(workspace, proxy.port))
        event = await proc.wait_log("coder.proxy")
        await coder.wait_for(lambda: stored_contents(coder) == ["Fix the tests"], timeout=10)
        assert await proc.stop() == 0
    assert event["proxy"] == f"http://127.0.0.1:{proxy.port}"
    assert event["credentials"] is True
    snapshot_url = f"http://coder.test:{workspace.coder.server.port}{coder.snapshot_path()}"
    assert any(r.target.startswith(snapshot_url) for r in proxy.requests)
    assert all(r.target.startswith("http://coder.test:") for r in proxy.requests)
    assert PASSWORD not in proc.output()


async def test_snapshot_command_goes_through_the_proxy(workspace: Workspace) -> None:
    workspace.agentapi.fake.add_message("user", "Summarize the repo")
    async with RecordingProxy(hosts={"coder.test": "127.0.0.1"}) as proxy:
        env = proxied_env(workspace, proxy.port)
        code, out, err = await run_to_exit(env, ["snapshot"])
    assert code == 0, out + err
    assert stored_contents(workspace.coder.fake) == ["Summarize the repo"]
    assert [r.method for r in proxy.requests] == ["POST"]
    assert PASSWORD not in out + err

"""The real process reaches Coder through HTTP_PROXY, as Coder's agent would.

The Coder URL names a made-up host, `coder.test`, that only the recording proxy maps to
the fake Coder on loopback: a process that bypassed the proxy would have to resolve the
name itself and fail (`.test` is reserved and never resolves).
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import SidecarFactory
from tests.e2e.harness import run_to_exit, sidecar_env, stored_contents
from tests.fakes.agentapi import FakeAgentapi
from tests.fakes.coder import FakeCoder
from tests.fakes.proxy import RecordingProxy
from tests.fakes.server import Served

PASSWORD = "pr0xy-s3cret"


def proxied_env(
    tmp_path: Path, agentapi: Served[FakeAgentapi], coder: Served[FakeCoder], proxy_port: int
) -> dict[str, str]:
    return sidecar_env(
        tmp_path,
        agentapi.url,
        coder,
        CODER_AGENT_URL=f"http://coder.test:{coder.server.port}",
        HTTP_PROXY=f"http://sidecar:{PASSWORD}@127.0.0.1:{proxy_port}",
    )


async def test_daemon_posts_snapshots_through_the_proxy(
    tmp_path: Path,
    fake_agentapi: Served[FakeAgentapi],
    fake_coder: Served[FakeCoder],
    start_sidecar: SidecarFactory,
) -> None:
    coder = fake_coder.fake
    fake_agentapi.fake.add_message("user", "Fix the tests")
    async with RecordingProxy(hosts={"coder.test": "127.0.0.1"}) as proxy:
        proc = await start_sidecar(proxied_env(tmp_path, fake_agentapi, fake_coder, proxy.port))
        event = await proc.wait_log("coder.proxy")
        await coder.wait_for(lambda: stored_contents(coder) == ["Fix the tests"], timeout=10)
        assert await proc.stop() == 0
    assert event["proxy"] == f"http://127.0.0.1:{proxy.port}"
    assert event["credentials"] is True
    snapshot_url = f"http://coder.test:{fake_coder.server.port}{coder.snapshot_path()}"
    assert any(r.target.startswith(snapshot_url) for r in proxy.requests)
    assert all(r.target.startswith("http://coder.test:") for r in proxy.requests)
    assert PASSWORD not in proc.output()


async def test_snapshot_command_goes_through_the_proxy(
    tmp_path: Path, fake_agentapi: Served[FakeAgentapi], fake_coder: Served[FakeCoder]
) -> None:
    fake_agentapi.fake.add_message("user", "Summarize the repo")
    async with RecordingProxy(hosts={"coder.test": "127.0.0.1"}) as proxy:
        env = proxied_env(tmp_path, fake_agentapi, fake_coder, proxy.port)
        code, out, err = await run_to_exit(env, ["snapshot"])
    assert code == 0, out + err
    assert stored_contents(fake_coder.fake) == ["Summarize the repo"]
    assert [r.method for r in proxy.requests] == ["POST"]
    assert PASSWORD not in out + err

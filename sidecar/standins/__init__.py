"""Loopback stand-ins of agentapi and Coder, as strict as the real servers.

`agentapi.FakeAgentapi` speaks agentapi's HTTP protocol and keeps its conversation as
coder/agentapi's source does; `coder.FakeCoder` is the slice of coderd the sidecar talks
to, with coderd's validation rules; `server.serve` runs either on a free loopback port.
The `demo` command runs the daemon against them, and the tests and benchmarks use the same
ones. Nothing in the daemon imports them (tests/unit/test_import_boundaries.py).

The parts: `agentapi` puts together `agentapi_records` (messages, constants, SSE frames),
`agentapi_core` (state and emitter), `agentapi_sends` (the busy lock),
`agentapi_statefile` (restarts and the state file, whose format is `agentapi_state`'s)
and `agentapi_http` (routes, Host check, SSE pump); `coder` uses `coder_rules` (coderd's
limits, decoding and records) and `coder_faults` (what a proxy in front of it does);
`gojson` writes JSON as Go does.
"""

#!/usr/bin/env bash
# The shutdown hook as templates run it today (the baseline for bench/shutdown.py):
# curl agentapi's /messages, keep the last 10 with jq, drop the oldest while the body is
# over 65,536 bytes, and when one message is left keep only the last 57,344 *characters*
# of its content behind a marker; then post once. No retry, no spool.
#
# Environment: CODER_MCP_AI_AGENTAPI_URL (default http://localhost:3284), CODER_AGENT_URL,
# CODER_AGENT_TOKEN, CODER_TASK_ID. Exit 0 when Coder accepted the snapshot.
set -euo pipefail

agentapi="${CODER_MCP_AI_AGENTAPI_URL:-http://localhost:3284}"
coder="${CODER_AGENT_URL:?CODER_AGENT_URL is required}"
token="${CODER_AGENT_TOKEN:?CODER_AGENT_TOKEN is required}"
task="${CODER_TASK_ID:?CODER_TASK_ID is required}"
limit=65536
keep_chars=57344

if ! messages="$(curl -fsS --max-time 10 "${agentapi}/messages")"; then
  echo "shutdown-snapshot: agentapi unreachable, nothing posted" >&2
  exit 1
fi

body="$(jq -c '{messages: (.messages[-10:])}' <<<"${messages}")"
size() { printf '%s' "$1" | wc -c; }

while [ "$(size "${body}")" -gt "${limit}" ]; do
  count="$(jq '.messages | length' <<<"${body}")"
  if [ "${count}" -le 1 ]; then
    # One message left: keep the tail of its content (jq slices by code points).
    body="$(jq -c --argjson n "${keep_chars}" \
      '.messages[0].content |= ("[... earlier output truncated ...]\n" + .[-$n:])' <<<"${body}")"
    break
  fi
  body="$(jq -c '.messages |= .[1:]' <<<"${body}")"
done

if [ "$(jq '.messages | length' <<<"${body}")" -eq 0 ]; then
  echo "shutdown-snapshot: empty conversation, nothing posted" >&2
  exit 0
fi

printf '%s' "${body}" | curl -fsS --max-time 10 -X POST \
  -H "Coder-Session-Token: ${token}" \
  -H "Content-Type: application/json" \
  --data-binary @- \
  "${coder}/api/v2/workspaceagents/me/tasks/${task}/log-snapshot?format=agentapi"
echo "shutdown-snapshot: posted $(size "${body}") bytes" >&2

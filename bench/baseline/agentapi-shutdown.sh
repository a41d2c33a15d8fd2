#!/usr/bin/env bash
# The second baseline of bench/shutdown.py: what templates run at workspace stop today.
#
# Written for the benchmark from the behaviour of the Coder registry's agentapi module
# `run_on_stop` script (registry/coder/modules/agentapi/scripts/agentapi-shutdown.sh); it
# reproduces that script's steps, in order, with the same waits and limits:
#
#   1. State persistence on (here: AGENTAPI_STATE_FILE is set, as the module sets it only
#      then) and the agentapi binary not older than v0.12.0 (a missing binary or a
#      version that is not x.y.z passes, as in the module's lib.sh): if the pid from the
#      pid file is alive, SIGUSR1 it, then `sleep 1` for the save.
#   2. No task id: skip the snapshot. Otherwise fetch /messages (curl, 5 s), keep the last
#      10 messages (jq, the rest of agentapi's response kept as is), then while the file
#      is over 65,536 bytes drop the oldest message; with one left, keep the last 57,344
#      characters of its content behind a marker, and give up if that is still too large.
#      Post it (curl, 10 s): 204 is success, 404 means "this Coder has no log snapshots"
#      (also success). A failed snapshot is logged and the shutdown goes on.
#   3. If agentapi is alive: SIGTERM, then check once a second until it is gone, with no
#      bound (a warning every 5 s).
#
# Environment: CODER_AGENT_URL, CODER_AGENT_TOKEN, CODER_TASK_ID (empty: no snapshot),
# CODER_MCP_AI_AGENTAPI_URL (default http://localhost:3284, the module's port),
# AGENTAPI_PID_FILE, AGENTAPI_STATE_FILE. Exits 0 unless the shell itself fails, like
# the original: a snapshot that was not posted does not change the exit status.
set -euo pipefail

agentapi_url="${CODER_MCP_AI_AGENTAPI_URL:-http://localhost:3284}"
task="${CODER_TASK_ID:-}"
pid_file="${AGENTAPI_PID_FILE:-}"
body_limit=65536
content_tail=57344
keep_messages=10

say() { printf '%s\n' "$*"; }
complain() { printf 'Error: %s\n' "$*" >&2; }

# "Is the installed agentapi at least <min>?" Anything but a plain x.y.z answers yes.
at_least() {
  local want="${1#v}" have="${2#v}" re='^([0-9]+)\.([0-9]+)\.([0-9]+)$'
  [[ $have =~ $re ]] || return 0
  local h=("${BASH_REMATCH[@]:1}")
  [[ $want =~ $re ]] || return 0
  local w=("${BASH_REMATCH[@]:1}") i
  for i in 0 1 2; do
    if ((h[i] != w[i])); then
      ((h[i] > w[i]))
      return
    fi
  done
  return 0
}

installed_agentapi() { agentapi --version 2>/dev/null | awk '{print $NF}'; }

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# Posts the snapshot; returns non-zero when none was stored (the caller logs and goes on).
snapshot() {
  if [[ -z $task ]]; then
    say "No task ID, skipping log snapshot"
    return 0
  fi
  local name
  for name in CODER_AGENT_URL CODER_AGENT_TOKEN; do
    if [[ -z ${!name:-} ]]; then
      complain "$name not set, no log snapshot"
      return 1
    fi
  done
  for name in jq curl; do
    if ! command -v "$name" >/dev/null 2>&1; then
      complain "$name not found, no log snapshot"
      return 1
    fi
  done

  # Not `local`: the EXIT trap runs after the function has returned. (The registry script
  # makes it local, so under `set -u` its trap fails, leaving the directory behind and
  # the snapshot reported as failed even when it was posted; that costs no time.)
  local body
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  body="$work/body.json"

  say "Fetching messages from agentapi"
  if ! curl -fsSL --max-time 5 "${agentapi_url}/messages" >"$body"; then
    complain "could not fetch messages from agentapi (is it running?)"
    return 1
  fi
  jq --argjson keep "$keep_messages" '.messages |= .[-$keep:]' <"$body" >"$body.new" || return 1
  mv "$body.new" "$body"

  local count bytes
  count="$(jq '.messages | length' <"$body")"
  if ((count == 0)); then
    say "No messages for the log snapshot"
    return 0
  fi
  say "Got $count messages"

  while bytes="$(wc -c <"$body")" && ((bytes > body_limit)); do
    count="$(jq '.messages | length' <"$body")"
    if ((count > 1)); then
      say "$bytes bytes is over the limit: dropping the oldest message"
      jq '.messages |= .[1:]' <"$body" >"$body.new" || return 1
      mv "$body.new" "$body"
      continue
    fi
    say "$bytes bytes is over the limit: keeping the end of the last message"
    jq --argjson tail "$content_tail" '.messages[0].content |= (
        if length > $tail then "[...content truncated, showing last 56KB...]\n\n" + .[-$tail:]
        else . end)' <"$body" >"$body.new" || return 1
    mv "$body.new" "$body"
    bytes="$(wc -c <"$body")"
    if ((bytes > body_limit)); then
      complain "still $bytes bytes after cutting the last message, giving up"
      return 1
    fi
    break
  done
  say "Snapshot: $(wc -c <"$body") bytes, $(jq '.messages | length' <"$body") messages"

  local code url
  url="${CODER_AGENT_URL}/api/v2/workspaceagents/me/tasks/${task}/log-snapshot?format=agentapi"
  if ! code="$(curl -sS --max-time 10 -o "$work/answer" -w '%{http_code}' -X POST \
    -H "Coder-Session-Token: ${CODER_AGENT_TOKEN}" -H "Content-Type: application/json" \
    --data-binary "@$body" "$url")"; then
    complain "could not reach Coder"
    return 1
  fi
  case "$code" in
    204) say "Log snapshot posted" ;;
    404) say "This Coder does not take log snapshots, skipping" ;;
    *)
      complain "log snapshot refused (HTTP $code): $(cat "$work/answer" 2>/dev/null || true)"
      return 1
      ;;
  esac
}

say "Shutting down agentapi"
pid=""
if [[ -n $pid_file ]]; then
  pid="$(cat "$pid_file" 2>/dev/null || true)"
fi

persistence=false
if [[ -n ${AGENTAPI_STATE_FILE:-} ]] && at_least 0.12.0 "$(installed_agentapi)"; then
  persistence=true
fi
if $persistence && alive "$pid"; then
  say "SIGUSR1 to agentapi (pid $pid): save the state"
  kill -USR1 "$pid" || true
  sleep 1 # the registry script's allowance for the save
fi

# In a subshell, so that its EXIT trap (removing the temporary directory) stays in it.
(snapshot) || say "No log snapshot; the shutdown goes on"

if alive "$pid"; then
  say "SIGTERM to agentapi (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
    if ((waited % 5 == 0)); then
      say "agentapi (pid $pid) is still running after ${waited}s"
    fi
  done
fi
say "Shutdown complete"

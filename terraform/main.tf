# coder-task-sidecar as a Coder module: one coder_script starts the daemon when the agent
# starts, another runs the stop hook (`coder-task-sidecar stop`) when it stops. The scripts
# are rendered from scripts/*.tftpl; tests/packaging/test_terraform.py renders them the
# same way and runs them against a stub sidecar.

variable "agent_id" {
  type        = string
  description = "The id of the coder_agent the scripts run on."
}

variable "app_status_slug" {
  type        = string
  description = "Slug of the coder_app the sidecar reports the agent's state under (CODER_MCP_APP_STATUS_SLUG); empty turns the relay off. A registry agent module with report_tasks = true (claude-code up to v4.9, aider; goose always) already reports statuses through Coder's MCP server for the same app: set this or keep that, not both."
  default     = ""
  validation {
    condition     = can(regex("^([a-z0-9](-?[a-z0-9])*)?$", var.app_status_slug))
    error_message = "app_status_slug must be empty or a Coder app slug (lower-case letters, digits and single hyphens)."
  }
}

variable "agentapi_url" {
  type        = string
  description = "agentapi's base URL (CODER_MCP_AI_AGENTAPI_URL); the registry's agentapi module listens on port 3284."
  default     = "http://localhost:3284"
  validation {
    condition     = can(regex("^https?://[^\"\\\\`$ ]+$", var.agentapi_url))
    error_message = "agentapi_url must be an http:// or https:// URL."
  }
}

variable "agentapi_module_dir_name" {
  type        = string
  description = "The module_dir_name the registry agent module hands to the agentapi module (\".claude-module\" for claude-code up to v4.9, \".goose-module\", \".aider-module\"); agentapi's pid and state files live in $HOME/<this>. Empty: only explicit agentapi_pid_file / agentapi_state_file are used."
  default     = ""
  validation {
    condition     = !can(regex("[\"\\\\`]", var.agentapi_module_dir_name))
    error_message = "agentapi_module_dir_name must not contain a double quote, a backslash or a backtick."
  }
}

variable "agentapi_state_persistence" {
  type        = bool
  description = "Set to what the agent module's enable_state_persistence is. Only then does agentapi (>= v0.12.0) write $HOME/<agentapi_module_dir_name>/agentapi-state.json, and only then is it worth asking it to save (older agentapi has no state file and ignores the SIGUSR1 that asks)."
  default     = false
}

variable "agentapi_state_file" {
  type        = string
  description = "agentapi's --state-file (AGENTAPI_STATE_FILE). Empty: $HOME/<agentapi_module_dir_name>/agentapi-state.json when agentapi_state_persistence is on, else unset. $HOME is expanded in the workspace."
  default     = ""
  validation {
    condition     = !can(regex("[\"\\\\`]", var.agentapi_state_file))
    error_message = "agentapi_state_file must not contain a double quote, a backslash or a backtick."
  }
}

variable "agentapi_pid_file" {
  type        = string
  description = "agentapi's --pid-file (AGENTAPI_PID_FILE), which lets the stop hook signal agentapi. Empty: $HOME/<agentapi_module_dir_name>/agentapi.pid when agentapi_module_dir_name is set, else unset. $HOME is expanded in the workspace."
  default     = ""
  validation {
    condition     = !can(regex("[\"\\\\`]", var.agentapi_pid_file))
    error_message = "agentapi_pid_file must not contain a double quote, a backslash or a backtick."
  }
}

variable "snapshot_interval" {
  type        = number
  description = "Seconds (SIDECAR_SNAPSHOT_INTERVAL): at most one snapshot per interval while a turn streams; a finished turn is posted at once."
  default     = 30
  validation {
    condition     = var.snapshot_interval > 0
    error_message = "snapshot_interval must be a positive number of seconds."
  }
}

variable "state_dir" {
  type        = string
  description = "The sidecar's state directory (SIDECAR_STATE_DIR): the spool for an undelivered snapshot and the lock the stop hook finds the daemon by. Empty: the sidecar's default, $XDG_STATE_HOME/coder-task-sidecar else ~/.local/state/coder-task-sidecar. Keep it on a volume that survives a restart so a spooled snapshot does too."
  default     = ""
  validation {
    condition     = !can(regex("[\"\\\\`]", var.state_dir))
    error_message = "state_dir must not contain a double quote, a backslash or a backtick."
  }
}

variable "log_path" {
  type        = string
  description = "File the daemon's output (JSON log lines) is appended to."
  default     = "/tmp/coder-task-sidecar.log"
  validation {
    condition     = var.log_path != "" && !can(regex("[\"\\\\`]", var.log_path))
    error_message = "log_path must be a path without a double quote, a backslash or a backtick."
  }
}

variable "package" {
  type        = string
  description = "What the install command installs, passed to it as $PACKAGE_SPEC: a name with an optional pin (coder-task-sidecar==0.1.0), a wheel's URL or path, or a git URL."
  default     = "coder-task-sidecar"
  validation {
    condition     = var.package != "" && !can(regex("[\"\\\\`]", var.package))
    error_message = "package must be non-empty, without a double quote, a backslash or a backtick."
  }
}

variable "install_command" {
  type        = string
  description = "Shell (bash) that installs the sidecar, run by the start script when the package spec changed since the last install or coder-task-sidecar is missing. null: scripts/install.sh (pipx if present, else a virtualenv in ~/.local/share/coder-task-sidecar/venv linked into ~/.local/bin: Debian 12 and Ubuntu 24.04 refuse pip outside a virtualenv). Empty: install nothing (the sidecar is in the image)."
  default     = null
}

variable "stop_timeout" {
  type        = number
  description = "Seconds the stop hook may take before it is cut short. Above SIDECAR_SHUTDOWN_TIMEOUT (10 s) plus agentapi's state save and exit; below Kubernetes' 30 s grace less the agent's 5 s SSH drain, so a stuck hook is reported rather than killed silently."
  default     = 25
  validation {
    condition     = var.stop_timeout > 0
    error_message = "stop_timeout must be a positive number of seconds."
  }
}

data "coder_task" "me" {}

locals {
  module_dir = var.agentapi_module_dir_name == "" ? "" : "$HOME/${trimsuffix(var.agentapi_module_dir_name, "/")}"

  agentapi_state_file = (
    var.agentapi_state_file != "" ? var.agentapi_state_file :
    var.agentapi_state_persistence && local.module_dir != "" ? "${local.module_dir}/agentapi-state.json" : ""
  )
  agentapi_pid_file = (
    var.agentapi_pid_file != "" ? var.agentapi_pid_file :
    local.module_dir != "" ? "${local.module_dir}/agentapi.pid" : ""
  )

  install_command = var.install_command == null ? file("${path.module}/scripts/install.sh") : var.install_command

  # Every template gets these. Values land inside double quotes in bash (so $HOME expands);
  # the validations above keep out the characters that would end the quoting.
  script_vars = {
    # Empty outside a task; the sidecar then runs without snapshots.
    task_id             = try(data.coder_task.me.id, "")
    app_status_slug     = var.app_status_slug
    agentapi_url        = var.agentapi_url
    agentapi_state_file = local.agentapi_state_file
    agentapi_pid_file   = local.agentapi_pid_file
    snapshot_interval   = var.snapshot_interval
    state_dir           = var.state_dir
    log_path            = var.log_path
    package             = var.package
    # base64: arbitrary shell survives the trip into the start script untouched.
    install_command_b64 = base64encode(local.install_command)
    stop_timeout        = var.stop_timeout
  }

  # One block of exports shared by both scripts: the stop hook must find the daemon's lock
  # and agentapi exactly where the start script told the daemon they are.
  environment = templatefile("${path.module}/scripts/environment.sh.tftpl", local.script_vars)
}

resource "coder_script" "start" {
  agent_id     = var.agent_id
  display_name = "Task sidecar"
  run_on_start = true
  script       = templatefile("${path.module}/scripts/start.sh.tftpl", merge(local.script_vars, { environment = local.environment }))
}

resource "coder_script" "stop" {
  agent_id     = var.agent_id
  display_name = "Task sidecar: final snapshot"
  run_on_stop  = true
  script       = templatefile("${path.module}/scripts/stop.sh.tftpl", merge(local.script_vars, { environment = local.environment }))
}

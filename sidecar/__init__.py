"""coder-task-sidecar: keeps a Coder task's log snapshot and app status current."""

__version__ = "0.1.0"

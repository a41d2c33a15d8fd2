terraform {
  required_version = ">= 1.0"

  required_providers {
    coder = {
      source = "coder/coder"
      # The coder_task data source (the task id handed to the sidecar) first shipped in
      # terraform-provider-coder v2.13.0.
      version = ">= 2.13"
    }
  }
}

#!/usr/bin/env bash
# Set up .venv (pinned packages) and run the offline demo on the bundled tiny checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec .venv/bin/fidediff demo --output demo_output "$@"

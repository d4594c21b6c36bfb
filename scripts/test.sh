#!/usr/bin/env bash
# Set up everything from scratch (Python venv, pinned packages, headless Chromium) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Browser tests use Debian's Chromium (test tools cannot download their own browsers here).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null) \
        || echo "warning: could not install chromium; browser tests will be skipped"
fi
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest -q "$@"

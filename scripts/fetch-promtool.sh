#!/usr/bin/env bash
# Takes Prometheus's promtool out of Debian's `prometheus` package into .cache/promtool/ and prints
# its path. Only that binary is kept: nothing is installed, no Prometheus server is set up or
# started. npm test runs the alert rules' unit tests (deploy/prometheus/settle-alerts.test.yml)
# with it when PROMTOOL names it.
set -euo pipefail
cd "$(dirname "$0")/.."
target=.cache/promtool
tool="$target/promtool"
if [[ ! -x "$tool" ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (
    cd "$work"
    apt-get download prometheus >/dev/null 2>&1 || {
      apt-get update -qq && apt-get download prometheus >/dev/null
    }
    dpkg -x prometheus_*.deb unpacked
  )
  mkdir -p "$target"
  mv "$work/unpacked/usr/bin/promtool" "$tool"
fi
"$tool" --version >/dev/null
echo "$PWD/$tool"

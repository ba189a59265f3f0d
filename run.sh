#!/usr/bin/env bash
# edge-agent's one entry point for people and CI.
#   ./run.sh            create .venv if missing, install, serve the bundled
#                       machined-flange model (brick-texture is there, stopped)
#   ./run.sh test       install test tools, then lint, type-check and test
#   ./run.sh proto      regenerate frontend/_proto from proto/edge-agent.proto
#   ./run.sh bundle     rebuild both bundled components and their samples
#                       (--only NAME for one; a couple of minutes on 2 cores)
#   ./run.sh bench      measure the agent against the alternatives (--quick)
# Anything after "./run.sh serve" goes to "edge-agent serve".
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)
venv="$root/.venv"
python=${PYTHON:-python3}

ensure_venv() {
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
  fi
  # Re-install when pyproject.toml changed since the last install.
  local stamp="$venv/.installed-$1"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    if [ "$1" = dev ]; then
      "$venv/bin/pip" install --quiet -e ".[dev,train]"
    else
      "$venv/bin/pip" install --quiet -e .
    fi
    touch "$stamp"
  fi
}

cmd=${1:-serve}
[ $# -gt 0 ] && shift
case "$cmd" in
  serve)
    ensure_venv base
    # The bundled model directory and its aligned-part model, unless a model
    # directory is given. One running model lets "edge-agent detect" omit --model.
    defaults=(--model-dir "$root/models" --start machined-flange)
    for arg in "$@"; do
      case "$arg" in --model-dir|--model-dir=*) defaults=() ;; esac
    done
    exec "$venv/bin/edge-agent" serve "${defaults[@]}" "$@"
    ;;
  test)
    ensure_venv dev
    "$venv/bin/ruff" check .
    "$venv/bin/ruff" format --check .
    "$venv/bin/mypy" frontend workers shared trainer
    exec "$venv/bin/pytest" "$@"
    ;;
  proto)
    ensure_venv dev
    exec "$venv/bin/python" scripts/generate_proto.py
    ;;
  bundle)
    ensure_venv dev
    exec "$venv/bin/python" scripts/make_bundled_model.py "$@"
    ;;
  bench)
    ensure_venv dev
    exec "$venv/bin/python" scripts/bench.py "$@"
    ;;
  *)
    echo "usage: ./run.sh [serve [ARGS...] | test [PYTEST ARGS...] | proto" \
      "| bundle [ARGS...] | bench [ARGS...]]" >&2
    exit 2
    ;;
esac

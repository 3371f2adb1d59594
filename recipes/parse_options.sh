# Sourced by the recipes' run.sh after their defaults: `--stage N` and `--stop-stage M` set
# stage and stop_stage; every other argument is a Hydra override for the training stages,
# collected in the array `overrides`. `stage_in N` tells whether stage N is to run.
overrides=()
while [ $# -gt 0 ]; do
  case $1 in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --*) echo "usage: $0 [--stage N] [--stop-stage M] [HYDRA_OVERRIDE ...]" >&2; exit 1 ;;
    *) overrides+=("$1"); shift ;;
  esac
done
stage_in() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
# The interpreter the stages run (the one whose environment has stklia's dependencies): PYTHON, else python.
PYTHON=${PYTHON:-python}

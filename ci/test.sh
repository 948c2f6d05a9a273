#!/usr/bin/env bash
# The README's test command: installs everything from nothing, then runs every CPU test.
# Core kernels run through Triton's interpreter; engine adapters run real vLLM / SGLang engines
# in their own venvs (their scripts are called when present).
#
# Time (CI has 30 minutes on 2 cores): each pytest run spreads its tests over CI_WORKERS
# (default 2) pytest-xdist workers, since the interpreter and the engines' waits keep one
# process on one core; the engine venvs and release sites are built in the background while
# the core tests run (pip mostly waits on the network), and each engine script re-checks its
# own setup afterwards, so a failed background build is retried and reported there. Stages
# print their durations ("== stage NAME: N s").
set -euo pipefail
cd "$(dirname "$0")/.."
export CI_WORKERS="${CI_WORKERS:-2}"
stage_start=$SECONDS
stage_done() {
  echo "== stage $1: $((SECONDS - stage_start)) s (total $SECONDS s)"
  stage_start=$SECONDS
}

bash ci/setup.sh
stage_done setup
setup_log=$(mktemp)
trap 'rm -f "$setup_log"' EXIT
(
  set -e
  for script in setup_vllm setup_vllm_releases setup_sglang setup_sglang_releases; do
    if [ -f "ci/$script.sh" ]; then
      bash "ci/$script.sh"
    fi
  done
) >"$setup_log" 2>&1 &
setup_pid=$!
core_rc=0
TRITON_INTERPRET=1 .venv/bin/python -m pytest -q -n "$CI_WORKERS" --dist worksteal tests/core \
  || core_rc=$?
stage_done core
setup_rc=0
wait "$setup_pid" || setup_rc=$?
echo "== engine setup in the background (rc $setup_rc):"
cat "$setup_log"
stage_done "engine setup (what was left after core)"
if [ "$core_rc" -ne 0 ]; then
  exit "$core_rc"
fi
# A stage's duration is printed when the next one starts: the run's output ends with the last
# pytest summary line.
last=
for engine in vllm vllm_releases sglang sglang_releases; do
  if [ -f "ci/test_${engine}.sh" ]; then
    [ -z "$last" ] || stage_done "$last"
    bash "ci/test_${engine}.sh"
    last=$engine
  fi
done

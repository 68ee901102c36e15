#!/usr/bin/env bash
# The kind leg: the e2e suite on a real kind cluster with real Istio (`make e2e-kind`, called by .ci/run).
#
# On the project's machines there is no image registry: ../shared/kind-offline (KIND_OFFLINE_DIR overrides
# the path) builds and starts everything a kind cluster with Istio needs (dockerd, a node image with every
# image pre-loaded, Istio's charts on a loopback Helm repository). This script starts it with up.sh, runs the
# suite with options only (node image, chart repository, Istio version, the upstream-Envoy istiod values;
# no tracked file is edited), and stops it with down.sh, also on failure or Ctrl-C, but only when this
# script started dockerd: a dockerd that already answered belongs to someone else, who stops it.
# Where the folder is absent (a user's clone) the leg says so in one line and is not run.
# Extra arguments go to pytest ($KIND_LEG_PYTEST, default the venv's), but `--subset NAME` (below).
set -euo pipefail
cd "$(dirname "$0")/.."

# Named subsets of the e2e suite, for a leg that cannot afford all of it: `--subset NAME` among the arguments
# becomes `-k <expression>`. Defined here only; the README ("The sidecar door on kind") says what each covers.
#   sidecar-ci: through the sidecar door, the headline figures (sessions moved 3->5 for ring hash 1024 and
#   maglev, stateful sessions kept over a scale-up, new-session shares per LB policy), a graceful drain and a
#   header-session rollout (DRAINING and replaced endpoints as the client's sidecar sees them), the
#   door-dependent server header, and the config facts and key pinning read through the door. About 5 min on
#   kind with the cluster's set-up, where the whole suite through the door takes 12-13 min. (-k matches
#   substrings: ring-1024-3to5, not ring-1024, which ring-10240 contains.)
subset_expression() {
  case $1 in
    sidecar-ci) echo "test_scaling_moves_the_predicted_share and (ring-1024-3to5 or maglev-3to5)" \
      "or test_scale_up_keeps_every_session or test_new_sessions_after_scale_up or test_graceful_drain" \
      "or test_rollout_restart_moves_every_session_without_errors and header" \
      "or test_gateway_answers_like_an_istio_gateway or test_gateway_config_shows or test_key_pins_sessions" ;;
    *) return 1 ;;
  esac
}
args=()
while (($#)); do
  if [[ $1 == --subset ]]; then
    expression=$(subset_expression "${2:-}") || { echo "kind leg: unknown --subset ${2:-} (known: sidecar-ci)" >&2; exit 2; }
    args+=(-k "$expression")
    shift 2
  else
    args+=("$1")
    shift
  fi
done
# Where kind-offline is: $KIND_OFFLINE_DIR, else ../shared/kind-offline beside this checkout, else beside the
# checkout this one was cloned from (CI runs a fresh clone, which may live elsewhere).
offline=${KIND_OFFLINE_DIR:-../shared/kind-offline}
origin=$(git config --get remote.origin.url 2>/dev/null || true)
if [[ -z ${KIND_OFFLINE_DIR:-} && ! -x $offline/up.sh && -d $origin ]]; then
  offline=$origin/../shared/kind-offline
fi
if [[ ! -x $offline/up.sh ]]; then
  echo "kind leg: not run ($offline/up.sh not found; it exists only on the project's machines, set KIND_OFFLINE_DIR to use another copy)"
  exit 0
fi
offline=$(cd "$offline" && pwd)
started=$SECONDS

# Whether dockerd answers on the socket kind-offline uses, before anything is started.
socket_env=$("$offline/up.sh" --env | grep '^export DOCKER_HOST=')
eval "$socket_env"
if timeout 20 docker info >/dev/null 2>&1; then
  echo "kind leg: dockerd already answers on $DOCKER_HOST: it is left running at the end"
else
  echo "kind leg: dockerd not running on $DOCKER_HOST: this leg starts it and stops it at the end ($offline/down.sh)"
  stop() {
    local status=$?
    trap - EXIT INT TERM
    "$offline/down.sh" || status=1
    exit "$status"
  }
  trap stop EXIT
  trap 'exit 130' INT TERM
fi

echo "kind leg: $offline/up.sh (builds what is missing, starts dockerd and the chart repository)"
exports=$("$offline/up.sh")
eval "$exports"
echo "kind leg: up.sh done in $((SECONDS - started)) s; node image $KIND_OFFLINE_NODE_IMAGE, charts $KIND_OFFLINE_CHART_REPO, Istio $KIND_OFFLINE_ISTIO_VERSION"

suite=$SECONDS
status=0
"${KIND_LEG_PYTEST:-.venv/bin/pytest}" e2e/ -v --mesh kind --cluster-name sticky-kind-leg \
  --kind-image "$KIND_OFFLINE_NODE_IMAGE" \
  --istio-version "$KIND_OFFLINE_ISTIO_VERSION" \
  --istio-chart-repo "$KIND_OFFLINE_CHART_REPO" \
  --istio-values "istiod=$KIND_OFFLINE_ISTIOD_VALUES" \
  "${args[@]}" || status=$?
echo "kind leg: suite finished in $((SECONDS - suite)) s (pytest exit $status); leg $((SECONDS - started)) s"
exit "$status"

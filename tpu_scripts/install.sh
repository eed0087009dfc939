#!/usr/bin/env bash
# Installs this project, with its `tpu` and `t5x` extras, on every worker of
# a TPU VM.
#
#   tpu_scripts/install.sh --name=dss-v4 --zone=us-central2-b \
#     [--project=PROJECT] [--extras=tpu,t5x] [--git-url=URL [--git-ref=REF]] \
#     [--dry-run]
#
# By default the local checkout (tracked and untracked, not ignored files) is
# packed, copied to every worker and installed there, so local changes run
# without a push. With --git-url the workers clone that repository instead.
# Each worker gets ~/dss-jax (the code) and ~/dss-venv (a virtual
# environment) that tpu_scripts/launch.sh uses. --extras=tpu skips T5X.

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EXTRAS="tpu,t5x"
GIT_URL=""
GIT_REF="main"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCHIVE="${TMPDIR:-/tmp}/dss-jax.tar.gz"
# The commits of T5X and its GitHub-only dependencies tested with this
# project (jax 0.10.2, flax 0.12.8).
T5X_PACKAGES=(
  "t5x@git+https://github.com/google-research/t5x@cc342d419ec3e3e9c4bf1df33c82330cafdc1e16"
  "airio@git+https://github.com/google/airio@69897df7d9a427b947a9f7bb4164c7782b43e601"
  "jestimator@git+https://github.com/google-research/jestimator@326824a477feef6d92e6f44175000907a72899ca"
)
T5X_RUNTIME_DEPS=(fiddle chex jaxtyping cached-property grain)

while [[ $# -gt 0 ]]; do
  if tpu::parse_common "$@"; then
    shift "$SHIFT"
    continue
  fi
  case "$1" in
    --extras=*) EXTRAS=${1#*=} ;;
    --git-url=*) GIT_URL=${1#*=} ;;
    --git-ref=*) GIT_REF=${1#*=} ;;
    *) tpu::die "unknown flag $1" ;;
  esac
  shift
done
tpu::require_target

if [[ -z "$GIT_URL" ]]; then
  # Only what git would commit: no virtual environments, runs or caches.
  if ((DRY_RUN)); then
    printf '%s\n' "git -C $(tpu::quote "$REPO_DIR") ls-files -z --cached \
--others --exclude-standard | tar -C $(tpu::quote "$REPO_DIR") --null \
-T - -czf $(tpu::quote "$ARCHIVE")"
  else
    git -C "$REPO_DIR" ls-files -z --cached --others --exclude-standard |
      tar -C "$REPO_DIR" --null -T - -czf "$ARCHIVE"
  fi
  tpu::run gcloud compute tpus tpu-vm scp "$ARCHIVE" \
    "${NAME}:dss-jax.tar.gz" "${SCOPE_FLAGS[@]}" --worker=all
  fetch="rm -rf ~/dss-jax && mkdir -p ~/dss-jax && \
tar -xzf ~/dss-jax.tar.gz -C ~/dss-jax"
else
  fetch="rm -rf ~/dss-jax && git clone $(tpu::quote "$GIT_URL") ~/dss-jax \
&& git -C ~/dss-jax checkout $(tpu::quote "$GIT_REF")"
fi

# T5X, AIRIO and JEstimator are only on GitHub. Their own requirements pin
# packages that clash with ours (tensorflow-cpu beside tensorflow, an old
# tfds-nightly, an exact grain), so they go in without dependencies, at the
# commits this project was tested with, and the few modules they import that
# we lack come from PyPI. python3-venv is missing from some TPU images.
install_t5x=""
if [[ ",${EXTRAS}," == *,t5x,* ]]; then
  install_t5x=" && ~/dss-venv/bin/pip install -q --no-deps ${T5X_PACKAGES[*]} \
&& ~/dss-venv/bin/pip install -q ${T5X_RUNTIME_DEPS[*]}"
fi
pip_extras=$(tr ',' '\n' <<<"$EXTRAS" | grep -vx t5x | paste -sd, - || true)
tpu::ssh all "set -euo pipefail; \
(python3 -c 'import ensurepip' 2>/dev/null || \
(sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv)) && \
${fetch} && \
python3 -m venv ~/dss-venv && \
~/dss-venv/bin/pip install -q --upgrade pip && \
cd ~/dss-jax && \
~/dss-venv/bin/pip install -q -e '.${pip_extras:+[${pip_extras}]}'\
${install_t5x} && \
~/dss-venv/bin/python -c 'import jax; print(jax.device_count(), jax.devices()[0].device_kind)'"

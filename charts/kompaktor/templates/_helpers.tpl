{{/* Chart name, overridable. */}}
{{- define "kompaktor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "kompaktor.fullname" -}}
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

{{/* Labels on every object of the release (without a component). */}}
{{- define "kompaktor.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "kompaktor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kompaktor
{{- end }}

{{/* Labels on the operator's objects. */}}
{{- define "kompaktor.labels" -}}
{{ include "kompaktor.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the operator pods (immutable once installed). */}}
{{- define "kompaktor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kompaktor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kompaktor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kompaktor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kompaktor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "kompaktor.peeringName" -}}
{{- default (include "kompaktor.fullname" .) .Values.config.peering.name }}
{{- end }}

{{/* The admission webhook's Service, its certificate Secret and where the pod mounts it. */}}
{{- define "kompaktor.webhookName" -}}
{{- printf "%s-webhook" (include "kompaktor.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "kompaktor.webhookSecret" -}}
{{- default (printf "%s-tls" (include "kompaktor.webhookName" .)) .Values.admission.secretName }}
{{- end }}

{{/* The webhook configurations kopf keeps: one per release. */}}
{{- define "kompaktor.webhookConfigurationName" -}}
{{- default (printf "%s.kompaktor.io" (include "kompaktor.fullname" .)) .Values.admission.configurationName }}
{{- end }}

{{- define "kompaktor.webhookCertDir" -}}
/etc/kompaktor-webhook
{{- end }}

{{/* Fail early on combinations that cannot work. */}}
{{- define "kompaktor.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.config.peering.enabled) }}
{{- fail "replicas > 1 needs config.peering.enabled: unpeered replicas would all act on every job" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- if .Values.admission.enabled }}
{{- $port := int .Values.admission.port }}
{{- if or (eq $port (int .Values.healthPort)) (and .Values.metrics.enabled (eq $port (int .Values.metrics.port))) }}
{{- fail "admission.port must differ from healthPort and metrics.port" }}
{{- end }}
{{- end }}
{{- /* A misspelt key would otherwise be dropped silently from the rendered configuration. */}}
{{- $known := list "pools" "defaultPool" "image" "imagePullPolicy" "artifactsUri" "s3CredentialsSecret" "s3EndpointUrl" "serviceAccountName" "ttlSecondsAfterFinished" "retryBaseSeconds" "podStartTimeoutSeconds" "peering" }}
{{- range $key, $_ := .Values.config }}
{{- if not (has $key $known) }}
{{- fail (printf "config.%s: unknown key (known: %s)" $key (join ", " $known)) }}
{{- end }}
{{- end }}
{{- $poolKeys := list "name" "image" "nodeSelector" "tolerations" "resources" "pricePerHourUSD" "watts" }}
{{- range $pool := .Values.config.pools }}
{{- range $key, $_ := $pool }}
{{- if not (has $key $poolKeys) }}
{{- fail (printf "config.pools[%v].%s: unknown key (known: %s)" $pool.name $key (join ", " $poolKeys)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator configuration (kompaktor.config.OperatorConfig, camelCase keys). */}}
{{- define "kompaktor.config" -}}
{{- $c := .Values.config -}}
pools:
{{- range $c.pools }}
  - name: {{ required "config.pools[].name is required" .name | quote }}
    {{- with .image }}
    image: {{ . | quote }}
    {{- end }}
    {{- with .nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    pricePerHourUSD: {{ .pricePerHourUSD | default 0 }}
    watts: {{ .watts | default 0 }}
{{- end }}
{{- with $c.defaultPool }}
defaultPool: {{ . | quote }}
{{- end }}
image: {{ default (include "kompaktor.image" .) $c.image | quote }}
imagePullPolicy: {{ default .Values.image.pullPolicy $c.imagePullPolicy | quote }}
{{- with $c.artifactsUri }}
artifactsUri: {{ . | quote }}
{{- end }}
{{- with .Values.watchNamespaces }}
namespaces:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.s3CredentialsSecret }}
s3CredentialsSecret: {{ . | quote }}
{{- end }}
{{- with $c.s3EndpointUrl }}
s3EndpointUrl: {{ . | quote }}
{{- end }}
{{- with $c.serviceAccountName }}
serviceAccountName: {{ . | quote }}
{{- end }}
{{- if not (kindIs "invalid" $c.ttlSecondsAfterFinished) }}
ttlSecondsAfterFinished: {{ int $c.ttlSecondsAfterFinished }}
{{- end }}
retryBaseSeconds: {{ $c.retryBaseSeconds }}
podStartTimeoutSeconds: {{ $c.podStartTimeoutSeconds }}
peering:
  enabled: {{ $c.peering.enabled }}
  name: {{ include "kompaktor.peeringName" . | quote }}
  mandatory: {{ $c.peering.mandatory }}
  {{- with $c.peering.lifetimeSeconds }}
  lifetimeSeconds: {{ int . }}
  {{- end }}
{{- if .Values.admission.enabled }}
{{- $dir := include "kompaktor.webhookCertDir" . }}
admission:
  enabled: true
  port: {{ int .Values.admission.port }}
  certFile: {{ printf "%s/tls.crt" $dir | quote }}
  keyFile: {{ printf "%s/tls.key" $dir | quote }}
  caFile: {{ printf "%s/ca.crt" $dir | quote }}
  configurationName: {{ include "kompaktor.webhookConfigurationName" . | quote }}
  service:
    name: {{ include "kompaktor.webhookName" . | quote }}
    namespace: {{ .Release.Namespace | quote }}
    port: 443
{{- end }}
{{- end }}

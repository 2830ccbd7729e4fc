{{/* Release-scoped name: the release name, unless it already contains the chart name. */}}
{{- define "fedcare.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "fedcare.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* hub or site-agent: what this release runs, as the component label says it. */}}
{{- define "fedcare.component" -}}
{{- if eq .Values.mode "hub" }}hub{{ else }}site-agent{{ end -}}
{{- end -}}

{{- define "fedcare.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedcare.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "fedcare.component" . }}
{{- end -}}

{{- define "fedcare.labels" -}}
{{ include "fedcare.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fedcare
{{- end -}}

{{/* The image, pinned by digest when one is given. */}}
{{- define "fedcare.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Site values, checked here rather than in values.schema.json so that the message can say
what to do. Returns the site name. Included by every site-mode template, so no
manifest renders without it.
*/}}
{{- define "fedcare.siteName" -}}
{{- $name := .Values.site.name | default "" -}}
{{- if not $name -}}
{{- fail "site.name is required when mode=site: set it to this hospital's HospitalNode name on the hub, e.g. --set site.name=rouen" -}}
{{- end -}}
{{- if or (gt (len $name) 50) (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name)) -}}
{{- fail (printf "site.name %q is not a DNS-1123 label of at most 50 characters (lowercase letters, digits and '-', starting and ending with a letter or digit): it names the hub namespace fedcare-site-<name>" $name) -}}
{{- end -}}
{{- if and (not .Values.site.hubKubeconfigSecret) (not (and (eq .Values.secrets.backend "vault") .Values.vault.hubCredential.enabled)) -}}
{{- fail (printf "site.hubKubeconfigSecret is required when mode=site: the name of a Secret in namespace %s with key 'kubeconfig' holding the identity of ServiceAccount fedcare-agent in fedcare-site-%s on the hub (see docs/kind.md)" .Release.Namespace $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/*
Annotations of the generated CRD templates (templates/crds/*.yaml); never empty, so the
block never renders as `annotations: null`. keep: `helm uninstall`
leaves the CRDs, so deleting a release never deletes every custom resource with them.
*/}}
{{- define "fedcare.crdAnnotations" -}}
fedcare.io/chart-version: {{ .Chart.Version | quote }}
{{- if .Values.crds.keep }}
helm.sh/resource-policy: keep
{{- end -}}
{{- end -}}

{{/*
"true" when this release should carry the CRDs: crds.install and mode=hub. A site cluster
does not serve the fedcare API, and in single-cluster mode a site release claiming CRDs owned
by the hub release would be refused by helm. Empty (false in `if`) otherwise.
*/}}
{{- define "fedcare.installCRDs" -}}
{{- if and .Values.crds.install (eq .Values.mode "hub") -}}true{{- end -}}
{{- end -}}

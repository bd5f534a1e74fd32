{{/* Name of the agent's objects: `<release>-agent`. */}}
{{- define "flowpol.fullname" -}}
{{- printf "%s-agent" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flowpol.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "flowpol.labels" -}}
{{ include "flowpol.selectorLabels" . }}
app.kubernetes.io/part-of: flowpol
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "flowpol.tokenSecret" -}}
{{- default (printf "%s-api-token" .Release.Name) .Values.apiToken.secretName -}}
{{- end -}}

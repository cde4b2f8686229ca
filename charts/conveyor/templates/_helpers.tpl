{{- define "conveyor.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: conveyor
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "conveyor.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "conveyor.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "conveyor.progressUrl" -}}
{{- $scheme := ternary "https" "http" .Values.progress.tls.enabled -}}
{{- printf "%s://%s-progress.%s.svc:%d" $scheme (include "conveyor.fullname" .) .Release.Namespace (int .Values.progress.port) -}}
{{- end -}}

{{/* The Secret holding the progress endpoint's CA: created by the operator (statusserver). */}}
{{- define "conveyor.progressTlsSecret" -}}
{{- printf "%s-progress-tls" (include "conveyor.fullname" .) -}}
{{- end -}}

{{/* Rules for the namespaced objects the operator manages: no wildcards, only the verbs it uses
(tests/unit/test_chart_rbac.py maps every rule to the code that needs it). Server-side apply needs
`patch`, and `create` for an object that does not exist yet. */}}
{{- define "conveyor.namespacedRules" -}}
- apiGroups: ["conveyor.dev"]
  resources: ["trainingpipelines"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["conveyor.dev"]
  resources: ["trainingpipelines/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["create", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]  # the artifacts claim of a pipeline without storage.uri
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
